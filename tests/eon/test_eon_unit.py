"""Fast tests of the eOn stage pieces (no full aKMC run): config.ini and pos.con, the run folder rules, the
process-tree kill, the custodian handlers, stop collection and hand-back, the report, and one process search of
our client on EMT."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from autopipec_fw.config import EonSettings, GammaSettings
from autopipec_fw.eon.akmc import (
    CANDIDATES_DIR,
    STOP_FILE,
    EonRunError,
    EonRunOptions,
    EonWrapper,
    next_run_dir,
)
from autopipec_fw.eon.client.search import ClientSettings, run_job
from autopipec_fw.eon.handlers import (
    ClientFailureHandler,
    ExtrapolationHandler,
    RoundLimitHandler,
    StaleLockHandler,
    lock_is_stale,
)
from autopipec_fw.eon.jobs import kill_eon_tree
from autopipec_fw.eon.report import build_report
from autopipec_fw.eon.state import RunState
from autopipec_fw.gamma import StopPolicy
from tests.fixtures.eon import processes_in, quick_akmc

EMT = EonRunOptions(client_potential="emt")


def _wrapper(run_dir: Path, **kw) -> EonWrapper:
    return EonWrapper(
        run_dir, run_dir / "none.yaml", run_dir / "none.asi", quick_akmc(**kw), GammaSettings(), EMT
    )


def test_config_and_pos_con(tmp_path, demo_atoms):
    w = _wrapper(
        tmp_path / "run", kmc_steps=3, temperature=450.0, num_clients=3, searches_per_round=5, seed=7,
        saddle_max_iterations=321,
    )
    w.setup(demo_atoms)
    cp = configparser.ConfigParser()
    cp.read(tmp_path / "run" / "config.ini")
    assert cp["Main"]["job"] == "akmc"
    assert float(cp["Main"]["temperature"]) == 450.0
    assert cp["Main"]["random_seed"] == "7"
    assert cp["Communicator"]["type"] == "local"
    assert cp["Communicator"]["number_of_CPUs"] == "3"
    assert cp["Communicator"]["num_jobs"] == "5"
    assert cp["AKMC"]["max_kmc_steps"] == "3"
    assert float(cp["AKMC"]["confidence"]) == 0.5
    assert cp["Saddle Search"]["max_iterations"] == "321"
    client = Path(cp["Communicator"]["client_path"])
    assert client.is_absolute() and os.access(client, os.X_OK)
    # pos.con: same atoms, the fixed bottom layer kept
    pos = read(tmp_path / "run" / "pos.con", format="eon")
    assert len(pos) == len(demo_atoms)
    fixed_in = set(demo_atoms.constraints[0].get_indices())
    fixed_out = set(pos.constraints[0].get_indices())
    assert fixed_in and fixed_in == fixed_out
    assert np.allclose(np.sort(pos.positions[:, 2]), np.sort(demo_atoms.positions[:, 2]), atol=1e-5)


def test_ext_pot_config_uses_absolute_driver(tmp_path, demo_atoms):
    run = tmp_path / "run"
    (tmp_path / "p.yaml").write_text("x")
    (tmp_path / "p.asi").write_text("x")
    akmc = quick_akmc(eon=EonSettings(runtime="local", potential_mode="ext_pot"))
    w = EonWrapper(run, tmp_path / "p.yaml", tmp_path / "p.asi", akmc, GammaSettings(threshold=7.0))
    w.setup(demo_atoms)
    cp = configparser.ConfigParser()
    cp.read(run / "config.ini")
    assert cp["Potential"]["potential"] == "ext_pot"
    driver = Path(cp["Potential"]["ext_pot_path"])
    assert driver.is_absolute() and os.access(driver, os.X_OK)
    text = driver.read_text()
    assert "--gamma-max" in text and "7.0" in text and str(run / STOP_FILE) in text


def test_external_runtime_needs_a_client(tmp_path, demo_atoms):
    (tmp_path / "p.yaml").write_text("x")
    (tmp_path / "p.asi").write_text("x")
    akmc = quick_akmc(eon=EonSettings(runtime="external", client_path="/nonexistent/eonclient"))
    w = EonWrapper(tmp_path / "run", tmp_path / "p.yaml", tmp_path / "p.asi", akmc, GammaSettings())
    with pytest.raises(EonRunError, match="client_path"):
        w.setup(demo_atoms)


def test_folder_rules(tmp_path, demo_atoms):
    assert next_run_dir(tmp_path) == tmp_path / "runs" / "0001"
    (tmp_path / "runs" / "0001").mkdir(parents=True)
    assert next_run_dir(tmp_path) == tmp_path / "runs" / "0002"
    run = tmp_path / "run"
    with pytest.raises(EonRunError, match="nothing to resume"):
        _wrapper(run).setup(None)
    _wrapper(run).setup(demo_atoms)
    _wrapper(run).setup(demo_atoms)  # the same start: fine (a rerun)
    other = demo_atoms.copy()
    other.positions[-1, 0] += 0.5
    with pytest.raises(EonRunError, match="another starting structure"):
        _wrapper(run).setup(other)
    missing = EonWrapper(run, tmp_path / "no.yaml", tmp_path / "no.asi", quick_akmc(), GammaSettings())
    with pytest.raises(EonRunError, match="generation_yaml"):
        missing.setup(None)


FAKE_SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    # like eOn's local communicator: clients in sessions of their own, each with a child of its own
    for _ in range(2):
        subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"],
            start_new_session=True)
    print("ready", flush=True)
    time.sleep(300)
    """
)


