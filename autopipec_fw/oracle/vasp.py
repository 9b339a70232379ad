"""VASP single points through custodian (`VaspJob` + its standard error handlers); inputs by pymatgen.

`prepare_vasp` writes, into the calculation folder, with pymatgen: INCAR (`Incar`; a single point: NSW = 0,
IBRION = -1, forces and stress), POSCAR (`Poscar`, species sorted), KPOINTS (`Kpoints.gamma_automatic`, the grid
of `oracle.kpoint_density`, oracle/kpoints.py), POTCAR (`Potcar`, from pymatgen's PMG_VASP_PSP_DIR, the
`potcar_functional` (default PBE, LDA for xc LDA) and `setups` (element -> POTCAR symbol, e.g. Cu: Cu_pv)),
POTCAR.spec (the symbols) and `custodian.yaml`, the custodian spec (`cstdn run custodian.yaml` runs the same
thing by hand). `run_vasp` runs that spec in-process with custodian, which logs every correction (SCF
non-convergence -> ALGO/AMIX changes, ...) in `custodian.json`, and reads energy, forces and stress from
`vasprun.xml`. Without PMG_VASP_PSP_DIR (environment or ~/.config/.pmgrc.yaml) the POTCAR cannot be written:
a clear error says so.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.calculators import OracleConfigError, structure_parameters
from autopipec_fw.oracle.kpoints import KpointGrid
from autopipec_fw.training.locking import atomic_write_text

log = logging.getLogger(__name__)

HANDLERS = [
    "custodian.vasp.handlers.VaspErrorHandler",
    "custodian.vasp.handlers.UnconvergedErrorHandler",
    "custodian.vasp.handlers.NonConvergingErrorHandler",
    "custodian.vasp.handlers.FrozenJobErrorHandler",
    "custodian.vasp.handlers.StdErrHandler",
]
VALIDATORS = ["custodian.vasp.validators.VasprunXMLValidator"]
SPEC_FILE = "custodian.yaml"

_XC_GGA = {"PBE": "PE", "PW91": "91", "REVPBE": "RE", "RPBE": "RP", "PBESOL": "PS"}
_NOT_INCAR = {"xc", "kpts", "gamma", "setups", "potcar_functional"}


def incar_tags(params: dict[str, Any]) -> dict[str, Any]:
    """INCAR tags of a single point (energy, forces, stress) from the effective parameters."""
    tags: dict[str, Any] = {"NSW": 0, "IBRION": -1, "ISIF": 2}
    xc = str(params.get("xc", "PBE")).upper()
    if xc in _XC_GGA:
        tags["GGA"] = _XC_GGA[xc]
    elif xc not in ("LDA", "PZ"):
        raise OracleConfigError(f"oracle.parameters.xc: {xc!r} is not a functional we can write for VASP")
    for k, v in params.items():
        if k.lower() in _NOT_INCAR:
            continue
        tags[k.upper()] = v
    return tags


def kpoint_mesh(params: dict[str, Any]) -> tuple[int, int, int]:
    kpts = params.get("kpts", [1, 1, 1])
    if not (isinstance(kpts, list | tuple) and len(kpts) == 3 and all(int(k) > 0 for k in kpts)):
        raise OracleConfigError(f"oracle.parameters.kpts: expected three positive integers, got {kpts!r}")
    return int(kpts[0]), int(kpts[1]), int(kpts[2])


def potcar_symbols(atoms: Atoms, params: dict[str, Any]) -> list[str]:
    """POTCAR symbols in POSCAR species order (sorted symbols); `setups` maps element -> POTCAR name."""
    setups = params.get("setups") or {}
    if not isinstance(setups, dict):
        raise OracleConfigError(
            "oracle.parameters.setups: expected a mapping element -> POTCAR name (e.g. Cu: Cu_pv)"
        )
    return [str(setups.get(s, s)) for s in sorted(set(atoms.get_chemical_symbols()))]


def potcar_functional(params: dict[str, Any]) -> str:
    from pymatgen.io.vasp.inputs import PotcarSingle

    xc = str(params.get("xc", "PBE")).upper()
    func = str(params.get("potcar_functional") or ("LDA" if xc in ("LDA", "PZ") else "PBE"))
    if func not in PotcarSingle.functional_dir:
        raise OracleConfigError(
            f"oracle.parameters.potcar_functional: {func!r} is not a pymatgen POTCAR functional; known: "
            f"{sorted(PotcarSingle.functional_dir)}"
        )
    return func


def potcar_dir() -> Path:
    """pymatgen's PMG_VASP_PSP_DIR (environment or .pmgrc.yaml); OracleConfigError when unset or missing."""
    from pymatgen.core import SETTINGS

    d = SETTINGS.get("PMG_VASP_PSP_DIR") or os.environ.get("PMG_VASP_PSP_DIR")
    if not d:
        raise OracleConfigError(
            "oracle.calculator 'vasp': PMG_VASP_PSP_DIR is not set: point it (environment, or PMG_VASP_PSP_DIR "
            "in ~/.config/.pmgrc.yaml) at the folder holding POT_GGA_PAW_PBE/ (see `pmg config -p`)"
        )
    if not Path(d).is_dir():
        raise OracleConfigError(f"oracle.calculator 'vasp': PMG_VASP_PSP_DIR {d} is not a folder")
    return Path(d)


