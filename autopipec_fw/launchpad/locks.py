"""File locks that say who holds them: `flock` on a file whose content names the holder (pid, host, since when).

The kernel releases an flock when its process ends, however it ends (kill -9 included), so a lock is never stale:
a record left in the file by a dead holder is only history, overwritten by the next holder (and logged as taken
over). Used for one runner per campaign (`<campaign>/.run-loop.lock`), one submit at a time
(`<campaign>/.submit.lock`), one embedded server per store and the server's start/stop and user bookkeeping
(`<workspace>/.launchpad/*.lock`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autopipec_fw.processes import create_time

log = logging.getLogger(__name__)


@dataclass
class Holder:
    """Who holds (or last held) a lock."""

    pid: int
    host: str
    since: str  # ISO time, local zone
    started: float | None = None  # the holder's process creation time (tells it from a reused pid)
    command: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def me(cls, command: str | None = None, **extra: object) -> Holder:
        return cls(pid=os.getpid(), host=socket.gethostname(),
                   since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   started=create_time(os.getpid()),
                   command=command if command is not None else " ".join(Path(a).name if i == 0 else a
                                                                        for i, a in enumerate(sys.argv)),
                   extra=dict(extra))

    def describe(self) -> str:
        what = f"'{self.command}' " if self.command else ""
        return f"{what}(pid {self.pid} on host {self.host}, since {self.since})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError):
            return None


class LockBusy(RuntimeError):
    """Another process holds the lock; ``holder`` says who (None if it has not written its record yet)."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


class HolderLock:
    """An exclusive flock on ``path`` with the holder's record as the file's content.

    ``acquire()`` never waits unless given a timeout; ``release()`` (or closing the process) frees it. The record
    stays in the file after release so that a later reader can say who ran last.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what  # e.g. "campaign 'tiny' (/x/campaigns/tiny)", used in messages
        self._fd: int | None = None
        self.previous: Holder | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def read_holder(self) -> Holder | None:
        try:
            return Holder.parse(self.path.read_text())
        except OSError:
            return None

    def acquire(self, holder: Holder | None = None, timeout: float = 0.0, poll: float = 0.05) -> Holder:
        """Take the lock and write ``holder`` (default: this process) into it; raise LockBusy if held elsewhere."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    other = self.read_holder()
                    who = other.describe() if other else "(a process that has not yet written its record)"
                    raise LockBusy(f"{self.what} is in use by {who}; lock file {self.path}", other) from None
                time.sleep(poll)
        self._fd = fd
        self.previous = self.read_holder()
        holder = holder or Holder.me()
        data = json.dumps(asdict(holder)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return holder

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> HolderLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(path: str | Path) -> bool:
    """True if some process holds an exclusive or shared flock on ``path`` (a missing file is not locked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # closing drops the lock if we got it
    return False


@contextlib.contextmanager
def flocked(path: str | Path, what: str, timeout: float = 120.0) -> Iterator[HolderLock]:
    """Hold ``path`` exclusively for a short critical section, waiting up to ``timeout`` s for another holder."""
    lock = HolderLock(path, what)
    lock.acquire(timeout=timeout)
    try:
        yield lock
    finally:
        lock.release()


class SharedLock:
    """A shared flock (many holders at once): "I am using this". ``others_present()`` asks whether anyone but us
    holds it, without waiting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, timeout: float = 120.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                    os.close(fd)
                    raise
                time.sleep(0.05)
        self._fd = fd

    def others_present(self) -> bool:
        """Whether another process holds the lock too. Our own hold is dropped to ask (the answer is only
        meaningful to a holder that is about to leave, under a lock that keeps newcomers out)."""
        if self._fd is None:
            return is_locked(self.path)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                fcntl.flock(self._fd, fcntl.LOCK_SH)
                return True
            raise
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
