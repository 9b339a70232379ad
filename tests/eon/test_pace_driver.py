"""pace_driver.py: eOn's ext_pot contract, the gamma stop, daemon vs fallback, concurrency, reload, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from autopipec_fw.eon.extpot import pace_driver, protocol
from autopipec_fw.eon.extpot.evaluator import (
    driver_environment,
    driver_path,
    evaluator_stats,
    start_evaluator,
    stop_evaluator,
    write_driver_wrapper,
)
from autopipec_fw.eon.state import read_calls_file
from autopipec_fw.gamma import read_candidates, read_stop_file

from .conftest import (
    PY,
    adatom_slab,
    bulk_cell,
    eon_input_text,
    pace_driver_alive,
    read_output,
    reference,
    run,
    write_input,
)

OUT = pace_driver.OUTPUT_NAME


def _assert_matches(folder: Path, pot, atoms) -> None:
    e_ref, f_ref, _ = reference(pot, atoms)
    e, f = read_output(folder)
    assert f.shape == (len(atoms), 3)
    assert abs(e - e_ref) <= 1e-6
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6)


def test_driver_script_is_executable_with_shebang():
    p = driver_path()
    assert p.is_absolute() and p.name == "pace_driver.py"
    assert os.access(p, os.X_OK)
    assert p.read_text().startswith("#!/usr/bin/env python3\n")


def test_help_names_every_environment_variable(tmp_path):
    r = run([str(driver_path()), "--help"], tmp_path)
    assert r.returncode == 0
    for env, _, _ in pace_driver.OPTIONS.values():
        assert env in r.stdout


def test_fallback_by_path_matches_pyace(tmp_path, cu_surface_potential):
    """The package script run by path (its own Python), no evaluator: loads the potential itself."""
    atoms = adatom_slab(rattle=0.05, seed=1)
    wd = write_input(tmp_path / "job" / "extpot_1_0", atoms)
    r = run(
        [str(driver_path())],
        wd,
        PACE_DRIVER_POTENTIAL=str(cu_surface_potential.yaml),
        PACE_DRIVER_PYTHON=PY,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    _assert_matches(wd, cu_surface_potential, atoms)
    # defaults: nothing recorded for a structure the potential knows
    assert not (tmp_path / "job" / "pace_stop").exists()


def test_daemon_matches_pyace_and_fallback(tmp_path, daemon, cu_surface_potential):
    structures = [adatom_slab(0.05, seed=2), bulk_cell(0.01, seed=3), bulk_cell(-0.01, seed=4)]
    for i, atoms in enumerate(structures):
        wd = write_input(tmp_path / f"d{i}", atoms)
        r = run([str(daemon.wrapper)], wd)
        assert r.returncode == 0, r.stderr
        _assert_matches(wd, cu_surface_potential, atoms)
    # the same call without an evaluator gives the same bytes
    wf = write_input(tmp_path / "f0", structures[0])
    r = run([str(daemon.fallback_wrapper)], wf)
    assert r.returncode == 0, r.stderr
    assert (wf / OUT).read_bytes() == (tmp_path / "d0" / OUT).read_bytes()


def test_forwarding_imports_only_the_standard_library(tmp_path, daemon):
    wd = write_input(tmp_path, adatom_slab())
    r = subprocess.run(
        [PY, "-X", "importtime", "-I", "-S", str(daemon.wrapper)],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    mods = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "pace_driver" in mods
    heavy = {
        m for m in mods if m.split(".")[0] in {"numpy", "ase", "pyace", "autopipec_fw", "tensorflow", "scipy"}
    }
    assert not heavy
    assert "os" not in mods  # not even os: the forwarding path uses the built-in posix module
    assert (wd / OUT).exists()


def _stop_checks(wd: Path, run_dir: Path, pot, atoms, r, gamma_max: float) -> None:
    assert r.returncode == 100, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "gamma" in r.stderr
    assert not (wd / OUT).exists()
    _, _, g_ref = reference(pot, atoms)
    assert g_ref.max() > gamma_max
    (stop,) = read_stop_file(run_dir / "pace_stop")
    assert stop["max_gamma"] == pytest.approx(g_ref.max(), rel=1e-6)
    assert stop["threshold"] == gamma_max
    (cand,) = read_candidates(run_dir / "pace_candidates")
    assert cand.info["candidate_file"] == stop["candidate"]
    assert cand.info["reason"] == "stop"
    np.testing.assert_allclose(cand.arrays["gamma"], g_ref, rtol=1e-6)
    np.testing.assert_allclose(cand.positions, atoms.positions, atol=1e-8)
    np.testing.assert_allclose(cand.cell, atoms.cell, atol=1e-8)
    e_ref, f_ref, _ = reference(pot, atoms)
    assert cand.get_potential_energy() == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(cand.get_forces(), f_ref, atol=1e-6)


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
def test_extrapolation_stop(tmp_path, mode, daemon, cu_bulk_potential):
    """A bulk-only potential on the adatom slab: gamma > 5 -> exit 100, stop line, candidate with its gamma."""
    atoms = adatom_slab(0.02, seed=5)
    run_dir = tmp_path / "run"
    wd = write_input(run_dir / "job" / "extpot_7_0", atoms)
    (wd / OUT).write_text("stale\n")
    args = ["--potential", str(cu_bulk_potential.yaml), "--gamma-max", "5"]
    args += ["--stop-file", str(run_dir / "pace_stop"), "--candidates-dir", str(run_dir / "pace_candidates")]
    # the module evaluator serves another potential by default: the call names its own
    wrapper = daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper
    r = run([str(wrapper), *args], wd)
    _stop_checks(wd, run_dir, cu_bulk_potential, atoms, r, 5.0)


def test_select_band_records_without_stopping(tmp_path, daemon, cu_surface_potential):
    atoms = adatom_slab(0.1, seed=6)
    _, _, g = reference(cu_surface_potential, atoms)
    lower, upper = 0.5 * g.max(), max(2.0 * g.max(), 5.0)
    wd = write_input(tmp_path / "job" / "extpot_1_0", atoms)
    r = run(
        [str(daemon.wrapper), "--gamma-select", str(lower), "--gamma-max", str(upper)],
        wd,
        PACE_DRIVER_CANDIDATES_DIR=str(tmp_path / "cands"),
        PACE_DRIVER_STOP_FILE=str(tmp_path / "STOP"),
    )
    assert r.returncode == 0, r.stderr
    _assert_matches(wd, cu_surface_potential, atoms)
    (c,) = read_candidates(tmp_path / "cands")
    assert c.info["reason"] == "select"
    np.testing.assert_allclose(c.arrays["gamma"], g, rtol=1e-6)
    assert not (tmp_path / "STOP").exists()


def test_eight_simultaneous_calls(tmp_path, daemon, cu_surface_potential, cu_bulk_potential):
    """Six ordinary calls and two stops at once through one evaluator: every answer right, two stop lines."""
    jobs = []
    n0, _ = read_calls_file(daemon.calls_file)
    for i in range(8):
        atoms = adatom_slab(0.04, seed=100 + i) if i % 4 else bulk_cell(0.005 * i, seed=100 + i)
        wd = write_input(tmp_path / f"extpot_{i}_0", atoms)
        extra = ["--potential", str(cu_bulk_potential.yaml)] if i in (3, 6) else []
        extra += ["--stop-file", str(tmp_path / "STOP"), "--candidates-dir", str(tmp_path / "cands")]
        p = subprocess.Popen(
            [str(daemon.wrapper), *extra], cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        jobs.append((i, atoms, wd, p))
    for i, atoms, wd, p in jobs:
        _, err = p.communicate(timeout=120)
        if i in (3, 6):
            assert p.returncode == 100, err
            assert not (wd / OUT).exists()
        else:
            assert p.returncode == 0, err
            _assert_matches(wd, cu_surface_potential, atoms)
    assert len(read_stop_file(tmp_path / "STOP")) == 2
    assert len(read_candidates(tmp_path / "cands", reason="stop")) == 2
    n1, max_gamma = read_calls_file(daemon.calls_file)
    assert n1 - n0 == 8
    assert max_gamma is not None and max_gamma > 5


def test_reload_when_potential_files_change(tmp_path, daemon, cu_bulk_potential, cu_surface_potential):
    pot_dir = tmp_path / "pot"
    pot_dir.mkdir()
    yaml, asi = pot_dir / "potential.yaml", pot_dir / "potential.asi"
    shutil.copy(cu_bulk_potential.yaml, yaml)
    shutil.copy(cu_bulk_potential.asi, asi)
    atoms = bulk_cell(0.01, seed=9)
    args = ["--potential", str(yaml), "--gamma-max", "1e9"]
    wd = write_input(tmp_path / "a", atoms)
    assert run([str(daemon.wrapper), *args], wd).returncode == 0
    _assert_matches(wd, cu_bulk_potential, atoms)
    loads = evaluator_stats(daemon.run_dir)["loads"]
    # a retrain replaces the files (atomically, as the fit stage does)
    for src, dst in ((cu_surface_potential.yaml, yaml), (cu_surface_potential.asi, asi)):
        shutil.copy(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)
    wd2 = write_input(tmp_path / "b", atoms)
    r = run([str(daemon.wrapper), *args], wd2)
    assert r.returncode == 0, r.stderr
    _assert_matches(wd2, cu_surface_potential, atoms)
    assert evaluator_stats(daemon.run_dir)["loads"] == loads + 1


def _good_text() -> str:
    return eon_input_text(bulk_cell(seed=1))


def _replace_line(text: str, n: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[n] = new
    return "".join(lines)


BAD_INPUTS = {
    "empty": ("", "empty"),
    "no-trailing-newline": (_good_text()[:-7], "truncated"),
    "box-only": ("".join(_good_text().splitlines(keepends=True)[:3]), "truncated"),
    "short-atom-line": (_good_text().rsplit("\t", 1)[0] + "\n", "4 fields"),
    "short-box-row": (_replace_line(_good_text(), 1, "0.0\t3.6\n"), "box row"),
    "non-numeric": (_replace_line(_good_text(), 5, "29\t1.0\tabc\t2.0\n"), "'abc' is not a number"),
    "nan": (_replace_line(_good_text(), 5, "29\t1.0\tnan\t2.0\n"), "non-finite"),
    "inf-box": (_replace_line(_good_text(), 0, "inf\t0\t0\n"), "non-finite"),
    "non-integer-Z": (_replace_line(_good_text(), 5, "Cu\t1.0\t1.0\t2.0\n"), "not an integer"),
    "unknown-Z": (_replace_line(_good_text(), 5, "79\t1.0\t1.0\t2.0\n"), "[79]"),
    "impossible-Z": (_replace_line(_good_text(), 5, "0\t1.0\t1.0\t2.0\n"), "atomic number 0 outside 1-118"),
    "zero-volume-box": (_replace_line(_good_text(), 2, "0\t0\t0\n"), "zero volume"),
}


def _check_error(r, wd: Path, needle: str) -> None:
    assert r.returncode not in (0, 100), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert not (wd / OUT).exists()
    assert not [p for p in wd.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(tmp_path, daemon, mode, case):
    text, needle = BAD_INPUTS[case]
    wd = write_input(tmp_path / "extpot_1_0", text)
    (wd / OUT).write_text("stale result\n")
    r = run([str(daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper)], wd)
    _check_error(r, wd, needle)
    assert r.returncode == pace_driver.EXIT_INPUT


def _potential_cases(tmp: Path, pot) -> dict[str, tuple[list[str], str]]:
    garbage = tmp / "garbage.yaml"
    garbage.write_text("elements: [Cu\nthis is: not: a potential\n")
    shutil.copy(pot.asi, tmp / "garbage.asi")
    bad_asi = tmp / "bad.asi"
    bad_asi.write_bytes(b"\x00\x01not an active set")
    noasi = tmp / "noasi.yaml"
    shutil.copy(pot.yaml, noasi)
    return {
        "missing": (["--potential", str(tmp / "nope.yaml")], "not found"),
        "garbage": (["--potential", str(garbage)], "cannot load potential"),
        "bad-asi": (["--potential", str(pot.yaml), "--active-set", str(bad_asi)], "cannot load active set"),
        "missing-asi": (["--potential", str(noasi)], "active set not found"),
        "yace": (["--potential", str(pot.yace)], "B-basis"),
        "directory": (["--potential", str(tmp)], "not a regular file"),
    }


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
@pytest.mark.parametrize("case", ["missing", "garbage", "bad-asi", "missing-asi", "yace", "directory"])
def test_bad_potential(tmp_path, daemon, cu_surface_potential, mode, case):
    args, needle = _potential_cases(tmp_path, cu_surface_potential)[case]
    wd = write_input(tmp_path / "extpot_1_0", _good_text())
    r = run([str(daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper), *args], wd)
    _check_error(r, wd, needle)
    assert r.returncode == pace_driver.EXIT_POTENTIAL


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--gamma-max", "abc"], "PACE_DRIVER_GAMMA_MAX"),
        (["--gamma-max", "nan"], "PACE_DRIVER_GAMMA_MAX"),
        (["--gamma-select", "7"], "below gamma-max"),
        (["--bogus", "1"], "unknown option --bogus"),
        (["--potential"], "needs a value"),
    ],
)
def test_bad_options(tmp_path, daemon, args, needle):
    wd = write_input(tmp_path / "extpot_1_0", _good_text())
    r = run([str(daemon.wrapper), *args], wd)
    _check_error(r, wd, needle)


def test_no_potential_configured(tmp_path):
    wd = write_input(tmp_path / "extpot_1_0", _good_text())
    r = run([str(driver_path())], wd, PACE_DRIVER_PYTHON=PY)
    _check_error(r, wd, "PACE_DRIVER_POTENTIAL")


def test_missing_input_file(tmp_path, daemon):
    r = run([str(daemon.wrapper)], tmp_path)
    _check_error(r, tmp_path, pace_driver.INPUT_NAME)


def test_evaluator_lifecycle_kill_fallback_and_watch(tmp_path, cu_surface_potential):
    """Killed evaluator: calls fall back; stop_evaluator cleans up. Watched process gone: the evaluator exits."""
    run_dir = tmp_path / "run"
    atoms = bulk_cell(seed=11)
    wd = write_input(run_dir / "extpot_1_0", atoms)
    h = start_evaluator(run_dir, cu_surface_potential.yaml, cu_surface_potential.asi)
    w = write_driver_wrapper(run_dir / "drv", run_dir=run_dir, potential=cu_surface_potential.yaml)
    assert h.ping()
    os.kill(h.pid, signal.SIGKILL)
    for _ in range(200):
        if not pace_driver_alive(h.pid):
            break
        time.sleep(0.02)
    assert not pace_driver_alive(h.pid)
    assert Path(h.socket).exists()  # stale socket left by the kill
    r = run([str(w)], wd)
    assert r.returncode == 0, r.stderr
    _assert_matches(wd, cu_surface_potential, atoms)
    assert stop_evaluator(run_dir) is False
    assert not Path(h.socket).exists() and not (run_dir / "pace_evaluator.pid").exists()

    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        h2 = start_evaluator(
            run_dir, cu_surface_potential.yaml, cu_surface_potential.asi, watch_pid=sleeper.pid
        )
        assert h2.ping()
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.monotonic() + 15
    while pace_driver_alive(h2.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pace_driver_alive(h2.pid)
    assert not Path(h2.socket).exists() and not (run_dir / "pace_evaluator.pid").exists()
    assert stop_evaluator(run_dir) is False


def test_start_twice_replaces_and_refuses_nothing_else(tmp_path, cu_surface_potential):
    run_dir = tmp_path / "run"
    h1 = start_evaluator(run_dir, cu_surface_potential.yaml, cu_surface_potential.asi)
    h2 = start_evaluator(run_dir, cu_surface_potential.yaml, cu_surface_potential.asi)
    try:
        assert h1.pid != h2.pid and not pace_driver_alive(h1.pid) and h2.ping()
    finally:
        assert h2.stop() is True
    assert not pace_driver_alive(h2.pid)


def test_start_with_bad_potential_fails_clearly(tmp_path):
    with pytest.raises(Exception, match="not found"):
        start_evaluator(tmp_path / "run", tmp_path / "missing.yaml", None, timeout=60)
    assert not (tmp_path / "run" / "pace_evaluator.pid").exists()


def test_socket_path_for_long_run_dirs(tmp_path):
    short = protocol.socket_path_for(str(tmp_path))
    assert short == str(tmp_path / "pace_evaluator.sock")
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    p = protocol.socket_path_for(str(deep))
    assert len(p.encode()) <= 100 and p.endswith(".sock")
    assert p == protocol.socket_path_for(str(deep))  # the driver and the evaluator agree


def test_bare_path_with_environment_only(tmp_path, daemon, cu_surface_potential):
    """eOn's ext_pot_path = the package script, options from the environment (driver_environment)."""
    atoms = adatom_slab(0.03, seed=21)
    wd = write_input(tmp_path / "extpot_1_0", atoms)
    env = driver_environment(potential=cu_surface_potential.yaml, run_dir=daemon.run_dir, fallback=0)
    assert set(env) == {"PACE_DRIVER_POTENTIAL", "PACE_DRIVER_RUN_DIR", "PACE_DRIVER_FALLBACK"}
    r = run([str(driver_path())], wd, **env)  # whatever python3 is on PATH: forwarding needs no packages
    assert r.returncode == 0, r.stderr
    _assert_matches(wd, cu_surface_potential, atoms)


