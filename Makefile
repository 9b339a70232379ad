# The two commands of the README. Both are idempotent: setup steps are skipped when already done.
.PHONY: demo test test-fast lint

demo:  ## set up (if needed) and run the built-in demo campaign end to end; the package lands in dist/
	scripts/setup.sh
	.venv/bin/mlip-auto run-loop

test:  ## set up (if needed, with GPAW / Quantum ESPRESSO / SLURM) and run the whole test suite
	scripts/setup.sh --tests
	.venv/bin/ruff check autopipec_fw tests benchmarks
	.venv/bin/python -m pytest

test-fast:  ## while iterating: skip the slow real-DFT / SLURM / eOn end-to-end tests
	.venv/bin/python -m pytest -m "not slow"

lint:
	.venv/bin/ruff check autopipec_fw tests benchmarks
