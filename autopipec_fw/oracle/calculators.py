"""Calculators by name and parameters (the campaign's `oracle` section).

Each code has cheap, sane defaults (see STACK.md) that the campaign's `parameters` override key by key.
Unknown parameters are refused with an error naming the parameter and the accepted ones, before anything
runs. `effective_parameters` is what is actually used and what the oracle hash covers (with
`oracle.kpoint_density`); `structure_parameters` adds the k-point grid each structure gets from that density
(oracle/kpoints.py). `check_oracle` says whether the code can run here, or names the missing executable and how
to install it.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.kpoints import KpointGrid, kpoint_grid

log = logging.getLogger(__name__)

DEFAULT_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")

DEFAULTS: dict[str, dict[str, Any]] = {
    "emt": {},
    "gpaw": {
        "mode": {"name": "pw", "ecut": 300.0},
        "xc": "PBE",
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
        "lwave": False,
        "lcharg": False,
    },
}

# keys we handle ourselves (not passed to the ASE calculator)
# the fixed-grid parameter of each code (allowed only with kpoint_density: null)
KPTS_KEY = "kpts"



# GPAW's calculator keywords (its default_parameters plus the new-GPAW ones), for checking a campaign where GPAW
# itself does not import (it runs in the Python of oracle.command)
GPAW_KEYWORDS = frozenset(
    "mode xc occupations poissonsolver h gpts kpts nbands charge setups basis spinpol filter mixer eigensolver "
    "background_charge experimental external random hund maxiter idiotproof symmetry convergence verbose "
    "fixdensity dtype parallel magmoms soc extensions environment".split()
)


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
        except ImportError:  # GPAW runs in another Python (oracle.command): its documented keywords
            return set(GPAW_KEYWORDS)
        import inspect

        factory = getattr(getattr(gpaw, "dft", None), "GPAW", None) or gpaw.GPAW
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):
            return set(GPAW_KEYWORDS)
        names = {n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not names:
            return set(GPAW_KEYWORDS)
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
        return keys | {"xc", "kpts", "gamma", "setups", "potcar_functional", "ldau_luj"}
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
    if name != "emt" and settings.kpoint_density is not None and KPTS_KEY in params:
        raise OracleConfigError(
            f"oracle.parameters.kpts and oracle.kpoint_density ({settings.kpoint_density}) both given: the grid comes "
            "from the density; set kpoint_density: null to use one fixed grid for every structure"
        )
    return _merge(DEFAULTS.get(name, {}), params)


def structure_parameters(settings: OracleSettings, atoms: Atoms) -> tuple[dict[str, Any], KpointGrid | None]:
    """The effective parameters with the k-point grid of `atoms` (oracle.kpoint_density), in the code's own
    form: GPAW {"size", "gamma"}, pw.x kpts + koffset 0 (Γ-centred), VASP kpts + gamma. None for EMT and for
    a fixed grid (kpoint_density: null)."""
    params = effective_parameters(settings)
    name = settings.calculator
    if name == "emt" or settings.kpoint_density is None:
        return params, None
    try:
        grid = kpoint_grid(atoms, settings.kpoint_density)
    except ValueError as e:
        raise OracleConfigError(str(e)) from None
    size = list(grid.grid)
    if name == "gpaw":
        params["kpts"] = {"size": size, "gamma": True}
    elif name == "espresso":
        params["kpts"] = size
        params["koffset"] = [0, 0, 0]
    elif name == "vasp":
        params["kpts"] = size
        params["gamma"] = True
    return params, grid


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


def espresso_parameters(params: dict[str, Any], symbols: set[str]) -> dict[str, Any]:
    """pw.x parameters with `pseudo_dir` resolved and one pseudopotential file per element (given or found)."""
    out = copy.deepcopy(params)
    pseudo_dir = Path(out.pop("pseudo_dir", DEFAULT_PSEUDO_DIR))
    out["pseudopotentials"] = _espresso_pseudopotentials(symbols, pseudo_dir, out.get("pseudopotentials") or {})
    out["pseudo_dir"] = str(pseudo_dir)
    return out


def make_calculator(
    settings: OracleSettings,
    directory: Path,
    symbols: set[str],
    parameters: dict[str, Any] | None = None,
    atoms: Atoms | None = None,
) -> Calculator:
    """An in-process ASE calculator for `settings` that keeps its raw output in `directory` (NEB and other
    in-process uses; the oracle stage runs every code through custodian, oracle/jobs.py).

    `parameters` default: `effective_parameters(settings)`, with the k-point grid of `atoms` when given.
    """
    name = settings.calculator
    if parameters is None:
        parameters = structure_parameters(settings, atoms)[0] if atoms is not None else effective_parameters(settings)
    params = copy.deepcopy(parameters)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**params)
    check_oracle(settings, symbols)
    if name == "gpaw":
        from gpaw import GPAW

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            return GPAW(txt=str(directory / "gpaw.txt"), **params)
        except (TypeError, ValueError) as e:
            raise OracleConfigError(f"oracle.parameters: GPAW refused the parameters ({e})") from None
    if name == "espresso":
        from ase.calculators.espresso import Espresso, EspressoProfile

        params = espresso_parameters(params, symbols)
        pseudo_dir = params.pop("pseudo_dir")
        for key in ("kpts", "koffset"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        profile = EspressoProfile(command=settings.command or "pw.x", pseudo_dir=pseudo_dir)
        return Espresso(profile=profile, directory=str(directory), **params)
    raise OracleConfigError(
        f"oracle.calculator {name!r} has no ASE calculator here (vasp runs through custodian)"
    )


# ------------------------------------------------------------------------------------------------ check
INSTALL_HINTS = {
    "gpaw": "GPAW: pip install gpaw gpaw-data (builds against libxc, BLAS, FFTW: Debian packages libxc-dev "
    "libopenblas-dev libfftw3-dev; scripts/setup.sh --tests does it), or conda install -c conda-forge gpaw",
    "espresso": "Quantum ESPRESSO: apt-get install quantum-espresso quantum-espresso-data (Debian/Ubuntu), or "
    "conda install -c conda-forge qe, or `module load` it on a cluster; or set oracle.command to its pw.x",
    "vasp": "VASP is licensed software (vasp.at): build or `module load` it and set oracle.command "
    "(e.g. 'mpirun -np 4 vasp_std')",
}


def oracle_argv(settings: OracleSettings) -> list[str]:
    """How the oracle's code is started: pw.x / vasp_std argv, or for GPAW the Python that runs it."""
    import sys

    default = {"espresso": "pw.x", "vasp": "vasp_std"}.get(settings.calculator)
    if settings.command:
        return shlex.split(settings.command)
    return [default] if default else [sys.executable]


