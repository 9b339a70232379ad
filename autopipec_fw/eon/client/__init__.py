"""Our eOn client: the jobs eOn's server hands out, run in pure Python on the pyeonclient bindings.

- `search`: the jobs themselves (process search composed as eOn's C++ ``ProcessSearchJob`` does it, minimisation,
  point), the potential they evaluate (ACE in-process through the campaign's `StopPolicy`, EMT, or eOn's own
  potential from ``config.ini``) and `ClientSettings`;
- `worker`: the stdlib-only script eOn starts per job and the warm worker that runs the jobs in forks.
"""
