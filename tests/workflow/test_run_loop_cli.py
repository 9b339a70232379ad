"""`mlip-auto run-loop` as a user runs it: embedded server started and stopped, the whole campaign, the package in
dist/; run again, it continues (here: reports the finished package) instead of starting over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.launchpad import free_port
from tests.workflow.test_loop import tiny_campaign

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_run_loop_end_to_end_and_again(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    campaign = tiny_campaign(tmp_path, name="cli-loop").model_copy(update={"workdir": None})
    cfg = ws / "campaign.yaml"
    cfg.write_text(campaign.to_yaml())
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    argv = ["mlip-auto", "run-loop", "--config", str(cfg), "--port", str(free_port())]

    r = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, check=False, timeout=2300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    zips = list((tmp_path / "dist").glob("tiny-loop-1.0.0.zip"))  # package.name of the tiny campaign
    assert len(zips) == 1
    assert "done:" in r.stderr and str(zips[0]) in r.stderr
    # the embedded server it started is stopped again
    st = subprocess.run(["mlip-auto", "db", "status", "--json"], cwd=ws, env=env, capture_output=True, text=True,
                        check=False)
    assert json.loads(st.stdout)["running"] is False
    stages = {p.stem for p in (ws / "campaigns" / "cli-loop" / "stages").glob("*.json")}
    assert {"fit_000", "akmc_000", "validate", "package"} <= stages

    t0 = time.monotonic()
    again = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing" in again.stderr and time.monotonic() - t0 < 120
    assert len(list((tmp_path / "dist").glob("*.zip"))) == 1  # nothing released twice
