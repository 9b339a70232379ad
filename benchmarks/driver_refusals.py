#!/usr/bin/env python3
"""How fast pace_driver.py refuses degenerate structures, and what its checks cost an ordinary call.

For each degenerate case of tests/eon/test_driver_degenerate.py: the median time of the refusal
  (a) in the evaluator's entry point (`answer`, what the persistent evaluator runs per request),
  (b) as a whole driver process forwarding to the evaluator (what eOn waits for),
  (c) as a whole driver process without an evaluator (fallback: Python + numpy, and pyace where the cutoff is needed);
then, for the 28-atom demo cell, `check_structure` alone, a whole `answer`, and a daemon call through eOn's files
vs the same call with the structure on standard input.

    .venv/bin/python benchmarks/driver_refusals.py [--repeat 20]

Uses the cached test potential (tests/.cache, fitted on first use).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autopipec_fw.eon.extpot.evaluator import (  # noqa: E402
    PotentialCache,
    answer,
    check_structure,
    parse_extpot_input,
    start_evaluator,
    stop_evaluator,
    write_driver_wrapper,
)
from tests.eon.conftest import adatom_slab, clean_env, eon_input_text  # noqa: E402
from tests.eon.test_driver_degenerate import DEGENERATE  # noqa: E402
from tests.fixtures.potentials import build_cu_surface_potential  # noqa: E402


def _median(f, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _proc(cmd: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=clean_env(),
        capture_output=True,
        timeout=300,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    pot = build_cu_surface_potential()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        h = start_evaluator(run_dir, pot.yaml, pot.asi)
        try:
            common = dict(potential=pot.yaml, active_set=pot.asi, run_dir=run_dir)
            daemon = write_driver_wrapper(run_dir / "drv", fallback=0, **common)
            local = write_driver_wrapper(run_dir / "drv_local", socket=run_dir / "none.sock", **common)
            raw = {"potential": str(pot.yaml), "active-set": str(pot.asi), "run-dir": str(run_dir)}
            cache = PotentialCache()
            print(f"{'case':22s} {'answer ms':>10s} {'daemon ms':>10s} {'fallback ms':>12s}  exit")  # noqa: T201
            for name, (text, _) in sorted(DEGENERATE.items()):
                wd = run_dir / name
                wd.mkdir()
                (wd / "from_eon_to_extpot").write_text(text)
                answer(wd, raw, cache)  # the potential loaded once
                t_in = _median(lambda wd=wd: answer(wd, raw, cache), a.repeat)
                t_d = _median(lambda wd=wd: _proc([str(daemon)], wd), max(5, a.repeat // 2))
                t_f = _median(lambda wd=wd: _proc([str(local)], wd), 3)
                code = _proc([str(daemon)], wd).returncode
                print(f"{name:22s} {t_in * 1e3:10.2f} {t_d * 1e3:10.1f} {t_f * 1e3:12.0f}  {code}")  # noqa: T201
            text = eon_input_text(adatom_slab(0.05, seed=1))
            numbers, pos, cell = parse_extpot_input(text)
            t_check = _median(lambda: check_structure(numbers, pos, cell), 200)
            wd = run_dir / "ok"
            wd.mkdir()
            (wd / "from_eon_to_extpot").write_text(text)
            t_ok = _median(lambda: answer(wd, raw, cache), 200)
            t_files = _median(lambda: _proc([str(daemon)], wd), a.repeat)
            t_stdin = _median(lambda: _proc([str(daemon), "--io", "stdin"], wd, text.encode()), a.repeat)
            print(
                f"28-atom demo cell: check_structure {t_check * 1e6:.0f} µs, whole answer {t_ok * 1e3:.2f} ms"
            )  # noqa: T201
            print(f"daemon call: eOn's files {t_files * 1e3:.1f} ms, standard input {t_stdin * 1e3:.1f} ms")  # noqa: T201
        finally:
            stop_evaluator(run_dir)
    del h
    return 0


if __name__ == "__main__":
    sys.exit(main())