def test_kill_eon_tree_leaves_nothing(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER], cwd=tmp_path, stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    before = processes_in(tmp_path)
    assert len(before) >= 5  # server, 2 clients, 2 grandchildren
    killed = kill_eon_tree(proc)
    assert proc.poll() is not None
    assert set(killed) >= {p for p, _ in before}
    assert processes_in(tmp_path) == []


def test_stale_lock_handler(tmp_path):
    run = tmp_path
    h = StaleLockHandler()
    assert not h.check(str(run))
    # the PID of a living process that is not an eOn server here (this test): stale, e.g. after a move
    (run / "lockfile").write_text(f"{os.getpid()}\n")
    assert lock_is_stale(run) and h.check(str(run))
    d = h.correct(str(run))
    assert not (run / "lockfile").exists()
    assert d["actions"][0]["action"] == "remove_stale_lockfile" and d["actions"][0]["pid"] == os.getpid()
    # a dead PID
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (run / "lockfile").write_text(f"{p.pid}\n")
    assert h.check(str(run))


def test_client_failure_handler(tmp_path):
    log = tmp_path / "akmc.log"
    log.write_text("x INFO:communicator: Job finished: jobs/scratch/0_0\n")
    h = ClientFailureHandler(log_offset=0, max_dead_rounds=2)
    assert not h.check(str(tmp_path))
    with log.open("a") as fh:
        fh.write("x WARNING:communicator: job failed: jobs/scratch/0_1 (return code -9)\n")
        fh.write("x WARNING:communicator: job failed: jobs/scratch/0_2 (return code 100)\n")
        fh.write("x INFO:communicator: Job finished: jobs/scratch/0_3\n")
    assert h.check(str(tmp_path))
    d = h.correct(str(tmp_path))
    assert d["actions"] and d["actions"][0]["dropped_searches"] == ["jobs/scratch/0_1"]  # 100 is not ours
    assert not h.check(str(tmp_path))  # already handled
    for i in (4, 5):  # two rounds in which every client failed: unrecoverable
        with log.open("a") as fh:
            fh.write(f"x WARNING:communicator: job failed: jobs/scratch/0_{i} (return code 1)\n")
        assert h.check(str(tmp_path))
        d = h.correct(str(tmp_path))
    assert d["actions"] == [] and "not recoverable" in d["errors"][-1]


