"""mlip-auto db / submit / status as a user runs them (subprocesses, embedded server, stock lpad)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.launchpad import free_port

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout[-1500:]} {r.stderr[-1500:]}"
    return r


def test_db_submit_status_round_trip(tmp_path: Path) -> None:
    port = str(free_port())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: clitest\nakmc:\n  kmc_steps: 2\n")
    try:
        out = run(["mlip-auto", "db", "start", "--port", port], tmp_path).stdout
        assert f"127.0.0.1:{port}" in out and (tmp_path / "my_launchpad.yaml").exists()
        assert "initialised a new FireWorks database" in out
        st = json.loads(run(["mlip-auto", "db", "status", "--json"], tmp_path).stdout)
        assert st["running"] and st["port"] == int(port)

        first = run(["mlip-auto", "submit", "--config", str(cfg)], tmp_path).stdout
        again = run(["mlip-auto", "submit", "--config", str(cfg)], tmp_path).stdout
        assert "added" in first and "already on the LaunchPad" in again
        assert (tmp_path / "campaigns" / "clitest" / "campaign.yaml").exists()

        # the stock lpad sees the same workflow (my_launchpad.yaml + FW_config.yaml in the folder)
        wfs = run(["lpad", "get_wflows", "-d", "count"], tmp_path).stdout
        assert wfs.strip().endswith("1")

        status = json.loads(run(["mlip-auto", "status", "--json"], tmp_path).stdout)
        assert [s["name"] for s in status] == ["clitest"]
        assert status[0]["fireworks"] == {"READY": 1, "WAITING": 4}
        assert status[0]["oracle_calls"] == 0
        table = run(["mlip-auto", "status"], tmp_path).stdout
        assert "campaign clitest" in table and "KMC steps" in table

        # a different campaign under the same folder name is refused, naming the file
        cfg.write_text("name: clitest\nakmc:\n  kmc_steps: 2\n  temperature: 500\n")
        bad = run(["mlip-auto", "submit", "--config", str(cfg)], tmp_path, check=False)
        assert bad.returncode == 2 and "campaign.yaml" in bad.stderr and "other settings" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        run(["mlip-auto", "db", "stop"], tmp_path, check=False)
    assert json.loads(run(["mlip-auto", "db", "status", "--json"], tmp_path, check=False).stdout)["running"] is False


def test_missing_launchpad_file_is_a_clear_error(tmp_path: Path) -> None:
    r = run(["mlip-auto", "status", "--launchpad", str(tmp_path / "nope.yaml")], tmp_path, check=False)
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
