"""Process helpers for the servers and supervisors we start (embedded database, evaluator, eOn), on psutil.

Everything that asks "is this PID still the process we started?", "what did it start?" or "which processes work
in this folder?" goes through here, so PID reuse and zombies are handled in one place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def create_time(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds), to tell it from a later process that reused the PID."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError):
        return []


def cwd(pid: int) -> Path | None:
    try:
        return Path(psutil.Process(pid).cwd())
    except (psutil.Error, ValueError, OSError):
        return None


def is_same_process(pid: int, started: float | None, needle: str | None = None) -> bool:
    """``pid`` is alive, started at ``started`` (when given, within 10 ms) and has ``needle`` in its argv."""
    if not pid_alive(pid):
        return False
    if started is not None:
        ct = create_time(pid)
        if ct is None or abs(ct - started) > 0.01:
            return False
    return needle is None or any(needle in a for a in cmdline(pid))


def descendants(pid: int) -> list[int]:
    """All living descendants of ``pid``, children first."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def working_in(folder: Path, exclude: Iterable[int] = ()) -> list[int]:
    """Living processes whose working directory is ``folder`` or below it."""
    folder = Path(folder).resolve()
    skip = {os.getpid(), *exclude}
    out = []
    for p in psutil.process_iter(["pid", "cwd", "status"]):
        info = p.info
        if info["pid"] in skip or not info.get("cwd") or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        c = Path(info["cwd"])
        if c == folder or folder in c.parents:
            out.append(info["pid"])
    return out


def kill_group_and_pid(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads or belongs to (never our own) and ``pid`` itself."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid > 1 and pgid != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until these processes are gone; returns those still alive after ``timeout`` s."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def kill_tree(pid: int, timeout: float = 10.0) -> list[int]:
    """Kill ``pid`` and everything it started, also children that made sessions of their own.

    The root is frozen first (SIGSTOP: it starts nothing new while we look), its descendants are killed with
    their process groups (two passes: one may have been forking), then the root. Returns the pids killed.
    """
    killed: list[int] = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for _ in range(2):
        for c in descendants(pid):
            kill_group_and_pid(c)
            if c not in killed:
                killed.append(c)
    kill_group_and_pid(pid)
    killed.append(pid)
    return killed


def terminate(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True when the process is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if not wait_gone([pid], timeout):
            return True
    return not pid_alive(pid)
