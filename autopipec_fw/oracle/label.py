"""Oracle stage: single points (energy, forces, stress) by calculator spec, one folder per structure.

`label_structures` runs each structure in `workdir/<structure_hash>/` (input.extxyz, the code's raw output,
result.extxyz, oracle.json with the k-point grid); a folder that already holds a result is not recomputed.
Every code runs under custodian (oracle/jobs.py, handlers.py, validators.py; VASP: vasp.py): an unconverged SCF
gets up to `oracle.max_scf_corrections` corrections (more iterations, gentler mixing), each logged in the
folder's `custodian.json`; a run that still fails, crashes or leaves no usable output raises `OracleError`
naming the folder, and writes no result: it never enters the training set.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from custodian import Custodian
from custodian.custodian import (
    CustodianError,
    MaxCorrectionsError,
    MaxCorrectionsPerHandlerError,
    MaxCorrectionsPerJobError,
)

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.calculators import (
    OracleConfigError,
    check_oracle,
    effective_parameters,
    espresso_parameters,
    oracle_argv,
    structure_parameters,
)
from autopipec_fw.oracle.handlers import scf_handlers
from autopipec_fw.oracle.jobs import (
    GPAW_ERR,
    PW_ERR,
    make_job,
    read_parameters,
    read_results,
    write_parameters,
)
from autopipec_fw.oracle.kpoints import KpointGrid
from autopipec_fw.oracle.validators import SinglePointValidator
from autopipec_fw.training.dataset import structure_hash
from autopipec_fw.training.locking import atomic_write_bytes, atomic_write_text, file_lock

log = logging.getLogger(__name__)

RESULT_FILE = "result.extxyz"
INPUT_FILE = "input.extxyz"
CUSTODIAN_FILE = "custodian.json"


class OracleError(RuntimeError):
    """A single point that failed for good; the message names the calculation folder."""


def oracle_hash(settings: OracleSettings) -> str:
    """Hash of the effective oracle settings (defaults included, and the k-point density of DFT codes, not the
    grid each structure gets from it); equals `settings.settings_hash()` for EMT."""
    eff = OracleSettings(
        calculator=settings.calculator, parameters=effective_parameters(settings),
        kpoint_density=settings.kpoint_density,
    )
    return eff.settings_hash()


def _n_corrections(folder: Path) -> int:
    try:
        runs = json.loads((folder / CUSTODIAN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return sum(len(r.get("corrections", [])) for r in runs)


def reference_energies_for(settings: OracleSettings, elements: Iterable[str]) -> dict[str, float] | None:
    """Per-element reference energies for a new training set: 0 for EMT (already relative energies);
    None (fitted on the first batch by the dataset) for DFT codes."""
    if settings.calculator == "emt":
        return {e: 0.0 for e in elements}
    return None


# ------------------------------------------------------------------------------------------- custodian
def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return " | ".join(lines[-n:])


def run_custodian(
    atoms: Atoms, settings: OracleSettings, folder: Path
) -> tuple[dict[str, Any], dict[str, Any], KpointGrid | None]:
    """One single point of EMT, GPAW or pw.x under custodian in `folder` (input.extxyz already there).

    Returns the results, the parameters of the attempt that succeeded (after corrections) and the k-point grid.
    Every attempt and correction is logged in `custodian.json`; a failure raises OracleError naming the folder.
    """
    name = settings.calculator
    params, grid = structure_parameters(settings, atoms)
    if name == "espresso":
        params = espresso_parameters(params, set(atoms.get_chemical_symbols()))
    write_parameters(folder, params)
    job = make_job(name, oracle_argv(settings) if name != "emt" else None)
    n_max = int(settings.max_scf_corrections)
    cust = Custodian(
        handlers=scf_handlers(name, n_max),
        jobs=[job],
        validators=[SinglePointValidator(name)],
        max_errors=n_max + 1,
        max_errors_per_job=n_max + 1,
        polling_time_step=1,
        directory=str(folder),
    )
    try:
        cust.run()
    except (MaxCorrectionsPerHandlerError, MaxCorrectionsError, MaxCorrectionsPerJobError):
        raise OracleError(
            f"{folder}: SCF did not converge after {n_max} correction(s) (oracle.max_scf_corrections = {n_max}); "
            f"the corrections are logged in {folder / CUSTODIAN_FILE}; no label written"
        ) from None
    except CustodianError as e:
        proc = getattr(job, "_proc", None)
        code = f"exit code {proc.returncode}, " if proc is not None and proc.returncode is not None else ""
        err = {"gpaw": GPAW_ERR, "espresso": PW_ERR}.get(name)
        last = _tail(folder / err) if err else ""
        raise OracleError(
            f"{folder}: {name} single point failed ({code}{e}){': ' + last if last else ''}; no label written, "
            "raw output kept in that folder"
        ) from None
    except OracleConfigError:
        raise
    except Exception as e:  # an in-process code (EMT) that raised
        raise OracleError(
            f"{folder}: {name} single point failed ({type(e).__name__}: {e}); raw output kept in that folder"
        ) from None
    return read_results(name, folder), read_parameters(folder), grid


# ------------------------------------------------------------------------------------------------ API
def _to_extxyz_bytes(atoms: Atoms) -> bytes:
    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue().encode()


def _read_result(path: Path) -> Atoms:
    from ase.io import read

    at = read(path, format="extxyz")
    assert isinstance(at, Atoms)
    return at


def _with_geometry_of(labelled: Atoms, atoms: Atoms) -> Atoms:
    """The labels of `labelled` on the exact geometry of `atoms` (the file keeps 8 decimals; the hash and the
    caller see their own numbers)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info.update(labelled.info)
    res = labelled.calc.results if labelled.calc is not None else {}
    out.calc = SinglePointCalculator(out, **{k: res[k] for k in ("energy", "forces", "stress") if k in res})
    return out


