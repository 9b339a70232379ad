"""Read what an eOn aKMC run folder holds: the processes found per state and the KMC trajectory.

Format relied on (eOn server 3.6.0, ``eon/akmcstate.py``, ``eon/state.py``, ``eon/fileio.py``):

- ``config.ini``: ``[Main] temperature`` (K); ``[Paths] states`` / ``results`` may move the folders
  (default ``<run>/states/`` and ``<run>``; ``%(main_directory)s`` stands for the run folder).
- ``states/<n>/`` per visited state ``n`` (integers): ``reactant.con``, ``info`` (ini; ``[MetaData]
  reactant energy``), ``processtable`` and ``procdata/``.
- ``processtable``: one header line, then one line per process, whitespace separated:
  ``proc# saddle_energy prefactor product product_energy product_prefactor barrier rate repeats``
  (``product`` is -1 until the product state is known; process ids are content hashes, not 0..n-1).
- ``procdata/reactant_<id>.con``, ``saddle_<id>.con``, ``product_<id>.con``: the process's geometries
  (``.con`` files; ASE reads them with ``format="eon"``, fixed atoms as ``FixAtoms``).
- ``dynamics.txt`` (in the results folder): two header lines, then per KMC step
  ``step reactant process product step_time total_time barrier rate energy`` (times in s, energies in eV).
"""

from __future__ import annotations

import configparser
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROCESSTABLE_COLUMNS = (
    "id",
    "saddle_energy",
    "prefactor",
    "product",
    "product_energy",
    "product_prefactor",
    "barrier",
    "rate",
    "repeats",
)
DYNAMICS_COLUMNS = ("step", "reactant", "process", "product", "step_time", "time", "barrier", "rate", "energy")


class EonResultsError(ValueError):
    """An eOn run folder whose files cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ProcessRecord:
    """One process found by aKMC, with the paths of its geometries."""

    run_dir: Path
    state: int
    process: int
    barrier: float
    saddle_energy: float
    product_energy: float
    reactant_energy: float | None
    prefactor: float
    product_state: int
    repeats: int
    reactant: Path
    saddle: Path
    product: Path

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("run_dir", "reactant", "saddle", "product"):
            d[k] = str(d[k])
        return d


def _read_config(run_dir: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    path = run_dir / "config.ini"
    if path.is_file():
        try:
            cp.read(path)
        except configparser.Error as e:
            raise EonResultsError(f"{path}: not a valid ini file ({e})") from None
    return cp


def _configured_path(run_dir: Path, section: str, key: str, default: Path) -> Path:
    cp = _read_config(run_dir)
    if cp.has_option(section, key):
        raw = cp.get(section, key).replace("%(main_directory)s", str(run_dir))
        p = Path(raw)
        return p if p.is_absolute() else run_dir / p
    return default


def states_dir(run_dir: Path) -> Path:
    return _configured_path(Path(run_dir), "Paths", "states", Path(run_dir) / "states")


def run_temperature(run_dir: Path) -> float | None:
    """`[Main] temperature` of the run's config.ini, or None when absent."""
    cp = _read_config(Path(run_dir))
    if cp.has_option("Main", "temperature"):
        try:
            return float(cp.get("Main", "temperature"))
        except ValueError:
            raise EonResultsError(
                f"{Path(run_dir) / 'config.ini'}: [Main] temperature is not a number"
            ) from None
    return None


def _reactant_energy(state_dir: Path) -> float | None:
    info = state_dir / "info"
    if not info.is_file():
        return None
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read(info)
        return float(cp.get("MetaData", "reactant energy"))
    except (configparser.Error, ValueError):
        return None


