"""Amending a campaign: label-neutral settings change in place (and a finished workflow is extended when they
take it further); label-affecting ones are refused saying how to start a new campaign; a deleted folder or a
deleted workflow can be resubmitted (real embedded server, real `rlaunch` processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fireworks import FiretaskBase, Firework, FWAction, ScriptTask, Workflow, explicit_serialize

from autopipec_fw.campaign import CampaignLayout, prepare_campaign, record_stage
from autopipec_fw.config import LABEL_NEUTRAL, Campaign, ConfigError, label_settings_hash
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.runner import extend_workflow, find_workflow, submit
from tests.fixtures.launchpad import EmbeddedDB


def campaign(tmp_path: Path, **update) -> Campaign:
    base = {"name": "amend", "workdir": tmp_path / "c", "package": {"dist_dir": str(tmp_path / "dist")},
            "akmc": {"kmc_steps": 3, "max_iterations": 2}}
    for k, v in update.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return Campaign(**base)


def test_label_neutral_changes_amend_in_place(tmp_path: Path) -> None:
    layout = prepare_campaign(campaign(tmp_path), tmp_path / "c")
    amended = campaign(tmp_path, package={"version": "1.1.0", "license": "MIT", "author": "me"},
                       validation={"max_force_rmse": 150.0}, akmc={"kmc_steps": 6, "max_iterations": 4})
    assert label_settings_hash(amended) == label_settings_hash(campaign(tmp_path))
    prepare_campaign(amended, tmp_path / "c")
    now = layout.campaign()
    assert (now.package.version, now.package.license, now.akmc.kmc_steps, now.validation.max_force_rmse) == \
        ("1.1.0", "MIT", 6, 150.0)
    history = json.loads((layout.root / "amendments.json").read_text())
    assert history[-1]["changes"]["package.version"] == {"old": "1.0.0", "new": "1.1.0"}
    assert set(history[-1]["changes"]) == {"package.version", "package.license", "package.author",
                                           "validation.max_force_rmse", "akmc.kmc_steps", "akmc.max_iterations"}


@pytest.mark.parametrize(("update", "field"), [
    ({"akmc": {"temperature": 500.0}}, "akmc.temperature"),
    ({"oracle": {"parameters": {"asap_cutoff": True}}}, "oracle.parameters.asap_cutoff"),
    ({"fit": {"cutoff": 6.0}}, "fit.cutoff"),
    ({"gamma": {"threshold": 4.0}}, "gamma.threshold"),
    ({"initial_data": {"n_rattled": 3}}, "initial_data.n_rattled"),
])
def test_label_affecting_changes_are_refused_with_the_way_out(tmp_path: Path, update: dict, field: str) -> None:
    layout = prepare_campaign(campaign(tmp_path), tmp_path / "c")
    before = layout.config.read_text()
    changed = campaign(tmp_path, **update)
    assert label_settings_hash(changed) != label_settings_hash(campaign(tmp_path))
    with pytest.raises(ConfigError) as err:
        prepare_campaign(changed, tmp_path / "c")
    msg = str(err.value)
    assert str(layout.config) in msg and field in msg and "another name or workdir" in msg
    assert all(n in msg for n in LABEL_NEUTRAL)  # which fields may change, said
    assert layout.config.read_text() == before  # nothing amended


def test_a_stored_file_the_current_rules_refuse_can_still_be_amended(tmp_path: Path) -> None:
    """A folder written before a rule existed (here a license that is not SPDX) takes the fix."""
    layout = prepare_campaign(campaign(tmp_path), tmp_path / "c")
    layout.config.write_text(layout.config.read_text().replace("license: CC-BY-4.0", "license: my own licence"))
    with pytest.raises(ConfigError, match="package.license"):
        layout.campaign()
    prepare_campaign(campaign(tmp_path, package={"license": "CC-BY-4.0"}), tmp_path / "c")
    assert layout.campaign().package.license == "CC-BY-4.0"


def _names(lp, fw_id: int) -> dict[str, str]:
    wf = lp.workflows.find_one({"nodes": fw_id})
    return {d["name"]: d["state"] for d in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}})}


def test_deleted_folder_or_deleted_workflow_can_be_resubmitted(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    c = campaign(tmp_path)
    layout, first, added = submit(c, lp)
    assert added and submit(c, lp)[1:] == (first, False)
    uid = lp.workflows.find_one({"nodes": first})["metadata"]["campaign_uid"]
    assert json.loads((layout.root / "workflow.json").read_text())["uid"] == uid

    # the folder deleted after the first stage ran (real rlaunch), its workflow left on the LaunchPad: the stale
    # workflow is replaced (it would fail on the deleted folder's files)
    init = lp.fireworks.find_one({"name": "amend: initial structures"})["fw_id"]
    subprocess.run(["rlaunch", "-l", str(embedded_db.launchpad_file), "singleshot", "--fw_id", str(init)],
                   cwd=embedded_db.workspace, env=embedded_db.env(), check=True, capture_output=True, timeout=300)
    assert lp.fireworks.find_one({"fw_id": init})["state"] == "COMPLETED"
    shutil.rmtree(layout.root)
    layout, second, added = submit(c, lp)
    assert added and second != first
    assert lp.workflows.count_documents({"metadata.campaign_dir": str(layout.root)}) == 1
    assert lp.fireworks.count_documents({"fw_id": first}) == 0
    assert lp.workflows.find_one({"nodes": second})["metadata"]["campaign_uid"] != uid

    # the workflow deleted, the folder with results left: a clear refusal saying what to do
    record_stage(layout, "initial_structures", {"n_structures": 3})
    lp.delete_wf(second, delete_launch_dirs=False)
    with pytest.raises(ConfigError) as err:
        submit(c, lp)
    msg = str(err.value)
    assert str(layout.root) in msg and "no workflow for it" in msg and "move" in msg
    # ... and without results (submitted, never run) it is simply added again
    shutil.rmtree(layout.stages)
    layout, third, added = submit(c, lp)
    assert added
    # a never-run workflow whose folder was deleted is adopted as it is (nothing of it is lost)
    shutil.rmtree(layout.root)
    assert submit(c, lp)[1:] == (third, False)


def _completed_workflow(db: EmbeddedDB, layout: CampaignLayout) -> int:
    """A finished stand-in for the campaign's workflow (its Fireworks run by a real rlaunch)."""
    lp = db.launchpad()
    a = Firework(ScriptTask.from_str("true"), name="amend: aKMC #0")
    b = Firework(ScriptTask.from_str("true"), name="amend: package", parents=[a])
    lp.add_wf(Workflow([a, b], name="amend", metadata={"campaign": "amend", "campaign_dir": str(layout.root),
                                                         "autopipec_fw": True}))
    subprocess.run(["rlaunch", "-l", str(db.launchpad_file), "rapidfire"], cwd=db.workspace, env=db.env(),
                   check=True, capture_output=True, timeout=120)
    fw_id = find_workflow(lp, layout.root)
    assert fw_id is not None and lp.workflows.find_one({"nodes": fw_id})["state"] == "COMPLETED"
    return fw_id


