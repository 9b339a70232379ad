"""The whole active-learning loop on the embedded LaunchPad with real rlaunch workers, real eOn, real fits:
at least one stop -> oracle -> upfit -> resume cycle, then validate and package; a worker killed mid-Firework is
rerun by the runner itself (its launch is provably dead) and loses nothing and duplicates nothing."""

from __future__ import annotations

import signal
import time
import zipfile
from pathlib import Path

import pytest

from autopipec_fw.campaign import CampaignLayout, label_batch, stage_records
from autopipec_fw.config import Campaign
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.runner import LocalRunner, campaign_status, submit
from autopipec_fw.training.dataset import TrainingSet
from tests.fixtures.launchpad import EmbeddedDB


def tiny_campaign(tmp_path: Path, name: str = "tiny-loop", upfit: bool = False) -> Campaign:
    """Bulk-only initial data, so the first aKMC run on the surface must stop on extrapolation."""
    return Campaign(
        name=name,
        workdir=tmp_path / "campaign",
        initial_data={"n_strained": 6, "n_rattled": 6, "n_vacancy": 2, "n_surface": 0},
        fit={"number_of_functions": 12, "max_iterations": 60, "upfit_iterations": 30, "upfit": upfit},
        gamma={"threshold": 5.0, "select_lower": 2.0, "max_selected": 2},
        akmc={"kmc_steps": 1, "max_iterations": 6, "num_clients": 2, "searches_per_round": 2},
        validation={"n_holdout": 3, "max_energy_rmse": 1000.0, "max_force_rmse": 10000.0,
                    "max_barrier_error": 10000.0, "max_barriers": 1},
        package={"name": "tiny-loop", "dist_dir": tmp_path / "dist"},
    )


def _running(runner: LocalRunner, stage: str) -> list:
    states = runner.fw_states()
    return [w for w in runner._live if states[w.fw_id][0] == "RUNNING" and f": {stage}" in w.name]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_loop_with_worker_kill_and_recovery(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    campaign = tiny_campaign(tmp_path, upfit=True)  # the pacemaker -p path here; the SLURM test refits
    layout, fw_id, added = submit(campaign, lp)
    assert added
    assert submit(campaign, lp)[2] is False  # submitting again adds nothing

    runner = LocalRunner(lp, embedded_db.launchpad_file, layout, fw_id, workers=2, poll=0.5)
    # run until the first fit is under way, then kill its worker like a lost node
    deadline = time.monotonic() + 900
    victim = None
    while victim is None and time.monotonic() < deadline:
        runner.step()
        found = _running(runner, "fit gen_000")
        if found:
            time.sleep(4)
            victim = found[0]
        time.sleep(0.5)
    assert victim is not None, "the fit Firework never started"
    victim.signal(signal.SIGKILL)  # the launch's whole process group: the Firework and pacemaker under it
    deadline = time.monotonic() + 30
    while victim.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not victim.alive()
    killed_launch = lp.get_fw_by_id(victim.fw_id).launches[-1].launch_id
    runner.step()  # the runner sees its own launch's process gone: provably dead, so it reruns the Firework
    doc = lp.fireworks.find_one({"fw_id": victim.fw_id}, {"state": 1, "launches": 1, "archived_launches": 1})
    assert killed_launch in doc["archived_launches"] and killed_launch not in doc["launches"]
    assert doc["state"] in ("READY", "RUNNING")

    final = runner.run()
    st = campaign_status(lp, fw_id)
    assert final == "COMPLETED", st.errors

    rec = stage_records(layout)
    assert rec["akmc_000"]["status"] == "stopped" and rec["akmc_000"]["n_selected"] >= 1
    assert "fit_001" in rec and "akmc_001" in rec  # upfit, then aKMC resumed in the same eOn folder
    assert rec["fit_001"]["metrics"]["upfit"] is True
    assert rec["fit_001"]["training_set_size"] > rec["fit_000"]["training_set_size"]
    assert st.stops and st.stops[0]["max_gamma"] > campaign.gamma.threshold
    assert len(st.generations) >= 2 and st.oracle_calls >= rec["fit_000"]["training_set_size"]
    assert st.loop_end

    # no duplicated training data, and rerunning a finished oracle batch adds nothing
    ts = TrainingSet(layout.dataset)
    hashes = list(ts.frame()["structure_hash"])
    assert len(hashes) == len(set(hashes))
    again = label_batch(CampaignLayout(layout.root), "initial.extxyz", [0, 1, 2], "initial")
    assert again["added"] == 0 and len(TrainingSet(layout.dataset)) == len(hashes)

    # the package
    zips = list((tmp_path / "dist").glob("tiny-loop-1.0.0.zip"))
    assert len(zips) == 1 and st.package == str(zips[0])
    with zipfile.ZipFile(zips[0]) as z:
        names = set(z.namelist())
    assert any(n.endswith(".yace") for n in names) and any(n.endswith("metadata.json") for n in names)
