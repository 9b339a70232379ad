"""Everything eOn, in one package shaped like custodian's per-code packages.

- `io`: eOn's file formats (config.ini paths, processtable, state info, search results, dynamics.txt,
  info.txt, results.dat, .con), read in one place for the aKMC stage, its report, the gate and the benchmarks;
- `config`: the ``config.ini`` we write for an aKMC run;
- `jobs`, `handlers`: custodian's `EonJob` and the handlers that supervise it (extrapolation stop, stale lock,
  failed clients, round limit);
- `akmc`: `EonWrapper` / `run_akmc`, one supervised eOn run folder, and `AkmcCampaignRun`, the segments of a
  campaign (one eOn run per potential generation, KMC steps and simulated time carried over);
- `state`, `report`: our bookkeeping next to eOn's files and the per-run ``report.json``;
- `client`: our pure-Python eOn client (process search, warm worker);
- `extpot`: the ext_pot route (``pace_driver.py``, its persistent evaluator, the stdlib-only protocol);
- `runtime`: where eOn comes from (the local runtime's server from the eon-akmc sdist, or a user's own).

The stop rule every route applies is `autopipec_fw.gamma.StopPolicy`.
"""
