"""Stock `qlaunch rapidfire` on a real single-node SLURM against the embedded LaunchPad: every Firework runs as
its own SLURM batch job, exactly once, in dependency order; the test cluster starts and stops cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from autopipec_fw.launchpad.files import ensure_initialized
from tests.fixtures.slurm import (
    SlurmUnavailable,
    find_binaries,
    pid_alive,
    qlaunch_until_done,
    read_ledger,
    start_cluster,
    write_queue_files,
)


def test_missing_slurm_is_a_clear_error() -> None:
    with pytest.raises(SlurmUnavailable, match=r"slurmctld.*scripts/setup\.sh --tests"):
        find_binaries(path="/nonexistent")


@pytest.mark.slow
def test_cluster_runs_a_batch_job(slurm_cluster, tmp_path: Path) -> None:
    assert slurm_cluster.node_state() == "idle"
    out = tmp_path / "job.out"
    sub = slurm_cluster.run("sbatch", "--parsable", "-o", str(out), "--wrap", "echo job=$SLURM_JOB_ID")
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    while slurm_cluster.job_state(job_id) != "COMPLETED":
        assert time.monotonic() < deadline, slurm_cluster.diagnostics()
        time.sleep(0.2)
    assert out.read_text().strip() == f"job={job_id}"


@pytest.mark.slow
def test_own_cluster_stops_without_leftovers(tmp_path: Path) -> None:
    """A second, independent cluster (own ports/munge) starts next to the session one and leaves nothing behind."""
    cluster = start_cluster()
    try:
        pids = cluster.daemon_pids()
        assert set(pids) == {"munged", "slurmctld", "slurmd"}
        assert cluster.leftover_processes(), "a running cluster must be visible to the leftover check"
        sub = cluster.run("sbatch", "--parsable", "-o", os.devnull, "--wrap", "sleep 300")
        assert sub.stdout.strip()
    finally:
        cluster.stop()
    assert cluster.leftover_processes() == []
    assert not any(pid_alive(pid) for pid in pids.values())  # (a zombie awaiting init's reaping counts as gone)
    cluster.shutdown()
    assert not cluster.root.exists()


def _add_workflow(db, ledger: Path) -> dict[str, int]:
    from fireworks import Firework, PyTask, Workflow

    def fw(name: str, parents: list | None = None) -> Firework:
        task = PyTask(func="tests.fixtures.slurm.record_run", args=[str(ledger), name], stored_data_varname="run")
        return Firework([task], name=name, parents=parents)

    root = fw("prepare")
    left, right = fw("left", [root]), fw("right", [root])
    wf = Workflow([root, left, right], name="slurm-ledger")
    lp = db.launchpad()
    ensure_initialized(lp)
    old = {f.name: f.fw_id for f in (root, left, right)}
    mapping = lp.add_wf(wf)
    return {name: mapping[fw_id] for name, fw_id in old.items()}


@pytest.mark.slow
def test_qlaunch_rapidfire_runs_each_firework_as_one_slurm_job(embedded_db, slurm_cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ids = _add_workflow(embedded_db, ledger)
    launch_dir = tmp_path / "launches"

    t0 = time.monotonic()
    qlaunch_until_done(embedded_db, slurm_cluster, launch_dir, timeout=240)  # fw_ids=None: all in the DB
    elapsed = time.monotonic() - t0

    qadapter = yaml.safe_load((embedded_db.workspace / "my_qadapter.yaml").read_text())
    assert qadapter["_fw_q_type"] == "SLURM" and "singleshot" in qadapter["rocket_launch"]

    runs = read_ledger(ledger)
    assert sorted(r["name"] for r in runs) == sorted(ids), runs  # each exactly once
    assert runs[0]["name"] == "prepare"  # parent before its children
    job_ids = [r["slurm_job_id"] for r in runs]
    assert all(job_ids) and len(set(job_ids)) == len(ids), f"not one SLURM job per Firework: {runs}"

    lp = embedded_db.launchpad()
    for name, fw_id in ids.items():
        fw = lp.get_fw_by_id(fw_id)
        assert fw.state == "COMPLETED"
        assert len(fw.launches) == 1 and not fw.archived_launches, f"{name} launched more than once"
        run = fw.launches[0].action.stored_data["run"]
        assert run["name"] == name
        assert slurm_cluster.job_state(run["slurm_job_id"]) == "COMPLETED"
        # the Firework ran inside the launcher folder qlaunch made for that SLURM job
        assert Path(run["cwd"]).resolve().is_relative_to(launch_dir.resolve())
        # reservation mode names the SLURM job after the Firework: <name>-<job id>.out in that folder
        assert "Task completed: PyTask" in Path(run["cwd"], f"{name}-{run['slurm_job_id']}.out").read_text()
    assert len(list(launch_dir.rglob("FW_submit.script"))) == len(ids)
    assert slurm_cluster.queue() == []
    print(f"qlaunch: 3 Fireworks via SLURM in {elapsed:.1f} s")


@pytest.mark.slow
def test_qlaunch_until_done_reports_a_dead_job_script(embedded_db, slurm_cluster, tmp_path: Path) -> None:
    """A job script that cannot start rlaunch leaves the Firework RESERVED: the helper says so, with the job's
    error file, instead of waiting for its timeout."""
    ids = _add_workflow(embedded_db, tmp_path / "ledger.jsonl")
    write_queue_files(embedded_db.workspace)
    qadapter_path = embedded_db.workspace / "my_qadapter.yaml"
    qadapter = yaml.safe_load(qadapter_path.read_text())
    qadapter["rocket_launch"] = "/nonexistent/rlaunch singleshot"
    qadapter_path.write_text(yaml.safe_dump(qadapter))
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)RESERVED but no SLURM job.*nonexistent/rlaunch"):
        qlaunch_until_done(embedded_db, slurm_cluster, tmp_path / "launches", timeout=120,
                           fw_ids=list(ids.values()), write_files=False, stall=5)
    assert time.monotonic() - t0 < 60
    assert embedded_db.launchpad().get_fw_by_id(ids["prepare"]).state == "RESERVED"
    assert slurm_cluster.queue() == []