def _round(fh, finished: list[int] = (), failed: list[tuple[int, int]] = ()) -> None:
    fh.write("2026-11-29 10:00:00 INFO:akmc: Eon version 3.6.0\n")
    for i in finished:
        fh.write(f"x INFO:communicator: Job finished: jobs/scratch/0_{i}\n")
    for i, rc in failed:
        fh.write(f"x WARNING:communicator: job failed: jobs/scratch/0_{i} (return code {rc})\n")


def test_client_failure_handler_continuous(tmp_path):
    """One server process, many rounds: a failed client is logged, eOn goes on; only rounds in a row in which
    every client failed end the run (a stop, exit 100, is not a failure here)."""
    log = tmp_path / "akmc.log"
    with log.open("w") as fh:
        _round(fh, finished=[0], failed=[(1, -9)])
        _round(fh, failed=[(2, 100)])
        _round(fh, finished=[3])
    h = ClientFailureHandler(log_offset=0, max_dead_rounds=2, continuous=True)
    assert h.is_monitor
    assert not h.check(str(tmp_path))
    with log.open("a") as fh:
        _round(fh, failed=[(4, 1), (5, 1)])
        _round(fh, failed=[(6, 1)])
    assert not h.check(str(tmp_path))  # the last round is still running: one dead round so far
    with log.open("a") as fh:
        _round(fh)
    assert h.check(str(tmp_path))
    d = h.correct(str(tmp_path))
    assert d["actions"] == [] and "2 rounds in a row" in d["errors"][-1]
    assert any("0_6 (return code 1)" in e for e in d["errors"])


def test_round_limit_handler_counts_rounds_of_this_call(tmp_path):
    log = tmp_path / "akmc.log"
    with log.open("w") as fh:
        for _ in range(5):  # an earlier call's rounds
            _round(fh, finished=[0])
    h = RoundLimitHandler(max_rounds=3, log_offset=log.stat().st_size)
    assert h.rounds(tmp_path) == 0 and not h.check(str(tmp_path))
    with log.open("a") as fh:
        for _ in range(3):
            _round(fh, finished=[1])
    assert h.rounds(tmp_path) == 3 and not h.check(str(tmp_path))
    with log.open("a") as fh:
        _round(fh)
    assert h.check(str(tmp_path))
    d = h.correct(str(tmp_path))
    assert h.reached and d["actions"] == [] and d["errors"][0].startswith("max_rounds (3) reached")


def test_server_mode(tmp_path, demo_atoms):
    (tmp_path / "p.yaml").write_text("x")
    (tmp_path / "p.asi").write_text("x")
    local = EonWrapper(tmp_path / "a", tmp_path / "p.yaml", tmp_path / "p.asi", quick_akmc(), GammaSettings())
    assert local.server_command()[-3:] == ["-m", "eon.server", "--continuous"]
    rounds = EonWrapper(tmp_path / "b", tmp_path / "p.yaml", tmp_path / "p.asi",
                        quick_akmc(eon=EonSettings(server_mode="rounds")), GammaSettings())
    assert rounds.server_command()[-2:] == ["-m", "eon.server"]


def _record_stop(run: Path, gamma: float = 42.0) -> None:
    from ase.build import bulk

    atoms = bulk("Cu", cubic=True)
    pol = StopPolicy(5.0, 2.0, run / STOP_FILE, run / CANDIDATES_DIR)
    assert pol.record(atoms, np.full(len(atoms), gamma), -1.0, np.zeros((len(atoms), 3)))
    pol.record(atoms.copy() * (1, 1, 1), np.full(len(atoms), 3.0), -1.0, np.zeros((len(atoms), 3)))


