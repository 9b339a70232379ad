#!/usr/bin/env python
"""Campaign benchmark (issue 8): runs the demo end to end if needed, then prints

(a) oracle calls of the whole campaign against direct aKMC on the oracle for the same number of KMC steps
    (target: at least 100 times fewer);
(b) barrier MAE learned vs oracle over the processes found (target: at most 20 meV);
(c) the share of the campaign's wall time spent outside the oracle, the fits and the potential's force
    evaluations (target: at most 10 %).

    .venv/bin/python benchmarks/campaign.py [--workspace DIR] [--config cu-adatom] [--port 27418] [--no-run]

The direct reference runs eOn aKMC with EMT (the demo's oracle) evaluated in-process, from the same starting
structure, with the same settings, until it has done as many KMC steps as the campaign did, and counts its
force calls (every one would be an oracle call).

With a DFT oracle (gpaw, espresso, vasp; e.g. ``--config al-adatom-gpaw``) the direct run is not made: its force
calls are taken from the campaign's own aKMC records (every force call of every segment, the searches that only
collected candidates after a stop included), each priced at the measured seconds of one DFT single point of the
aKMC cell (the median over the campaign's single points with that many atoms, from their oracle.json). It then
also prints every DFT call of the campaign (training labels, held-out set, barrier-path points) and the share of
the wall time in DFT: the union on the clock of every single point's interval (oracle.json: its end and seconds).

(c) is measured on the clock, not summed over processes: the wall time runs from the first Firework's start to
the last one's end (from the LaunchPad's launch documents); "inside" is the union of the intervals in which an
oracle batch, a fit (pacemaker), the validation gate (oracle + potential on the held-out set and barriers) or a
force evaluation of the potential ran (each eOn client search contributes [its start, its start + its time in the
potential], from the run's client_calls.jsonl). Two searches evaluating forces at once count once. Everything
else - FireWorks and process start-up, the LaunchPad, eOn's server and its saddle-search algebra, file I/O,
packaging - is outside, and is broken down by Firework stage (and "between Fireworks").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from autopipec_fw.campaign import CampaignLayout, stage_records
from autopipec_fw.cli import _campaign_arg
from autopipec_fw.launchpad.files import load_launchpad
from autopipec_fw.launchpad.server import EmbeddedServer


def run_campaign(workspace: Path, config: str, port: int) -> float:
    t0 = time.perf_counter()
    mlip = Path(sys.executable).parent / "mlip-auto"
    subprocess.run([str(mlip), "run-loop", "--config", config, "--workspace", str(workspace), "--port", str(port)],
                   cwd=workspace, check=True)
    return time.perf_counter() - t0


Interval = tuple[float, float]


def merged(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def covered(intervals: list[Interval], window: Interval | None = None) -> float:
    """Seconds covered by the union of ``intervals`` (inside ``window`` if given)."""
    total = 0.0
    for a, b in merged(intervals):
        if window is not None:
            a, b = max(a, window[0]), min(b, window[1])
        total += max(0.0, b - a)
    return total


def _epoch(t: object) -> float:
    d = t if isinstance(t, datetime) else datetime.fromisoformat(str(t))
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def launch_windows(workspace: Path, port: int, campaign_dir: Path) -> list[tuple[str, str, float, float]]:
    """(stage, Firework name, start, end) of every finished launch of the campaign, from the LaunchPad."""
    server = EmbeddedServer(workspace, port=port)
    started = server.info() is None
    server.start()
    try:
        lp = load_launchpad(workspace / "my_launchpad.yaml")
        wf = lp.workflows.find_one({"metadata.campaign_dir": str(campaign_dir)})
        out = []
        for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"launches": 1, "name": 1, "spec.stage": 1}):
            for launch in lp.launches.find({"launch_id": {"$in": fw.get("launches", [])}}):
                if launch.get("time_start") and launch.get("time_end"):
                    out.append(((fw.get("spec") or {}).get("stage", "?"), fw["name"], _epoch(launch["time_start"]),
                                _epoch(launch["time_end"])))
        return sorted(out, key=lambda w: w[2])
    finally:
        if started:
            server.stop()


def force_intervals(akmc_dir: Path) -> list[Interval]:
    """[start, start + time in the potential] of every eOn client search of the run."""
    out = []
    calls = akmc_dir / "client_calls.jsonl"
    for line in calls.read_text().splitlines() if calls.exists() else []:
        r = json.loads(line)
        start = float(r["time"]) - float(r.get("job_seconds") or 0.0)
        out.append((start, start + float(r.get("potential_seconds") or 0.0)))
    return out


def stage_intervals(rec: dict[str, dict], prefix: str) -> list[Interval]:
    return [(float(r["started"]), float(r["started"]) + float(r.get("seconds") or 0.0))
            for k, r in rec.items() if k.startswith(prefix) and r.get("started") is not None]


def direct_akmc_force_calls(layout: CampaignLayout, kmc_steps: int) -> tuple[int, int, float]:
    from autopipec_fw.eon.akmc import EonRunOptions, run_akmc
    from autopipec_fw.structures import build_structure
    from autopipec_fw.training.fit import latest_generation

    campaign = layout.campaign()
    gen = latest_generation(layout.generations)
    akmc = campaign.akmc.model_copy(update={"kmc_steps": max(1, kmc_steps), "max_rounds": 100})
    with tempfile.TemporaryDirectory(prefix="direct-akmc-") as tmp:
        t0 = time.perf_counter()
        res = run_akmc(Path(tmp) / "run", build_structure(campaign.structure), gen.yaml, gen.asi, akmc,
                       campaign.gamma, options=EonRunOptions(client_potential="emt"))
        seconds = time.perf_counter() - t0
    if res.status != "completed" and not (res.status == "failed" and res.message.startswith("max_rounds")):
        raise RuntimeError(f"direct aKMC on the oracle did not run: {res.status} {res.message}")
    if res.kmc_steps < 1:
        raise RuntimeError(f"direct aKMC on the oracle made no KMC step in {akmc.max_rounds} rounds")
    return res.force_calls, res.kmc_steps, seconds


DFT_ORACLES = ("gpaw", "espresso", "vasp")


def _natoms(folder: Path) -> int:
    with open(folder / "input.extxyz") as fd:
        return int(fd.readline().split()[0])


def single_points(layout: CampaignLayout) -> list[dict]:
    """Every finished single point of the campaign (training labels, held-out set, barrier paths): its folder,
    source, atoms, seconds and clock interval (oracle.json is written when the single point ends)."""
    out = []
    for root, kind in ((layout.oracle, "training"), (layout.validation, "validation")):
        for meta_file in sorted(root.rglob("oracle.json")) if root.is_dir() else []:
            if "failed_run_" in str(meta_file) or not (meta_file.parent / "result.extxyz").exists():
                continue
            meta = json.loads(meta_file.read_text())
            end = meta_file.stat().st_mtime
            seconds = float(meta.get("seconds") or 0.0)
            where = "barrier" if "barriers" in meta_file.parts else "holdout" if kind == "validation" else "training"
            out.append({"folder": str(meta_file.parent), "kind": where, "natoms": _natoms(meta_file.parent),
                        "seconds": seconds, "interval": (end - seconds, end)})
    return out


def dft_comparison(layout: CampaignLayout, akmc_records: list[dict], kmc_steps: int) -> dict:
    """(a) for a DFT oracle, without running aKMC on DFT: the campaign's aKMC force calls x the measured seconds
    per DFT single point of the aKMC cell, against the DFT calls the campaign made."""
    from statistics import median

    from autopipec_fw.structures import build_structure

    campaign = layout.campaign()
    points = single_points(layout)
    if not points:
        raise RuntimeError(f"{layout.oracle}: no finished single point (oracle.json + result.extxyz)")
    natoms = len(build_structure(campaign.structure))
    same = [p["seconds"] for p in points if p["natoms"] == natoms]
    per_call = median(same) if same else median(p["seconds"] for p in points)
    direct_calls = int(akmc_records[-1].get("force_calls") or 0)  # cumulative over the campaign's segments
    by_kind = {k: sum(1 for p in points if p["kind"] == k) for k in ("training", "holdout", "barrier")}
    return {"dft_calls": len(points), "by_kind": by_kind, "direct_force_calls": direct_calls,
            "seconds_per_call": per_call, "n_timed": len(same), "natoms": natoms,
            "direct_seconds": direct_calls * per_call, "dft_seconds_summed": sum(p["seconds"] for p in points),
            "intervals": [p["interval"] for p in points], "kmc_steps": kmc_steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("benchmark-workspace"))
    ap.add_argument("--config", default="cu-adatom")
    ap.add_argument("--port", type=int, default=27418)
    ap.add_argument("--no-run", action="store_true",
                    help="report on the campaign folder as it is (e.g. one whose gate failed); never run it")
    args = ap.parse_args()
    ws = args.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    campaign = _campaign_arg(args.config)
    layout = CampaignLayout(campaign.resolved_workdir(ws))
    run_wall = None
    if args.no_run and not any(k.startswith("akmc_") for k in stage_records(layout)):
        print(f"{layout.root}: no aKMC record to report on (--no-run)")
        return 1
    if "package" not in stage_records(layout) and not args.no_run:
        run_wall = run_campaign(ws, args.config, args.port)
    rec = stage_records(layout)
    akmc = [r for k, r in sorted(rec.items()) if k.startswith("akmc_")]
    kmc_steps = int(akmc[-1]["kmc_steps"])
    oracle_train = sum(int(r["labelled"]) for k, r in rec.items() if k.startswith("oracle_"))
    val = rec.get("validate", {})
    oracle_holdout = int(val.get("n_holdout") or 0)

    print(f"campaign {campaign.name}: {kmc_steps} KMC steps, {len(akmc)} aKMC runs, "
          f"{sum(1 for r in akmc if r['status'] == 'stopped')} stops, "
          f"{sum(1 for k in rec if k.startswith('fit_'))} generations")
    if run_wall is not None:
        print(f"end-to-end wall time of mlip-auto run-loop: {run_wall:.0f} s")

    dft = None
    if campaign.oracle.calculator in DFT_ORACLES:
        dft = dft_comparison(layout, akmc, kmc_steps)
        direct_calls = dft["direct_force_calls"]
        ratio = direct_calls / max(1, dft["dft_calls"])
        b = dft["by_kind"]
        print(f"(a) DFT calls: campaign {dft['dft_calls']} {campaign.oracle.calculator} single points for "
              f"{kmc_steps} KMC steps ({b['training']} training labels, {b['holdout']} held-out, {b['barrier']} "
              f"barrier-path points; {dft['dft_seconds_summed']:.0f} s of DFT summed over processes); direct aKMC "
              f"on DFT (not run): {direct_calls} force calls (the campaign's aKMC, all segments) x "
              f"{dft['seconds_per_call']:.1f} s per DFT force call (median of {dft['n_timed']} single points of the "
              f"{dft['natoms']}-atom aKMC cell) = {dft['direct_seconds'] / 3600:.1f} h of DFT. "
              f"{ratio:.0f}x fewer DFT calls ({direct_calls / max(1, oracle_train):.0f}x counting training labels "
              "only)")
    else:
        cache = layout.stages / f"benchmark_direct_{kmc_steps}.json"  # the reference run is long: keep it
        if cache.exists():
            direct_calls, direct_steps, direct_s = json.loads(cache.read_text())
        else:
            direct_calls, direct_steps, direct_s = direct_akmc_force_calls(layout, kmc_steps)
            cache.write_text(json.dumps([direct_calls, direct_steps, direct_s]))
        # per KMC step, so that a direct run that could not finish every step still compares like with like
        ratio = (direct_calls / direct_steps) / (max(1, oracle_train) / max(1, kmc_steps))
        print(f"(a) oracle calls: campaign {oracle_train} training labels for {kmc_steps} KMC steps "
              f"(+{oracle_holdout} held-out for validation, + CI-NEB barrier checks); direct aKMC on the oracle: "
              f"{direct_calls} force calls for {direct_steps} KMC steps ({direct_s:.0f} s). Per KMC step "
              f"{ratio:.0f}x fewer oracle calls (target >= 100x)")

    mae = val.get("barrier_mae")
    rows = val.get("barriers") or []
    print("(b) barrier MAE learned vs oracle: "
          + (f"{mae:.1f} meV over {len(rows)} processes (target <= 20 meV)" if mae is not None
             else "no process barriers were checked"))
    for r in rows:
        print(f"      state {r['state']} process {r['process']}: learned {r['learned_barrier']:.3f} eV, "
              f"oracle {r['oracle_barrier']:.3f} eV ({r['method']})")

    windows = launch_windows(ws, args.port, layout.root)
    oracle_iv = stage_intervals(rec, "oracle_")
    fit_iv = stage_intervals(rec, "fit_")
    val_iv = stage_intervals(rec, "validate")
    force_iv = [iv for run in layout.akmc_runs().run_dirs() for iv in force_intervals(run)]
    if not windows or not (oracle_iv and fit_iv):
        print("(c) needs a campaign run with this version (stage start times are missing): use a new --workspace")
        return 1
    wall = (windows[-1][3] - windows[0][2])
    span = (windows[0][2], max(w[3] for w in windows))
    inside_iv = oracle_iv + fit_iv + val_iv + force_iv
    inside = covered(inside_iv, span)
    outside = wall - inside
    print(f"(c) workflow wall time {wall:.0f} s (first Firework start to last end"
          + (f"; mlip-auto run-loop {run_wall:.0f} s end to end" if run_wall is not None else "") + "): "
          f"oracle {covered(oracle_iv):.1f} s, fits {covered(fit_iv):.0f} s, validation {covered(val_iv):.0f} s, "
          f"force evaluations {covered(force_iv):.0f} s on the clock ({len(force_iv)} searches); outside these "
          f"{outside:.0f} s = {100 * outside / wall:.1f} % (target <= 10 %)")
    by_stage: dict[str, float] = {}
    for stage, _name, a, b in windows:
        by_stage[stage] = by_stage.get(stage, 0.0) + (b - a) - covered(inside_iv, (a, b))
    between = wall - covered([(a, b) for _, _, a, b in windows], span)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1]))
    if dft is not None:
        in_dft = covered(dft["intervals"], span)
        print(f"      DFT ({campaign.oracle.calculator}): {in_dft:.0f} s of the {wall:.0f} s wall time on the clock = "
              f"{100 * in_dft / wall:.1f} % (union of the {dft['dft_calls']} single points' intervals; two at once "
              "count once)")
        dft["share_of_wall"] = in_dft / wall
    print(f"      outside, by Firework stage (overlapping Fireworks count in each): {parts}; between Fireworks "
          f"{between:.1f} s")
    print(json.dumps({"kmc_steps": kmc_steps, "oracle_calls": oracle_train, "direct_force_calls": direct_calls,
                      "ratio": round(ratio, 1), "barrier_mae_meV": mae, "outside_share": round(outside / wall, 4),
                      "wall_seconds": round(wall, 1), "outside_by_stage": {k: round(v, 1) for k, v in by_stage.items()},
                      "between_fireworks": round(between, 1),
                      **({"dft": {k: v for k, v in dft.items() if k != "intervals"}} if dft is not None else {})}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
