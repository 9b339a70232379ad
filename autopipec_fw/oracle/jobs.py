"""custodian `Job`s of one single point, one per code, all run in the calculation folder.

The folder holds `input.extxyz` (the structure) and `oracle_parameters.json` (the code's parameters for this
structure, k-points included). The SCF handlers (oracle/handlers.py) correct that parameters file between
attempts; each job reads it again at every `run`, so a correction takes effect on the next attempt.

- `GpawJob`: a Python process (`python -m autopipec_fw.oracle.gpaw_run <folder>`, or the MPI launcher given
  as `oracle.command`) runs GPAW; output: `gpaw.txt` (GPAW's own log), `gpaw.err`, `gpaw_result.extxyz`.
- `EspressoJob`: writes `espresso.pwi` with ASE and runs `pw.x -in espresso.pwi` (or `oracle.command`);
  output: `espresso.pwo`, `espresso.err`, the `pwscf.save/` folder.
- `EmtJob`: ASE's EMT in-process (instant; no process to supervise), output `emt_result.extxyz`.

`read_results(calculator, folder)` reads energy, forces and stress back (the validators and the oracle stage).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from custodian.custodian import Job

log = logging.getLogger(__name__)

INPUT_FILE = "input.extxyz"
PARAMS_FILE = "oracle_parameters.json"
GPAW_TXT = "gpaw.txt"
GPAW_ERR = "gpaw.err"
GPAW_RESULT = "gpaw_result.extxyz"
PW_INPUT = "espresso.pwi"
PW_OUTPUT = "espresso.pwo"
PW_ERR = "espresso.err"
EMT_RESULT = "emt_result.extxyz"
# what the runner prints (stderr) when GPAW's SCF did not converge (GPAW's txt does not say it)
GPAW_SCF_MARK = "SCF_NOT_CONVERGED"
PW_SCF_MARK = "convergence NOT achieved"
PW_SCF_OK = "convergence has been achieved"


def read_parameters(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / PARAMS_FILE).read_text())


def write_parameters(folder: Path, params: dict[str, Any]) -> None:
    from autopipec_fw.training.locking import atomic_write_text

    atomic_write_text(Path(folder) / PARAMS_FILE, json.dumps(params, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray | tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def read_input(folder: Path) -> Atoms:
    from ase.io import read

    at = read(Path(folder) / INPUT_FILE, format="extxyz")
    assert isinstance(at, Atoms)
    return at


def _child_env() -> dict[str, str]:
    """The environment of the code: one OpenMP thread unless set, and this autopipec_fw first on the path
    (the GPAW runner is `python -m autopipec_fw.oracle.gpaw_run`: the child runs the same code as we do)."""
    import autopipec_fw

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(Path(autopipec_fw.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


class _ProcessJob(Job):
    """A code run as a child process in the folder; `run` returns its Popen (custodian waits on it)."""

    stdout_name = ""
    stderr_name = ""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = list(argv) if argv else []
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def setup(self, directory: str = "./") -> None:
        return None

    def run(self, directory: str = "./") -> subprocess.Popen[bytes]:
        d = Path(directory)
        argv = self._command(d)
        log.info("%s: running %s", d, argv)
        out = open(d / self.stdout_name, "wb") if self.stdout_name else subprocess.DEVNULL  # noqa: SIM115
        err = open(d / self.stderr_name, "wb")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(argv, cwd=d, stdout=out, stderr=err, env=_child_env())
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
            err.close()
        return self._proc

    def postprocess(self, directory: str = "./") -> None:
        return None

    def terminate(self, directory: str = "./") -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class GpawJob(_ProcessJob):
    """GPAW in its own process. `argv`: the Python that runs it (an MPI launcher plus python, e.g.
    ``["mpirun", "-np", "4", "python3"]``); default this Python."""

    stdout_name = "gpaw.stdout"
    stderr_name = GPAW_ERR

    def _command(self, directory: Path) -> list[str]:
        return [*(self.argv or [sys.executable]), "-m", "autopipec_fw.oracle.gpaw_run", str(directory.resolve())]


class EspressoJob(_ProcessJob):
    """pw.x on `espresso.pwi`, written at every attempt from the parameters file. `argv` default ``["pw.x"]``."""

    stdout_name = PW_OUTPUT
    stderr_name = PW_ERR

    def _command(self, directory: Path) -> list[str]:
        write_pw_input(directory)
        return [*(self.argv or ["pw.x"]), "-in", PW_INPUT]


def write_pw_input(folder: Path) -> Path:
    """`espresso.pwi` from input.extxyz and the parameters file (pseudo_dir, pseudopotentials, kpts, koffset,
    input_data namelists)."""
    from ase.io.espresso import write_espresso_in

    folder = Path(folder)
    params = read_parameters(folder)
    input_data = params.pop("input_data", {}) or {}
    control = input_data.setdefault("control", {})
    control["pseudo_dir"] = params.pop("pseudo_dir")
    control.setdefault("outdir", ".")
    kpts = params.pop("kpts", None)
    koffset = params.pop("koffset", (0, 0, 0))
    pseudopotentials = params.pop("pseudopotentials")
    atoms = read_input(folder)
    path = folder / PW_INPUT
    with open(path, "w") as fd:
        write_espresso_in(
            fd, atoms, input_data=input_data, pseudopotentials=pseudopotentials,
            kpts=tuple(kpts) if kpts is not None else None, koffset=tuple(koffset), **params,
        )
    return path


class EmtJob(Job):
    """ASE's EMT, in-process: `run` computes and writes `emt_result.extxyz` (returns no process)."""

    def __init__(self) -> None:
        pass

    def setup(self, directory: str = "./") -> None:
        return None

    def run(self, directory: str = "./") -> None:
        from ase.calculators.emt import EMT

        d = Path(directory)
        atoms = read_input(d)
        atoms.calc = EMT(**read_parameters(d))
        write_result(d / EMT_RESULT, atoms)

    def postprocess(self, directory: str = "./") -> None:
        return None


