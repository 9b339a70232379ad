"""eOn's file formats, read in one place (eOn server 3.6.0: ``eon/akmcstate.py``, ``eon/state.py``,
``eon/fileio.py``). The aKMC stage, its report, the validation gate and the benchmarks all read through here.

- ``config.ini``: ``[Main] temperature`` (K); ``[Paths] states`` / ``results`` may move the folders
  (default ``<run>/states/`` and ``<run>``; ``%(main_directory)s`` stands for the run folder).
- ``states/<n>/`` per visited state ``n``: ``reactant.con``, ``info`` (ini, section ``[MetaData]``: ``reactant
  energy``, ``searches``, ``good_saddles``, ``bad_saddles``, ``unique_saddles``, ``repeats``, ...),
  ``processtable``, ``search_results.txt`` (one line per search: id, type, barrier, displacement-saddle
  distance, force calls of saddle search / minimisation / prefactors, outcome) and ``procdata/``
  (``reactant_<id>.con``, ``saddle_<id>.con``, ``product_<id>.con``, ``mode_<id>.dat``, ``results_<id>.dat``).
- ``processtable``: one header line, then per process
  ``proc# saddle_energy prefactor product product_energy product_prefactor barrier rate repeats``
  (``product`` is -1 until the product state is known).
- ``dynamics.txt`` (results folder): two header lines, then per KMC step
  ``step reactant process product step_time total_time barrier rate energy`` (s, eV).
- ``info.txt`` (results folder): ``[Simulation Information] time_simulated``, ``current_state``.
- ``results.dat`` (a client's job folder): ``value key`` lines.
- ``.con`` geometries: ASE's ``format="eon"`` reader (fixed atoms as FixAtoms); eOn cells are periodic.

Readers raise `EonFormatError` naming the file and line for a file that is there but malformed; a file that is
not there yet (no KMC step taken, no search done) reads as empty. A torn last line of ``dynamics.txt`` (the server
was killed while writing it) is skipped with a warning rather than refused.
"""

from __future__ import annotations

import configparser
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROCESSTABLE_COLUMNS = (
    "id", "saddle_energy", "prefactor", "product", "product_energy", "product_prefactor", "barrier", "rate",
    "repeats",
)
_PROCESSTABLE_TYPES = (int, float, float, int, float, float, float, float, int)
DYNAMICS_COLUMNS = ("step", "reactant", "process", "product", "step_time", "time", "barrier", "rate", "energy")
_DYNAMICS_TYPES = (int, int, int, int, float, float, float, float, float)
STATE_INFO_KEYS = ("searches", "good_saddles", "bad_saddles", "unique_saddles", "repeats")
# eOn's termination reasons (MinModeSaddleSearch / ProcessSearchJob status codes, akmcstate.result_state_code)
TERMINATION_REASONS = (
    "Good", "Init", "Saddle Search No Convex Region", "Saddle Search Terminated High Energy",
    "Saddle Search Terminated Concave Iterations", "Saddle Search Terminated Total Iterations", "Not Connected",
    "Bad Prefactor", "Bad Barrier", "Minimum Not Converged", "Failed Prefactor Calculation", "Potential Failed",
    "Nonnegative Displacement Abort", "Nonlocal Abort", "Negative Barrier", "MD Trajectory Too Short",
    "No Negative Mode at Saddle", "No Forward Barrier in Minimized Band", "MinMode Zero Mode Abort",
    "Optimizer Error",
)


class EonFormatError(ValueError):
    """An eOn file that is there but cannot be read; the message names the file (and line)."""


# ------------------------------------------------------------------------------------------- config.ini
def read_config(run_dir: Path) -> configparser.ConfigParser:
    """The run's ``config.ini`` (empty when absent)."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    path = Path(run_dir) / "config.ini"
    if path.is_file():
        try:
            cp.read(path)
        except configparser.Error as e:
            raise EonFormatError(f"{path}: not a valid ini file ({e})") from None
    return cp


def _configured_path(run_dir: Path, key: str, default: Path) -> Path:
    cp = read_config(run_dir)
    if cp.has_option("Paths", key):
        raw = cp.get("Paths", key).replace("%(main_directory)s", str(run_dir))
        p = Path(raw)
        return p if p.is_absolute() else run_dir / p
    return default


def states_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return _configured_path(run_dir, "states", run_dir / "states")


def results_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return _configured_path(run_dir, "results", run_dir)


def run_temperature(run_dir: Path) -> float | None:
    """``[Main] temperature`` of the run's config.ini, or None when absent."""
    cp = read_config(Path(run_dir))
    if not cp.has_option("Main", "temperature"):
        return None
    try:
        return float(cp.get("Main", "temperature"))
    except ValueError:
        raise EonFormatError(f"{Path(run_dir) / 'config.ini'}: [Main] temperature is not a number") from None


