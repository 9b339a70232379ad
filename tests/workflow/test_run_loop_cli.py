"""`mlip-auto run-loop` as a user runs it: embedded server started and stopped; stopped mid-fit with SIGTERM it
leaves nothing running; run again it continues to the package in dist/; run once more it reports the finished
package instead of starting over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.eon import processes_in
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

    # interrupted (SIGTERM, as `kill` or a batch system's time limit sends) while the first fit runs
    first = subprocess.Popen(argv, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    generations = ws / "campaigns" / "cli-loop" / "generations"
    gen0 = generations / "gen_000"
    deadline = time.monotonic() + 600
    while not list(generations.glob("gen_000.partial-*")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)  # the generation is built under a temporary name
    assert list(generations.glob("gen_000.partial-*")), "the first fit never started"
    time.sleep(3)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, out[-2000:] + err[-2000:]
    deadline = time.monotonic() + 30
    while processes_in(ws) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_in(ws) == []  # no launcher, Firework, pacemaker or database left behind
    assert not (gen0 / "generation.json").exists()

    r = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, check=False, timeout=2300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "continuing" in r.stderr
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
