"""custodian `Job` for eOn: one server round (``python -m eon.server`` in the run folder) per job.

The server runs in a session of its own; the local communicator starts every client in yet another session
(``start_new_session``), so a process-group kill of the server alone would leave the clients running.
`kill_eon_tree` therefore freezes the server (SIGSTOP: it cannot start new clients), collects every descendant
from ``/proc``, kills their process groups and the processes themselves, then the server. `stray_clients` finds
clients left behind by a server that died without us (kill -9 from outside): processes whose working directory
is inside the run folder's ``jobs/`` tree.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custodian.custodian import Job

from autopipec_fw.processes import pid_alive as _alive

log = logging.getLogger(__name__)

SERVER_LOG = "eon_server.log"


# ---------------------------------------------------------------------------------------------- processes


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        rest = stat[stat.rfind(")") + 2 :].split()
        try:
            out[int(d)] = int(rest[1])
        except (IndexError, ValueError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """All living descendants of ``pid`` (children first), from /proc."""
    ppids = _ppid_map()
    children: dict[int, list[int]] = {}
    for c, p in ppids.items():
        children.setdefault(p, []).append(c)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        c = todo.pop(0)
        if c in out:
            continue
        out.append(c)
        todo.extend(children.get(c, []))
    return out


def _kill_group_and_pid(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid > 1 and pgid != os.getpgid(0):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_eon_tree(proc: subprocess.Popen[Any] | int, timeout: float = 10.0) -> list[int]:
    """Kill an eOn server and every process it started (clients in their own sessions, their drivers).

    Returns the pids that were killed. Waits until they are gone (reaps the server if it is our child).
    """
    pid = proc if isinstance(proc, int) else proc.pid
    killed: list[int] = []
    try:
        os.kill(pid, signal.SIGSTOP)  # no new clients from here on
    except ProcessLookupError:
        pass
    # two passes: a client may have been forking while we scanned
    for _ in range(2):
        for c in descendants(pid):
            _kill_group_and_pid(c)
            if c not in killed:
                killed.append(c)
    _kill_group_and_pid(pid)
    killed.append(pid)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("eOn server %d did not die within %.0f s", pid, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in killed):
        time.sleep(0.05)
    left = [p for p in killed if _alive(p)]
    if left:
        log.error("processes still alive after SIGKILL: %s", left)
    return killed


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def stray_clients(run_dir: Path) -> list[int]:
    """Processes working inside ``run_dir/jobs`` (eOn clients) that are not children of a living server here."""
    jobs = (Path(run_dir) / "jobs").resolve()
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        cwd = _cwd(int(d))
        if cwd is not None and (cwd == jobs or jobs in cwd.parents) and _alive(int(d)):
            out.append(int(d))
    return out


def kill_stray_clients(run_dir: Path) -> list[int]:
    """Kill clients (and their process groups) left behind in ``run_dir/jobs`` by a server that died."""
    pids = stray_clients(run_dir)
    for p in pids:
        _kill_group_and_pid(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    if pids:
        log.warning("killed %d eOn client process(es) left in %s: %s", len(pids), run_dir, pids)
    return pids


# ---------------------------------------------------------------------------------------------- the job


class EonJob(Job):
    """One eOn server round in ``directory``.

    ``prepare`` (called in `setup`) lets the wrapper rewrite config.ini for this round (KMC steps still to do,
    the current potential). ``server_command`` is the server's argv (default: this Python, ``-m eon.server``).
    ``env`` is added to the server's environment (clients and ext_pot drivers inherit it).
    """

    def __init__(
        self,
        server_command: list[str] | None = None,
        env: dict[str, str] | None = None,
        round_index: int = 0,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self.server_command = list(server_command or [sys.executable, "-m", "eon.server"])
        self.env = dict(env or {})
        self.round_index = round_index
        self.prepare = prepare
        self._proc: subprocess.Popen[Any] | None = None
        self._log: Any = None

    @property
    def name(self) -> str:
        return f"eon-round-{self.round_index}"

    def as_dict(self) -> dict[str, Any]:
        # custodian.json records the job; callables are not serialisable
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "server_command": self.server_command,
            "round_index": self.round_index,
            "env": self.env,
        }

    def setup(self, directory: str | Path = "./") -> None:
        kill_stray_clients(Path(directory))

    def run(self, directory: str | Path = "./") -> subprocess.Popen[Any]:
        run_dir = Path(directory)
        kill_stray_clients(run_dir)  # a rerun after the server died: its clients must not race the new one
        if self.prepare is not None:
            self.prepare()
        env = dict(os.environ)
        env.update(self.env)
        if self._log is not None and not self._log.closed:
            self._log.close()
        self._log = open(run_dir / SERVER_LOG, "a")  # noqa: SIM115 - closed in postprocess/terminate
        self._log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self.name}\n")
        self._log.flush()
        self._proc = subprocess.Popen(
            self.server_command,
            cwd=run_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.info("eOn round %d: server pid %d in %s", self.round_index, self._proc.pid, run_dir)
        return self._proc

    def postprocess(self, directory: str | Path = "./") -> None:
        if self._log is not None:
            self._log.close()

    def terminate(self, directory: str | Path = "./") -> None:
        if self._proc is not None and self._proc.poll() is None:
            killed = kill_eon_tree(self._proc)
            log.info("eOn round %d terminated: killed %s", self.round_index, killed)
        elif self._proc is not None:
            # the server is gone; make sure none of its clients is left
            kill_stray_clients(Path(directory))
        if self._log is not None:
            self._log.close()