# ------------------------------------------------------------------------------------------- tables
def _rows(path: Path, columns: tuple[str, ...], types: tuple[type, ...], skip: int, torn_ok: bool) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EonFormatError(f"{path}: cannot read ({e.strerror})") from None
    body = lines[skip:]
    rows = []
    for k, line in enumerate(body):
        lineno = skip + k + 1
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != len(columns):
                raise ValueError(f"expected {len(columns)} columns ({' '.join(columns)}), got {len(parts)}")
            row = {}
            for c, t, v in zip(columns, types, parts, strict=True):
                try:
                    row[c] = t(v)
                except ValueError:
                    raise ValueError(f"non-numeric field {v!r} in column {c!r}") from None
            rows.append(row)
        except ValueError as e:
            if torn_ok and k == len(body) - 1:
                log.warning("%s:%d: torn last line skipped (%s)", path, lineno, e)
                continue
            raise EonFormatError(f"{path}:{lineno}: {e} in {line.strip()!r}") from None
    return rows


def read_processtable(path: Path) -> list[dict]:
    """Rows of one ``processtable`` (keys: `PROCESSTABLE_COLUMNS`)."""
    return _rows(Path(path), PROCESSTABLE_COLUMNS, _PROCESSTABLE_TYPES, 1, torn_ok=False)


def read_dynamics(run_dir: Path) -> list[dict]:
    """KMC steps from ``dynamics.txt`` (keys: `DYNAMICS_COLUMNS`; ``time`` is the total simulated time, s)."""
    run_dir = Path(run_dir)
    path = results_dir(run_dir) / "dynamics.txt"
    rows = _rows(path, DYNAMICS_COLUMNS, _DYNAMICS_TYPES, 2, torn_ok=True)
    for r in rows:
        if not (math.isfinite(r["time"]) and math.isfinite(r["energy"])):
            raise EonFormatError(f"{path}: step {r['step']}: time or energy is not finite")
    return rows


def read_info(run_dir: Path) -> dict[str, Any]:
    """``info.txt``: simulated time (s) and current state (zeros before the first round)."""
    p = results_dir(Path(run_dir)) / "info.txt"
    out: dict[str, Any] = {"time_simulated": 0.0, "current_state": 0}
    if not p.exists():
        return out
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read(p)
        out["time_simulated"] = cp.getfloat("Simulation Information", "time_simulated", fallback=0.0)
        out["current_state"] = cp.getint("Simulation Information", "current_state", fallback=0)
    except (configparser.Error, ValueError) as e:
        raise EonFormatError(f"{p}: unreadable ({e})") from None
    return out


def state_numbers(run_dir: Path) -> list[int]:
    sdir = states_dir(Path(run_dir))
    if not sdir.is_dir():
        return []
    return sorted(int(p.name) for p in sdir.iterdir() if p.is_dir() and p.name.isdigit())


def read_state_info(state_dir: Path) -> dict[str, Any]:
    """A state's ``info``: ``reactant_energy`` (None until a search reported one) and eOn's counters
    (`STATE_INFO_KEYS`, 0 when absent)."""
    path = Path(state_dir) / "info"
    out: dict[str, Any] = {"reactant_energy": None, **{k: 0 for k in STATE_INFO_KEYS}}
    if not path.is_file():
        return out
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read(path)
        if cp.has_option("MetaData", "reactant energy"):
            out["reactant_energy"] = float(cp.get("MetaData", "reactant energy"))
        for k in STATE_INFO_KEYS:
            if cp.has_option("MetaData", k):
                out[k] = int(float(cp.get("MetaData", k)))
    except (configparser.Error, ValueError) as e:
        raise EonFormatError(f"{path}: unreadable state info ({e})") from None
    return out


def read_search_results(state_dir: Path) -> list[dict[str, Any]]:
    """One row per search eOn finished in this state: ``id``, ``type``, ``barrier``, ``displacement_distance``,
    ``force_calls_saddle``, ``force_calls_minimization``, ``force_calls_prefactors``, ``result`` ("good",
    "repeat", "reverse" for the reverse process eOn enters in a product state (not a search), or eOn's reason, e.g.
    "Not Connected") and ``comment`` (eOn's text)."""
    path = Path(state_dir) / "search_results.txt"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split(None, 7)
        if len(parts) < 8 or not parts[0].lstrip("-").isdigit():
            continue  # header lines
        comment = parts[7].strip()
        if comment.startswith("repeat"):
            result = "repeat"
        elif comment.startswith(("good", "barrier >")):
            result = "good"
        elif comment.startswith("reverse from"):
            result = "reverse"  # a product's reverse process, written by eOn; not a search
        else:
            result = comment
        try:
            out.append({
                "id": int(parts[0]), "type": parts[1], "barrier": float(parts[2]),
                "displacement_distance": float(parts[3]), "force_calls_saddle": int(parts[4]),
                "force_calls_minimization": int(parts[5]), "force_calls_prefactors": int(parts[6]),
                "result": result, "comment": comment,
            })
        except ValueError:
            raise EonFormatError(f"{path}: non-numeric field in {line.strip()!r}") from None
    return out


