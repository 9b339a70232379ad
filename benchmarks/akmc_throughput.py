"""aKMC throughput: the same KMC steps of the demo through (a) ext_pot + pace_driver.py (+ its persistent
evaluator) and (b) our client evaluating ACE in-process.

    .venv/bin/python benchmarks/akmc_throughput.py [--steps 1] [--modes ext_pot,inprocess] [--workdir DIR]

Prints, per mode: wall time, force calls (counted by the driver / our client), wall per force call, time in
the potential per force call, and eOn's own search figures (searches per KMC step, share of good saddles, force
calls per search, from states/*/search_results.txt); then the raw cost of the potential (`PyACECalculator` with its active set on the
demo structure, median of 200 calls) and the ratios. Targets (issue 4): (b) at least 3x faster than (a);
(b)'s in-potential cost per force call within 1.5x the raw cost.

``--campaign DIR [DIR ...]`` prints only the search figures of finished campaign folders (all their eOn run
folders: akmc/runs/*), e.g. the demo and al-vacancy before and after a change:

    .venv/bin/python benchmarks/akmc_throughput.py --campaign campaigns/cu-adatom-demo campaigns/al-vacancy-demo

The potential is the cached test fixture ``cu_surface`` (fitted on the first call, ~1-2 min) unless
``--potential P.yaml`` (with ``P.asi`` next to it) is given. Both modes use the same seeds and settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _raw_loop(yaml: str, asi: str, n: int) -> list[float]:
    import numpy as np
    from pyace import PyACECalculator

    from autopipec_fw.config import StructureSettings
    from autopipec_fw.structures import build_structure

    atoms = build_structure(StructureSettings())
    atoms.pbc = True
    calc = PyACECalculator(yaml)
    calc.set_active_set(asi)
    rng = np.random.default_rng(0)
    times = []
    base = atoms.positions.copy()
    for _ in range(n):
        atoms.positions = base + rng.normal(0, 0.01, base.shape)
        atoms.calc = calc
        t = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        times.append(time.perf_counter() - t)
    return times


def raw_cost(yaml: Path, asi: Path, n: int = 300, procs: int = 1) -> dict[str, float]:
    """Seconds per energy+forces+gamma call of PyACECalculator on the demo structure (median and mean), with
    ``procs`` processes evaluating at once (the aKMC run has ``num_clients`` clients at once)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(procs, mp_context=mp.get_context("fork")) as ex:
        parts = list(ex.map(_raw_loop, [str(yaml)] * procs, [str(asi)] * procs, [n] * procs))
    times = [t for part in parts for t in part]
    return {"median": statistics.median(times), "mean": statistics.fmean(times)}


def search_figures(run_dirs: list[Path]) -> dict:
    """eOn's own counts over these run folders: searches per KMC step, good share, force calls per search."""
    from autopipec_fw.eon.io import read_dynamics, search_statistics

    searches = good = calls = steps = 0
    by: dict[str, int] = {}
    for rd in run_dirs:
        st = search_statistics(rd)
        searches += st["searches"]
        good += st["by_result"].get("good", 0) + st["by_result"].get("repeat", 0)
        calls += st["force_calls"]
        steps += len(read_dynamics(rd))
        for k, v in st["by_result"].items():
            by[k] = by.get(k, 0) + v
    return {
        "runs": len(run_dirs), "kmc_steps": steps, "searches": searches,
        "searches_per_kmc_step": searches / steps if steps else None,
        "good_share": good / searches if searches else None,
        "force_calls_per_search": calls / searches if searches else None, "by_result": by,
    }


def _fmt_search(f: dict) -> str:
    def g(x, spec):
        return "n/a" if x is None else format(x, spec)

    return (f"eOn runs={f['runs']} kmc_steps={f['kmc_steps']} searches={f['searches']} "
            f"searches/KMC step={g(f['searches_per_kmc_step'], '.1f')} good saddles={g(f['good_share'], '.0%')} "
            f"force calls/search={g(f['force_calls_per_search'], '.0f')} outcomes={f['by_result']}")