def test_a_finished_workflow_is_extended_by_amended_steps(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    layout = prepare_campaign(campaign(tmp_path), tmp_path / "c")
    fw_id = _completed_workflow(embedded_db, layout)
    record_stage(layout, "akmc_000", {"iteration": 0, "status": "completed", "kmc_steps": 3, "max_rounds": 200,
                                      "loop_end": "completed 3 KMC steps"})
    assert extend_workflow(lp, layout, fw_id) == []  # nothing lifted: nothing appended

    submit(campaign(tmp_path, akmc={"kmc_steps": 5}), lp)  # amended through submit, as run-loop does
    names = _names(lp, fw_id)
    assert names["amend: aKMC #0 (extended)"] == "READY"
    assert names["amend: validate (extended)"] == names["amend: package (extended)"] == "WAITING"
    assert lp.workflows.find_one({"nodes": fw_id})["state"] != "COMPLETED"
    assert extend_workflow(lp, layout, fw_id) == []  # under way: appended once only


def test_a_workflow_ended_by_the_iteration_cap_is_extended(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    layout = prepare_campaign(campaign(tmp_path), tmp_path / "c")
    fw_id = _completed_workflow(embedded_db, layout)
    record_stage(layout, "akmc_001", {"iteration": 1, "status": "stopped", "kmc_steps": 1, "n_selected": 3,
                                      "selected_file": "iter_001.extxyz", "loop_end": "iteration cap reached (2)"})
    prepare_campaign(campaign(tmp_path, akmc={"max_iterations": 2}), layout.root)
    assert extend_workflow(lp, layout, fw_id) == []  # the cap still holds
    prepare_campaign(campaign(tmp_path, akmc={"max_iterations": 4}), layout.root)
    new = extend_workflow(lp, layout, fw_id)
    names = _names(lp, fw_id)
    assert len(new) == 5 and names["amend: oracle iter_001 0-2"] == "READY"  # the stop's 3 labels first
    assert names["amend: refit gen_002"] == names["amend: aKMC #2 (resume)"] == "WAITING"
    assert names["amend: validate (extended)"] == names["amend: package (extended)"] == "WAITING"


@explicit_serialize
class _StoredTask(FiretaskBase):
    """Stands in for a stage: returns the figures it is given (run in this process by FireWorks itself)."""

    required_params = ["stored"]
    optional_params = ["structures_file"]

    def run_task(self, fw_spec: dict) -> FWAction:
        return FWAction(stored_data=self["stored"])


def test_status_says_when_a_stop_was_never_labelled(embedded_db: EmbeddedDB, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fireworks.core.rocket_launcher import rapidfire
    from rich.console import Console

    from autopipec_fw.cli_views import status_tables
    from autopipec_fw.runner import campaign_status

    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    monkeypatch.chdir(tmp_path)

    def fw(name: str, stage: str, stored: dict, parents=None, **params) -> Firework:
        return Firework(_StoredTask(stored=stored, **params), name=f"cap: {name}", parents=parents,
                        spec={"stage": stage})

    stop0 = {"iteration": 0, "status": "stopped", "max_gamma": 7.5, "n_selected": 4, "n_candidates": 9,
             "selected_file": "iter_000.extxyz"}
    stop1 = {"iteration": 1, "status": "stopped", "max_gamma": 6.0, "n_selected": 3, "n_candidates": 5,
             "selected_file": "iter_001.extxyz", "loop_end": "iteration cap reached (2) after 1 of 3 KMC steps"}
    a = fw("aKMC #0", "akmc", stop0)
    o = fw("oracle iter_000 0-3", "oracle", {"labelled": 4}, parents=[a], structures_file="iter_000.extxyz")
    b = fw("aKMC #1", "akmc", stop1, parents=[o])
    lp.add_wf(Workflow([a, o, b], name="cap", metadata={"campaign": "cap", "campaign_dir": str(tmp_path / "cap"),
                                                         "autopipec_fw": True}))
    rapidfire(lp, nlaunches=0)
    st = campaign_status(lp, a.fw_id if a.fw_id > 0 else find_workflow(lp, tmp_path / "cap"))
    assert [(s["n_labelled"], s["not_labelled"]) for s in st.stops] == [(4, 0), (0, 3)]
    assert st.stops[0]["why_not_labelled"] is None
    assert "iteration cap" in st.stops[1]["why_not_labelled"]
    console = Console(record=True, width=200)
    console.print(*status_tables([st]))
    text = console.export_text()
    assert "stop 1: 3 selected structure(s) not labelled (loop ended: iteration cap reached (2)" in text
    assert "stop 0:" not in text  # a stop whose selection was labelled has no such line
