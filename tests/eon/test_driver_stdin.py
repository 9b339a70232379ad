"""The driver's seed contract: ``pace_driver.py < from_eon_to_extpot`` (structure on standard input, energy and
forces on standard output, the same stop rule and exit codes), through real driver processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from autopipec_fw.eon.extpot import pace_driver
from autopipec_fw.eon.extpot.evaluator import driver_path
from autopipec_fw.gamma import read_candidates, read_stop_file

from .conftest import PY, adatom_slab, clean_env, eon_input_text, reference, run, write_input

IN, OUT = pace_driver.INPUT_NAME, pace_driver.OUTPUT_NAME


def _parse_answer(text: str) -> tuple[float, np.ndarray]:
    lines = text.splitlines()
    return float(lines[0]), np.array([[float(x) for x in ln.split()] for ln in lines[1:]])


def _redirected(cmd: list[str], cwd: Path, infile: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``cmd < infile`` run in ``cwd``."""
    with open(infile, "rb") as fh:
        return subprocess.run(
            cmd, cwd=cwd, stdin=fh, env=clean_env(**env), capture_output=True, text=True, timeout=300
        )


def _wrapper(daemon, mode: str) -> str:
    return str(daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper)


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
def test_redirected_file_answers_on_stdout(tmp_path, daemon, cu_surface_potential, mode):
    """The seed command, run in eOn's call folder itself: the answer goes to stdout, no result file is written,
    and it is byte for byte what the file protocol writes."""
    atoms = adatom_slab(0.05, seed=41)
    wd = write_input(tmp_path / "extpot_1_0", atoms)
    r = _redirected([_wrapper(daemon, mode)], wd, wd / IN)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert not (wd / OUT).exists()
    e, f = _parse_answer(r.stdout)
    e_ref, f_ref, _ = reference(cu_surface_potential, atoms)
    assert f.shape == (len(atoms), 3)
    assert abs(e - e_ref) <= 1e-6
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6)
    files = run([_wrapper(daemon, mode)], wd)  # stdin /dev/null: eOn's file protocol
    assert files.returncode == 0 and files.stdout == ""
    assert (wd / OUT).read_text() == r.stdout


def test_piped_into_an_empty_folder(tmp_path, daemon, cu_surface_potential):
    atoms = adatom_slab(0.03, seed=42)
    r = run([str(daemon.wrapper)], tmp_path, stdin=eon_input_text(atoms))
    assert r.returncode == 0, r.stderr
    e, f = _parse_answer(r.stdout)
    e_ref, f_ref, _ = reference(cu_surface_potential, atoms)
    assert abs(e - e_ref) <= 1e-6
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_bare_script_with_environment_reexecs_with_stdin(tmp_path, cu_surface_potential):
    """The package script by path (``/usr/bin/env python3``, maybe without pyace: it then re-executes itself with
    PACE_DRIVER_PYTHON and hands the structure it already read over); no evaluator anywhere."""
    atoms = adatom_slab(0.04, seed=43)
    src = tmp_path / IN
    src.write_text(eon_input_text(atoms))
    cwd = tmp_path / "here"
    cwd.mkdir()
    r = _redirected(
        [str(driver_path())],
        cwd,
        src,
        PACE_DRIVER_POTENTIAL=str(cu_surface_potential.yaml),
        PACE_DRIVER_PYTHON=PY,
    )
    assert r.returncode == 0, r.stderr
    e, _ = _parse_answer(r.stdout)
    assert abs(e - reference(cu_surface_potential, atoms)[0]) <= 1e-6


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
def test_stop_on_stdin(tmp_path, daemon, cu_bulk_potential, mode):
    """The same stop rule: gamma above the threshold -> exit 100, nothing on stdout, the stop line and the
    candidate written; the design's "weird structure" test."""
    atoms = adatom_slab(0.02, seed=5)
    args = ["--potential", str(cu_bulk_potential.yaml), "--gamma-max", "5"]
    args += ["--stop-file", str(tmp_path / "STOP"), "--candidates-dir", str(tmp_path / "cands")]
    r = run([_wrapper(daemon, mode), *args], tmp_path, stdin=eon_input_text(atoms))
    assert r.returncode == pace_driver.EXIT_STOP, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "gamma" in r.stderr
    (stop,) = read_stop_file(tmp_path / "STOP")
    _, _, g_ref = reference(cu_bulk_potential, atoms)
    assert stop["max_gamma"] == pytest.approx(g_ref.max(), rel=1e-6) and g_ref.max() > 5
    (cand,) = read_candidates(tmp_path / "cands")
    np.testing.assert_allclose(cand.positions, atoms.positions, atol=1e-8)


def test_stop_defaults_to_the_current_folder(tmp_path, cu_bulk_potential):
    """Without --run-dir or stop paths, a stop from stdin is recorded in the current folder."""
    r = run(
        [str(driver_path())],
        tmp_path,
        stdin=eon_input_text(adatom_slab(0.02, seed=6)),
        PACE_DRIVER_POTENTIAL=str(cu_bulk_potential.yaml),
        PACE_DRIVER_PYTHON=PY,
    )
    assert r.returncode == pace_driver.EXIT_STOP, r.stderr
    assert len(read_stop_file(tmp_path / "pace_stop")) == 1
    assert len(read_candidates(tmp_path / "pace_candidates")) == 1