def label_energy(atoms: Atoms) -> float:
    """The energy a label carries: the free energy (force-consistent), the one whose gradient the forces are.
    With smearing, GPAW's default `get_potential_energy()` is the extrapolation to zero width instead; measured on
    the GPAW example (Fermi-Dirac 0.25 eV), the two differ by 50-56 meV/atom and the difference varies by 2-4
    meV/atom between a slab, a displaced slab and bulk cells: energies and forces of one label would disagree.
    Calculators without a free energy give their energy."""
    from ase.calculators.calculator import PropertyNotImplementedError

    try:
        return float(atoms.get_potential_energy(force_consistent=True))
    except PropertyNotImplementedError:
        return float(atoms.get_potential_energy())


def write_result(path: Path, atoms: Atoms, with_stress: bool | None = None) -> None:
    """Energy, forces (and stress for fully periodic cells) of `atoms` into `path` (extxyz, via a temp file)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    results: dict[str, Any] = {"energy": label_energy(atoms), "forces": np.array(atoms.get_forces())}
    if with_stress if with_stress is not None else atoms.pbc.all():
        try:
            results["stress"] = np.array(atoms.get_stress())
        except Exception as e:  # some setups (e.g. GPAW LCAO) give no stress: keep energy and forces
            log.warning("%s: no stress (%s)", path.parent, e)
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.calc = SinglePointCalculator(out, **results)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, out, format="extxyz")
    os.replace(tmp, path)


def make_job(calculator: str, argv: list[str] | None) -> Job:
    if calculator == "gpaw":
        return GpawJob(argv)
    if calculator == "espresso":
        return EspressoJob(argv)
    if calculator == "emt":
        return EmtJob()
    raise ValueError(f"no custodian job for calculator {calculator!r} here (vasp: oracle/vasp.py)")


def read_results(calculator: str, folder: Path) -> dict[str, Any]:
    """Energy (eV), forces (eV/Å, input order) and stress (eV/Å³, Voigt) of a finished run in `folder`.
    Raises on a missing, unreadable or non-finite result."""
    from ase.io import read

    folder = Path(folder)
    if calculator == "espresso":
        text = (folder / PW_OUTPUT).read_text(errors="replace")
        if PW_SCF_MARK in text or PW_SCF_OK not in text:
            raise ValueError(f"{PW_OUTPUT}: SCF not converged")
        at = read(folder / PW_OUTPUT, format="espresso-out", index=-1)
    else:
        at = read(folder / (GPAW_RESULT if calculator == "gpaw" else EMT_RESULT), format="extxyz")
    assert isinstance(at, Atoms)
    res = at.calc.results if at.calc is not None else {}
    if "energy" not in res or "forces" not in res:
        raise ValueError("no energy or forces in the output")
    out: dict[str, Any] = {"energy": float(res["energy"]), "forces": np.array(res["forces"], dtype=float)}
    if "stress" in res and res["stress"] is not None:
        out["stress"] = np.array(res["stress"], dtype=float)
    inp = read_input(folder)
    if not inp.pbc.all():  # stress of a cell with vacuum/non-periodic directions is not a label
        out.pop("stress", None)
    n = len(inp)
    if out["forces"].shape != (n, 3):
        raise ValueError(f"forces of shape {out['forces'].shape}, expected ({n}, 3)")
    if not (np.isfinite(out["energy"]) and np.isfinite(out["forces"]).all()):
        raise ValueError("non-finite energy or forces")
    return out