def _reuse(result: Path, ohash: str, atoms: Atoms) -> Atoms:
    at = _read_result(result)
    if at.info.get("oracle_hash") != ohash:
        raise OracleError(
            f"{result.parent}: holds a result of oracle settings {at.info.get('oracle_hash')}, not of the current "
            f"{ohash}; labels of different settings never mix: give this oracle its own folder"
        )
    return _with_geometry_of(at, atoms)


def _set_aside_failed_run(folder: Path) -> None:
    """Move what an earlier, unfinished attempt left in `folder` into `failed_run_<n>/` (kept, not overwritten)."""
    leftovers = [
        p
        for p in folder.iterdir()
        if p.name not in (".lock", INPUT_FILE) and not p.name.startswith("failed_run_")
    ]
    if not leftovers:
        return
    n = 0
    while (folder / f"failed_run_{n}").exists():
        n += 1
    dest = folder / f"failed_run_{n}"
    dest.mkdir()
    for p in leftovers:
        p.rename(dest / p.name)
    log.warning("%s: an earlier attempt did not finish; its files were moved to %s", folder, dest.name)


def label_one(atoms: Atoms, settings: OracleSettings, workdir: Path, source: str = "oracle") -> Atoms:
    """Label one structure in `workdir/<structure_hash>/` (reused when that folder already holds a result)."""
    h = structure_hash(atoms)
    folder = Path(workdir) / h
    result = folder / RESULT_FILE
    ohash = oracle_hash(settings)
    if result.exists():
        log.info("%s: already labelled, reusing", folder)
        return _reuse(result, ohash, atoms)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        if result.exists():  # another process finished it while we waited
            return _reuse(result, ohash, atoms)
        _set_aside_failed_run(folder)
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        atomic_write_bytes(folder / INPUT_FILE, _to_extxyz_bytes(clean))
        t0 = time.monotonic()
        if settings.calculator == "vasp":
            from autopipec_fw.oracle.vasp import run_vasp

            results, used, grid = run_vasp(clean, settings, folder)
        else:
            results, used, grid = run_custodian(clean, settings, folder)
        seconds = time.monotonic() - t0
        out = clean.copy()
        out.info.update(
            {"structure_hash": h, "oracle_hash": ohash, "oracle": settings.calculator, "source": source}
        )
        out.calc = SinglePointCalculator(out, **results)
        meta = {
            "structure_hash": h,
            "oracle_hash": ohash,
            "calculator": settings.calculator,
            "parameters": used,
            "kpoint_density": settings.kpoint_density if settings.calculator != "emt" else None,
            "kpoints": grid.as_dict() if grid is not None else None,
            "scf_corrections": _n_corrections(folder),
            "source": source,
            "seconds": round(seconds, 3),
            "energy": results["energy"],
        }
        atomic_write_text(folder / "oracle.json", json.dumps(meta, indent=2, default=str))
        atomic_write_bytes(result, _to_extxyz_bytes(out))  # written last: its presence means "finished"
        log.info("%s: %s single point in %.1f s", folder, settings.calculator, seconds)
        return _with_geometry_of(_read_result(result), atoms)


def label_structures(
    structures: Iterable[Atoms], settings: OracleSettings, workdir: Path, source: str = "oracle"
) -> list[Atoms]:
    """Energy, forces and stress for each structure (SinglePointCalculator attached, provenance in `info`:
    structure_hash, oracle_hash, oracle, source). One folder per structure under `workdir`."""
    structures = list(structures)
    bad = [i for i, at in enumerate(structures) if not isinstance(at, Atoms) or len(at) == 0]
    if bad:
        raise OracleError(f"structures {bad}: not structures to label (expected non-empty ase.Atoms)")
    effective_parameters(settings)  # refuse bad parameters before anything runs
    elements = {s for at in structures for s in at.get_chemical_symbols()}
    check_oracle(settings, elements)  # a missing code or pseudopotential is named before anything runs
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [label_one(at, settings, workdir, source) for at in structures]