def read_results_dat(path: Path) -> dict[str, Any]:
    """A job's ``results.dat`` (``value key`` lines): numbers as int/float, the rest as text."""
    out: dict[str, Any] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise EonFormatError(f"{path}: cannot read results ({e.strerror})") from None
    for line in text.splitlines():
        value, _, key = line.strip().partition(" ")
        if not key:
            continue
        for conv in (int, float):
            try:
                out[key.strip()] = conv(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out


# ------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class ProcessRecord:
    """One process of one state, with the paths of its geometries (which eOn may have archived)."""

    run_dir: Path
    state: int
    process: int
    barrier: float
    saddle_energy: float
    product_energy: float
    reactant_energy: float | None
    prefactor: float
    rate: float
    product_state: int
    repeats: int
    reactant: Path
    saddle: Path
    product: Path

    @property
    def has_geometry(self) -> bool:
        return self.reactant.is_file() and self.saddle.is_file() and self.product.is_file()

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("run_dir", "reactant", "saddle", "product"):
            d[k] = str(d[k])
        return d


def read_processes(run_dir: Path, with_geometry: bool = False) -> list[ProcessRecord]:
    """Every process of every state of an aKMC run folder (an empty list before the first search).

    ``with_geometry``: only processes whose three ``.con`` files exist (the others are skipped with a warning).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EonFormatError(f"{run_dir}: no eOn run folder there")
    sdir = states_dir(run_dir)
    out: list[ProcessRecord] = []
    for number in state_numbers(run_dir):
        sd = sdir / str(number)
        e_r = read_state_info(sd)["reactant_energy"]
        for row in read_processtable(sd / "processtable"):
            pid = row["id"]
            paths = {k: sd / "procdata" / f"{k}_{pid}.con" for k in ("reactant", "saddle", "product")}
            rec = ProcessRecord(
                run_dir=run_dir, state=number, process=pid, barrier=row["barrier"],
                saddle_energy=row["saddle_energy"], product_energy=row["product_energy"], reactant_energy=e_r,
                prefactor=row["prefactor"], rate=row["rate"], product_state=row["product"],
                repeats=row["repeats"], **paths,
            )
            if with_geometry and not rec.has_geometry:
                log.warning("state %s process %s: geometry missing in procdata; skipped", number, pid)
                continue
            out.append(rec)
    return out


def states_visited(dynamics: list[dict]) -> list[int]:
    """States the trajectory has been in (the start state 0 and every KMC product), in order."""
    seen = [0]
    for row in dynamics:
        for s in (int(row["reactant"]), int(row["product"])):
            if s not in seen:
                seen.append(s)
    return seen


def search_statistics(run_dir: Path) -> dict[str, Any]:
    """eOn's own search counts over all states: searches, good / bad / repeat outcomes, force calls, and the
    outcome counts by reason (from ``search_results.txt``; eOn's ``info`` counters as a cross-check)."""
    run_dir = Path(run_dir)
    sdir = states_dir(run_dir)
    rows: list[dict[str, Any]] = []
    info_good = info_bad = 0
    for n in state_numbers(run_dir):
        rows += [r for r in read_search_results(sdir / str(n)) if r["result"] != "reverse"]
        info = read_state_info(sdir / str(n))
        info_good += info["good_saddles"]
        info_bad += info["bad_saddles"]
    by_result: dict[str, int] = {}
    for r in rows:
        by_result[r["result"]] = by_result.get(r["result"], 0) + 1
    calls = [r["force_calls_saddle"] + r["force_calls_minimization"] + r["force_calls_prefactors"] for r in rows]
    good = by_result.get("good", 0) + by_result.get("repeat", 0)
    return {
        "searches": len(rows),
        "good_saddles": info_good,
        "bad_saddles": info_bad,
        "good_share": (good / len(rows)) if rows else None,
        "by_result": by_result,
        "force_calls": sum(calls),
        "force_calls_per_search": (sum(calls) / len(calls)) if calls else None,
    }


# ------------------------------------------------------------------------------------------- geometry
def read_con(path: Path):
    """One ``.con`` geometry as ASE Atoms: fixed atoms as FixAtoms, fully periodic (eOn's cells always are;
    ASE's reader leaves pbc False)."""
    from ase.io import read

    path = Path(path)
    try:
        atoms = read(path, format="eon")
    except Exception as e:  # noqa: BLE001 - ASE raises many kinds for a bad file
        raise EonFormatError(f"{path}: not a readable .con file ({type(e).__name__}: {e})") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    atoms.pbc = True
    return atoms


def con_text(atoms) -> str:
    """The ``.con`` text of ASE Atoms (FixAtoms written as eOn's fixed flags)."""
    import io

    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="eon")
    return buf.getvalue()
