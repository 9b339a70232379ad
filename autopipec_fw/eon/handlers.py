"""custodian handlers for eOn rounds.

- `ExtrapolationHandler` (monitor): the stop file has a line (the driver or our client met a structure beyond
  the gamma threshold) or a client exited with 100. custodian terminates the round (`EonJob.terminate` kills the
  server and every client); `correct` then moves the stop file and the candidates into ``stops/stop_NNN/``,
  records the stop in the run state and returns no action, so custodian raises (a `CustodianError`) instead of
  rerunning: the caller hands the candidates back once.
- `StaleLockHandler`: eOn's ``lockfile`` names a process that is not an eOn server working in this folder (the
  server was killed and the PID reused, or the folder moved to another node): remove it and rerun the round.
- `ClientFailureHandler`: clients that failed for reasons other than extrapolation (killed, crashed, bad input).
  eOn drops those searches and makes new ones, so the round is rerun and the failure logged; when every client
  of the round failed twice in a row the error is not recoverable (it would loop forever). With a continuous
  server (many rounds in one process) it is a monitor: eOn itself goes on after a failed client, the failure is
  logged, and only ``max_dead_rounds`` rounds in a row in which every client failed end the run.
- `RoundLimitHandler` (monitor, continuous server): the server has started more rounds than ``max_rounds`` in
  this call (eOn cannot reach its confidence in a state): terminate, not recoverable.

Every correction is data, logged by custodian in ``custodian.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from custodian.custodian import ErrorHandler

from autopipec_fw import processes
from autopipec_fw.eon.extpot.protocol import EXIT_COLLECT, EXIT_STOP
from autopipec_fw.eon.io import read_dynamics
from autopipec_fw.eon.jobs import kill_stray_clients
from autopipec_fw.eon.state import AKMC_LOG, CALLS_LOG, LOCKFILE, STOPS_DIR, RunState, StopRecord

log = logging.getLogger(__name__)

_FAILED_RE = re.compile(r"job failed: (\S+) \(return code (-?\d+)\)")
# exit codes of our own that are no failure: an extrapolation stop, a search that only collected candidates
_EXPECTED_EXITS = {str(EXIT_STOP), str(EXIT_COLLECT)}
_FINISHED_RE = re.compile(r"Job finished: (\S+)")
_ROUND_RE = re.compile(r"INFO:akmc: Eon version")


def _log_size(run_dir: Path) -> int:
    try:
        return (run_dir / AKMC_LOG).stat().st_size
    except FileNotFoundError:
        return 0


# the monitors read the same log from the same offset at every poll: the last read is kept until the file changes
_last_read: dict[tuple[str, int], tuple[tuple[int, int], str]] = {}


def _read_log_from(run_dir: Path, offset: int) -> str:
    p = run_dir / AKMC_LOG
    try:
        st = p.stat()
        key, stamp = (str(p), offset), (st.st_size, st.st_mtime_ns)
        hit = _last_read.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with p.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(offset if offset <= size else 0)
            text = fh.read(size - fh.tell()).decode(errors="replace")
    except FileNotFoundError:
        return ""
    _last_read.clear()
    _last_read[key] = ((size, st.st_mtime_ns), text)
    return text


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def rounds_in_log(run_dir: Path, offset: int) -> int:
    """Server rounds started in ``akmc.log`` after byte ``offset`` (eOn logs its version at every round)."""
    return len(_ROUND_RE.findall(_read_log_from(Path(run_dir), offset)))


def collect_stop(
    run_dir: Path,
    stop_file: Path,
    candidates_dir: Path,
    reason: str,
    generation_yaml: str | None = None,
    threshold: float | None = None,
) -> StopRecord:
    """Move the stop file and every candidate into ``stops/stop_NNN/`` and record the stop (not handed back)."""
    from autopipec_fw.gamma import read_stop_file

    run_dir = Path(run_dir)
    state = RunState.load(run_dir)
    index = len(state.stops) + 1
    dest = run_dir / STOPS_DIR / f"stop_{index:03d}"
    dest.mkdir(parents=True, exist_ok=True)
    lines = read_stop_file(stop_file)
    if stop_file.exists():
        os.replace(stop_file, dest / "stop.jsonl")
    moved: list[str] = []
    if candidates_dir.is_dir():
        for p in sorted(candidates_dir.glob("*.extxyz")):
            if p.name.startswith("."):
                continue
            target = dest / p.name
            os.replace(p, target)
            moved.append(str(target.resolve()))
    gammas = [float(x["max_gamma"]) for x in lines if x.get("max_gamma") is not None]
    if not gammas and lines:
        gammas = [float("inf")]
    rec = StopRecord(
        index=index,
        reason=reason,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        max_gamma=max(gammas) if gammas else None,
        threshold=threshold if threshold is not None else (lines[0].get("threshold") if lines else None),
        kmc_steps_at_stop=len(read_dynamics(run_dir)),
        generation_yaml=generation_yaml,
        folder=str(dest.resolve()),
        candidates=moved,
    )
    state.stops.append(rec)
    state.save(run_dir)
    log.info("stop %d collected: %s, %d candidate(s) in %s", index, reason, len(moved), dest)
    return rec


class ExtrapolationHandler(ErrorHandler):
    """Monitor: an extrapolation stop happened in this round (stop file line, or a client exit 100)."""

    is_monitor = True
    is_terminating = True
    raises_runtime_error = True

    def __init__(
        self,
        stop_file: str,
        candidates_dir: str,
        generation_yaml: str | None = None,
        threshold: float | None = None,
        log_offset: int | None = None,
        collect_searches: int = 0,
        collect_seconds: float = 300.0,
    ) -> None:
        self.stop_file = stop_file
        self.candidates_dir = candidates_dir
        self.generation_yaml = generation_yaml
        self.threshold = threshold
        self.log_offset = log_offset
        self.collect_searches = collect_searches
        self.collect_seconds = collect_seconds
        self.last_stop: StopRecord | None = None
        self._since: float | None = None  # when the first stop of this run was seen (collection under way)
        self._jobs_at_stop = 0
        self.collected = 0

    def _exit100(self, run_dir: Path) -> list[str]:
        if self.log_offset is None:
            return []
        text = _read_log_from(run_dir, self.log_offset)
        return [m.group(1) for m in _FAILED_RE.finditer(text) if m.group(2) == "100"]

    def _stopped(self, run_dir: Path) -> bool:
        p = Path(self.stop_file)
        return (p.exists() and p.stat().st_size > 0) or bool(self._exit100(run_dir))

    def check(self, directory: str = "./") -> bool:
        """True (terminate) once a stop happened and, with collection, once ``collect_searches`` more searches
        finished (our client turns every search finishing after a stop into a collecting one, which eOn drops)
        or ``collect_seconds`` passed."""
        run_dir = Path(directory)
        if not self._stopped(run_dir):
            return False
        if self.collect_searches <= 0:
            return True
        jobs = _count_lines(run_dir / CALLS_LOG)
        if self._since is None:
            self._since, self._jobs_at_stop = time.monotonic(), jobs
            log.info("extrapolation stop: collecting candidates from %d more searches (at most %.0f s)",
                     self.collect_searches, self.collect_seconds)
            return False
        self.collected = jobs - self._jobs_at_stop
        return self.collected >= self.collect_searches or time.monotonic() - self._since > self.collect_seconds

    def correct(self, directory: str = "./") -> dict[str, Any]:
        run_dir = Path(directory)
        killed = kill_stray_clients(run_dir)  # custodian has terminated the server; nothing may be left
        jobs100 = self._exit100(run_dir)
        p = Path(self.stop_file)
        reason = (
            "extrapolation: gamma above threshold (stop file)"
            if p.exists() and p.stat().st_size > 0
            else f"extrapolation: client exit 100 in {', '.join(jobs100)}"
        )
        if self._since is not None:
            reason += f"; then {self.collected} search(es) collected candidates"
        rec = collect_stop(
            run_dir, p, Path(self.candidates_dir), reason, self.generation_yaml, self.threshold
        )
        rec.collected_searches = self.collected
        state = RunState.load(run_dir)
        state.stops[-1].collected_searches = self.collected
        state.save(run_dir)
        self.last_stop = rec
        self.log_offset = _log_size(run_dir)
        return {
            "errors": [
                f"{reason}; max gamma {rec.max_gamma}; {len(rec.candidates)} candidate(s) in {rec.folder}"
                + (f"; killed stray clients {killed}" if killed else "")
            ],
            "actions": [],  # not corrected here: the run stops and the candidates go back to the caller
        }


def lock_holder(run_dir: Path) -> int | None:
    p = Path(run_dir) / LOCKFILE
    try:
        return int(p.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def lock_is_stale(run_dir: Path) -> bool:
    """eOn's lockfile exists and does not belong to a living eOn server working in ``run_dir``."""
    p = Path(run_dir) / LOCKFILE
    if not p.exists():
        return False
    pid = lock_holder(run_dir)
    if pid is None or pid <= 0 or not processes.pid_alive(pid):
        return True
    cmd = " ".join(processes.cmdline(pid))
    cwd = processes.cwd(pid)
    cwd = cwd.resolve() if cwd is not None else None
    is_server = "eon" in cmd and "server" in cmd or "eon-server" in cmd or "eon.akmc" in cmd
    return not (is_server and cwd == Path(run_dir).resolve())


