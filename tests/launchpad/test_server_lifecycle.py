"""The embedded server's lifecycle with real processes: one server per store, stopped only by its owner (or, once
the owner is gone, by the last run-loop using it), stale records cleaned, a killed server is one line and a rerun
works; and the `$substr`-on-dates translation."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autopipec_fw.launchpad.server import (
    EmbeddedServer,
    _coerced_to_string,
    store_lock_path,
    translate_command,
)
from autopipec_fw.processes import pid_alive, wait_gone
from tests.fixtures.launchpad import free_port, start_embedded

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


class User:
    """`tests.launchpad.lease_user` in its own process: a run-loop's use of the server."""

    def __init__(self, ws: Path, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.launchpad.lease_user", str(ws), str(port)],
                                     cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.info: dict | None = None

    def wait_using(self, timeout: float = 60) -> dict:
        line = _readline(self.proc, timeout)
        assert line, f"lease user exited: {self.proc.stderr.read()[-2000:]}"
        self.info = json.loads(line)
        return self.info

    def release(self, timeout: float = 60) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out = _readline(self.proc, timeout).strip()
        self.proc.wait(timeout)
        return out


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert result, f"no answer from pid {proc.pid} within {timeout} s"
    return result[0]


def test_two_run_loops_at_once_share_one_server_and_the_last_one_stops_it(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    port = free_port()
    a, b = User(ws, port), User(ws, port)  # started at the same moment
    ia, ib = a.wait_using(), b.wait_using()
    assert ia["server_pid"] == ib["server_pid"] and pid_alive(ia["server_pid"])
    assert sorted([ia["how"], ib["how"]]) == ["shared", "started"]
    owner, other = (a, b) if ia["how"] == "started" else (b, a)
    server = EmbeddedServer(ws, port=port)
    assert server.info().owner_pid == owner.proc.pid
    # the owner ends first: another run-loop still uses the server, so it is left running
    assert owner.release() == "left"
    assert pid_alive(ia["server_pid"]) and server.status()["running"]
    # the last user ends: the owner is gone, so it stops the server
    assert other.release() == "stopped"
    assert not pid_alive(ia["server_pid"]) and not server.info_file.exists()


def test_a_user_never_stops_the_owners_server(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    port = free_port()
    owner = User(ws, port)
    assert owner.wait_using()["how"] == "started"
    user = User(ws, port)
    info = user.wait_using()
    assert info["how"] == "shared"
    assert user.release() == "left"  # the owner is alive and still uses it
    assert pid_alive(info["server_pid"])
    assert owner.release() == "stopped"
    assert not pid_alive(info["server_pid"])


def test_run_loop_killed_then_a_rerun_adopts_and_stops_its_server(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    port = free_port()
    first = User(ws, port)
    info = first.wait_using()
    assert info["how"] == "started"
    first.proc.kill()  # kill -9 of run-loop: its server keeps running (its own session)
    first.proc.wait()
    assert pid_alive(info["server_pid"])
    rerun = User(ws, port)
    again = rerun.wait_using()
    assert again["how"] == "adopted (owner gone)" and again["server_pid"] == info["server_pid"]
    assert EmbeddedServer(ws, port=port).info().owner_pid == rerun.proc.pid
    assert rerun.release() == "stopped"
    assert not pid_alive(info["server_pid"])


def test_server_of_db_start_is_left_running_by_run_loops(tmp_path: Path) -> None:
    db = start_embedded(tmp_path / "ws")  # what `mlip-auto db start` does: the user owns it
    try:
        user = User(db.workspace, db.info.port)
        assert user.wait_using()["how"] == "shared"
        assert db.server.in_use()
        assert user.release() == "left"
        assert pid_alive(db.info.pid) and not db.server.in_use()
    finally:
        assert db.server.stop() is True


def test_one_server_per_store(tmp_path: Path) -> None:
    db = start_embedded(tmp_path / "ws")
    try:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "autopipec_fw.launchpad.server", "serve", "--store",
                            str(db.server.store), "--port", str(free_port())], env=_env(), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 3
        assert f"pid {db.info.pid}" in r.stderr and "another server already serves this store" in r.stderr
        assert time.monotonic() - t0 < 10
        # and EmbeddedServer on another port returns the running one instead of starting a second
        assert EmbeddedServer(db.workspace, port=free_port()).start().pid == db.info.pid
    finally:
        db.server.stop()


def test_killed_server_record_is_stale_and_a_rerun_works(tmp_path: Path) -> None:
    db = start_embedded(tmp_path / "ws")
    lp = db.launchpad()
    lp.reset("", require_password=False)
    os.kill(db.info.pid, signal.SIGKILL)
    assert wait_gone([db.info.pid], 10) == []
    deadline = time.monotonic() + 10
    while db.server.running() and time.monotonic() < deadline:  # its last threads still closing its files
        time.sleep(0.02)
    assert db.server.info_file.exists()  # a SIGKILLed server cannot remove its record
    assert db.server.info() is None and not db.server.info_file.exists()
    assert not db.server.running() and store_lock_path(db.server.store).exists()
    port = free_port()
    user = User(db.workspace, port)
    info = user.wait_using()
    try:
        assert info["how"] == "started" and info["port"] == port
    finally:
        assert user.release() == "stopped"


def test_db_stop_refuses_while_a_run_loop_uses_the_server(tmp_path: Path) -> None:
    from autopipec_fw.cli import main

    ws = tmp_path / "ws"
    port = free_port()
    user = User(ws, port)
    info = user.wait_using()
    try:
        assert main(["db", "stop", "--workspace", str(ws)]) == 1
        assert pid_alive(info["server_pid"])
    finally:
        assert user.release() == "stopped"


def test_killed_server_gives_one_line_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from autopipec_fw.cli import main

    db = start_embedded(tmp_path / "ws")
    db.launchpad().reset("", require_password=False)
    os.kill(db.info.pid, signal.SIGKILL)
    wait_gone([db.info.pid], 10)
    lp_file = db.workspace / "quick_launchpad.yaml"  # as written by `db start`, with a short server timeout
    lp_file.write_text(db.launchpad_file.read_text().replace("serverSelectionTimeoutMS: 20000",
                                                             "serverSelectionTimeoutMS: 1000"))
    assert "serverSelectionTimeoutMS: 1000" in lp_file.read_text()
    capsys.readouterr()
    assert main(["status", "--launchpad", str(lp_file)]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: the LaunchPad database is not answering"), err
    assert "Traceback" not in err and "mlip-auto db status" in lines[-1]


def test_session_health_names_a_killed_server_in_one_line(tmp_path: Path) -> None:
    from autopipec_fw.config import Campaign
    from autopipec_fw.launchpad.server import DatabaseError
    from autopipec_fw.runner import campaign_session

    ws = tmp_path / "ws"
    campaign = Campaign(name="gone", workdir=None, package={"name": "gone", "dist_dir": tmp_path / "dist"})
    with pytest.raises(DatabaseError) as err, campaign_session(campaign, ws, port=free_port()) as session:
        runner = session.runner(workers=1)
        assert runner.wf_doc()["state"] == "READY"
        os.kill(session.lease.info.pid, signal.SIGKILL)
        wait_gone([session.lease.info.pid], 10)
        t0 = time.monotonic()
        runner.step()
    assert time.monotonic() - t0 < 2
    msg = str(err.value)
    assert "\n" not in msg and f"pid {session.lease.info.pid}" in msg and "run the same command again" in msg
    # and the rerun works: a new server on the same store, the campaign's workflow is still there
    with campaign_session(campaign, ws, port=free_port()) as again:
        assert again.added is False and again.lease.how == "started"
        assert again.runner().wf_doc()["state"] == "READY"
    assert not again.lease.alive()


# ---- $substr on dates: what our side of the wire translates
def test_translate_substr_only_in_aggregations() -> None:
    find = {"find": "workflows", "filter": {"x": {"$substr": ["$a", 0, 1]}}}
    assert translate_command(find) is find
    agg = {"aggregate": "workflows", "pipeline": [
        {"$match": {"state": "READY"}},
        {"$project": {"d": {"$substr": ["$updated_on", 0, 10]}, "lit": {"$substr": ["abc", 0, 1]},
                      "keep": {"$literal": {"$substr": ["$x", 0, 1]}}}},
        {"$facet": {"f": [{"$project": {"n": {"$substrBytes": [{"$concat": ["$a", "b"]}, 0, 2]}}}]}},
    ], "cursor": {}}
    out = translate_command(agg)
    proj = out["pipeline"][1]["$project"]
    assert proj["d"]["$substr"] == [_coerced_to_string("$updated_on"), 0, 10]
    assert proj["lit"] == {"$substr": ["abc", 0, 1]}  # a literal string is left alone
    assert proj["keep"] == {"$literal": {"$substr": ["$x", 0, 1]}}  # literals are not expressions
    nested = out["pipeline"][2]["$facet"]["f"][0]["$project"]["n"]["$substrBytes"]
    assert nested[0] == _coerced_to_string({"$concat": ["$a", "b"]})
    assert agg["pipeline"][1]["$project"]["d"] == {"$substr": ["$updated_on", 0, 10]}  # the input is untouched
    assert out["cursor"] == {} and out["pipeline"][0] == {"$match": {"state": "READY"}}


def test_substr_of_dates_numbers_strings_and_null_as_mongodb_gives_them(embedded_db) -> None:
    coll = embedded_db.launchpad().db["substr_check"]
    when = datetime.datetime(2026, 3, 4, 5, 6, 7, 891000)
    coll.insert_many([{"k": 1, "v": when}, {"k": 2, "v": 12345}, {"k": 3, "v": 2.5}, {"k": 4, "v": "abcdef"},
                      {"k": 5, "v": None}, {"k": 6}])
    rows = coll.aggregate([{"$sort": {"k": 1}},
                           {"$project": {"_id": 0, "k": 1, "s": {"$substr": ["$v", 0, 13]},
                                         "b": {"$substrBytes": ["$v", 5, 2]}}}])
    got = {r["k"]: (r["s"], r["b"]) for r in rows}
    # MongoDB: a date as 2026-03-04T05:06:07.891Z, numbers as their decimal text, null/missing as ""
    assert got == {1: ("2026-03-04T05", "03"), 2: ("12345", ""), 3: ("2.5", ""), 4: ("abcdef", "f"),
                   5: ("", ""), 6: ("", "")}
