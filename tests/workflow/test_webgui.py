"""The stock FireWorks dashboard (`lpad webgui -s`) serves our embedded LaunchPad: workflow page and index list
the Fireworks; the server's whole process group is gone after stopping."""

from __future__ import annotations

import json
import time

from autopipec_fw.launchpad.files import ensure_initialized
from tests.fixtures.webgui import process_group_members, webgui_server

NAMES = ("wg-oracle-0", "wg-oracle-1", "wg-fit-gen1", "wg-akmc-resume")


def _add_workflow(db) -> dict[str, int]:
    from fireworks import Firework, ScriptTask, Workflow

    def fw(name: str, parents: list | None = None) -> Firework:
        return Firework([ScriptTask.from_str("true")], name=name, parents=parents, spec={"_category": "test"})

    o0, o1 = fw(NAMES[0]), fw(NAMES[1])
    fit = fw(NAMES[2], [o0, o1])
    akmc = fw(NAMES[3], [fit])
    old = {f.name: f.fw_id for f in (o0, o1, fit, akmc)}
    lp = db.launchpad()
    ensure_initialized(lp)
    mapping = lp.add_wf(Workflow([o0, o1, fit, akmc], name="wg-campaign"))
    return {name: mapping[i] for name, i in old.items()}


def test_webgui_serves_workflow_page_and_index(embedded_db) -> None:
    ids = _add_workflow(embedded_db)
    t0 = time.monotonic()
    with webgui_server(embedded_db) as gui:
        started = time.monotonic() - t0
        status, page = gui.get(f"/wf/{ids['wg-fit-gen1']}")  # any member id addresses the workflow
        assert status == 200, page[:2000]
        assert "wg-campaign" in page
        for name in NAMES:
            assert name in page, f"{name} missing from the workflow page"

        status, graph = gui.get(f"/wf/{ids[NAMES[0]]}/json")
        assert status == 200
        graph = json.loads(graph)
        assert sorted(n["data"]["name"] for n in graph["nodes"]) == sorted(NAMES)
        assert len(graph["edges"]) == 3  # two oracles -> fit -> akmc

        status, index = gui.get("/")
        assert status == 200
        assert "wg-campaign" in index and all(name in index for name in NAMES)

        status, missing = gui.get("/wf/999999")
        assert status >= 400  # an unknown workflow is not served as a page
        pgid = gui.pid
        assert process_group_members(pgid), "the webgui process group must be visible while running"
    assert process_group_members(pgid) == []
    print(f"webgui up in {started:.1f} s, whole test {time.monotonic() - t0:.1f} s")