def check_oracle(settings: OracleSettings, elements: Iterable[str] | None = None) -> dict[str, str]:
    """Can the oracle run here? Returns what was found (executable, data); raises OracleConfigError naming the
    missing executable / library / data and how to install it. `elements`: also check their pseudopotentials."""
    from shutil import which

    name = settings.calculator
    found: dict[str, str] = {"calculator": name}
    if name == "emt":
        return found
    argv = oracle_argv(settings)
    exe = which(argv[0])
    if exe is None:
        what = "the Python that runs GPAW" if name == "gpaw" else f"the {name} executable"
        raise OracleConfigError(
            f"oracle.command: {argv[0]!r} ({what}) not found on PATH; install it: {INSTALL_HINTS[name]}"
        )
    found["executable"] = exe
    elements = sorted(set(elements or []))
    if name == "gpaw":
        if argv == oracle_argv(OracleSettings(calculator="gpaw")):  # our own Python: GPAW must import here
            try:
                import gpaw
            except ImportError as e:
                raise OracleConfigError(
                    f"oracle.calculator 'gpaw': GPAW does not import in {exe} ({e}); install it: "
                    f"{INSTALL_HINTS['gpaw']}"
                ) from None
            paths = [Path(p) for p in gpaw.setup_paths]
            found["gpaw"] = str(gpaw.__version__)
            found["setups"] = ", ".join(str(p) for p in paths)
            missing = [e for e in elements if not any(any(p.glob(f"{e}.*")) for p in paths if p.is_dir())]
            if missing:
                raise OracleConfigError(
                    f"oracle.calculator 'gpaw': no PAW setups for {missing} in {found['setups'] or '(no setup path)'}"
                    " (pip install gpaw-data, or `gpaw install-data DIR` and GPAW_SETUP_PATH)"
                )
    elif name == "espresso":
        params = effective_parameters(settings)
        pseudo_dir = Path(params.get("pseudo_dir", DEFAULT_PSEUDO_DIR))
        if not pseudo_dir.is_dir():
            raise OracleConfigError(
                f"oracle.parameters.pseudo_dir: {pseudo_dir} does not exist (Debian: apt-get install "
                "quantum-espresso-data; or point pseudo_dir at your UPF files)"
            )
        found["pseudo_dir"] = str(pseudo_dir)
        if elements:
            pp = _espresso_pseudopotentials(set(elements), pseudo_dir, params.get("pseudopotentials") or {})
            found["pseudopotentials"] = ", ".join(f"{k}: {v}" for k, v in pp.items())
    elif name == "vasp":
        from autopipec_fw.oracle.vasp import potcar_dir

        found["potcars"] = str(potcar_dir())
    return found
