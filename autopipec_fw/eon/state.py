"""Our bookkeeping in an eOn run folder, next to eOn's own files, and the names of every file we keep there.

`RunState` (``autopipec_state.json``): rounds, stops and whether their candidates were handed back, the generations
used, one entry per supervised call. `StopRecord`: one extrapolation stop (its candidates in ``stops/stop_NNN/``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autopipec_fw.eon.extpot.protocol import CANDIDATES_NAME, STOP_NAME

# files and folders of ours in a run folder
STATE_FILE = "autopipec_state.json"
REPORT_FILE = "report.json"
RESULT_FILE = "result.json"
CALLS_LOG = "client_calls.jsonl"  # one line per job of our client: force calls, seconds, exit code
DRIVER_CALLS = "driver_calls.txt"  # one line per ext_pot force call: max gamma
STOP_FILE = STOP_NAME  # the stop file (JSON lines) every route appends to
CANDIDATES_DIR = CANDIDATES_NAME  # candidate structures of the stop under way
STOPS_DIR = "stops"  # stops/stop_NNN/: each stop's stop file and candidates, once collected
CLIENT_SCRIPT = "eon_client"
CLIENT_SETTINGS = "client.json"
DRIVER_WRAPPER = "pace_driver"
AKMC_LOG = "akmc.log"  # eOn's own log
SERVER_LOG = "eon_server.log"  # the server's stdout/stderr
LOCKFILE = "lockfile"  # eOn's


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
    collected_searches: int = 0  # searches run after the stop only to collect candidates


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


def read_calls_file(path: Path | str) -> tuple[int, float | None]:
    """(force calls, largest max-gamma) from a ``--calls-file`` (one line per evaluated call); (0, None) if absent.

    A NaN gamma counts as the largest. Lines that are not numbers (a torn write) are counted, not compared.
    """
    p = Path(path)
    if not p.exists():
        return 0, None
    n = 0
    best: float | None = None
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        n += 1
        try:
            g = float(line)
        except ValueError:
            continue
        if best is None or math.isnan(g) or (not math.isnan(best) and g > best):
            best = g
    return n, best
