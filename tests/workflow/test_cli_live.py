"""run-loop's terminal output: the live view (rendered by rich on a recorded terminal), plain lines in a pipe, and
each log line once (FireWorks' own console handler dropped), DEBUG only with -v. The pipe test runs the real CLI
(embedded server, warm launcher) on a campaign whose oracle fails at once, so it takes seconds."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console

from autopipec_fw.cli_live import (
    ConsoleLogHandler,
    ProgressDisplay,
    progress_line,
    progress_view,
    setup_logging,
)
from autopipec_fw.runner import fit_progress
from tests.fixtures.launchpad import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def _figures(**over) -> dict:
    p = {"campaign": "demo", "elapsed": 3725.0, "iteration": 2, "max_iterations": 6, "kmc_steps": 3,
         "kmc_target": 5, "simulated_time": 1.5e-6, "oracle_calls": 42, "generations": 3, "stops": 2,
         "running": [{"name": "refit gen_002", "fw_id": 9, "seconds": 75.0, "done": 20, "total": 60,
                      "unit": "fit iterations"},
                     {"name": "oracle iter_001 0-1", "fw_id": 10, "seconds": 5.0, "done": None, "total": None,
                      "unit": ""}]}
    p.update(over)
    return p


def test_live_view_renders_bars_and_figures() -> None:
    console = Console(record=True, force_terminal=True, width=110, color_system="truecolor", file=io.StringIO())
    console.print(progress_view(_figures()))
    text = console.export_text(clear=False)
    assert "run-loop demo" in text and "elapsed 1:02:05" in text
    assert "refit gen_002  20/60 fit iterations  0:01:15" in text
    assert "oracle iter_001 0-1  0:00:05" in text
    assert re.search(r"iteration\s+[━╺╸]{30}\s+2 / 6", text)
    assert re.search(r"KMC steps\s+[━╺╸]{30}\s+3 / 5  \(1\.5e-06 s simulated\)", text)
    assert re.search(r"oracle calls\s+42", text) and "3   stops 2" in text
    styled = console.export_text(styles=True)
    assert "\x1b[" in styled  # a terminal gets colours and bars
    # bars 30 wide: the done part, then "╺" where the rest begins (20/60 -> 10, 3/5 -> 18)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert " " + "━" * 10 + "╺" in rows["stage"]
    assert " " + "━" * 18 + "╺" in rows["KMC"]


def test_live_view_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ProgressDisplay(console) as display:
        display.update(_figures(kmc_steps=1))
        display.live.refresh()
        display.update(_figures(kmc_steps=2))
        display.live.refresh()
    raw = out.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "1 / 5" in plain and "2 / 5" in plain and plain.count("run-loop demo") >= 2
    # between the frames the cursor goes back up over the previous one (rich's Live: erase line + cursor up)
    assert re.search(r"1 / 5.*?(\x1b\[2K\x1b\[1A)+.*?2 / 5", raw, re.S)


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    with ProgressDisplay(console) as display:
        display.update(_figures(kmc_steps=1))
        display.update(_figures(kmc_steps=1, elapsed=3726.0))  # only the clock moved: no new line
        display.update(_figures(kmc_steps=2))
    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()
    assert lines == [progress_line(_figures(kmc_steps=1)), progress_line(_figures(kmc_steps=2))]
    assert "stage refit gen_002 20/60 fit iterations (0:01:15), oracle iter_001 0-1 (0:00:05)" in lines[0]
    assert len(lines[0]) > 80  # one line, not wrapped at the console's width


def test_log_handler_keeps_long_paths_whole_and_levels() -> None:
    out = io.StringIO()
    handler = ConsoleLogHandler(Console(file=out, force_terminal=False, width=40), logging.INFO)
    logger = logging.getLogger("autopipec_fw.test_cli_live")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the handler's level decides
    logger.propagate = False
    try:
        long_path = "/very/long/" + "x" * 120 + "/[not markup]/file.json"
        logger.info("see %s", long_path)
        logger.debug("hidden")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert out.getvalue().count("\n") == 1 and long_path in out.getvalue() and "hidden" not in out.getvalue()


def test_fireworks_console_handler_is_dropped_once_we_log(tmp_path: Path) -> None:
    from autopipec_fw.launchpad.files import load_launchpad, write_launchpad_file

    handler = setup_logging(verbose=False, console=Console(file=io.StringIO()))
    try:
        lp = load_launchpad(write_launchpad_file(tmp_path, host="127.0.0.1", port=free_port()))
        stream_handlers = [h for h in lp.m_logger.handlers if type(h) is logging.StreamHandler]
        assert stream_handlers == []
        assert lp.m_logger.propagate
    finally:
        logging.getLogger().removeHandler(handler)


def test_fit_progress_reads_the_running_fit(tmp_path: Path) -> None:
    work = tmp_path / "gen_001.partial-123"
    work.mkdir()
    assert fit_progress(tmp_path, "gen_001") == (None, None)
    (work / "input.yaml").write_text(yaml.safe_dump({"fit": {"maxiter": 60}}))
    assert fit_progress(tmp_path, "gen_001") == (0, 60)
    (work / "log.txt").write_text("Iteration:  #0   Loss:\n" + "".join(
        f"2026-12-01 22:09:50,325 I - Iteration   #{i}    (4 evals):        Loss: 2.4934e-01\n" for i in range(1, 18)))
    assert fit_progress(tmp_path, "gen_001") == (17, 60)
    assert fit_progress(tmp_path, "gen_002") == (None, None)


def _run_loop(ws: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    return subprocess.run(["mlip-auto", *extra, "run-loop", "--config", str(ws / "c.yaml"), "--port",
                           str(free_port())], cwd=ws, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def _failing_campaign(tmp_path: Path, name: str) -> Path:
    ws = tmp_path / name
    ws.mkdir()
    missing = tmp_path / "broken" / "pw.x"  # exists (the pre-run check passes), fails when the oracle runs it
    if not missing.exists():
        missing.parent.mkdir()
        missing.write_text("#!/bin/sh\necho 'pw.x: broken on purpose' >&2\nexit 3\n")
        missing.chmod(0o755)
    (ws / "c.yaml").write_text(yaml.safe_dump({
        "name": "pipe-test", "oracle": {"calculator": "espresso", "command": str(missing)},
        "initial_data": {"n_strained": 2, "n_rattled": 1, "n_vacancy": 0, "n_surface": 0}}))
    return ws


def test_run_loop_in_a_pipe_is_plain_and_logs_each_line_once(tmp_path: Path) -> None:
    first = _run_loop(_failing_campaign(tmp_path, "ws"))
    assert first.returncode == 1, first.stderr[-3000:]
    both = first.stdout + first.stderr
    assert "\x1b[" not in both
    err = first.stderr.splitlines()
    # FireWorks' own handler wrote "2026-12-01 22:09:50,325 INFO Performing db tune-up" (on stdout) beside ours
    assert sum("Performing db tune-up" in line for line in both.splitlines()) == 1, both
    assert not [line for line in both.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", line)]
    logged = Counter(line.split(" ", 1)[1] for line in err if re.match(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", line))
    assert logged and max(logged.values()) == 1, logged.most_common(3)
    assert any(line.startswith("[0:00:") and "stage oracle initial 0-2" in line for line in err)
    assert "ended FIZZLED; fix the cause and run the same command again to continue" in first.stderr
    failed = [line for line in first.stdout.splitlines() if line.startswith("failed: pipe-test: oracle initial")]
    assert len(failed) == 1 and str(tmp_path / "ws") in failed[0]  # the status table, path whole
    # a new database: FireWorks logs "RESTARTED fw_id, launch_id to (1, 1)" and "Updating indices..." at DEBUG
    assert " DEBUG " not in first.stderr and "RESTARTED" not in first.stderr and "Updating indices" not in both

    verbose = _run_loop(_failing_campaign(tmp_path, "ws-verbose"), "-v")
    assert verbose.returncode == 1
    assert re.search(r"^\d\d:\d\d:\d\d DEBUG launchpad: RESTARTED fw_id", verbose.stderr, re.M), verbose.stderr
    assert sum("RESTARTED fw_id" in line for line in verbose.stderr.splitlines()) == 1
    assert " DEBUG pymongo" not in verbose.stderr  # the driver's wire chatter stays out even with -v
    assert "\x1b[" not in verbose.stderr
