"""The issue's user path with real `mlip-auto run-loop` processes on a tiny campaign: finished, then amended
(more KMC steps, a new version) it continues and releases again; a deleted training set then stops the next
stage with a message naming the file and the missing rows (never a silent restart); a label-affecting change is
refused saying how to start a new campaign."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.launchpad import free_port
from tests.workflow.test_loop import tiny_campaign

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_finished_campaign_amended_extended_and_guarded(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    campaign = tiny_campaign(tmp_path, name="amend-loop").model_copy(update={"workdir": None})
    settings = campaign.model_dump(mode="json")
    cfg = ws / "campaign.yaml"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", COLUMNS="1000")  # status lines unwrapped
    argv = ["mlip-auto", "run-loop", "--config", str(cfg), "--port", str(free_port())]
    root = ws / "campaigns" / "amend-loop"

    def run(update: dict | None = None, timeout: float = 1700) -> subprocess.CompletedProcess:
        for section, fields in (update or {}).items():
            settings[section].update(fields)
        cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
        return subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, check=False, timeout=timeout)

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / "dist" / "tiny-loop-1.0.0.zip").exists()
    steps = json.loads(max(root.glob("stages/akmc_*.json")).read_text())["kmc_steps"]
    assert steps >= 1

    # label-neutral: more KMC steps and a new version; the finished workflow is extended and released again
    more = run({"akmc": {"kmc_steps": steps + 1}, "package": {"version": "1.1.0"}})
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "extended" in more.stderr and (tmp_path / "dist" / "tiny-loop-1.1.0.zip").exists()
    done = max(json.loads(p.read_text())["kmc_steps"] for p in root.glob("stages/akmc_*.json"))
    assert done >= steps + 1
    history = json.loads((root / "amendments.json").read_text())
    assert {"akmc.kmc_steps", "package.version"} <= set(history[-1]["changes"])

    # the training set deleted, then extended again: the next stage refuses, naming the file and what is missing
    (root / "data" / "training.pckl.gzip").unlink()
    guarded = run({"akmc": {"kmc_steps": done + 1}, "package": {"version": "1.2.0"}})
    assert guarded.returncode == 1, guarded.stdout[-3000:] + guarded.stderr[-3000:]
    out = guarded.stdout + guarded.stderr
    assert "training.pckl.gzip: missing" in out and "rows are missing" in out
    assert not (root / "data" / "training.pckl.gzip").exists()  # never restarted
    assert not (tmp_path / "dist" / "tiny-loop-1.2.0.zip").exists()

    # label-affecting: refused at once, saying how to start a new campaign
    refused = run({"akmc": {"temperature": 500.0}}, timeout=120)
    assert refused.returncode == 2 and "akmc.temperature" in refused.stderr
    assert "another name or workdir" in refused.stderr and "Traceback" not in refused.stderr
