"""custodian `Job` for eOn: one server round (``python -m eon.server`` in the run folder) per job.

The server runs in a session of its own; the local communicator starts every client in yet another session
(``start_new_session``), so a process-group kill of the server alone would leave the clients running.
`kill_eon_tree` therefore freezes the server (SIGSTOP: it cannot start new clients), kills every descendant with
its process group, then the server (`autopipec_fw.processes.kill_tree`). `stray_clients` finds
clients left behind by a server that died without us (kill -9 from outside): processes whose working directory
is inside the run folder's ``jobs/`` tree.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custodian.custodian import Job

from autopipec_fw import processes
from autopipec_fw.eon.state import SERVER_LOG

log = logging.getLogger(__name__)

def kill_eon_tree(proc: subprocess.Popen[Any] | int, timeout: float = 10.0) -> list[int]:
    """Kill an eOn server and every process it started (clients in their own sessions, their drivers).

    Returns the pids that were killed. Waits until they are gone (reaps the server if it is our child).
    """
    pid = proc if isinstance(proc, int) else proc.pid
    killed = processes.kill_tree(pid)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("eOn server %d did not die within %.0f s", pid, timeout)
    left = processes.wait_gone(killed, timeout)
    if left:
        log.error("processes still alive after SIGKILL: %s", left)
    return killed


def stray_clients(run_dir: Path) -> list[int]:
    """Processes working inside ``run_dir/jobs`` (eOn clients and their drivers), e.g. left by a dead server."""
    return processes.working_in(Path(run_dir) / "jobs")


def kill_stray_clients(run_dir: Path) -> list[int]:
    """Kill clients (and their process groups) left behind in ``run_dir/jobs`` by a server that died."""
    pids = stray_clients(run_dir)
    for p in pids:
        processes.kill_group_and_pid(p)
    processes.wait_gone(pids, 10)
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