class StaleLockHandler(ErrorHandler):
    """eOn's lockfile is left from a server that is gone (kill -9, another node, PID reused): remove it."""

    is_monitor = False

    def check(self, directory: str = "./") -> bool:
        return lock_is_stale(Path(directory))

    def correct(self, directory: str = "./") -> dict[str, Any]:
        run_dir = Path(directory)
        pid = lock_holder(run_dir)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCKFILE).unlink()
        killed = kill_stray_clients(run_dir)
        actions: list[dict[str, Any]] = [{"action": "remove_stale_lockfile", "file": LOCKFILE, "pid": pid}]
        if killed:
            actions.append({"action": "kill_orphaned_clients", "pids": killed})
        return {
            "errors": [f"stale eOn lockfile (pid {pid} is not an eOn server in this folder)"],
            "actions": actions,
        }


class ClientFailureHandler(ErrorHandler):
    """Clients that failed without an extrapolation stop (killed, crashed). eOn drops those searches and makes
    new ones next round: rerun the round, log which failed; unrecoverable after ``max_dead_rounds`` rounds in a
    row in which every client failed."""

    is_monitor = False
    raises_runtime_error = True

    def __init__(self, log_offset: int = 0, max_dead_rounds: int = 2, continuous: bool = False) -> None:
        self.log_offset = log_offset
        self.max_dead_rounds = max_dead_rounds
        self.dead_rounds = 0
        self.continuous = continuous
        self.is_monitor = continuous  # custodian reads it per instance
        self._pending: tuple[list[tuple[str, int]], int] | None = None
        self._logged = 0

    def _dead_rounds_at_end(self, text: str) -> tuple[int, list[tuple[str, int]]]:
        """(finished rounds in a row at the end of ``text`` in which every client failed, all failures)."""
        segments = _ROUND_RE.split(text)
        complete = segments[1:-1] if len(segments) > 2 else []  # the last segment is the round still running
        dead = 0
        for seg in reversed(complete):
            failed = [m for m in _FAILED_RE.finditer(seg) if m.group(2) not in _EXPECTED_EXITS]
            if failed and not _FINISHED_RE.search(seg):
                dead += 1
            else:
                break
        failures = [(m.group(1), int(m.group(2))) for m in _FAILED_RE.finditer(text) if m.group(2) not in _EXPECTED_EXITS]
        return dead, failures

    def _check_continuous(self, run_dir: Path) -> bool:
        dead, failures = self._dead_rounds_at_end(_read_log_from(run_dir, self.log_offset))
        for job, rc in failures[self._logged :]:
            log.warning("eOn client failed: %s (return code %d); eOn drops the search and makes another", job, rc)
        self._logged = len(failures)
        self.dead_rounds = dead
        self._pending = (failures, 0)
        return dead >= self.max_dead_rounds

    def _scan(self, run_dir: Path) -> tuple[list[tuple[str, int]], int]:
        text = _read_log_from(run_dir, self.log_offset)
        failed = [(m.group(1), int(m.group(2))) for m in _FAILED_RE.finditer(text) if m.group(2) not in _EXPECTED_EXITS]
        finished = len(_FINISHED_RE.findall(text))
        return failed, finished

    def check(self, directory: str = "./") -> bool:
        if self.continuous:
            return self._check_continuous(Path(directory))
        failed, finished = self._scan(Path(directory))
        self._pending = (failed, finished)
        if not failed:
            self.log_offset = _log_size(Path(directory))
            if finished:
                self.dead_rounds = 0
        return bool(failed)

    def correct(self, directory: str = "./") -> dict[str, Any]:
        run_dir = Path(directory)
        if self.continuous:
            failures = (self._pending or ([], 0))[0]
            errors = [f"eOn client failed: {job} (return code {rc})" for job, rc in failures[-6:]]
            errors.append(f"every client failed in {self.dead_rounds} rounds in a row: not recoverable")
            return {"errors": errors, "actions": []}
        failed, finished = self._pending or self._scan(run_dir)
        self.log_offset = _log_size(run_dir)
        self.dead_rounds = self.dead_rounds + 1 if finished == 0 else 0
        errors = [f"eOn client failed: {job} (return code {rc})" for job, rc in failed]
        if self.dead_rounds >= self.max_dead_rounds:
            errors.append(f"every client failed in {self.dead_rounds} rounds in a row: not recoverable")
            return {"errors": errors, "actions": []}
        # eOn counts the failed searches as lost and submits fresh ones in the next round
        return {
            "errors": errors,
            "actions": [{"action": "rerun_round", "dropped_searches": [j for j, _ in failed]}],
        }


class RoundLimitHandler(ErrorHandler):
    """Monitor for a continuous server: more than ``max_rounds`` rounds in this call (eOn does not reach its
    confidence in a state, so no KMC step is taken): end the run with that reason, not recoverable."""

    is_monitor = True
    is_terminating = True
    raises_runtime_error = True

    def __init__(self, max_rounds: int, log_offset: int = 0) -> None:
        self.max_rounds = max_rounds
        self.log_offset = log_offset
        self.reached = False

    def rounds(self, directory: str | Path = "./") -> int:
        return rounds_in_log(Path(directory), self.log_offset)

    def check(self, directory: str = "./") -> bool:
        return self.rounds(directory) > self.max_rounds

    def correct(self, directory: str = "./") -> dict[str, Any]:
        self.reached = True
        killed = kill_stray_clients(Path(directory))
        steps = len(read_dynamics(Path(directory)))
        return {
            "errors": [f"max_rounds ({self.max_rounds}) reached with {steps} KMC steps in the folder"
                       + (f"; killed stray clients {killed}" if killed else "")],
            "actions": [],
        }
