"""The campaign's Fireworks as SLURM jobs: `qlaunch rapidfire` on a real single-node slurmctld/slurmd, the
embedded LaunchPad, the whole loop (stop -> oracle -> upfit -> resume -> validate -> package); then the
FireWorks dashboard serves the campaign's workflow page."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipec_fw.campaign import stage_records
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.runner import campaign_status, submit
from tests.fixtures.launchpad import EmbeddedDB
from tests.fixtures.slurm import SlurmCluster, qlaunch_until_done
from tests.fixtures.webgui import webgui_server
from tests.workflow.test_loop import tiny_campaign


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_campaign_runs_as_slurm_jobs_and_shows_in_webgui(embedded_db: EmbeddedDB, slurm_cluster: SlurmCluster,
                                                        tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    campaign = tiny_campaign(tmp_path, name="tiny-slurm")
    layout, fw_id, _ = submit(campaign, lp)
    qlaunch_until_done(embedded_db, slurm_cluster, tmp_path / "queue", timeout=2400)

    st = campaign_status(lp, fw_id)
    assert st.state == "COMPLETED", st.errors
    rec = stage_records(layout)
    assert rec["akmc_000"]["status"] == "stopped" and "fit_001" in rec and "akmc_001" in rec
    assert st.package and Path(st.package).exists()

    # every Firework of the campaign (detours included) ran inside a SLURM job submitted by qlaunch
    wf = lp.workflows.find_one({"nodes": fw_id})
    assert len(wf["nodes"]) > 5  # the loop added detours
    for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"launches": 1, "name": 1}):
        launch = lp.launches.find_one({"launch_id": fw["launches"][-1]})
        job_dir = Path(launch["launch_dir"])
        assert (job_dir / "FW_submit.script").exists(), fw["name"]
        assert "#SBATCH" in (job_dir / "FW_submit.script").read_text()

    with webgui_server(embedded_db) as gui:
        code, body = gui.get(f"/wf/{fw_id}")
        assert code == 200
        for name in ("initial structures", "fit gen_000", "aKMC #0", "refit gen_001", "aKMC #1 (resume)", "package"):
            assert f"tiny-slurm: {name}" in body
