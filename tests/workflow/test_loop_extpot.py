"""The route every user with their own eOn takes: ext_pot + pace_driver.py, through the real Fireworks.

Full aKMC with eOn's ext_pot potential calling `pace_driver.py` (through its persistent evaluator): the driver
meets an extrapolating structure and exits 100 with a stop file -> the supervisor stops eOn -> oracle detour ->
refit -> aKMC resumes (a new eOn segment for the new potential) -> validate -> package. The stop rule is the
campaign's one `StopPolicy`, so unphysical structures do not stop this route either.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopipec_fw.campaign import stage_records
from autopipec_fw.eon.state import DRIVER_CALLS, RunState, read_calls_file
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.runner import LocalRunner, campaign_status, submit
from tests.fixtures.eon import processes_in
from tests.fixtures.launchpad import EmbeddedDB
from tests.workflow.test_loop import tiny_campaign


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ext_pot_route_runs_the_whole_loop(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    base = tiny_campaign(tmp_path, name="tiny-extpot")
    campaign = base.model_copy(update={"akmc": base.akmc.model_copy(update={
        "max_iterations": 6, "eon": base.akmc.eon.model_copy(update={"potential_mode": "ext_pot"})})})
    layout, fw_id, _ = submit(campaign, lp)
    final = LocalRunner(lp, embedded_db.launchpad_file, layout, fw_id, workers=2, poll=0.5).run()
    st = campaign_status(lp, fw_id)
    rec = stage_records(layout)
    akmc = {k: {f: r.get(f) for f in ("status", "segment", "n_candidates", "n_selected", "kmc_steps", "max_gamma")}
            for k, r in rec.items() if k.startswith("akmc_")}
    assert final == "COMPLETED", (st.errors, akmc)

    assert rec["akmc_000"]["status"] == "stopped" and rec["akmc_000"]["n_selected"] >= 1
    assert "fit_001" in rec and rec["akmc_001"]["segment"] == 2
    runs = layout.akmc_runs()
    seg1 = runs.segments()[0].path
    # eOn called the driver: its force calls were counted, and its stop (exit 100) ended the first segment
    calls, max_gamma = read_calls_file(seg1 / DRIVER_CALLS)
    assert calls > 0 and max_gamma > campaign.gamma.threshold
    stop = RunState.load(seg1).stops[0]
    assert "extrapolation" in stop.reason and stop.max_gamma > campaign.gamma.threshold
    cfg = (seg1 / "config.ini").read_text()
    assert "potential = ext_pot" in cfg and "ext_pot_path = " + str(seg1 / "pace_driver") in cfg
    # the driver ran with the campaign's stop rule
    wrapper = (seg1 / "pace_driver").read_text()
    assert "'--min-distance-factor', '0.65'" in wrapper and "'--gamma-max', '5.0'" in wrapper
    report = json.loads((layout.akmc / "report.json").read_text())
    assert report["kmc_steps"] >= 1 and [s["segment"] for s in report["segments"]][:2] == [1, 2]
    assert processes_in(layout.akmc) == []
    assert st.package and Path(st.package).is_file()
