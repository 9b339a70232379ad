"""Oracle stage: single points (energy, forces, stress) by calculator spec, one folder per structure.

`label_structures` runs each structure in `workdir/<structure_hash>/` (input.extxyz, the code's raw output,
result.extxyz, oracle.json); a folder that already holds a result is not recomputed. Failed SCF cycles get
custodian-style corrections (more iterations, smaller mixing), each logged in `corrections.json`, then a clear
`OracleError`.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.calculators import OracleConfigError, effective_parameters, make_calculator
from autopipec_fw.training.dataset import structure_hash
from autopipec_fw.training.locking import atomic_write_bytes, atomic_write_text, file_lock

log = logging.getLogger(__name__)

RESULT_FILE = "result.extxyz"
INPUT_FILE = "input.extxyz"
CORRECTIONS_FILE = "corrections.json"


class OracleError(RuntimeError):
    """A single point that failed for good; the message names the calculation folder."""


def oracle_hash(settings: OracleSettings) -> str:
    """Hash of the effective oracle settings (defaults included); equals `settings.settings_hash()` for EMT."""
    eff = OracleSettings(calculator=settings.calculator, parameters=effective_parameters(settings))
    return eff.settings_hash()


def reference_energies_for(settings: OracleSettings, elements: Iterable[str]) -> dict[str, float] | None:
    """Per-element reference energies for a new training set: 0 for EMT (already relative energies);
    None (fitted on the first batch by the dataset) for DFT codes."""
    if settings.calculator == "emt":
        return {e: 0.0 for e in elements}
    return None


# ------------------------------------------------------------------------------------------------ SCF
def _scf_failed(settings: OracleSettings, exc: BaseException, folder: Path) -> bool:
    name = settings.calculator
    if name == "gpaw":
        return type(exc).__name__ == "KohnShamConvergenceError" or "did not converge" in str(exc).lower()
    if name == "espresso":
        pwo = folder / "espresso.pwo"
        text = pwo.read_text(errors="replace") if pwo.exists() else ""
        return "convergence NOT achieved" in text
    return False


def _scf_correction(settings: OracleSettings, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """More SCF iterations and gentler mixing; returns the new parameters and the actions (custodian style)."""
    p = copy.deepcopy(params)
    actions: list[dict] = []
    if settings.calculator == "gpaw":
        old_iter = int(p.get("maxiter", 333))
        p["maxiter"] = 2 * old_iter
        actions.append({"dict": "parameters", "action": {"_set": {"maxiter": p["maxiter"]}}, "was": old_iter})
        mixer = dict(p.get("mixer") or {})
        old_beta = float(mixer.get("beta", 0.05))
        mixer.update(
            {"beta": round(old_beta / 2, 6), "nmaxold": int(mixer.get("nmaxold", 5)), "weight": 50.0}
        )
        p["mixer"] = mixer
        actions.append(
            {"dict": "parameters", "action": {"_set": {"mixer.beta": mixer["beta"]}}, "was": old_beta}
        )
    elif settings.calculator == "espresso":
        el = p.setdefault("input_data", {}).setdefault("electrons", {})
        old_steps = int(el.get("electron_maxstep", 100))
        old_beta = float(el.get("mixing_beta", 0.7))
        el["electron_maxstep"] = 2 * old_steps
        el["mixing_beta"] = round(old_beta / 2, 6)
        actions.append(
            {
                "dict": "input_data.electrons",
                "action": {"_set": {"electron_maxstep": el["electron_maxstep"]}},
                "was": old_steps,
            }
        )
        actions.append(
            {
                "dict": "input_data.electrons",
                "action": {"_set": {"mixing_beta": el["mixing_beta"]}},
                "was": old_beta,
            }
        )
    return p, actions


def _keep_attempt_output(settings: OracleSettings, folder: Path, attempt: int) -> None:
    names = {"gpaw": ["gpaw.txt"], "espresso": ["espresso.pwi", "espresso.pwo"]}.get(settings.calculator, [])
    for n in names:
        f = folder / n
        if f.exists():
            f.rename(folder / f"{f.stem}.attempt{attempt}{f.suffix}")


def _log_correction(folder: Path, entry: dict) -> None:
    path = folder / CORRECTIONS_FILE
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(entry)
    atomic_write_text(path, json.dumps(entries, indent=2))


def _run_ase(atoms: Atoms, settings: OracleSettings, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Energy, forces, stress with SCF corrections; returns the results and the parameters actually used."""
    params = effective_parameters(settings)
    symbols = set(atoms.get_chemical_symbols())
    attempt = 0
    while True:
        calc = make_calculator(settings, folder, symbols, params)
        work = atoms.copy()
        work.set_constraint()
        work.calc = calc
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces()
            # never accept unconverged labels, even when the code exited 0
            if settings.calculator == "espresso" and _scf_failed(settings, RuntimeError(), folder):
                raise RuntimeError("pw.x reported 'convergence NOT achieved'")
            results: dict[str, Any] = {"energy": float(energy), "forces": np.array(forces)}
            if work.pbc.all():
                try:
                    results["stress"] = np.array(work.get_stress())
                except Exception as e:  # some setups cannot give stress; keep energy and forces
                    log.warning("%s: no stress (%s)", folder, e)
            raw = getattr(calc, "parameters", None)
            used = {k: v for k, v in (raw if isinstance(raw, dict) else params).items() if k != "txt"}
            if settings.calculator == "gpaw":
                del calc  # closes the txt file
            return results, used
        except OracleConfigError:
            raise
        except Exception as exc:
            if not _scf_failed(settings, exc, folder):
                raise OracleError(
                    f"{folder}: {settings.calculator} single point failed ({type(exc).__name__}: {exc}); "
                    "raw output kept in that folder"
                ) from None
            _keep_attempt_output(settings, folder, attempt)
            if attempt >= settings.max_scf_corrections:
                _log_correction(folder, {"attempt": attempt, "errors": ["scf_unconverged"], "actions": None})
                raise OracleError(
                    f"{folder}: SCF did not converge after {attempt} correction(s) "
                    f"(oracle.max_scf_corrections = {settings.max_scf_corrections}); corrections are logged in "
                    f"{folder / CORRECTIONS_FILE}"
                ) from None
            params, actions = _scf_correction(settings, params)
            _log_correction(folder, {"attempt": attempt, "errors": ["scf_unconverged"], "actions": actions})
            log.warning("%s: SCF unconverged, retrying with %s", folder, actions)
            attempt += 1


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

            results = run_vasp(clean, settings, folder)
            used = effective_parameters(settings)
        else:
            results, used = _run_ase(clean, settings, folder)
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
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [label_one(at, settings, workdir, source) for at in structures]
