"""The ``config.ini`` of an aKMC run folder (read by eOn's server and by every client job it starts).

eOn's own defaults worth knowing (STACK.md): displacement radius 5.0 Å (we write ``akmc.displace_radius``),
``max_energy`` 20 eV (we write 10), confidence 0.99 (we write ``akmc.confidence``), dimer with improved dimer,
``[Structure Comparison] energy_difference`` 0.01 eV (a new saddle within it of a stored barrier is a repeat).
"""

from __future__ import annotations

import configparser
import io
from pathlib import Path

from autopipec_fw.config import AkmcSettings
from autopipec_fw.eon.state import atomic_write_text


def akmc_config(
    akmc: AkmcSettings,
    *,
    potential: dict[str, str],
    client_path: str,
    max_kmc_steps: int,
    prefactor: float | None = 1e12,
    max_barrier: float = 10.0,
    random_seed: int | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> configparser.ConfigParser:
    """The settings of one aKMC run: ``potential`` is the ``[Potential]`` section (e.g. ``{"potential":
    "ext_pot", "ext_pot_path": ...}``), ``client_path`` eOn's client executable; ``prefactor`` None lets eOn
    compute harmonic prefactors (a Hessian per process); ``extra`` entries are written last."""
    a = akmc
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    seed = a.seed if random_seed is None else random_seed
    cp["Main"] = {"job": "akmc", "temperature": f"{a.temperature:g}", "random_seed": str(seed)}
    cp["Potential"] = dict(potential)
    cp["Communicator"] = {
        "type": "local",
        "client_path": client_path,
        "number_of_CPUs": str(a.num_clients),
        "num_jobs": str(a.searches_per_round),
    }
    cp["AKMC"] = {"confidence": f"{a.confidence:g}", "max_kmc_steps": str(max(int(max_kmc_steps), 1))}
    cp["Process Search"] = {"minimize_first": "true"}
    cp["Saddle Search"] = {
        "method": "min_mode",
        "min_mode_method": "dimer",
        "displace_least_coordinated_weight": "1.0",
        "displace_radius": f"{a.displace_radius:g}",
        "displace_magnitude": f"{a.displace_magnitude:g}",
        "max_energy": f"{max_barrier:g}",
        "max_iterations": str(a.saddle_max_iterations),
    }
    cp["Optimizer"] = {"converged_force": "0.01", "max_iterations": "1000"}
    if prefactor is not None:
        cp["Prefactor"] = {"default_value": f"{prefactor:g}"}
    for section, entries in (extra or {}).items():
        if not cp.has_section(section):
            cp[section] = {}
        for k, v in entries.items():
            cp[section][k] = str(v)
    return cp


def write_config(path: Path, cp: configparser.ConfigParser) -> Path:
    buf = io.StringIO()
    cp.write(buf)
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)
