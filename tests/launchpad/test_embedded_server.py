"""The embedded LaunchPad server: lifecycle, errors, durability, and concurrent launchers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from fireworks import Firework, ScriptTask, Workflow

from autopipec_fw.launchpad.server import DatabaseError, EmbeddedServer, _pid_alive
from tests.fixtures.launchpad import EmbeddedDB, free_port, start_embedded


def test_start_is_idempotent_and_status_reports(embedded_db: EmbeddedDB) -> None:
    again = EmbeddedServer(embedded_db.workspace, port=embedded_db.info.port).start()
    assert again.pid == embedded_db.info.pid
    st = embedded_db.server.status()
    assert st["running"] and st["responding"] and st["port"] == embedded_db.info.port
    lp = embedded_db.launchpad()
    lp.reset("", require_password=False)
    lp.add_wf(Firework(ScriptTask.from_str("true"), name="x"))
    assert lp.get_fw_ids() == [1]


def test_stop_by_pid_leaves_nothing_running_and_data_survives(tmp_path: Path) -> None:
    db = start_embedded(tmp_path / "ws")
    lp = db.launchpad()
    lp.reset("", require_password=False)
    lp.add_wf(Firework(ScriptTask.from_str("true"), name="kept"))
    pid = db.info.pid
    assert db.server.stop() is True
    assert not _pid_alive(pid)
    assert db.server.status()["running"] is False
    assert db.server.stop() is False  # nothing to stop
    again = start_embedded(db.workspace)
    try:
        assert [fw["name"] for fw in again.launchpad().fireworks.find({}, {"name": 1})] == ["kept"]
    finally:
        again.server.stop()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DatabaseError, match=rf"port {port} .* already in use"):
            EmbeddedServer(tmp_path, port=port).start()


def test_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, port=free_port())
    server.state.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    server.info_file.write_text(
        f'{{"pid": {dead.pid}, "host": "127.0.0.1", "port": 1, "store": "{server.store}"}}'
    )
    assert server.info() is None and not server.info_file.exists()
    info = server.start()
    try:
        assert info.pid != dead.pid and server.info_file.exists()
    finally:
        server.stop()


def test_unreadable_store_is_refused(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, port=free_port())
    server.state.mkdir(parents=True)
    server.store.write_bytes(b"this is not a database at all, just text")
    with pytest.raises(DatabaseError, match="store.sqlite: not an SQLite database"):
        server.start()
    assert server.status()["running"] is False


def test_kill_9_then_restart_keeps_every_workflow(tmp_path: Path) -> None:
    db = start_embedded(tmp_path / "ws")
    lp = db.launchpad()
    lp.reset("", require_password=False)
    for i in range(5):
        fw1 = Firework(ScriptTask.from_str("true"), name=f"a{i}")
        fw2 = Firework(ScriptTask.from_str("true"), name=f"b{i}", parents=[fw1])
        lp.add_wf(Workflow([fw1, fw2], name=f"wf{i}"))
    os.kill(db.info.pid, signal.SIGKILL)
    time.sleep(0.5)
    restarted = start_embedded(db.workspace)  # same workspace, same store; the stale PID file is noticed
    try:
        lp2 = restarted.launchpad()
        assert sorted(lp2.workflows.distinct("name")) == [f"wf{i}" for i in range(5)]
        assert len(lp2.get_fw_ids()) == 10
        for i in range(5):
            wf = lp2.get_wf_by_fw_id(lp2.get_fw_ids({"name": f"a{i}"})[0])
            by_name = {fw.name: fw.fw_id for fw in wf.fws}
            links = {int(k): list(v) for k, v in wf.links.items()}
            assert links[by_name[f"a{i}"]] == [by_name[f"b{i}"]]
    finally:
        restarted.server.stop()


@pytest.mark.timeout(600)
def test_three_concurrent_rapidfire_launchers_run_each_firework_once(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    lp.reset("", require_password=False)
    ledger = tmp_path / "ledger.txt"
    n = 30
    for i in range(n):
        lp.add_wf(Firework(ScriptTask.from_str(f"echo fw{i} >> {ledger}"), name=f"fw{i}"))
    launch_dirs = [tmp_path / f"launcher{k}" for k in range(3)]
    procs = []
    for d in launch_dirs:
        d.mkdir()
        procs.append(subprocess.Popen(
            ["rlaunch", "-l", str(embedded_db.launchpad_file), "rapidfire", "--nlaunches", "0", "--sleep", "1"],
            cwd=d, env=embedded_db.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))
    for p in procs:
        _, err = p.communicate(timeout=540)
        assert p.returncode == 0, err[-2000:]
    counts = Counter(ledger.read_text().split())
    assert counts == Counter({f"fw{i}": 1 for i in range(n)})
    states = Counter(fw["state"] for fw in lp.fireworks.find({}, {"state": 1}))
    assert states == Counter({"COMPLETED": n})
    assert lp.launches.count_documents({}) == n
    # the work really was shared between the launchers
    per_launcher = [len(list(d.glob("launcher_*"))) for d in launch_dirs]
    assert sum(per_launcher) == n and sum(1 for c in per_launcher if c > 0) >= 2