def custodian_spec(settings: OracleSettings) -> dict[str, Any]:
    """custodian's YAML spec (Custodian.from_spec / `cstdn run`) of one VASP single point."""
    argv = shlex.split(settings.command or "vasp_std")
    return {
        "jobs": [
            {
                "jb": "custodian.vasp.jobs.VaspJob",
                "params": {
                    "vasp_cmd": argv,
                    "final": True,
                    "backup": True,
                    "auto_npar": False,
                    "auto_gamma": False,
                    "output_file": "vasp.out",
                    "stderr_file": "std_err.txt",
                },
            }
        ],
        "handlers": [{"hdlr": h} for h in HANDLERS],
        "validators": [{"vldr": v} for v in VALIDATORS],
        "custodian_params": {
            # custodian counts the failed attempts: max_scf_corrections corrected reruns = that + 1 errors
            "max_errors": int(settings.max_scf_corrections) + 1,
            "scratch_dir": None,
            "polling_time_step": 5,
            "monitor_freq": 6,
        },
    }


def prepare_vasp(atoms: Atoms, settings: OracleSettings, folder: Path) -> tuple[dict[str, Path], dict[str, Any], KpointGrid | None]:
    """Write the VASP inputs (pymatgen) and the custodian spec into `folder`; returns the written files by name,
    the parameters (k-points included) and the k-point grid."""
    from pymatgen.core import SETTINGS
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp.inputs import Incar, Kpoints, Poscar, Potcar

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params, grid = structure_parameters(settings, atoms)
    order = np.argsort(atoms.get_chemical_symbols(), kind="stable")
    sorted_atoms = atoms[order]
    sorted_atoms.set_constraint()
    files = {
        "INCAR": folder / "INCAR",
        "KPOINTS": folder / "KPOINTS",
        "POSCAR": folder / "POSCAR",
        "POTCAR": folder / "POTCAR",
        "POTCAR.spec": folder / "POTCAR.spec",
        SPEC_FILE: folder / SPEC_FILE,
    }
    Incar(incar_tags(params)).write_file(files["INCAR"])
    mesh = kpoint_mesh(params)
    kpoints = Kpoints.gamma_automatic(mesh) if params.get("gamma", True) else Kpoints.monkhorst_automatic(mesh)
    kpoints.write_file(files["KPOINTS"])
    Poscar(AseAtomsAdaptor.get_structure(sorted_atoms)).write_file(files["POSCAR"])
    atomic_write_text(folder / "sort.json", json.dumps({"order": [int(i) for i in order]}))
    symbols = potcar_symbols(atoms, params)
    atomic_write_text(files["POTCAR.spec"], "\n".join(symbols) + "\n")
    atomic_write_text(files[SPEC_FILE], yaml.safe_dump(custodian_spec(settings), sort_keys=False))
    psp = potcar_dir()
    functional = potcar_functional(params)
    old = SETTINGS.get("PMG_VASP_PSP_DIR")
    SETTINGS["PMG_VASP_PSP_DIR"] = str(psp)
    try:
        Potcar(symbols, functional=functional).write_file(files["POTCAR"])
    except (OSError, ValueError) as e:
        raise OracleConfigError(
            f"oracle.parameters.setups: no POTCAR for {symbols} ({functional}) in {psp} ({e})"
        ) from None
    finally:
        if old is None:
            SETTINGS.pop("PMG_VASP_PSP_DIR", None)
        else:
            SETTINGS["PMG_VASP_PSP_DIR"] = old
    return files, params, grid


def run_vasp(atoms: Atoms, settings: OracleSettings, folder: Path) -> tuple[dict[str, Any], dict[str, Any], KpointGrid | None]:
    """Prepare, run VASP under custodian in `folder`; energy, forces and stress (input atom order), the
    parameters used and the k-point grid."""
    from custodian import Custodian
    from custodian.custodian import CustodianError

    from autopipec_fw.oracle.label import OracleError

    folder = Path(folder)
    _, params, grid = prepare_vasp(atoms, settings, folder)
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    spec["custodian_params"]["directory"] = str(folder)
    cust = Custodian.from_spec(spec)
    try:
        cust.run()
    except CustodianError as e:
        raise OracleError(
            f"{folder}: VASP failed under custodian ({e}); corrections are in {folder / 'custodian.json'}; no label "
            "written"
        ) from None
    return read_vasp_results(folder, len(atoms)), params, grid


def read_vasp_results(folder: Path, natoms: int) -> dict[str, Any]:
    """Energy, forces, stress from `folder/vasprun.xml`, back in the input order (sort.json)."""
    from ase.io import read

    from autopipec_fw.oracle.label import OracleError

    folder = Path(folder)
    try:
        out = read(folder / "vasprun.xml", index=-1)
    except Exception as e:
        raise OracleError(f"{folder}: cannot read vasprun.xml ({type(e).__name__}: {e})") from None
    assert isinstance(out, Atoms)
    order = json.loads((folder / "sort.json").read_text())["order"]
    if len(order) != natoms:
        raise OracleError(f"{folder}: vasprun.xml has {len(out)} atoms, expected {natoms}")
    forces_sorted = out.get_forces(apply_constraint=False)
    forces = np.empty_like(forces_sorted)
    forces[np.asarray(order)] = forces_sorted
    try:  # the free energy is the one consistent with the forces
        energy = float(out.get_potential_energy(force_consistent=True))
    except Exception:
        energy = float(out.get_potential_energy())
    results: dict[str, Any] = {"energy": energy, "forces": forces}
    try:
        results["stress"] = np.array(out.get_stress())
    except Exception:  # stress absent (ISIF < 1)
        pass
    return results