def test_extrapolation_handler_collects_once(tmp_path, demo_atoms):
    run = tmp_path / "run"
    w = _wrapper(run)
    w.setup(demo_atoms)
    h = ExtrapolationHandler(str(run / STOP_FILE), str(run / CANDIDATES_DIR), threshold=5.0, log_offset=0)
    assert not h.check(str(run))
    _record_stop(run)
    assert h.check(str(run))
    d = h.correct(str(run))
    assert d["actions"] == [] and "42" in d["errors"][0]
    assert not h.check(str(run))  # the stop file moved into stops/stop_001
    rec = h.last_stop
    assert rec is not None and rec.index == 1 and rec.max_gamma == pytest.approx(42.0)
    assert len(rec.candidates) == 2 and all(
        Path(c).parent == run / "stops" / "stop_001" for c in rec.candidates
    )
    assert not list((run / CANDIDATES_DIR).glob("*.extxyz"))
    # the run hands this stop back on its next call without running eOn, exactly once
    r = _wrapper(run).run(None)
    assert r.status == "stopped" and sorted(map(str, r.candidates)) == sorted(rec.candidates)
    assert RunState.load(run).stops[0].handed_back


def test_extrapolation_handler_collects_more_searches_before_stopping(tmp_path, demo_atoms):
    """With collect_searches, the first stop does not terminate: the handler waits until that many more searches
    (lines of our client's calls log) finished, or until collect_seconds passed."""
    run = tmp_path / "run"
    _wrapper(run).setup(demo_atoms)
    calls = run / "client_calls.jsonl"
    h = ExtrapolationHandler(str(run / STOP_FILE), str(run / CANDIDATES_DIR), threshold=5.0, log_offset=0,
                             collect_searches=3, collect_seconds=60)
    calls.write_text('{"job": "0_1"}\n')
    assert not h.check(str(run))
    _record_stop(run)
    assert not h.check(str(run))  # the stop is seen: collection starts
    calls.write_text(calls.read_text() + '{"job": "0_2"}\n{"job": "0_3"}\n')
    assert not h.check(str(run)) and h.collected == 2
    calls.write_text(calls.read_text() + '{"job": "0_4"}\n')
    assert h.check(str(run)) and h.collected == 3
    h.correct(str(run))
    assert "3 search(es) collected" in h.last_stop.reason and RunState.load(run).stops[0].collected_searches == 3
    # a collection that takes too long ends anyway
    h2 = ExtrapolationHandler(str(run / STOP_FILE), str(run / CANDIDATES_DIR), log_offset=0,
                              collect_searches=50, collect_seconds=0.2)
    _record_stop(run)
    assert not h2.check(str(run))
    time.sleep(0.3)
    assert h2.check(str(run))


def test_a_search_finishing_after_a_stop_only_collects(tmp_path, demo_atoms):
    """Our client: once the run's stop file holds a stop, a process search that finishes exits 101 without
    results.dat (eOn drops it), so its result never reaches eOn's tables."""
    from autopipec_fw.eon.client.search import _collecting

    stop = tmp_path / "pace_stop"
    s = ClientSettings(run_dir=str(tmp_path), potential="emt", collect_after=str(stop))
    assert not _collecting(s)
    stop.write_text("")
    assert not _collecting(s)
    stop.write_text('{"max_gamma": 9}\n')
    assert _collecting(s) and not _collecting(ClientSettings(run_dir=str(tmp_path), potential="emt"))


def test_stop_file_found_at_start_is_collected(tmp_path, demo_atoms):
    run = tmp_path / "run"
    _wrapper(run).setup(demo_atoms)
    _record_stop(run, gamma=77.0)  # e.g. the supervisor died right after the driver stopped
    r = _wrapper(run).run(None)
    assert r.status == "stopped" and r.max_gamma == pytest.approx(77.0) and len(r.candidates) == 2
    gammas = sorted(float(read(c).info["max_gamma"]) for c in r.candidates)
    assert gammas == pytest.approx([3.0, 77.0])
    assert json.loads(Path(r.report_path).read_text())["stops"][0]["handed_back"] is True


