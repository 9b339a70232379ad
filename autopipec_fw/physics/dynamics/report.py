"""What an aKMC run folder holds, read back: eOn's own state plus ours, and the per-run report.

eOn's state (the source of truth for the dynamics): ``dynamics.txt`` (one line per KMC step), ``info.txt``
(simulated time, current state), ``states/<n>/processtable`` (processes with barriers, prefactors, rates).
Ours: ``autopipec_state.json`` (`RunState`: rounds, stops and whether their candidates were handed back,
generations used), ``client_calls.jsonl`` (force calls counted by our client, one line per eOn job) and the
driver's calls file (ext_pot route). `build_report` puts them together; `write_report` writes ``report.json``.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "autopipec_state.json"
REPORT_FILE = "report.json"
CALLS_LOG = "client_calls.jsonl"
DRIVER_CALLS = "driver_calls.txt"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class StopRecord:
    """One extrapolation stop: why, when, and the candidates collected for it (in ``stops/stop_NNN/``)."""

    index: int
    reason: str
    time: str
    max_gamma: float | None
    threshold: float | None
    kmc_steps_at_stop: int
    generation_yaml: str | None
    folder: str
    candidates: list[str] = field(default_factory=list)
    handed_back: bool = False


@dataclass
class RunState:
    """Our bookkeeping of one eOn run folder (next to eOn's own files), persisted atomically."""

    created: str = ""
    rounds: int = 0
    target_kmc_steps: int = 0
    stops: list[StopRecord] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        p = Path(run_dir) / STATE_FILE
        if not p.exists():
            return cls()
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{p}: unreadable run state ({e}); move it away to rebuild from eOn's files"
            ) from None
        stops = [StopRecord(**s) for s in data.pop("stops", [])]
        return cls(stops=stops, **data)

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / STATE_FILE, json.dumps(asdict(self), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- eOn state


def read_dynamics(run_dir: Path) -> list[dict[str, float | int]]:
    """KMC steps from ``dynamics.txt`` (empty when none were taken)."""
    p = Path(run_dir) / "dynamics.txt"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) < 9:
            continue  # a torn last line after a crash
        try:
            rows.append(
                {
                    "step": int(parts[0]),
                    "reactant": int(parts[1]),
                    "process": int(parts[2]),
                    "product": int(parts[3]),
                    "step_time": float(parts[4]),
                    "total_time": float(parts[5]),
                    "barrier": float(parts[6]),
                    "rate": float(parts[7]),
                    "energy": float(parts[8]),
                }
            )
        except ValueError:
            continue
    return rows


def read_info(run_dir: Path) -> dict[str, Any]:
    """``info.txt``: simulated time and current state (zeros before the first round)."""
    p = Path(run_dir) / "info.txt"
    out: dict[str, Any] = {"time_simulated": 0.0, "current_state": 0}
    if not p.exists():
        return out
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read(p)
        out["time_simulated"] = cp.getfloat("Simulation Information", "time_simulated", fallback=0.0)
        out["current_state"] = cp.getint("Simulation Information", "current_state", fallback=0)
    except (configparser.Error, ValueError) as e:
        log.warning("%s: unreadable (%s)", p, e)
    return out


def read_processes(run_dir: Path) -> list[dict[str, Any]]:
    """Every process eOn found, per state: barrier, prefactor, rate, saddle/product energies, product state."""
    states = Path(run_dir) / "states"
    out: list[dict[str, Any]] = []
    if not states.is_dir():
        return out
    for sd in sorted(
        (d for d in states.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
    ):
        table = sd / "processtable"
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) < 9:
                continue
            try:
                out.append(
                    {
                        "state": int(sd.name),
                        "process": int(parts[0]),
                        "saddle_energy": float(parts[1]),
                        "prefactor": float(parts[2]),
                        "product_state": int(parts[3]),
                        "product_energy": float(parts[4]),
                        "product_prefactor": float(parts[5]),
                        "barrier": float(parts[6]),
                        "rate": float(parts[7]),
                        "repeats": int(parts[8]),
                    }
                )
            except ValueError:
                continue
    return out


def states_visited(run_dir: Path, dynamics: list[dict[str, Any]] | None = None) -> list[int]:
    """States the trajectory has been in (the start state and every KMC product)."""
    dyn = read_dynamics(run_dir) if dynamics is None else dynamics
    seen = [0]
    for row in dyn:
        for s in (int(row["reactant"]), int(row["product"])):
            if s not in seen:
                seen.append(s)
    return seen


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
        from autopipec_fw.inference.evaluator import read_calls_file

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
    dyn = read_dynamics(run_dir)
    info = read_info(run_dir)
    procs = read_processes(run_dir)
    calls = count_force_calls(run_dir)
    return {
        "run_dir": str(run_dir.resolve()),
        "status": status,
        "kmc_steps": len(dyn),
        "target_kmc_steps": state.target_kmc_steps,
        "simulated_time": float(info["time_simulated"]),
        "current_state": int(info["current_state"]),
        "states_visited": states_visited(run_dir, dyn),
        "states_known": len({p["state"] for p in procs} | {0}),
        "trajectory": dyn,
        "processes": procs,
        "force_calls": calls,
        "rounds": state.rounds,
        "generations": state.generations,
        "stops": [asdict(s) for s in state.stops],
        "runs": state.runs,
    }


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    p = Path(run_dir) / REPORT_FILE
    atomic_write_text(p, json.dumps(report, indent=1, default=str) + "\n")
    return p
