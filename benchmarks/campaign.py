#!/usr/bin/env python
"""Campaign benchmark (issue 8): runs the demo end to end if needed, then prints

(a) oracle calls of the whole campaign against direct aKMC on the oracle for the same number of KMC steps
    (target: at least 100 times fewer);
(b) barrier MAE learned vs oracle over the processes found (target: at most 20 meV);
(c) the share of worker time spent outside the oracle, the fits and the potential's force evaluations
    (target: at most 10 %).

    .venv/bin/python benchmarks/campaign.py [--workspace DIR] [--config cu-adatom] [--port 27418]

The direct reference runs eOn aKMC with EMT (the demo's oracle) evaluated in-process, from the same starting
structure, with the same settings, until it has done as many KMC steps as the campaign did, and counts its
force calls (every one would be an oracle call).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
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


def worker_seconds(workspace: Path, port: int, campaign_dir: Path) -> tuple[float, float]:
    """(sum of Firework run times, wall time from the first start to the last end) from the LaunchPad."""
    server = EmbeddedServer(workspace, port=port)
    started = server.info() is None
    server.start()
    try:
        lp = load_launchpad(workspace / "my_launchpad.yaml")
        wf = lp.workflows.find_one({"metadata.campaign_dir": str(campaign_dir)})
        launch_ids = [lid for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"launches": 1})
                      for lid in fw.get("launches", [])]
        total, starts, ends = 0.0, [], []
        for launch in lp.launches.find({"launch_id": {"$in": launch_ids}, "state": "COMPLETED"}):
            total += float(launch.get("runtime_secs") or 0.0)
            starts.append(launch["time_start"])
            ends.append(launch["time_end"])
        starts = [_when(t) for t in starts]
        ends = [_when(t) for t in ends]
        wall = (max(ends) - min(starts)).total_seconds() if starts else float("nan")
        return total, wall
    finally:
        if started:
            server.stop()


def _when(t: object) -> datetime:
    return t if isinstance(t, datetime) else datetime.fromisoformat(str(t))


def direct_akmc_force_calls(layout: CampaignLayout, kmc_steps: int) -> tuple[int, int, float]:
    from autopipec_fw.physics.dynamics.eon import EonRunOptions, run_akmc
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("benchmark-workspace"))
    ap.add_argument("--config", default="cu-adatom")
    ap.add_argument("--port", type=int, default=27418)
    args = ap.parse_args()
    ws = args.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    campaign = _campaign_arg(args.config)
    layout = CampaignLayout(campaign.resolved_workdir(ws))
    run_wall = None
    if "package" not in stage_records(layout):
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

    cache = layout.stages / f"benchmark_direct_{kmc_steps}.json"  # the reference run is long: keep its figures
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

    total, wall = worker_seconds(ws, args.port, layout.root)
    oracle_s = sum(float(r.get("seconds") or 0) for k, r in rec.items() if k.startswith("oracle_"))
    fit_s = sum(float(r.get("seconds") or 0) for k, r in rec.items() if k.startswith("fit_"))
    force_s = float(akmc[-1].get("potential_seconds") or 0.0)
    val_s = float(val.get("seconds") or 0.0)
    inside = oracle_s + fit_s + force_s
    outside = total - inside - val_s
    print(f"(c) worker time {total:.0f} s (workflow wall {wall:.0f} s): oracle {oracle_s:.0f} s, fits {fit_s:.0f} s, "
          f"force evaluations {force_s:.1f} s, validation {val_s:.0f} s; outside these {outside:.0f} s = "
          f"{100 * outside / total:.1f} % (target <= 10 %)")
    print(json.dumps({"kmc_steps": kmc_steps, "oracle_calls": oracle_train, "direct_force_calls": direct_calls,
                      "ratio": round(ratio, 1), "barrier_mae_meV": mae, "outside_share": round(outside / total, 4),
                      "worker_seconds": round(total, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