def test_report_reads_eon_state(tmp_path):
    (tmp_path / "dynamics.txt").write_text(
        "step-number reactant-id process-id product-id step-time total-time barrier rate energy\n"
        "----\n"
        "0 0 1 1 1.0e-06 1.0e-06 0.42 8.7e4 -100.0\n"
        "1 1 0 2 2.0e-06 3.0e-06 0.40 9.0e4 -100.0\n"
        "2 2 0"  # a torn line after a crash is ignored
    )
    (tmp_path / "info.txt").write_text(
        "[Simulation Information]\ntime_simulated = 3e-06\ncurrent_state = 2\n"
    )
    sd = tmp_path / "states" / "0"
    sd.mkdir(parents=True)
    (sd / "processtable").write_text(
        "proc # saddle energy prefactor product product energy product prefactor barrier rate repeats\n"
        "0 9.0 1e12 1 8.6 1e12 0.42 8.7e4 3\n"
    )
    (tmp_path / "client_calls.jsonl").write_text(
        json.dumps({"force_calls": 10, "potential_seconds": 0.1, "exit": 0, "max_gamma": 1.5})
        + "\n"
        + json.dumps({"force_calls": 5, "potential_seconds": 0.1, "exit": 100, "max_gamma": 9.0})
        + "\n"
    )
    rep = build_report(tmp_path)
    assert rep["kmc_steps"] == 2 and rep["simulated_time"] == pytest.approx(3e-6)
    assert rep["states_visited"] == [0, 1, 2]
    assert rep["processes"][0]["barrier"] == pytest.approx(0.42)
    assert rep["force_calls"]["total"] == 15 and rep["force_calls"]["max_gamma"] == pytest.approx(9.0)


def test_client_process_search_on_emt(tmp_path, demo_atoms):
    """One process search of our client (in-process EMT), from a displacement like the server's."""
    from ase.io import write

    job = tmp_path / "job"
    job.mkdir()
    w = _wrapper(tmp_path / "run")
    cp = w.config(1)
    cp["Main"]["job"] = "process_search"
    cp["Main"]["random_seed"] = "11"
    with (job / "config.ini").open("w") as fh:
        cp.write(fh)
    write(job / "pos.con", demo_atoms, format="eon")
    disp = demo_atoms.copy()
    mode = np.zeros((len(disp), 3))
    mode[-1] = [1.0, 0.0, -0.1]  # push the adatom towards the bridge site
    disp.positions[-1] += 0.1 * mode[-1] / np.linalg.norm(mode[-1])
    write(job / "displacement.con", disp, format="eon")
    np.savetxt(job / "direction.dat", mode)
    settings = ClientSettings(run_dir=str(tmp_path), potential="emt")
    cwd = os.getcwd()
    try:
        code, stats, kind = run_job(settings, job)
    finally:
        os.chdir(cwd)
    assert (code, kind) == (0, "process_search")
    res = dict(reversed(line.split(None, 1)) for line in (job / "results.dat").read_text().splitlines())
    assert res["termination_reason"] == "0", res
    assert int(res["total_force_calls"]) == stats.force_calls > 50
    barrier = float(res["barrier_reactant_to_product"])
    assert 0.2 < barrier < 1.0  # EMT hop of a Cu adatom on Cu(100): about 0.4 eV
    saddle = read(job / "saddle.con", format="eon")
    product = read(job / "product.con", format="eon")
    reactant = read(job / "reactant.con", format="eon")
    assert np.linalg.norm(product.positions[-1] - reactant.positions[-1]) > 2.0  # the adatom hopped
    assert len(np.loadtxt(job / "mode.dat")) == len(saddle)
    shutil.rmtree(job)


