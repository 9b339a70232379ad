"""VASP single points through custodian (`VaspJob` + its standard error handlers).

`prepare_vasp` writes, into the calculation folder: INCAR (a single point: NSW = 0, IBRION = -1, forces and
stress), POSCAR (species sorted), KPOINTS, POTCAR.spec (the POTCAR symbols, pymatgen's convention), the POTCAR
itself when the VASP pseudopotentials are found ($VASP_PP_PATH/potpaw_PBE or potpaw_LDA), and
`custodian.yaml`, the custodian spec (`cstdn run custodian.yaml` runs the same thing by hand).
`run_vasp` then runs that spec in-process with custodian, which logs every correction (SCF non-convergence
-> ALGO/AMIX changes, ...) in `custodian.json`, and reads energy, forces and stress from `vasprun.xml`.
custodian's VASP module imports pymatgen: running needs it installed; preparing does not.
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
from autopipec_fw.oracle.calculators import OracleConfigError, effective_parameters
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
_NOT_INCAR = {"xc", "kpts", "gamma", "setups", "pp"}


def _incar_value(v: Any) -> str:
    if isinstance(v, bool):
        return ".TRUE." if v else ".FALSE."
    if isinstance(v, list | tuple):
        return " ".join(_incar_value(x) for x in v)
    return str(v)


def incar_text(params: dict[str, Any]) -> str:
    """INCAR of a single point (energy, forces, stress) from the effective parameters."""
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
    return "".join(f"{k} = {_incar_value(v)}\n" for k, v in tags.items())


def kpoints_text(params: dict[str, Any]) -> str:
    kpts = params.get("kpts", [1, 1, 1])
    if not (isinstance(kpts, list | tuple) and len(kpts) == 3 and all(int(k) > 0 for k in kpts)):
        raise OracleConfigError(f"oracle.parameters.kpts: expected three positive integers, got {kpts!r}")
    style = "Gamma" if params.get("gamma", True) else "Monkhorst-Pack"
    return f"Automatic mesh\n0\n{style}\n{int(kpts[0])} {int(kpts[1])} {int(kpts[2])}\n0 0 0\n"


def potcar_symbols(atoms: Atoms, params: dict[str, Any]) -> list[str]:
    """POTCAR symbols in POSCAR species order (sorted symbols); `setups` maps element -> POTCAR name."""
    setups = params.get("setups") or {}
    if not isinstance(setups, dict):
        raise OracleConfigError(
            "oracle.parameters.setups: expected a mapping element -> POTCAR name (e.g. Cu: Cu_pv)"
        )
    return [str(setups.get(s, s)) for s in sorted(set(atoms.get_chemical_symbols()))]


def _potcar_dir(params: dict[str, Any]) -> Path | None:
    root = os.environ.get("VASP_PP_PATH")
    if not root:
        return None
    xc = str(params.get("xc", "PBE")).upper()
    sub = str(params.get("pp") or ("potpaw_LDA" if xc in ("LDA", "PZ") else "potpaw_PBE"))
    d = Path(root) / sub
    return d if d.is_dir() else None


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
            "max_errors": max(1, int(settings.max_scf_corrections)),
            "scratch_dir": None,
            "polling_time_step": 5,
            "monitor_freq": 6,
        },
    }


def prepare_vasp(atoms: Atoms, settings: OracleSettings, folder: Path) -> dict[str, Path]:
    """Write the VASP inputs and the custodian spec into `folder`; returns the written files by name."""
    from ase.io import write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = effective_parameters(settings)
    order = np.argsort(atoms.get_chemical_symbols(), kind="stable")
    sorted_atoms = atoms[order]
    files = {
        "INCAR": folder / "INCAR",
        "KPOINTS": folder / "KPOINTS",
        "POSCAR": folder / "POSCAR",
        "POTCAR.spec": folder / "POTCAR.spec",
        SPEC_FILE: folder / SPEC_FILE,
    }
    atomic_write_text(files["INCAR"], incar_text(params))
    atomic_write_text(files["KPOINTS"], kpoints_text(params))
    write(files["POSCAR"], sorted_atoms, format="vasp", direct=True)
    atomic_write_text(folder / "sort.json", json.dumps({"order": [int(i) for i in order]}))
    symbols = potcar_symbols(atoms, params)
    atomic_write_text(files["POTCAR.spec"], "\n".join(symbols) + "\n")
    atomic_write_text(files[SPEC_FILE], yaml.safe_dump(custodian_spec(settings), sort_keys=False))
    ppdir = _potcar_dir(params)
    if ppdir is not None:
        parts = []
        for sym in symbols:
            f = ppdir / sym / "POTCAR"
            if not f.is_file():
                raise OracleConfigError(f"POTCAR for {sym!r} not found at {f} (check VASP_PP_PATH / setups)")
            parts.append(f.read_text())
        atomic_write_text(folder / "POTCAR", "".join(parts))
        files["POTCAR"] = folder / "POTCAR"
    return files


def run_vasp(atoms: Atoms, settings: OracleSettings, folder: Path) -> dict[str, Any]:
    """Prepare, run VASP under custodian in `folder`, and return energy, forces and stress (input atom order)."""
    from autopipec_fw.oracle.label import OracleError

    folder = Path(folder)
    files = prepare_vasp(atoms, settings, folder)
    if "POTCAR" not in files:
        raise OracleError(
            f"{folder}: no POTCAR: set VASP_PP_PATH to the folder holding potpaw_PBE/ (symbols in POTCAR.spec)"
        )
    try:
        from custodian import Custodian
        from custodian.custodian import CustodianError
    except ImportError as e:  # pragma: no cover - custodian is a pinned dependency
        raise OracleError(f"{folder}: custodian is not installed ({e})") from None
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    spec["custodian_params"]["directory"] = str(folder)
    try:
        cust = Custodian.from_spec(spec)
    except ImportError as e:
        raise OracleError(
            f"{folder}: custodian's VASP jobs need pymatgen ({e}); install pymatgen or run "
            f"`cstdn run {SPEC_FILE}` in that folder where it is installed"
        ) from None
    try:
        cust.run()
    except CustodianError as e:
        raise OracleError(
            f"{folder}: VASP failed under custodian ({e}); corrections are in custodian.json"
        ) from None
    return read_vasp_results(folder, len(atoms))


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
