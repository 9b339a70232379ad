"""The inter-process lock that guards the training set, generations and cached test potentials."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from autopipec_fw.training.locking import LockTimeout, file_lock


def _hold(path, seconds, started):
    with file_lock(path):
        started.set()
        time.sleep(seconds)


def _start_holder(lock, seconds):
    """Another process that holds ``lock`` for ``seconds``; returned once it has the lock."""
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, seconds, started))
    p.start()
    assert started.wait(10)
    return p


def test_second_process_waits_then_gets_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    p = _start_holder(lock, 1.0)
    with pytest.raises(LockTimeout, match=r"x\.lock: still locked by another process"):
        with file_lock(lock, timeout=0.2):
            pass
    t0 = time.monotonic()
    with file_lock(lock, timeout=10):
        waited = time.monotonic() - t0
    p.join(10)
    assert 0.3 < waited < 5


def test_lock_of_a_killed_holder_is_released(tmp_path):
    lock = tmp_path / "y.lock"
    p = _start_holder(lock, 60)
    p.kill()
    p.join(10)
    with file_lock(lock, timeout=5):
        pass
