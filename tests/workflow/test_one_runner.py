"""One runner per campaign, one workflow per campaign, and only provably dead launches rerun.

Fast tests use the lock API and a fake campaign state (real embedded server, real FireWorks launches made with
`checkout_fw`, real processes for the pids); one slow test starts two real `mlip-auto run-loop` processes."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopipec_fw.campaign import CampaignLayout
from autopipec_fw.config import Campaign, load_campaign
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.processes import pid_alive, wait_gone
from autopipec_fw.runner import (
    LAUNCH_RECORDS,
    RUN_LOCK,
    CampaignBusy,
    LocalRunner,
    campaign_lock,
    find_workflow,
)
from tests.fixtures.launchpad import EmbeddedDB, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")


def _campaign(tmp_path: Path, name: str = "one-runner") -> Campaign:
    return Campaign(name=name, workdir=tmp_path / "campaign", package={"name": name, "dist_dir": tmp_path / "dist"})


HOLD = """
import sys, time
from autopipec_fw.config import load_campaign
from autopipec_fw.runner import campaign_lock
lock = campaign_lock(load_campaign(sys.argv[1]), command="mlip-auto run-loop --config tiny.yaml")
print("held", flush=True)
time.sleep(600)
"""


def test_second_runner_refuses_naming_the_first_and_takes_over_when_it_died(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_campaign(tmp_path).to_yaml())
    campaign = load_campaign(cfg)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(CampaignBusy) as busy:
            campaign_lock(campaign)
        assert time.monotonic() - t0 < 1
        msg = str(busy.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, since " in msg
        assert "'mlip-auto run-loop --config tiny.yaml'" in msg and str(campaign.resolved_workdir()) in msg
        since = datetime.datetime.fromisoformat(busy.value.holder.since)
        assert abs((datetime.datetime.now().astimezone() - since).total_seconds()) < 60
    finally:
        holder.kill()  # kill -9: nothing is cleaned up by the holder
        holder.wait()
    lock = campaign_lock(campaign)  # the flock died with its holder: taken over at once
    try:
        assert lock.previous is not None and lock.previous.pid == holder.pid
        record = json.loads((campaign.resolved_workdir() / RUN_LOCK).read_text())
        assert record["pid"] == os.getpid() and record["extra"]["campaign"] == "one-runner"
    finally:
        lock.release()


SUBMIT = """
import sys, time
from pathlib import Path
from autopipec_fw.config import load_campaign
from autopipec_fw.launchpad.files import load_launchpad
from autopipec_fw.runner import submit
campaign, lp = load_campaign(sys.argv[1]), load_launchpad(sys.argv[2])
lp.workflows.find_one({})  # connected before the start signal
print("ready", flush=True)
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
print(submit(campaign, lp)[2], flush=True)
"""


def test_two_submits_at_the_same_moment_make_one_workflow(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    for round_ in range(3):
        cfg = tmp_path / f"c{round_}.yaml"
        cfg.write_text(_campaign(tmp_path / f"r{round_}", name=f"twice-{round_}").to_yaml())
        go = tmp_path / f"go{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", SUBMIT, str(cfg), str(embedded_db.launchpad_file),
                                   str(go)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for p in procs:  # both imported and connected, then spinning on the start signal
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
        assert sorted(o.strip().splitlines()[-1] for o, _ in outs) == ["False", "True"]
        root = load_campaign(cfg).resolved_workdir()
        assert lp.workflows.count_documents({"metadata.campaign_dir": str(root)}) == 1
        assert find_workflow(lp, root) is not None


# ---- which RUNNING Fireworks are rerun
def _checkout(lp, fw_id: int, launch_dir: Path) -> int:
    from fireworks import FWorker

    launch_dir.mkdir(parents=True, exist_ok=True)
    fw, launch_id = lp.checkout_fw(FWorker(), str(launch_dir), fw_id=fw_id)
    assert fw is not None and fw.fw_id == fw_id
    return int(launch_id)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_recover_reruns_only_provably_dead_launches(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    from fireworks import Firework, FWAction, ScriptTask, Workflow

    from autopipec_fw.processes import create_time

    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    kinds = ("ours_dead", "ours_alive", "ours_unidentified_dead", "other_alive", "other_lost", "fizzled", "done")
    lp.add_wf(Workflow([Firework([ScriptTask.from_str("true")], name=k) for k in kinds], name="fake-campaign"))
    ids = {k: lp.get_fw_ids({"name": k})[0] for k in kinds}
    layout = CampaignLayout(tmp_path / "campaign")
    ours = (layout.root / "launches").resolve()
    elsewhere = tmp_path / "rlaunch-elsewhere"
    launch = {k: _checkout(lp, ids[k], ours if k.startswith("ours") else elsewhere) for k in kinds}
    lp.mark_fizzled(launch["fizzled"])
    lp.complete_launch(launch["done"], action=FWAction(), state="COMPLETED")
    # another worker's launch that stopped pinging 5 hours ago (FireWorks' default timeout: 4 h)
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=5)).replace(tzinfo=None).isoformat()
    doc = lp.launches.find_one({"launch_id": launch["other_lost"]})
    history = doc["state_history"]
    for h in history:
        if h["state"] == "RUNNING":
            h["updated_on"] = h["created_on"] = old
    lp.launches.update_one({"launch_id": launch["other_lost"]}, {"$set": {"state_history": history}})

    alive = subprocess.Popen(["sleep", "120"])
    try:
        host = socket.gethostname()
        dead, dead2 = _dead_pid(), _dead_pid()

        def rec(pid: int, launch_id: int | None) -> dict:
            return {"pid": pid, "started": create_time(pid), "host": host, "runner_pid": 1, "spawned_at": 0,
                    "known_launches": [], "launch_dir": str(ours), "launch_id": launch_id}

        records = {str(ids["ours_dead"]): rec(dead, launch["ours_dead"]),
                   str(ids["ours_alive"]): rec(alive.pid, launch["ours_alive"]),
                   str(ids["ours_unidentified_dead"]): rec(dead2, None)}
        (layout.root / "launches" / LAUNCH_RECORDS).write_text(json.dumps(records))

        runner = LocalRunner(lp, embedded_db.launchpad_file, layout, ids["done"], workers=1)
        assert runner.lost_after_seconds() == 4 * 3600  # FireWorks' RUN_EXPIRATION_SECS
        verdicts = {k: runner.launch_verdict(ids[k]) for k in ("ours_dead", "ours_alive", "other_alive",
                                                               "other_lost")}
        assert verdicts["ours_dead"][0] and f"as pid {dead}, which is gone" in verdicts["ours_dead"][1]
        assert not verdicts["ours_alive"][0] and "still runs" in verdicts["ours_alive"][1]
        assert not verdicts["other_alive"][0] and "another worker's and alive" in verdicts["other_alive"][1]
        assert verdicts["other_lost"][0] and "has not pinged for more than 14400 s" in verdicts["other_lost"][1]

        rerun = runner.recover()
        assert sorted(rerun) == sorted(ids[k] for k in ("ours_dead", "ours_unidentified_dead", "other_lost",
                                                        "fizzled"))
        states = {k: lp.get_fw_by_id(ids[k]).state for k in kinds}
        assert states == {"ours_dead": "READY", "ours_alive": "RUNNING", "ours_unidentified_dead": "READY",
                          "other_alive": "RUNNING", "other_lost": "READY", "fizzled": "READY",
                          "done": "COMPLETED"}
        assert set(json.loads((layout.root / "launches" / LAUNCH_RECORDS).read_text())) == {str(ids["ours_alive"])}

        # a stated shorter timeout: the other worker's launch (pinged at checkout) counts as lost after it
        time.sleep(1.5)
        short = LocalRunner(lp, embedded_db.launchpad_file, layout, ids["done"], workers=1, lost_after=1)
        assert short.launch_verdict(ids["other_alive"])[0]
        alive.kill()
        alive.wait()
        assert runner.launch_verdict(ids["ours_alive"])[0]  # our launch's process is gone now
    finally:
        alive.kill()
        alive.wait()


def test_a_launch_killed_mid_run_is_rerun_once_then_fizzled(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    from fireworks import Firework, ScriptTask, Workflow

    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    lp.add_wf(Workflow([Firework([ScriptTask.from_str("sleep 60")], name="victim")], name="fake-campaign"))
    fid = lp.get_fw_ids({"name": "victim"})[0]
    layout = CampaignLayout(tmp_path / "campaign")
    runner = LocalRunner(lp, embedded_db.launchpad_file, layout, fid, workers=1, poll=0.2, warm=False)
    try:
        for attempt in range(2):
            runner.step()
            deadline = time.monotonic() + 90
            while lp.get_fw_by_id(fid).state != "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)
                runner.step()
            assert lp.get_fw_by_id(fid).state == "RUNNING", (layout.root / "launches" / f"fw_{fid}.log").read_text()
            [worker] = runner._live
            records = json.loads((layout.root / "launches" / LAUNCH_RECORDS).read_text())
            assert records[str(fid)]["pid"] == worker.pid
            deadline = time.monotonic() + 10
            while records[str(fid)]["launch_id"] is None and time.monotonic() < deadline:
                runner.step()  # the runner identifies its launch once FireWorks has made it
                records = json.loads((layout.root / "launches" / LAUNCH_RECORDS).read_text())
            assert records[str(fid)]["launch_id"] == lp.get_fw_by_id(fid).launches[-1].launch_id
            worker.signal(signal.SIGKILL)  # the launch's whole process group, like a lost node
            assert wait_gone([worker.pid], 10) == [] or not worker.alive()
            worker.proc.wait()
            n_launches = len(lp.fireworks.find_one({"fw_id": fid})["launches"])
            runner.step()
            if attempt == 0:
                # rerun at once (and started again in the same round), not left RUNNING
                doc = lp.fireworks.find_one({"fw_id": fid})
                assert doc["state"] in ("READY", "RUNNING") and len(runner._live) == 1
                assert len(doc.get("archived_launches") or []) >= 1 or len(doc["launches"]) != n_launches
        assert lp.get_fw_by_id(fid).state == "FIZZLED" and runner._live == []
    finally:
        runner.stop_workers()


def test_runner_beside_a_live_rlaunch_worker_waits_for_it(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    """An rlaunch worker runs a Firework of the campaign when the runner starts: not rerun, waited for, run once."""
    from fireworks import Firework, ScriptTask, Workflow

    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    ledger = tmp_path / "ledger.txt"
    first = Firework([ScriptTask.from_str(f"echo first >> {ledger}; sleep 6")], name="first")
    second = Firework([ScriptTask.from_str(f"echo second >> {ledger}")], name="second", parents=[first])
    lp.add_wf(Workflow([first, second], name="beside"))
    fid = lp.get_fw_ids({"name": "first"})[0]
    elsewhere = tmp_path / "rlaunch-elsewhere"
    elsewhere.mkdir()
    worker = subprocess.Popen([str(BIN / "rlaunch"), "-l", str(embedded_db.launchpad_file), "singleshot",
                               "--fw_id", str(fid)], cwd=elsewhere, env=embedded_db.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while lp.get_fw_by_id(fid).state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lp.get_fw_by_id(fid).state == "RUNNING"
        runner = LocalRunner(lp, embedded_db.launchpad_file, CampaignLayout(tmp_path / "campaign"), fid, workers=2,
                             poll=0.3, warm=False)
        assert runner.recover() == []  # another worker's live launch
        assert runner.run() == "COMPLETED"
    finally:
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    assert ledger.read_text().split() == ["first", "second"]  # each exactly once, in order
    assert lp.launches.count_documents({"fw_id": fid}) == 1


# ---- two real run-loops
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_real_run_loops_the_second_refuses_naming_the_first(tmp_path: Path) -> None:
    from tests.fixtures.eon import processes_in
    from tests.workflow.test_loop import tiny_campaign

    ws = tmp_path / "ws"
    ws.mkdir()
    campaign = tiny_campaign(tmp_path, name="two-loops").model_copy(update={"workdir": None})
    cfg = ws / "campaign.yaml"
    cfg.write_text(campaign.to_yaml())
    env = _env()
    first = subprocess.Popen(["mlip-auto", "run-loop", "--config", str(cfg), "--port", str(free_port())], cwd=ws,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = ws / "campaigns" / "two-loops" / RUN_LOCK
        server_json = ws / ".launchpad" / "server.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and server_json.exists() and (ws / "campaigns" / "two-loops" / "launches").exists():
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        server_pid = json.loads(server_json.read_text())["pid"]
        assert json.loads(lock.read_text())["pid"] == first.pid
        t0 = time.monotonic()
        second = subprocess.run(["mlip-auto", "run-loop", "--config", str(cfg), "--port", str(free_port())],
                                cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        assert second.returncode == 3, second.stderr[-3000:]
        assert took < 15, f"the second run-loop took {took:.1f} s to refuse"
        err = " ".join(second.stderr.split())
        assert f"is already being run by 'mlip-auto run-loop --config {cfg} --port" in err
        assert f"(pid {first.pid} on host {socket.gethostname()}, since " in err
        assert "Traceback" not in second.stderr
        # it touched nothing: same server, the first still runs its campaign
        assert json.loads(server_json.read_text())["pid"] == server_pid and pid_alive(server_pid)
        assert first.poll() is None
        print(f"second run-loop refused in {took:.1f} s")
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-3000:]
    deadline = time.monotonic() + 30
    while processes_in(ws) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_in(ws) == []  # the first stopped its server, launcher and launches
    assert not pid_alive(server_pid) and not server_json.exists()