def test_wrapper_for_an_interpreter_path_with_spaces(tmp_path, daemon):
    odd = tmp_path / "my python" / "bin"
    odd.mkdir(parents=True)
    (odd / "python").symlink_to(PY)
    w = write_driver_wrapper(tmp_path / "drv", python=str(odd / "python"), run_dir=daemon.run_dir, fallback=0)
    assert w.read_text().startswith("#!/bin/sh\n")
    wd = write_input(tmp_path / "extpot_1_0", adatom_slab())
    r = run([str(w)], wd)
    assert r.returncode == 0, r.stderr
    assert (wd / OUT).exists()
    with pytest.raises(TypeError, match="unknown driver option"):
        write_driver_wrapper(tmp_path / "x", gamma=3)


def test_evaluator_command_line_detach_and_stop(tmp_path, cu_surface_potential):
    """What a user with their own eOn runs: start in the background, then stop by the PID file."""
    run_dir = tmp_path / "run"
    mod = ["-m", "autopipec_fw.eon.extpot.evaluator", "--run-dir", str(run_dir)]
    r = run([PY, *mod, "--potential", str(cu_surface_potential.yaml), "--detach"], tmp_path)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip())
    assert pace_driver_alive(pid)
    wd = write_input(run_dir / "extpot_1_0", bulk_cell(seed=31))
    assert (
        run([str(driver_path())], wd, PACE_DRIVER_RUN_DIR=str(run_dir), PACE_DRIVER_FALLBACK="0").returncode
        == 0
    )
    r = run([PY, *mod, "--stop"], tmp_path)
    assert r.returncode == 0 and "stopped" in r.stdout
    for _ in range(100):
        if not pace_driver_alive(pid):
            break
        time.sleep(0.05)
    assert not pace_driver_alive(pid)
    assert not (run_dir / "pace_evaluator.sock").exists()
