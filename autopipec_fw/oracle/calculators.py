"""Calculators by name and parameters (the campaign's `oracle` section).

Each code has cheap, sane defaults (see STACK.md) that the campaign's `parameters` override key by key.
Unknown parameters are refused with an error naming the parameter and the accepted ones, before anything
runs. `effective_parameters` is what is actually used and what the oracle hash covers.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

from autopipec_fw.config import OracleSettings

log = logging.getLogger(__name__)

DEFAULT_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")

DEFAULTS: dict[str, dict[str, Any]] = {
    "emt": {},
    "gpaw": {
        "mode": {"name": "pw", "ecut": 300.0},
        "xc": "PBE",
        "kpts": {"size": [2, 2, 2], "gamma": True},
        "occupations": {"name": "fermi-dirac", "width": 0.1},
        "convergence": {"energy": 1e-5},
    },
    "espresso": {
        "input_data": {
            "control": {"calculation": "scf", "tprnfor": True, "tstress": True},
            "system": {
                "ecutwfc": 30.0,
                "ecutrho": 240.0,
                "occupations": "smearing",
                "smearing": "mv",
                "degauss": 0.02,
            },
            "electrons": {"conv_thr": 1e-8, "mixing_beta": 0.7, "electron_maxstep": 100},
        },
        "kpts": [2, 2, 2],
        "koffset": [1, 1, 1],
    },
    "vasp": {
        "xc": "PBE",
        "encut": 400.0,
        "ismear": 1,
        "sigma": 0.1,
        "ediff": 1e-6,
        "nelm": 100,
        "prec": "Accurate",
        "lreal": False,
        "kpts": [2, 2, 2],
        "gamma": True,
        "lwave": False,
        "lcharg": False,
    },
}

# keys we handle ourselves (not passed to the ASE calculator)
_OWN_KEYS = {"espresso": {"pseudo_dir"}, "vasp": {"setups"}}


class OracleConfigError(ValueError):
    """Oracle settings that cannot describe a calculation; the message names the field."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _allowed_keys(name: str) -> set[str] | None:
    """Top-level parameter names the code accepts (None: not checked here)."""
    if name == "emt":
        from ase.calculators.emt import EMT

        return set(EMT.default_parameters) | {"fixed_cutoff"}
    if name == "gpaw":
        try:
            import gpaw
        except ImportError:
            return None
        import inspect

        factory = getattr(getattr(gpaw, "dft", None), "GPAW", None) or gpaw.GPAW
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):
            return None
        names = {n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not names:
            return None
        return names - {"txt", "communicator", "object_hooks", "legacy_gpaw"}
    if name == "espresso":
        from ase.io.espresso import pw_keys

        flat = {k.lower() for sec in pw_keys.values() for k in sec}
        return {"input_data", "pseudopotentials", "kpts", "koffset", "pseudo_dir"} | flat
    if name == "vasp":
        from ase.calculators.vasp.create_input import GenerateVaspInput

        g = GenerateVaspInput()
        keys: set[str] = set()
        for attr in dir(g):
            if attr.endswith("_params") and isinstance(getattr(g, attr), dict):
                keys |= set(getattr(g, attr))
        return keys | {"xc", "kpts", "gamma", "setups", "pp", "reciprocal", "ldau_luj"}
    return None


def effective_parameters(settings: OracleSettings) -> dict[str, Any]:
    """The code's defaults overridden by `settings.parameters`; unknown parameters raise OracleConfigError."""
    name = settings.calculator
    params = settings.parameters or {}
    if not isinstance(params, dict):
        raise OracleConfigError(f"oracle.parameters: expected a mapping, got {type(params).__name__}")
    allowed = _allowed_keys(name)
    if allowed is not None:
        bad = sorted(k for k in params if k.lower() not in {a.lower() for a in allowed})
        if bad:
            shown = ", ".join(sorted(allowed)[:40]) + (" ..." if len(allowed) > 40 else "")
            raise OracleConfigError(
                f"oracle.parameters: unknown parameter(s) {bad} for calculator {name!r}; accepted: {shown}"
            )
    if name == "espresso" and "input_data" in params:
        from ase.io.espresso import pw_keys

        data = params["input_data"]
        if not isinstance(data, dict):
            raise OracleConfigError("oracle.parameters.input_data: expected a mapping of pw.x namelists")
        for sec, vals in data.items():
            if sec.lower() not in pw_keys:
                raise OracleConfigError(
                    f"oracle.parameters.input_data.{sec}: unknown pw.x namelist; known: {sorted(pw_keys)}"
                )
            known = {k.lower() for k in pw_keys[sec.lower()]}
            bad = sorted(k for k in (vals or {}) if k.lower() not in known and "(" not in k)
            if bad:
                raise OracleConfigError(
                    f"oracle.parameters.input_data.{sec}: unknown pw.x keyword(s) {bad} in &{sec.upper()}"
                )
    return _merge(DEFAULTS.get(name, {}), params)


def _pseudo_rank(name: str) -> tuple[int, str]:
    """Prefer ultrasoft (cheap cut-offs), then PAW, then the rest; ties by name."""
    low = name.lower()
    return (0 if "rrkjus" in low or "van" in low else 1 if "paw" in low else 2, name)


def _espresso_pseudopotentials(symbols: set[str], pseudo_dir: Path, given: dict[str, str]) -> dict[str, str]:
    out = {}
    for s in sorted(symbols):
        if s in given:
            f = pseudo_dir / given[s]
            if not f.is_file():
                raise OracleConfigError(f"oracle.parameters.pseudopotentials.{s}: {f} does not exist")
            out[s] = given[s]
            continue
        cands = (
            sorted(
                (p.name for p in pseudo_dir.glob(f"{s}.*") if p.suffix.lower() == ".upf"), key=_pseudo_rank
            )
            if pseudo_dir.is_dir()
            else []
        )
        if not cands:
            raise OracleConfigError(
                f"oracle.parameters.pseudopotentials: no pseudopotential for {s} in {pseudo_dir} "
                "(install quantum-espresso-data or set pseudo_dir / pseudopotentials)"
            )
        out[s] = cands[0]
    return out


def make_calculator(
    settings: OracleSettings,
    directory: Path,
    symbols: set[str],
    parameters: dict[str, Any] | None = None,
) -> Calculator:
    """An ASE calculator for `settings` that runs and keeps its raw output in `directory`.

    `parameters` (default: `effective_parameters(settings)`) lets the SCF corrections pass adjusted values.
    """
    name = settings.calculator
    params = copy.deepcopy(parameters if parameters is not None else effective_parameters(settings))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**params)
    if name == "gpaw":
        try:
            from gpaw import GPAW
        except ImportError as e:
            raise OracleConfigError(
                "oracle.calculator 'gpaw': GPAW is not installed in this environment (scripts/setup.sh --tests "
                f"installs it) ({e})"
            ) from None
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            return GPAW(txt=str(directory / "gpaw.txt"), **params)
        except (TypeError, ValueError) as e:
            raise OracleConfigError(f"oracle.parameters: GPAW refused the parameters ({e})") from None
    if name == "espresso":
        from ase.calculators.espresso import Espresso, EspressoProfile

        pseudo_dir = Path(params.pop("pseudo_dir", DEFAULT_PSEUDO_DIR))
        params["pseudopotentials"] = _espresso_pseudopotentials(
            symbols, pseudo_dir, params.get("pseudopotentials") or {}
        )
        command = settings.command or "pw.x"
        argv = shlex.split(command)
        from shutil import which

        if which(argv[0]) is None:
            raise OracleConfigError(
                f"oracle.command: {argv[0]!r} not found on PATH (install quantum-espresso or set oracle.command)"
            )
        for key in ("kpts", "koffset"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        profile = EspressoProfile(command=command, pseudo_dir=str(pseudo_dir))
        return Espresso(profile=profile, directory=str(directory), **params)
    raise OracleConfigError(
        f"oracle.calculator {name!r} has no ASE calculator here (vasp runs through custodian)"
    )