def read_processtable(path: Path) -> list[dict]:
    """Rows of one ``processtable`` as dicts (keys: PROCESSTABLE_COLUMNS)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise EonResultsError(f"{path}: cannot read processtable ({e.strerror})") from None
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(PROCESSTABLE_COLUMNS):
            raise EonResultsError(
                f"{path}:{lineno}: expected {len(PROCESSTABLE_COLUMNS)} columns "
                f"({' '.join(PROCESSTABLE_COLUMNS)}), got {len(parts)}"
            )
        try:
            row = {
                "id": int(parts[0]),
                "saddle_energy": float(parts[1]),
                "prefactor": float(parts[2]),
                "product": int(parts[3]),
                "product_energy": float(parts[4]),
                "product_prefactor": float(parts[5]),
                "barrier": float(parts[6]),
                "rate": float(parts[7]),
                "repeats": int(parts[8]),
            }
        except ValueError:
            raise EonResultsError(f"{path}:{lineno}: non-numeric field in {line.strip()!r}") from None
        rows.append(row)
    return rows


def read_processes(run_dir: Path) -> list[ProcessRecord]:
    """Every process of every state of an aKMC run folder whose three geometries exist.

    Processes whose procdata files are missing (eOn can archive them) are skipped with a warning.
    """
    run_dir = Path(run_dir)
    sdir = states_dir(run_dir)
    if not sdir.is_dir():
        raise EonResultsError(f"{run_dir}: no eOn states folder ({sdir} does not exist)")
    out: list[ProcessRecord] = []
    numbered = sorted((int(p.name), p) for p in sdir.iterdir() if p.is_dir() and p.name.isdigit())
    for number, sd in numbered:
        table = sd / "processtable"
        if not table.is_file():
            continue
        e_r = _reactant_energy(sd)
        for row in read_processtable(table):
            pid = row["id"]
            paths = {k: sd / "procdata" / f"{k}_{pid}.con" for k in ("reactant", "saddle", "product")}
            missing = [p.name for p in paths.values() if not p.is_file()]
            if missing:
                log.warning("state %s process %s: missing %s in procdata; skipped", number, pid, missing)
                continue
            out.append(
                ProcessRecord(
                    run_dir=run_dir,
                    state=number,
                    process=pid,
                    barrier=row["barrier"],
                    saddle_energy=row["saddle_energy"],
                    product_energy=row["product_energy"],
                    reactant_energy=e_r,
                    prefactor=row["prefactor"],
                    product_state=row["product"],
                    repeats=row["repeats"],
                    reactant=paths["reactant"],
                    saddle=paths["saddle"],
                    product=paths["product"],
                )
            )
    return out


def read_kmc_trajectory(run_dir: Path) -> list[dict]:
    """KMC steps of a run from ``dynamics.txt`` (keys: DYNAMICS_COLUMNS; time in s, energy in eV).

    An absent file gives an empty list (no step taken yet).
    """
    run_dir = Path(run_dir)
    path = _configured_path(run_dir, "Paths", "results", run_dir) / "dynamics.txt"
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines()[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(DYNAMICS_COLUMNS):
            raise EonResultsError(f"{path}:{lineno}: expected {len(DYNAMICS_COLUMNS)} columns, got {len(parts)}")
        try:
            rec = {
                "step": int(parts[0]),
                "reactant": int(parts[1]),
                "process": int(parts[2]),
                "product": int(parts[3]),
                "step_time": float(parts[4]),
                "time": float(parts[5]),
                "barrier": float(parts[6]),
                "rate": float(parts[7]),
                "energy": float(parts[8]),
            }
        except ValueError:
            raise EonResultsError(f"{path}:{lineno}: non-numeric field in {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in (rec["time"], rec["energy"])):
            raise EonResultsError(f"{path}:{lineno}: time or energy is not finite")
        records.append(rec)
    return records


def read_con(path: Path):
    """One ``.con`` geometry as ASE Atoms: fixed atoms as FixAtoms, fully periodic (eOn's cells always are;
    ASE's reader leaves pbc False)."""
    from ase.io import read

    path = Path(path)
    try:
        atoms = read(path, format="eon")
    except Exception as e:  # ASE raises many kinds for a bad file
        raise EonResultsError(f"{path}: not a readable .con file ({type(e).__name__}: {e})") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    atoms.pbc = True
    return atoms
