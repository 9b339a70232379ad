"""The per-run report (``report.json``): eOn's state read through `autopipec_fw.eon.io` plus our bookkeeping
(`RunState`), the force calls counted by our client (``client_calls.jsonl``) and by the ext_pot driver (its calls
file). `build_report` puts them together; `write_report` writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autopipec_fw.eon import io
from autopipec_fw.eon.state import (
    CALLS_LOG,
    DRIVER_CALLS,
    REPORT_FILE,
    RunState,
    atomic_write_text,
    read_calls_file,
)


def count_force_calls(run_dir: Path) -> dict[str, Any]:
    """Force calls counted by our client (``client_calls.jsonl``) and by the ext_pot driver (its calls file)."""
    run_dir = Path(run_dir)
    client = {"jobs": 0, "force_calls": 0, "potential_seconds": 0.0, "job_seconds": 0.0, "max_gamma": None}
    p = run_dir / CALLS_LOG
    failed_jobs = 0
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            client["jobs"] += 1
            client["force_calls"] += int(rec.get("force_calls", 0))
            client["potential_seconds"] += float(rec.get("potential_seconds", 0.0))
            client["job_seconds"] += float(rec.get("job_seconds", 0.0))
            g = rec.get("max_gamma")
            if g is not None and g > 0:
                client["max_gamma"] = max(client["max_gamma"] or 0.0, float(g))
            if rec.get("exit", 0) != 0:
                failed_jobs += 1
    client["failed_jobs"] = failed_jobs
    driver_calls, driver_gamma = 0, None
    dp = run_dir / DRIVER_CALLS
    if dp.exists():
        driver_calls, driver_gamma = read_calls_file(dp)
    total = client["force_calls"] + driver_calls
    mg = [g for g in (client["max_gamma"], driver_gamma) if g is not None]
    return {
        "total": total,
        "client": client,
        "driver": {"force_calls": driver_calls, "max_gamma": driver_gamma},
        "max_gamma": max(mg) if mg else None,
    }


def build_report(run_dir: Path, state: RunState | None = None, status: str | None = None) -> dict[str, Any]:
    """The per-run report: KMC steps, simulated time, states, processes with barriers, force calls, stops."""
    run_dir = Path(run_dir)
    state = state or RunState.load(run_dir)
    dyn = io.read_dynamics(run_dir)
    info = io.read_info(run_dir)
    procs = [p.to_dict() for p in io.read_processes(run_dir)]
    calls = count_force_calls(run_dir)
    return {
        "run_dir": str(run_dir.resolve()),
        "status": status,
        "kmc_steps": len(dyn),
        "target_kmc_steps": state.target_kmc_steps,
        "simulated_time": float(info["time_simulated"]),
        "current_state": int(info["current_state"]),
        "states_visited": io.states_visited(dyn),
        "states_known": len({p["state"] for p in procs} | {0}),
        "trajectory": dyn,
        "processes": procs,
        "force_calls": calls,
        "searches": io.search_statistics(run_dir),
        "rounds": state.rounds,
        "generations": state.generations,
        "stops": [asdict(s) for s in state.stops],
        "runs": state.runs,
    }


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    p = Path(run_dir) / REPORT_FILE
    atomic_write_text(p, json.dumps(report, indent=1, default=str) + "\n")
    return p