BAD_STDIN = {
    "empty": (b"", "standard input is empty"),
    "nul": (b"1 0 0\n0 1 0\n0 0 1\n29 0\x00 0 0\n", "NUL byte"),
    "not-utf8": (b"\xff\xfe 0 0\n0 1 0\n0 0 1\n29 0 0 0\n", "not text"),
    "same-place": (
        b"7.6 0 0\n0 7.6 0\n0 0 7.6\n29 1 1 1\n29 1 1 1\n",
        "atoms 1 and 2 are 0 Å apart",
    ),
}


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
@pytest.mark.parametrize("case", sorted(BAD_STDIN))
def test_bad_stdin(tmp_path, daemon, mode, case):
    data, needle = BAD_STDIN[case]
    p = subprocess.run(
        [_wrapper(daemon, mode), "--io", "stdin"],
        cwd=tmp_path,
        input=data,
        env=clean_env(),
        capture_output=True,
        timeout=300,
    )
    err = p.stderr.decode()
    assert p.returncode == pace_driver.EXIT_INPUT, err
    assert p.stdout == b""
    assert len(err.strip().splitlines()) == 1 and err.startswith("pace_driver: ")
    assert needle in err


def test_pipe_beside_eons_file_means_eons_protocol(tmp_path, daemon):
    """eOn's own stdin may be a pipe: in a folder holding from_eon_to_extpot, auto mode answers eOn's way."""
    wd = write_input(tmp_path / "extpot_1_0", adatom_slab(0.01, seed=44))
    r = run([str(daemon.wrapper)], wd, stdin="this is not what eOn wrote\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and (wd / OUT).exists()
    forced = run([str(daemon.wrapper), "--io", "stdin"], wd, stdin=(wd / IN).read_text())
    assert forced.returncode == 0 and forced.stdout == (wd / OUT).read_text()


@pytest.mark.parametrize(
    "args,stdin,needle",
    [
        (["--io", "sideways"], None, "expected one of auto, files, stdin"),
        (["--io", "files"], "1 0 0\n", f"no {IN}"),
        (["--timeout", "-1"], None, "PACE_DRIVER_TIMEOUT"),
    ],
)
def test_io_options(tmp_path, daemon, args, stdin, needle):
    r = run([str(daemon.wrapper), *args], tmp_path, stdin=stdin)
    assert r.returncode == pace_driver.EXIT_INPUT, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_silent_stdin_times_out(tmp_path, daemon):
    """A pipe that never delivers (nor closes) is refused after --timeout, not waited on forever."""
    p = subprocess.Popen(
        [str(daemon.wrapper), "--io", "stdin", "--timeout", "0.5"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        text=True,
    )
    t0 = time.monotonic()
    try:
        p.wait(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        p.kill()
        assert p.stderr is not None
        err = p.stderr.read()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()
        p.wait()
    assert p.returncode == pace_driver.EXIT_INPUT, err
    assert "nothing arrived on standard input" in err
    assert 0.4 < elapsed < 10


_EON_POINT = """
import json, sys
import numpy as np
import pyeonclient as pec
params = pec.Parameters()
params.load("config.ini")
pot = pec.make_potential(params)
m = pec.Matter(pot, params)
m.con2matter("pos.con")
print(json.dumps({"energy": float(m.potential_energy), "forces": np.array(m.forces, dtype=float).tolist()}))
"""


def test_real_eon_ext_pot_with_a_pipe_on_stdin(tmp_path, daemon, cu_surface_potential):
    """eOn's own ExtPot (pyeonclient) calls the driver while eOn's standard input is an open pipe that never
    delivers: the driver must answer eOn's files, not wait on the pipe (it would time out after 5 s)."""
    import json

    from ase.io import read, write

    atoms = adatom_slab(0.03, seed=45)
    write(tmp_path / "pos.con", atoms, format="eon")
    (tmp_path / "config.ini").write_text(
        f"[Main]\njob = point\n\n[Potential]\npotential = ext_pot\next_pot_path = {daemon.wrapper}\n"
    )
    p = subprocess.Popen(
        [PY, "-c", _EON_POINT],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(PACE_DRIVER_TIMEOUT="5"),
        text=True,
    )
    try:
        out, err = p.communicate(timeout=120)  # closes stdin only after the process has finished
    finally:
        p.kill()
    assert p.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    seen = read(tmp_path / "pos.con", format="eon")  # what eOn read: .con keeps fewer digits
    seen.pbc = True
    e_ref, f_ref, _ = reference(cu_surface_potential, seen)
    assert abs(got["energy"] - e_ref) <= 1e-6
    np.testing.assert_allclose(np.array(got["forces"]), f_ref, rtol=0, atol=1e-6)