def run_mode(mode: str, workdir: Path, yaml: Path, asi: Path, steps: int, confidence: float) -> dict:
    from autopipec_fw.config import AkmcSettings, EonSettings, GammaSettings, StructureSettings
    from autopipec_fw.eon.akmc import run_akmc
    from autopipec_fw.structures import build_structure

    run_dir = workdir / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    akmc = AkmcSettings(
        kmc_steps=steps,
        confidence=confidence,
        num_clients=2,
        searches_per_round=4,
        max_rounds=200,
        eon=EonSettings(runtime="local", potential_mode=mode),
    )
    gamma = GammaSettings(threshold=1e6, select_lower=1e5)  # measure throughput, never stop
    t = time.perf_counter()
    r = run_akmc(run_dir, build_structure(StructureSettings()), yaml, asi, akmc, gamma)
    wall = time.perf_counter() - t
    rep = json.loads(Path(r.report_path).read_text())
    fc = rep["force_calls"]
    pot_s = fc["client"]["potential_seconds"]
    return {
        "mode": mode,
        "status": r.status,
        "kmc_steps": r.kmc_steps,
        "wall_s": wall,
        "force_calls": r.force_calls,
        "searches": fc["client"]["jobs"],
        "rounds": r.rounds,
        "wall_per_call_ms": 1e3 * wall / max(r.force_calls, 1),
        "potential_per_call_ms": 1e3 * pot_s / max(fc["client"]["force_calls"], 1) if pot_s else None,
        "job_per_call_ms": 1e3 * fc["client"]["job_seconds"] / max(fc["client"]["force_calls"], 1)
        if pot_s
        else None,
        "barriers": sorted(round(p["barrier"], 4) for p in rep["processes"]),
        "search": search_figures([run_dir]),
        "trajectory": [(d["reactant"], d["product"], round(d["barrier"], 4)) for d in rep["trajectory"]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--modes", default="ext_pot,inprocess")
    ap.add_argument("--potential", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--campaign", type=Path, nargs="+", default=None,
                    help="only print the search figures of these campaign folders")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.campaign:
        for c in args.campaign:
            runs = sorted(p for p in (c / "akmc" / "runs").glob("[0-9][0-9][0-9][0-9]") if p.is_dir())
            print(f"{c}: {_fmt_search(search_figures(runs))}")
        return 0

    if args.potential is None:
        from tests.fixtures.potentials import build_cu_surface_potential

        fp = build_cu_surface_potential()
        yaml, asi = Path(fp.yaml), Path(fp.asi)
    else:
        yaml, asi = args.potential, args.potential.with_suffix(".asi")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="akmc_throughput_"))
    workdir.mkdir(parents=True, exist_ok=True)

    raw1 = raw_cost(yaml, asi, procs=1)
    raw2 = raw_cost(yaml, asi, procs=2)  # the demo runs 2 clients at once
    results = {}
    for mode in args.modes.split(","):
        results[mode] = run_mode(mode, workdir, yaml, asi, args.steps, args.confidence)
        r = results[mode]
        print(
            f"{mode:10s} status={r['status']} kmc_steps={r['kmc_steps']} wall={r['wall_s']:.1f} s "
            f"force_calls={r['force_calls']} searches={r['searches']} rounds={r['rounds']} "
            f"wall/call={r['wall_per_call_ms']:.2f} ms"
            + (
                f" in-potential/call={r['potential_per_call_ms']:.3f} ms"
                if r["potential_per_call_ms"]
                else ""
            ),
            flush=True,
        )
        print(f"{'':10s} {_fmt_search(r['search'])}", flush=True)
    print(
        f"raw PyACECalculator (energy+forces+gamma, demo cell, 300 calls): 1 process median "
        f"{1e3 * raw1['median']:.3f} ms, mean {1e3 * raw1['mean']:.3f} ms; 2 processes at once: median "
        f"{1e3 * raw2['median']:.3f} ms, mean {1e3 * raw2['mean']:.3f} ms"
    )
    a, b = results.get("ext_pot"), results.get("inprocess")
    if a and b:
        print(f"speed-up (a)/(b) wall: {a['wall_s'] / b['wall_s']:.2f}x (target >= 3)")
        print(f"per force call (a)/(b): {a['wall_per_call_ms'] / b['wall_per_call_ms']:.2f}x")
        print(
            f"same trajectory and barriers: {a['trajectory'] == b['trajectory'] and a['barriers'] == b['barriers']}"
        )
    if b and b["potential_per_call_ms"]:
        print(
            f"(b) whole eOn job per force call / time in the potential, same processes and moment: "
            f"{b['job_per_call_ms'] / b['potential_per_call_ms']:.2f}x (target <= 1.5); "
            f"whole run wall per call / potential: {b['wall_per_call_ms'] / b['potential_per_call_ms']:.2f}x"
        )
        print(
            f"(b) in-potential per call / raw PyACECalculator measured separately (mean, 2 processes): "
            f"{b['potential_per_call_ms'] / (1e3 * raw2['mean']):.2f}x (only meaningful on a quiet machine)"
        )
    print(f"run folders: {workdir}")
    if args.json:
        raw_ms = {f"{k}_{n}proc": 1e3 * v for n, r in ((1, raw1), (2, raw2)) for k, v in r.items()}
        args.json.write_text(json.dumps({"raw_ms": raw_ms, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
