#!/usr/bin/env python
"""How a campaign's loop converged (issue 13's bar), from a finished campaign folder's stage records:

    .venv/bin/python benchmarks/loop_convergence.py campaigns/cu-adatom-demo [more campaign folders]
    .venv/bin/python benchmarks/loop_convergence.py --run Ag:adatom_on_slab Ni:vacancy_in_bulk [--port 27500]
    .venv/bin/python benchmarks/loop_convergence.py --sweep          # every EMT element x adatom / vacancy
    .venv/bin/python benchmarks/loop_convergence.py --repeat 3 --config cu-adatom   # the demo 3 x: the spread

Prints per campaign: the loop's wall time (first stage start to last stage end), the first fit's own time and the
ratio of the two (bar: at most 3), fits that ran (reused generations are not fits; bar: at most 4), oracle labels
(initial + stops + teaching; bar for the demo: at most 79), stops with candidates and labels, each generation's
test energy / force RMSE, and the gate's held-out RMSEs and largest barrier error (demo bar: 1.0 meV/atom,
6 meV/Å, 15 meV).

`--run ELEMENT:KIND` writes a campaign file with only `elements`, `structure` and `package` (every other setting is
a default, as a new user writes it), runs `mlip-auto run-loop` on it in a fresh workspace under
benchmarks/.runs/ (or --workspace), and reports the same figures: does it graduate with no tuning? `--sweep` does
that for every element EMT has parameters for (Al Cu Ag Au Ni Pd Pt) on both structure kinds. `--repeat N --config
NAME` runs a built-in example (or campaign file) N times, each in a fresh workspace, and prints the spread (min /
median / max) of every figure: one run of a stochastic loop is not a measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

BARS = {"wall_over_first_fit": 3.0, "fits": 4, "energy_rmse": 1.0, "force_rmse": 6.0, "barrier_error": 15.0}


def _records(campaign_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted((campaign_dir / "stages").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{p}: not a readable stage record ({e})") from None
    if not out:
        raise SystemExit(f"{campaign_dir}/stages: no stage records; is this a campaign folder?")
    return out


def _reused(fit_record: dict[str, Any]) -> bool:
    return (fit_record.get("metrics") or {}).get("reused_from") is not None


def figures(campaign_dir: Path) -> dict[str, Any]:
    rec = _records(campaign_dir)
    spans = [(r["started"], r["started"] + r["seconds"]) for r in rec.values()
             if isinstance(r.get("started"), (int, float)) and isinstance(r.get("seconds"), (int, float))]
    wall = max(b for _, b in spans) - min(a for a, _ in spans) if spans else None
    fits = [r for k, r in sorted(rec.items()) if k.startswith("fit_")]
    ran = [r for r in fits if not _reused(r)]
    first = fits[0]["seconds"] if fits else None
    labels = sum(int(r.get("added", 0) or 0) for k, r in rec.items() if k.startswith("oracle_"))
    stops = [{"iteration": r["iteration"], "generation": r.get("generation"), "max_gamma": r.get("max_gamma"),
              "candidates": r.get("n_candidates"), "selected": r.get("n_selected"), "seconds": r.get("seconds")}
             for k, r in sorted(rec.items()) if k.startswith("akmc_") and r.get("status") == "stopped"]
    gens = [{"generation": r["generation"], "structures": r.get("training_set_size"), "seconds": r.get("seconds"),
             "reused": _reused(r),
             "test_energy_rmse": (r.get("metrics") or {}).get("test_energy_rmse"),
             "test_force_rmse": (r.get("metrics") or {}).get("test_force_rmse")} for r in fits]
    val = rec.get("validate", {})
    barrier_errors = [abs(b.get("error_meV", 0.0)) for b in val.get("barriers", []) if isinstance(b, dict)]
    out = {
        "campaign": str(campaign_dir), "wall_seconds": wall, "first_fit_seconds": first,
        "wall_over_first_fit": (wall / first) if wall and first else None,
        "fits": len(ran), "generations": len(fits), "oracle_labels": labels, "stops": stops, "generation_rows": gens,
        "kmc_steps": max((r.get("kmc_steps") or 0 for k, r in rec.items() if k.startswith("akmc_")), default=0),
        "graduated": bool(val.get("passed")) and "package" in rec,
        "validation_rounds": len([k for k in rec if k.startswith("validate_")]),
        "holdout_energy_rmse": val.get("energy_rmse"), "holdout_force_rmse": val.get("force_rmse"),
        "max_barrier_error": max(barrier_errors) if barrier_errors else None,
        "failures": val.get("failures", []),
        "fit_seconds": sum(r.get("seconds") or 0.0 for r in ran),
        "akmc_seconds": sum(r.get("seconds") or 0.0 for k, r in rec.items() if k.startswith("akmc_")),
        "oracle_seconds": sum(r.get("seconds") or 0.0 for k, r in rec.items() if k.startswith("oracle_")),
    }
    return out


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def show(f: dict[str, Any]) -> None:
    def bar(key: str, value: Any, smaller: bool = True) -> str:
        if value is None or key not in BARS:
            return ""
        ok = value <= BARS[key] if smaller else value >= BARS[key]
        return f"  (bar {BARS[key]}: {'met' if ok else 'NOT met'})"

    print(f"== {f['campaign']}")
    print(f"  graduated: {f['graduated']}  (validation rounds: {f['validation_rounds']}; KMC steps {f['kmc_steps']})")
    print(f"  wall {_fmt(f['wall_seconds'], '.0f')} s; first fit {_fmt(f['first_fit_seconds'], '.0f')} s; "
          f"ratio {_fmt(f['wall_over_first_fit'])}{bar('wall_over_first_fit', f['wall_over_first_fit'])}")
    print(f"  fits {f['fits']} of {f['generations']} generations{bar('fits', f['fits'])}; oracle labels "
          f"{f['oracle_labels']}; seconds in fits {f['fit_seconds']:.0f}, aKMC {f['akmc_seconds']:.0f}, "
          f"oracle {f['oracle_seconds']:.0f}")
    for s in f["stops"]:
        print(f"  stop iter {s['iteration']} (gen {s['generation']}): max gamma {_fmt(s['max_gamma'])}, "
              f"{s['candidates']} candidates, {s['selected']} labelled, aKMC {_fmt(s['seconds'], '.0f')} s")
    for g in f["generation_rows"]:
        print(f"  gen {g['generation']}: {g['structures']} structures, test {_fmt(g['test_energy_rmse'])} meV/atom "
              f"{_fmt(g['test_force_rmse'], '.1f')} meV/Å, {_fmt(g['seconds'], '.0f')} s"
              f"{' (reused)' if g['reused'] else ''}")
    print(f"  held out: {_fmt(f['holdout_energy_rmse'])} meV/atom{bar('energy_rmse', f['holdout_energy_rmse'])}, "
          f"{_fmt(f['holdout_force_rmse'])} meV/Å{bar('force_rmse', f['holdout_force_rmse'])}; largest barrier "
          f"error {_fmt(f['max_barrier_error'], '.1f')} meV{bar('barrier_error', f['max_barrier_error'])}")
    for line in f["failures"]:
        print(f"  failure: {line}")


def minimal_campaign(element: str, kind: str) -> dict[str, Any]:
    structure: dict[str, Any] = {"kind": kind, "element": element}
    name = f"{element.lower()}-{kind.replace('_', '-')}"
    return {"name": name, "elements": [element], "structure": structure,
            "package": {"name": f"{name}-ace", "description": f"{element} {kind}, defaults only"}}


def run(spec: str, workspace: Path, port: int) -> Path:
    element, _, kind = spec.partition(":")
    if not element or kind not in ("adatom_on_slab", "vacancy_in_bulk"):
        raise SystemExit(f"--run {spec!r}: expected ELEMENT:adatom_on_slab or ELEMENT:vacancy_in_bulk")
    doc = minimal_campaign(element, kind)
    ws = workspace / doc["name"]
    ws.mkdir(parents=True, exist_ok=True)
    cfg = ws / "campaign.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    mlip = Path(sys.executable).parent / "mlip-auto"
    t0 = time.perf_counter()
    r = subprocess.run([str(mlip), "run-loop", "--config", str(cfg), "--port", str(port)], cwd=ws, check=False)
    print(f"{doc['name']}: run-loop exit {r.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
    return ws / "campaigns" / doc["name"]


EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
SPREAD_KEYS = ("wall_seconds", "first_fit_seconds", "wall_over_first_fit", "fits", "oracle_labels", "n_stops",
               "fit_seconds", "holdout_energy_rmse", "holdout_force_rmse", "max_barrier_error")


def run_config(config: str, workspace: Path, port: int) -> Path:
    """`mlip-auto run-loop --config CONFIG` in a fresh ``workspace``; the campaign folder it made."""
    if workspace.exists() and any(workspace.iterdir()):
        raise SystemExit(f"{workspace}: not empty; give --workspace a fresh folder (a repeat must start anew)")
    workspace.mkdir(parents=True, exist_ok=True)
    if Path(config).exists():  # a campaign file: the run's folder is the workspace
        config = str(Path(config).resolve())
    mlip = Path(sys.executable).parent / "mlip-auto"
    t0 = time.perf_counter()
    r = subprocess.run([str(mlip), "run-loop", "--config", config, "--port", str(port)], cwd=workspace,
                       check=False, stdout=subprocess.DEVNULL)
    print(f"{workspace.name}: run-loop exit {r.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
    found = sorted((workspace / "campaigns").glob("*/stages"))
    if not found:
        raise SystemExit(f"{workspace}/campaigns: no campaign folder after the run (exit {r.returncode})")
    return found[0].parent


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """min / median / max of each figure over repeated runs (None where a run has no value)."""
    import statistics

    out: dict[str, Any] = {"runs": len(rows), "graduated": sum(bool(r["graduated"]) for r in rows)}
    for key in SPREAD_KEYS:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        out[key] = (min(vals), statistics.median(vals), max(vals)) if vals else None
    return out


def show_spread(sp: dict[str, Any]) -> None:
    print(f"== spread over {sp['runs']} runs: {sp['graduated']} graduated")
    for key in SPREAD_KEYS:
        v = sp[key]
        print(f"  {key}: " + ("-" if v is None else f"min {v[0]:.3g}, median {v[1]:.3g}, max {v[2]:.3g}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("campaigns", nargs="*", type=Path, help="finished campaign folders")
    ap.add_argument("--run", nargs="*", default=[], metavar="ELEMENT:KIND")
    ap.add_argument("--workspace", type=Path, default=Path(__file__).parent / ".runs")
    ap.add_argument("--port", type=int, default=27500)
    ap.add_argument("--sweep", action="store_true", help="--run every EMT element on both structure kinds")
    ap.add_argument("--repeat", type=int, default=0, metavar="N", help="run --config N times, print the spread")
    ap.add_argument("--config", default="cu-adatom", help="with --repeat: a built-in example or campaign file")
    ap.add_argument("--json", action="store_true", help="one JSON document per campaign instead of text")
    args = ap.parse_args(argv)
    specs = list(args.run) + ([f"{e}:{k}" for e in EMT_ELEMENTS for k in ("adatom_on_slab", "vacancy_in_bulk")]
                              if args.sweep else [])
    ws = args.workspace.resolve()
    folders = list(args.campaigns) + [run(s, ws, args.port) for s in specs]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folders += [run_config(args.config, ws / f"repeat-{stamp}-{i}", args.port) for i in range(args.repeat)]
    if not folders:
        ap.error("give campaign folders, --run ELEMENT:KIND, --sweep or --repeat N")
    rows = []
    for d in folders:
        f = figures(d)
        f["n_stops"] = len(f["stops"])
        rows.append(f)
        print(json.dumps(f)) if args.json else show(f)
    if len(rows) > 1:
        sp = spread(rows)
        print(json.dumps({"spread": sp})) if args.json else show_spread(sp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
