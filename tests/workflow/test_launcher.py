"""The warm launcher: Fireworks forked from one process that imported everything once, as ordinary launches."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from fireworks import Firework, PyTask

from autopipec_fw.launcher import LauncherClient
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.processes import pid_alive
from tests.fixtures.launchpad import EmbeddedDB


def _wait_exit(client: LauncherClient, fw_id: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = client.exit_code(fw_id)
        if rc is not None:
            return rc
        time.sleep(0.1)
    raise AssertionError(f"fw {fw_id} did not finish in {timeout} s")


def test_warm_launches_are_ordinary_launches(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    quick = [Firework(PyTask(func="time.sleep", args=[0.1]), name=f"quick {i}") for i in range(2)]
    slow = Firework(PyTask(func="time.sleep", args=[120]), name="slow")
    ids = [min(lp.add_wf(fw).values()) for fw in [*quick, slow]]
    launches = tmp_path / "launches"
    launches.mkdir()
    client = LauncherClient(embedded_db.launchpad_file, None, embedded_db.env(), tmp_path / "launcher.log")
    try:
        pids = []
        for fid in ids[:2]:
            pids.append(client.run(fid, launches, launches / f"fw_{fid}.log"))
            assert _wait_exit(client, fid) == 0
            fw = lp.get_fw_by_id(fid)
            assert fw.state == "COMPLETED"
            assert Path(fw.launches[-1].launch_dir) == launches  # launched where it was asked to
        assert len(set(pids)) == 2 and client.alive()  # one child per Firework, the launcher stays

        # a launch killed like a lost node: the database still says RUNNING (the runner reruns it later)
        pid = client.run(ids[2], launches, launches / f"fw_{ids[2]}.log")
        deadline = time.monotonic() + 30
        while lp.get_fw_by_id(ids[2]).state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lp.get_fw_by_id(ids[2]).state == "RUNNING"
        os.killpg(pid, signal.SIGKILL)
        assert _wait_exit(client, ids[2]) == -signal.SIGKILL
        assert lp.get_fw_by_id(ids[2]).state == "RUNNING"

        # closing the launcher stops what still runs
        lp.rerun_fw(ids[2])
        pid = client.run(ids[2], launches, launches / f"fw_{ids[2]}.log")
        time.sleep(1.0)
        assert pid_alive(pid)
    finally:
        client.close()
    assert not client.alive()
    assert not pid_alive(pid)