def test_external_runtime_config(tmp_path, demo_atoms):
    """A user's own eOn: their client and server command, the potential through ext_pot + pace_driver.py."""
    (tmp_path / "p.yaml").write_text("x")
    (tmp_path / "p.asi").write_text("x")
    client = tmp_path / "bin" / "eonclient"
    client.parent.mkdir()
    client.write_text("#!/bin/sh\nexit 0\n")
    client.chmod(0o755)
    eon = EonSettings(runtime="external", client_path=str(client), server_command=["eon-server"])
    w = EonWrapper(
        tmp_path / "run", tmp_path / "p.yaml", tmp_path / "p.asi", quick_akmc(eon=eon), GammaSettings()
    )
    w.setup(demo_atoms)
    cp = configparser.ConfigParser()
    cp.read(tmp_path / "run" / "config.ini")
    assert cp["Communicator"]["client_path"] == str(client)
    assert cp["Potential"]["potential"] == "ext_pot"
    assert w.server_command() == ["eon-server"]
    assert not (tmp_path / "run" / "eon_client").exists()  # nothing of ours stands in for eOn
    env = w._env()
    assert env["PACE_DRIVER_STOP_FILE"] == str(tmp_path / "run" / STOP_FILE)


def _emt_job(tmp_path: Path, demo_atoms) -> Path:
    from ase.io import write

    job = tmp_path / "run" / "jobs" / "scratch" / "0_0"
    job.mkdir(parents=True)
    cp = _wrapper(tmp_path / "run").config(1)
    cp["Main"]["job"] = "process_search"
    with (job / "config.ini").open("w") as fh:
        cp.write(fh)
    write(job / "pos.con", demo_atoms, format="eon")
    disp = demo_atoms.copy()
    disp.positions[-1] += [0.1, 0.0, 0.0]
    write(job / "displacement.con", disp, format="eon")
    mode = np.zeros((len(disp), 3))
    mode[-1, 0] = 1.0
    np.savetxt(job / "direction.dat", mode)
    return job


@pytest.mark.parametrize("with_worker", [False, True])
def test_client_script_with_and_without_worker(tmp_path, demo_atoms, with_worker):
    """The executable eOn starts: runs the job itself, or hands it to the warm worker; same answer."""
    from autopipec_fw.eon.client.worker import start_worker, stop_worker, write_client_script

    run = tmp_path / "run"
    _wrapper(run).setup(demo_atoms)
    job = _emt_job(tmp_path, demo_atoms)
    settings = ClientSettings(run_dir=str(run), potential="emt")
    settings.write(run / "client.json")
    script = write_client_script(run / "eon_client", run / "client.json")
    worker = start_worker(run / "client.json") if with_worker else None
    try:
        with (job / "stdout.dat").open("w") as out, (job / "stderr.dat").open("w") as err:
            p = subprocess.run([str(script)], cwd=job, stdout=out, stderr=err, timeout=300)
    finally:
        if worker is not None:
            assert stop_worker(run, worker)
    assert p.returncode == 0, (job / "stderr.dat").read_text()
    res = dict(reversed(line.split(None, 1)) for line in (job / "results.dat").read_text().splitlines())
    assert res["termination_reason"] == "0"
    calls = [json.loads(x) for x in (run / "client_calls.jsonl").read_text().splitlines()]
    assert calls[-1]["job"] == "0_0" and calls[-1]["force_calls"] == int(res["total_force_calls"])
    if with_worker:
        assert calls[-1]["pid"] != worker.pid  # a fork of the worker ran it
        assert calls[-1]["startup_seconds"] < 0.5  # no imports in the job's own process
    assert processes_in(run) == []


def test_unreadable_potential_fails_clearly(tmp_path, demo_atoms):
    (tmp_path / "bad.yaml").write_text("this is not an ACE potential\n")
    (tmp_path / "bad.asi").write_text("nor an active set\n")
    w = EonWrapper(
        tmp_path / "run", tmp_path / "bad.yaml", tmp_path / "bad.asi", quick_akmc(), GammaSettings()
    )
    r = w.run(demo_atoms)
    assert r.status == "failed"
    assert (
        "eon_worker.log" in r.message and r.message.count("|") >= 1
    )  # the log's last lines are in the message
    assert processes_in(tmp_path / "run") == []
