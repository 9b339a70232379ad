"""`mlip-auto status` on a recorded campaign (real embedded server, real launches): compact tables with whole
paths, and `--json` whose numbers are the campaign folder's stage records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from autopipec_fw.runner import error_message
from tests.fixtures.launchpad import EmbeddedDB
from tests.fixtures.recorded_campaign import GENERATIONS, recorded_campaign

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def _status(db: EmbeddedDB, *extra: str) -> subprocess.CompletedProcess:
    env = dict(db.env(), PYTHONPATH=str(ROOT), COLUMNS="80")
    r = subprocess.run(["mlip-auto", "status", *extra], cwd=db.workspace, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_status_tables_and_json_match_the_records(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    rc = recorded_campaign(embedded_db.launchpad(), tmp_path)
    records = {p.stem: json.loads(p.read_text()) for p in (rc.root / "stages").glob("*.json")}
    assert len([k for k in records if k.startswith("fit_")]) == len(GENERATIONS)

    doc = json.loads(_status(embedded_db, "--json").stdout)
    assert isinstance(doc, list) and len(doc) == 1
    st = doc[0]
    assert {"name", "state", "campaign_dir", "fireworks", "generations", "stops", "failures", "oracle_calls",
            "kmc_steps", "simulated_time"} <= set(st)
    assert st["state"] == "FIZZLED" and st["campaign_dir"] == str(rc.root)
    assert st["fireworks"] == {"COMPLETED": 12, "FIZZLED": 1}
    assert st["oracle_calls"] == sum(r["labelled"] for k, r in records.items() if k.startswith("oracle_"))
    for g in st["generations"]:
        rec = records[f"fit_{g['generation']:03d}"]
        assert g["structures"] == rec["training_set_size"]
        assert g["test_energy_rmse"] == rec["metrics"]["test_energy_rmse"]
        assert g["test_force_rmse"] == rec["metrics"]["test_force_rmse"]
        assert g["seconds"] == rec["seconds"]
    assert [g["generation"] for g in st["generations"]] == [0, 1, 2]
    assert [s["iteration"] for s in st["stops"]] == [0, 1, 2]
    for s in st["stops"]:
        rec = records[f"akmc_{s['iteration']:03d}"]
        assert (s["max_gamma"], s["n_candidates"], s["n_selected"]) == \
            (rec["max_gamma"], rec["n_candidates"], rec["n_selected"])
        labels = records.get(f"oracle_iter_{s['iteration']:03d}_0000", {}).get("labelled", 0)
        assert s["n_labelled"] == labels and s["not_labelled"] == rec["n_selected"] - labels
    last = st["stops"][-1]
    assert last["not_labelled"] == 1 and last["why_not_labelled"].startswith("loop ended: iteration cap")
    assert st["kmc_steps"] == max(r["kmc_steps"] for k, r in records.items() if k.startswith("akmc_"))
    [failure] = st["failures"]
    assert failure["firework"] == "recorded: package" and failure["fw_id"] == rc.fw_ids["package"]
    assert failure["message"] == f"RuntimeError: {rc.failure}"
    assert failure["launch_dir"] and Path(failure["launch_dir"]).is_dir()

    text = _status(embedded_db).stdout
    assert "\x1b[" not in text and "..." not in text and "…" not in text
    lines = text.splitlines()
    assert any(line.startswith("campaign recorded  [FIZZLED]  folder ") and line.endswith(str(rc.root))
               for line in lines)
    assert any(rc.failure in line and line.startswith("failed: recorded: package: RuntimeError: ") for line in lines)
    assert f"launch folder {failure['launch_dir']}" in text  # whole, on one line
    gen_rows = [line.split() for line in lines if line.strip().startswith("gen_0")]
    assert [r[:5] for r in gen_rows] == [[f"gen_{i:03d}", str(n), f"{te:.2f}", f"{tf:.1f}", f"{tre:.2f}"]
                                         for i, (n, te, tf, tre, _, _) in enumerate(GENERATIONS)]
    stop_rows = [line.split() for line in lines if line.strip()[:1].isdigit() and len(line.split()) >= 6]
    assert [r[:6] for r in stop_rows] == [["0", "41.5", "6", "2", "2", "0"], ["1", "12.2", "4", "2", "2", "0"],
                                          ["2", "7.5", "3", "1", "0", "1"]]
    assert "stop 2: 1 selected structure(s) not labelled (loop ended: iteration cap reached (3)" in text
    assert "loop end: iteration cap reached (3)" in text


def test_error_message_is_the_exception_not_the_last_traceback_line() -> None:
    trace = ('Traceback (most recent call last):\n  File "/x/campaign.py", line 3, in fit\n    raise FitError(msg)\n'
             "autopipec_fw.training.fit.FitError: /runs/gen_001.partial-9: pacemaker exited with code 1; see "
             "/runs/gen_001.partial-9/pacemaker.out\n  tail line 1\n  tail line 2\n")
    first, text = error_message(trace)
    assert first == "FitError: /runs/gen_001.partial-9: pacemaker exited with code 1; see " \
                    "/runs/gen_001.partial-9/pacemaker.out"
    assert text.endswith("tail line 2") and text.startswith("autopipec_fw.training.fit.FitError: ")
    assert error_message("ValueError: bad\n")[0] == "ValueError: bad"
