"""Helpers for the driver tests: eOn-format input files, a reference PyACECalculator, running the driver."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100

from autopipec_fw.eon.extpot import pace_driver
from autopipec_fw.eon.extpot.evaluator import start_evaluator, stop_evaluator, write_driver_wrapper


def eon_input_text(atoms: Atoms) -> str:
    """What eOn's ExtPot writes: 3 box rows, then Z x y z per atom, tab-separated, 19 decimals."""
    rows = ["\t".join(f"{x:.19f}" for x in row) for row in np.asarray(atoms.cell)]
    rows += [
        f"{z}\t" + "\t".join(f"{x:.19f}" for x in p)
        for z, p in zip(atoms.numbers, atoms.positions, strict=True)
    ]
    return "\n".join(rows) + "\n"


def write_input(folder: Path, atoms: Atoms | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = atoms if isinstance(atoms, str) else eon_input_text(atoms)
    (folder / pace_driver.INPUT_NAME).write_text(text)
    return folder


def read_output(folder: Path) -> tuple[float, np.ndarray]:
    lines = (folder / pace_driver.OUTPUT_NAME).read_text().splitlines()
    return float(lines[0]), np.array([[float(x) for x in ln.split()] for ln in lines[1:]])


def adatom_slab(rattle: float = 0.0, seed: int = 0) -> Atoms:
    """The demo geometry: a Cu adatom on a 3x3x3 Cu(100) slab (28 atoms), fully periodic as eOn sees it."""
    a = fcc100("Cu", (3, 3, 3), vacuum=6.0)
    add_adsorbate(a, "Cu", 1.8, "hollow")
    a.pbc = True
    a.info.clear()
    if rattle:
        a.rattle(rattle, seed=seed)
    return a


def bulk_cell(strain: float = 0.0, rattle: float = 0.03, seed: int = 0) -> Atoms:
    a = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True).repeat((2, 2, 2))
    a.rattle(rattle, seed=seed)
    return a


def reference(pot, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces, per-atom gamma from PyACECalculator on the same potential."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(pot.yaml))
    calc.set_active_set(str(pot.asi))
    a = atoms.copy()
    a.calc = calc
    e = a.get_potential_energy()
    return e, a.get_forces(), np.array(calc.results["gamma"])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACE_DRIVER_")}
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd``; standard input is ``stdin`` (piped) or /dev/null, as eOn's usually is."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=clean_env(**env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class Daemon:
    run_dir: Path
    wrapper: Path  # forwards only (fallback off)
    fallback_wrapper: Path  # same options, no socket: always loads the potential itself
    calls_file: Path
    handle: object


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cu_surface_potential) -> Daemon:
    """An evaluator on the surface potential (started and stopped by our code; nothing left running)."""
    run_dir = tmp_path_factory.mktemp("run")
    calls = run_dir / "calls.txt"
    h = start_evaluator(
        run_dir, cu_surface_potential.yaml, cu_surface_potential.asi, gamma_max=5.0, calls_file=calls
    )
    common = dict(potential=cu_surface_potential.yaml, active_set=cu_surface_potential.asi, run_dir=run_dir)
    w = write_driver_wrapper(run_dir / "pace_driver", fallback=0, calls_file=calls, **common)
    fb = write_driver_wrapper(
        run_dir / "pace_driver_local",
        socket=run_dir / "nothing-listens-here.sock",
        calls_file=calls,
        **common,
    )
    yield Daemon(run_dir, w, fb, calls, h)
    assert stop_evaluator(run_dir) is True
    assert not pace_driver_alive(h.pid)
    assert not (run_dir / "pace_evaluator.sock").exists()
    assert not (run_dir / "pace_evaluator.pid").exists()


def pace_driver_alive(pid: int) -> bool:
    from autopipec_fw.processes import pid_alive as _pid_alive

    return _pid_alive(pid)


PY = sys.executable
