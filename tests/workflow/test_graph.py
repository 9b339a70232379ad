"""The job graph: shape, categories, detours of the loop, and the lpad-add spec (unit level, no physics)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from fireworks import Workflow

from autopipec_fw.config import Campaign
from autopipec_fw.workflows import campaign_workflow, demo_spec_yaml, loop_detour, oracle_fireworks
from tests.fixtures.launchpad import EmbeddedDB

REPO = Path(__file__).resolve().parents[2]


def _names(wf: Workflow) -> list[str]:
    return sorted(fw.name.split(": ", 1)[1] for fw in wf.fws)


def test_campaign_graph_shape_and_categories(tmp_path: Path) -> None:
    c = Campaign()
    wf = campaign_workflow(c, tmp_path)
    assert _names(wf) == ["aKMC #0", "fit gen_000", "initial structures", "package", "validate"]
    by = {fw.name.split(": ", 1)[1]: fw for fw in wf.fws}
    assert wf.links[by["initial structures"].fw_id] == [by["fit gen_000"].fw_id]
    assert wf.links[by["aKMC #0"].fw_id] == [by["validate"].fw_id]
    assert {fw.spec["_category"] for fw in wf.fws} == {"oracle", "fit", "akmc", "production"}
    assert wf.metadata["campaign_dir"] == str(tmp_path)
    # specs hold paths and small settings only
    for fw in wf.fws:
        assert len(yaml.safe_dump(fw.to_dict())) < 4000


def test_oracle_batches_cover_every_structure_once() -> None:
    c = Campaign(oracle={"batch_size": 3})
    fws = oracle_fireworks(c, "/x", "initial.extxyz", 8, source="initial")
    idx = [i for fw in fws for i in fw.tasks[0]["indices"]]
    assert idx == list(range(8)) and len(fws) == 3
    assert all(fw.spec["_category"] == "oracle" for fw in fws)


def test_loop_detour_is_oracle_then_upfit_then_resumed_akmc() -> None:
    c = Campaign(oracle={"batch_size": 1}, fit={"upfit": True})
    wf = loop_detour(c, "/x", 2, "iter_002.extxyz", 3)
    names = _names(wf)
    assert names.count("aKMC #3 (resume)") == 1 and names.count("upfit gen_003") == 1
    oracles = [fw for fw in wf.fws if fw.spec["stage"] == "oracle"]
    fit = next(fw for fw in wf.fws if fw.spec["stage"] == "fit")
    nxt = next(fw for fw in wf.fws if fw.spec["stage"] == "akmc")
    assert len(oracles) == 3 and all(wf.links[o.fw_id] == [fit.fw_id] for o in oracles)
    assert wf.links[fit.fw_id] == [nxt.fw_id] and fit.tasks[0]["generation"] == 3
    assert nxt.tasks[0]["iteration"] == 3
    # nothing selected (all candidates known or unphysical): no new data, so no refit: aKMC resumes as it was
    assert _names(loop_detour(c, "/x", 0, None, 0)) == ["aKMC #1 (resume, no new data)"]
    assert "refit gen_001" in _names(loop_detour(Campaign(), "/x", 0, "iter_000.extxyz", 1))  # default: fresh
    warm = Campaign(fit={"upfit": True})
    assert "upfit gen_001" in _names(loop_detour(warm, "/x", 0, "iter_000.extxyz", 1))
    # stop 1 selected nothing (no refit), so stop 2 of a run on gen_001 fits gen_002, not gen_003
    wf = loop_detour(Campaign(), "/x", 2, "iter_002.extxyz", 2, generation=1)
    assert "refit gen_002" in _names(wf)
    assert [fw.tasks[0]["generation"] for fw in wf.fws if fw.spec.get("stage") == "fit"] == [2]


def test_shipped_spec_is_current_and_lpad_add_accepts_it(embedded_db: EmbeddedDB) -> None:
    spec = REPO / "fireworks_specs" / "akmc_active_learning.yaml"
    assert spec.read_text() == demo_spec_yaml(), "regenerate: python -m autopipec_fw.workflows > " + str(spec)
    lp = embedded_db.launchpad()
    lp.reset("", require_password=False)
    r = subprocess.run(["lpad", "-l", str(embedded_db.launchpad_file), "add", str(spec)],
                       cwd=embedded_db.workspace, env=embedded_db.env(), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(lp.get_fw_ids()) == 5
    init = lp.get_fw_by_id(lp.get_fw_ids({"spec.stage": "initial"})[0])
    assert init.tasks[0]["campaign"]["name"] == "cu-adatom-demo"


@pytest.mark.parametrize("name", ["my_launchpad.yaml", "my_launchpad_mongodb.yaml", "my_fworker.yaml",
                                  "my_qadapter.yaml"])
def test_example_fireworks_files_load(name: str) -> None:
    from fireworks import FWorker, LaunchPad
    from fireworks.utilities.fw_serializers import load_object_from_file

    path = REPO / "fireworks_specs" / name
    if name.startswith("my_launchpad"):
        lp = LaunchPad.from_file(str(path))
        assert lp.name == "fireworks"
    elif name == "my_fworker.yaml":
        assert FWorker.from_file(str(path)).category == ""
    else:
        qa = load_object_from_file(str(path))
        assert qa.q_type == "SLURM" and "singleshot" in qa["rocket_launch"]


def test_a_failed_gate_detours_into_teaching_before_the_package(tmp_path) -> None:
    from autopipec_fw.firetasks import FitTask, OracleTask, ValidateTask
    from autopipec_fw.workflows import teach_detour

    c = Campaign(oracle={"batch_size": 3})
    wf = teach_detour(c, str(tmp_path), 0, "teach_00.extxyz", 7, generation=5)
    stages = [fw.spec["stage"] for fw in wf.fws]
    assert stages == ["oracle", "oracle", "oracle", "fit", "validate"]
    oracles = [fw for fw in wf.fws if fw.spec["stage"] == "oracle"]
    assert [t["indices"] for fw in oracles for t in fw.tasks if isinstance(t, OracleTask)] == [[0, 1, 2], [3, 4, 5], [6]]
    fit = next(fw for fw in wf.fws if fw.spec["stage"] == "fit")
    val = next(fw for fw in wf.fws if fw.spec["stage"] == "validate")
    assert isinstance(fit.tasks[0], FitTask) and fit.tasks[0]["generation"] == 5
    assert isinstance(val.tasks[0], ValidateTask) and val.tasks[0]["round"] == 1
    links = wf.links
    assert all(links[o.fw_id] == [fit.fw_id] for o in oracles) and links[fit.fw_id] == [val.fw_id]
    assert wf.leaf_fw_ids == [val.fw_id]  # the package (the validate Firework's child) waits for it
