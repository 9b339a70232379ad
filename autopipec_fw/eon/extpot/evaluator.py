"""The ACE evaluation behind ``pace_driver.py``: parsing eOn's exchange files, the potential (reloaded when its
files change), the stop policy, and the persistent evaluator that serves driver calls over a Unix socket.

One function, `answer` (`process_folder` with option resolution and one-line errors), answers one ext_pot call;
the driver's fallback calls it in its own process (`run_folder`) and the evaluator for every forwarded request,
so both give identical answers. `answer_text` / `run_text` do the same for a structure given on standard input.

Before the potential sees a structure, `check_structure` and `LoadedPotential.check_size` refuse degenerate ones
(exit 2, one line): see `MIN_DISTANCE` and the limits next to it.

Public API for other stages:

- `start_evaluator(run_dir, potential_yaml, asi, ...) -> EvaluatorHandle` / `stop_evaluator(run_dir) -> bool`
- `driver_path() -> Path` (the executable ``pace_driver.py``)
- `write_driver_wrapper(dest, ...) -> Path` (a tiny executable running the driver with this venv's Python,
  options baked in: what to put in eOn's ``ext_pot_path``)
- `driver_environment(...) -> dict[str, str]` (the same options as environment variables)
- `evaluator_stats(run_dir)`, `read_calls_file(path) -> (force calls, max gamma)`

``python -m autopipec_fw.eon.extpot.evaluator --run-dir D --potential P.yaml [--active-set P.asi] ...`` runs the
evaluator in the foreground (what `start_evaluator` launches); ``--detach`` starts it in the background and prints
its PID; ``--run-dir D --stop`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autopipec_fw.eon.extpot import pace_driver as _driver
from autopipec_fw.eon.extpot import protocol as _pd
from autopipec_fw.gamma import StopPolicy, max_gamma_of
from autopipec_fw.processes import pid_alive as _pid_alive

if TYPE_CHECKING:
    from pyace import PyACECalculator

log = logging.getLogger(__name__)

INPUT_NAME = _pd.INPUT_NAME
OUTPUT_NAME = _pd.OUTPUT_NAME
SOCKET_NAME = _pd.SOCKET_NAME
PID_NAME = "pace_evaluator.pid"
LOG_NAME = "pace_evaluator.log"
DEFAULT_STOP_NAME = _pd.STOP_NAME
DEFAULT_CANDIDATES_NAME = _pd.CANDIDATES_NAME
DEFAULT_GAMMA_MAX = 5.0
_MODULE = "autopipec_fw.eon.extpot.evaluator"

# What the driver refuses as degenerate input (exit 2), checked in this order before pyace builds anything:
MAX_Z = 118  # atomic numbers 1..118
MAX_CELL_LENGTH = 1e5  # Å: longest box vector
MIN_DISTANCE = 0.2  # Å: closest two atoms (periodic images included) and thinnest box; H2's bond is 0.74 Å
MIN_VOLUME_PER_ATOM = 0.5  # Å^3: the densest solids have 2-6 Å^3 per atom
MAX_CELLS_AWAY = 1000.0  # an atom further than this many box lengths outside the box is not from eOn
# atoms + their periodic images within the cutoff: pyace's neighbour list takes 2e-11 to 1.5e-10 s x its square
# (measured: 1.87e5 in a bulk cell 0.85 s, 1.48e5 in a 0.25 Å thin slab 3.1 s), so at most ~9 s here
MAX_EXTENDED_ATOMS = 250_000
MAX_NEIGHBOUR_PAIRS = 10_000_000  # estimated neighbour pairs within the cutoff (~70 bytes each in pyace)
_RAW_COMPUTE = True  # False: go through PyACECalculator.calculate (slower, same numbers)


class DriverError(Exception):
    """A failed call: ``code`` is the driver's exit code, the message one line naming the problem."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EvaluatorError(RuntimeError):
    """The persistent evaluator could not be started or stopped."""


# ----------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class DriverOptions:
    potential: Path
    active_set: Path
    gamma_max: float = DEFAULT_GAMMA_MAX
    gamma_select: float | None = None
    max_selected: int | None = None
    stop_file: Path | None = None
    candidates_dir: Path | None = None
    calls_file: Path | None = None
    min_distance_factor: float | None = None

    @functools.cache  # noqa: B019 - options are few and immutable; the policy is reused call after call
    def policy(self) -> StopPolicy:
        return StopPolicy(
            self.gamma_max,
            self.gamma_select,
            self.stop_file,
            self.candidates_dir,
            self.max_selected,
            self.min_distance_factor,
        )


def _opt_label(name: str) -> str:
    return f"--{name} / {_pd.OPTIONS[name][0]}"


def _float_opt(raw: dict[str, str], name: str, default: float | None) -> float | None:
    v = raw.get(name)
    if v is None or v == "":
        return default
    try:
        x = float(v)
    except ValueError:
        raise DriverError(_pd.EXIT_INPUT, f"{_opt_label(name)}: expected a number, got {v!r}") from None
    if not math.isfinite(x) or x < 0:
        raise DriverError(_pd.EXIT_INPUT, f"{_opt_label(name)}: expected a finite number >= 0, got {v!r}")
    return x


def resolve_options(raw: dict[str, str], workdir: Path | str) -> DriverOptions:
    """Turn the driver's option strings (already merged with the environment) into checked options."""
    workdir = Path(workdir)
    pot = raw.get("potential")
    if not pot:
        raise DriverError(
            _pd.EXIT_POTENTIAL, f"no potential given: set {_opt_label('potential')} to the B-basis .yaml"
        )
    potential = Path(pot)
    if potential.suffix in (".yace", ".ace"):
        raise DriverError(
            _pd.EXIT_POTENTIAL,
            f"potential {potential} is a {potential.suffix} file; gamma needs the B-basis .yaml",
        )
    asi = Path(raw["active-set"]) if raw.get("active-set") else potential.with_suffix(".asi")
    gamma_max = _float_opt(raw, "gamma-max", DEFAULT_GAMMA_MAX)
    assert gamma_max is not None
    if gamma_max <= 0:
        raise DriverError(_pd.EXIT_INPUT, f"{_opt_label('gamma-max')}: must be > 0, got {gamma_max}")
    gamma_select = _float_opt(raw, "gamma-select", None)
    if gamma_select is not None and gamma_select >= gamma_max:
        raise DriverError(
            _pd.EXIT_INPUT,
            f"{_opt_label('gamma-select')} ({gamma_select}) must be below gamma-max ({gamma_max})",
        )
    ms = _float_opt(raw, "max-selected", None)
    if ms is not None and ms != int(ms):
        raise DriverError(_pd.EXIT_INPUT, f"{_opt_label('max-selected')}: expected an integer, got {ms}")
    base = Path(raw["run-dir"]) if raw.get("run-dir") else workdir.parent
    stop_file = Path(raw["stop-file"]) if raw.get("stop-file") else base / DEFAULT_STOP_NAME
    cands = Path(raw["candidates-dir"]) if raw.get("candidates-dir") else base / DEFAULT_CANDIDATES_NAME
    calls = Path(raw["calls-file"]) if raw.get("calls-file") else None
    mdf = _float_opt(raw, "min-distance-factor", None)
    if mdf is not None and mdf >= 1:
        raise DriverError(
            _pd.EXIT_INPUT, f"{_opt_label('min-distance-factor')}: expected a number below 1, got {mdf}"
        )
    return DriverOptions(
        potential=potential,
        active_set=asi,
        gamma_max=gamma_max,
        gamma_select=gamma_select,
        max_selected=int(ms) if ms is not None else None,
        stop_file=stop_file,
        candidates_dir=cands,
        calls_file=calls,
        min_distance_factor=mdf or None,
    )


# ------------------------------------------------------------------------------------------------ exchange files
def parse_extpot_input(text: str, source: str = INPUT_NAME) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, positions, cell) from the text of eOn's ``from_eon_to_extpot``; DriverError(2) when malformed."""
    if not text.strip():
        raise DriverError(_pd.EXIT_INPUT, f"{source} is empty")
    if not text.endswith("\n"):
        raise DriverError(_pd.EXIT_INPUT, f"{source} does not end with a newline: truncated")
    lines = text.split("\n")[:-1]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 4:
        raise DriverError(
            _pd.EXIT_INPUT,
            f"{source} is truncated: {len(lines)} lines, need 3 box rows and at least one atom",
        )
    fast = _parse_fast(lines)
    if fast is not None:
        return fast
    # something is wrong: go line by line to name it
    cell = np.empty((3, 3))
    n_at = len(lines) - 3
    numbers = np.empty(n_at, dtype=int)
    pos = np.empty((n_at, 3))
    for i, line in enumerate(lines):
        f = line.split()
        lineno = i + 1
        if i < 3:
            if len(f) != 3:
                raise DriverError(
                    _pd.EXIT_INPUT, f"{source} line {lineno}: box row needs 3 numbers, got {len(f)} fields"
                )
            vals = f
        else:
            if len(f) != 4:
                raise DriverError(
                    _pd.EXIT_INPUT,
                    f"{source} line {lineno}: atom needs 4 fields (Z x y z), got {len(f)}: truncated or malformed",
                )
            try:
                z = int(f[0])
            except ValueError:
                raise DriverError(
                    _pd.EXIT_INPUT,
                    f"{source} line {lineno}: atomic number {_short(f[0])!r} is not an integer",
                ) from None
            if not 1 <= z <= MAX_Z:
                raise DriverError(
                    _pd.EXIT_INPUT,
                    f"{source} line {lineno}: atomic number {_short(f[0])} outside 1-{MAX_Z}",
                )
            numbers[i - 3] = z
            vals = f[1:]
        try:
            xyz = [float(v) for v in vals]
        except ValueError:
            bad = next(v for v in vals if not _is_float(v))
            raise DriverError(
                _pd.EXIT_INPUT, f"{source} line {lineno}: {_short(bad)!r} is not a number"
            ) from None
        if not all(math.isfinite(x) for x in xyz):
            raise DriverError(
                _pd.EXIT_INPUT, f"{source} line {lineno}: non-finite coordinate in {_short(line.strip())!r}"
            )
        if i < 3:
            cell[i] = xyz
        else:
            pos[i - 3] = xyz
    if not abs(_det(cell)) >= 1e-9:
        raise DriverError(_pd.EXIT_INPUT, f"{source}: the box (lines 1-3) has zero volume")
    return numbers, pos, cell


def _parse_fast(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised parse of well-formed input; None when anything looks wrong (the slow path explains)."""
    rows = [ln.split() for ln in lines]
    if any(len(r) != 3 for r in rows[:3]) or any(len(r) != 4 for r in rows[3:]):
        return None
    try:
        cell = np.array(rows[:3], dtype=float)
        at = np.array(rows[3:], dtype=float)
        zs = [int(r[0]) for r in rows[3:]]
    except ValueError:
        return None
    if not all(1 <= z <= MAX_Z for z in zs):
        return None
    numbers = np.array(zs, dtype=int)
    if not (np.isfinite(cell).all() and np.isfinite(at).all()) or not abs(_det(cell)) >= 1e-9:
        return None
    return numbers, at[:, 1:].copy(), cell


def _det(cell: np.ndarray) -> float:
    with np.errstate(all="ignore"):  # overflow in a huge box: inf, refused by the caller; never a warning
        return float(np.linalg.det(cell))


def _near(x: float, limit: float) -> str:
    """``x`` with enough digits not to print as ``limit`` (0.19996 against 0.2)."""
    for d in range(3, 9):
        t = f"{x:.{d}g}"
        if t != f"{limit:.{d}g}":
            return t
    return repr(x)


def _short(v: str, n: int = 40) -> str:
    return v if len(v) <= n else v[: n - 3] + "..."


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def check_structure(
    numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, source: str = INPUT_NAME
) -> np.ndarray:
    """Refuse (DriverError, exit 2) a structure no potential can answer meaningfully, in O(N) time and memory;
    return the box to evaluate with (`lattice_basis`: the same lattice, so the same energy and forces).

    Checked in this order: box vector lengths (at most `MAX_CELL_LENGTH`), the lattice's thickness across each
    pair of its vectors (at least `MIN_DISTANCE`: else an atom is that close to its own image), the volume per
    atom (at least `MIN_VOLUME_PER_ATOM`), every atom within `MAX_CELLS_AWAY` box lengths of the box, and no two
    atoms (periodic images included) closer than `MIN_DISTANCE`.
    """
    n = len(numbers)
    with np.errstate(all="ignore"):
        lengths = np.linalg.norm(cell, axis=1)
        for i, length in enumerate(lengths):
            if not length <= MAX_CELL_LENGTH:
                raise DriverError(
                    _pd.EXIT_INPUT,
                    f"{source} line {i + 1}: box vector {length:.3g} Å long, above {MAX_CELL_LENGTH:g} Å",
                )
        basis = lattice_basis(cell)
        volume = abs(float(np.linalg.det(basis)))
        heights = box_heights(basis)
        if not heights.min() >= MIN_DISTANCE:
            given = box_heights(cell)
            i = int(np.argmin(given))
            if given[i] < MIN_DISTANCE:
                h, where = given[i], f"along box vector {i + 1} (line {i + 1}, {lengths[i]:.3g} Å long)"
            else:
                h, where = heights.min(), "across its lattice planes (box reduced to its shortest vectors)"
            raise DriverError(
                _pd.EXIT_INPUT,
                f"{source}: the box is {_near(h, MIN_DISTANCE)} Å thick {where}, below {MIN_DISTANCE:g} Å: "
                "atoms would touch their own periodic images",
            )
        vpa = volume / n
        if not vpa >= MIN_VOLUME_PER_ATOM:
            raise DriverError(
                _pd.EXIT_INPUT,
                f"{source}: {_near(vpa, MIN_VOLUME_PER_ATOM)} Å^3 per atom ({n} atoms in {volume:.3g} Å^3), "
                f"below {MIN_VOLUME_PER_ATOM:g} Å^3: no physical density",
            )
        frac = np.linalg.solve(cell.T, positions.T).T
        away = np.max(np.abs(frac - 0.5), axis=1) - 0.5
        far = np.flatnonzero(~(away <= MAX_CELLS_AWAY))
        if far.size:
            i = int(far[0])
            raise DriverError(
                _pd.EXIT_INPUT,
                f"{source} line {i + 4}: atom {i + 1} is {away[i]:.3g} box lengths outside the box (at most "
                f"{MAX_CELLS_AWAY:g}): coordinates {positions[i].tolist()}",
            )
        if basis is not cell:
            frac = np.linalg.solve(basis.T, positions.T).T
    d, i, j = closest_pair(frac - np.floor(frac), basis, heights, MIN_DISTANCE)
    if d < MIN_DISTANCE:
        raise DriverError(
            _pd.EXIT_INPUT,
            f"{source} lines {i + 4} and {j + 4}: atoms {i + 1} and {j + 1} are {_near(d, MIN_DISTANCE)} Å apart "
            f"(periodic images included), below {MIN_DISTANCE:g} Å",
        )
    return basis


def box_heights(cell: np.ndarray) -> np.ndarray:
    """The box's thickness across each pair of its vectors (volume / area of the face the pair spans)."""
    volume = abs(_det(cell))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return np.divide(volume, areas, out=np.zeros(3), where=areas > 0)


def lattice_basis(cell: np.ndarray) -> np.ndarray:
    """``cell`` itself when it is Minkowski-reduced and right-handed, else the same lattice in such a basis.

    pyace refuses left-handed boxes ("Extreme shape of unit cell") and skewed ones ("inv3x3: Matrix inversion is
    wrong", measured for box rows of 100 and 7,500 Å over 3 Å ones), and its neighbour list grows with
    1 / thickness; a reduced basis of the same lattice has none of these problems and gives the same energy and
    forces (the same periodic images).
    """
    if (np.diagonal(cell) > 0).all() and not np.count_nonzero(cell - np.diag(np.diagonal(cell))):
        return cell  # orthorhombic, as eOn's boxes usually are
    from ase.geometry.minkowski_reduction import minkowski_reduce

    try:
        reduced, op = minkowski_reduce(cell, pbc=True)
    except Exception:  # a degenerate box: the checks refuse it
        return cell
    a = np.abs(op)
    if np.linalg.det(cell) > 0 and (a.sum(axis=0) == 1).all() and (a.sum(axis=1) == 1).all():
        return cell  # already reduced: the same vectors, maybe reordered or negated
    reduced = np.array(reduced, dtype=float)
    return reduced if np.linalg.det(reduced) > 0 else -reduced


_SHIFTS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
)


def closest_pair(
    frac: np.ndarray, cell: np.ndarray, heights: np.ndarray, cutoff: float
) -> tuple[float, int, int]:
    """(distance, i, j) of the closest two distinct atoms with periodic images, when closer than ``cutoff``;
    (inf, -1, -1) otherwise. ``frac``: fractional coordinates in [0, 1]; every height of the box >= ``cutoff``.

    A pair closer than ``cutoff`` differs by less than ``cutoff / height`` in each fractional coordinate, so only
    images of atoms that close to a face are needed (ghosts), and then a plain search among atoms and ghosts.
    """
    n = len(frac)
    margin = cutoff / heights
    lo, hi = frac < margin, frac > 1 - margin  # (n, 3): near the face at 0 / at 1 along each vector
    s = _SHIFTS[:, None, :]
    ok = ((s == 0) | ((s == 1) & lo) | ((s == -1) & hi)).all(axis=2)  # (26, n): which images are ghosts
    which, atom = np.nonzero(ok)
    owner = np.concatenate([np.arange(n), atom])
    xyz = np.concatenate([frac, frac[atom] + _SHIFTS[which]]) @ cell
    if n * len(owner) <= 400_000:
        d2 = ((xyz[:n, None, :] - xyz[None, :, :]) ** 2).sum(axis=2)
        d2[owner[None, :] == np.arange(n)[:, None]] = np.inf  # an atom and its own images (heights >= cutoff)
        k = int(np.argmin(d2))
        a, b = divmod(k, len(owner))
        d = math.sqrt(float(d2[a, b]))
        return (d, a, int(owner[b])) if d < cutoff else (math.inf, -1, -1)
    from scipy.spatial import cKDTree

    pairs = cKDTree(xyz).query_pairs(cutoff, output_type="ndarray")
    if not len(pairs):
        return math.inf, -1, -1
    pairs = pairs[owner[pairs[:, 0]] != owner[pairs[:, 1]]]
    if not len(pairs):
        return math.inf, -1, -1
    dd = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1)
    k = int(np.argmin(dd))
    a, b = sorted((int(owner[pairs[k, 0]]), int(owner[pairs[k, 1]])))
    return float(dd[k]), a, b


def format_extpot_output(energy: float, forces: np.ndarray) -> str:
    """The text of ``from_extpot_to_eon``: energy, then one ``fx fy fz`` row per atom (full precision)."""
    rows = [repr(float(energy))]
    rows.extend(f"{fx!r} {fy!r} {fz!r}" for fx, fy, fz in np.asarray(forces, dtype=float).tolist())
    return "\n".join(rows) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Write to a hidden temporary file unique to this process and thread, then rename over ``path``."""
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = text.encode()
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------- potential
def _file_signature(p: Path, what: str) -> tuple[int, int, int]:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DriverError(_pd.EXIT_POTENTIAL, f"{what} not found: {p}") from None
    except OSError as exc:
        raise DriverError(_pd.EXIT_POTENTIAL, f"cannot read {what} {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DriverError(_pd.EXIT_POTENTIAL, f"{what} {p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise DriverError(_pd.EXIT_POTENTIAL, f"cannot read {what} {p}: permission denied")
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class LoadedPotential:
    yaml: Path
    asi: Path
    signature: tuple[Any, ...]
    calc: PyACECalculator
    numbers: frozenset[int]
    elements: tuple[str, ...]
    cutoff: float = 0.0  # Å, the largest of the potential's radial cutoffs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_size(self, n_atoms: int, cell: np.ndarray, source: str = INPUT_NAME) -> None:
        """Refuse (exit 2) a structure whose neighbour list pyace could not build in bounded time and memory.

        pyace first makes every periodic image within the cutoff (``n * prod(2 ceil(rc / height) + 1)`` atoms; its
        time grows with the square of that) and then the neighbour pairs (``n * density * 4/3 pi rc^3``).
        """
        rc = self.cutoff
        if rc <= 0:
            return
        volume = abs(_det(cell))
        heights = box_heights(cell)
        extended = float(n_atoms) * math.prod(2 * math.ceil(rc / h) + 1 for h in heights)
        if extended > MAX_EXTENDED_ATOMS:
            raise DriverError(
                _pd.EXIT_INPUT,
                f"{source}: {n_atoms} atoms in a box {min(heights):.3g} Å thin make {extended:.3g} atoms with their "
                f"periodic images within the cutoff {rc:g} Å (at most {MAX_EXTENDED_ATOMS:.0e}): use a thicker or "
                "less skewed box",
            )
        pairs = float(n_atoms) * n_atoms / volume * 4.0 / 3.0 * math.pi * rc**3
        if pairs > MAX_NEIGHBOUR_PAIRS:
            raise DriverError(
                _pd.EXIT_INPUT,
                f"{source}: about {pairs:.3g} neighbour pairs within the cutoff {rc:g} Å ({n_atoms} atoms, "
                f"{volume / n_atoms:.3g} Å^3 per atom; at most {MAX_NEIGHBOUR_PAIRS:.0e})",
            )

    def evaluate(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray,
        source: str = INPUT_NAME,
        basis: np.ndarray | None = None,
    ) -> tuple[Any, float, Any, Any]:
        """(atoms, energy, forces, per-atom gamma) for one periodic structure; pyace sees the box ``basis`` (the
        same lattice as ``cell``, see `lattice_basis`), the returned atoms have ``cell``."""
        from ase import Atoms

        unknown = sorted({int(z) for z in numbers} - self.numbers)
        if unknown:
            raise DriverError(
                _pd.EXIT_INPUT,
                f"atomic number(s) {unknown} in {source} not in the potential's elements {list(self.elements)}",
            )
        basis = cell if basis is None else basis
        self.check_size(len(numbers), basis, source)
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        seen = atoms if basis is cell else Atoms(numbers=numbers, positions=positions, cell=basis, pbc=True)
        with self.lock:
            c = self.calc
            if _RAW_COMPUTE and hasattr(c, "ace") and hasattr(c, "get_atomic_env"):
                # what PyACECalculator.calculate does for energy, forces and gamma, without its ASE
                # bookkeeping (atoms copy, stress, per-atom energies): ~0.4 ms less per call, same numbers
                try:
                    env = c.get_atomic_env(seen)
                except (RuntimeError, ValueError) as exc:  # pyace's own refusals of a geometry
                    raise DriverError(
                        _pd.EXIT_INPUT,
                        f"{source}: pyace cannot build this structure's neighbour list: {_one_line(exc)}",
                    ) from None
                c.ace.compute(env, compute_projections=True)
                energy = float(c.ace.energy)
                forces = np.array(c.ace.forces, dtype=float)
                gamma = np.array(c.ace.gamma_grade, dtype=float)
            else:
                c.calculate(seen, properties=["energy", "forces"])
                res = c.results
                energy = float(res["energy"])
                forces = np.array(res["forces"], dtype=float)
                gamma = np.array(res["gamma"], dtype=float)
        if not (math.isfinite(energy) and np.all(np.isfinite(forces))):
            raise DriverError(_pd.EXIT_POTENTIAL, f"potential {self.yaml} gave non-finite energy or forces")
        return atoms, energy, forces, gamma


def load_potential(yaml: Path, asi: Path) -> LoadedPotential:
    """Load the B-basis potential and its active set; DriverError(3) naming the file when that fails."""
    for _ in range(3):
        sig = _file_signature(yaml, "potential") + _file_signature(asi, "active set")
        try:
            from pyace import PyACECalculator
        except ImportError as exc:  # pragma: no cover - environment problem
            raise DriverError(
                _pd.EXIT_INTERNAL, f"pyace is not importable in {sys.executable}: {exc}"
            ) from None
        try:
            calc = PyACECalculator(str(yaml))
        except Exception as exc:
            raise DriverError(_pd.EXIT_POTENTIAL, f"cannot load potential {yaml}: {_one_line(exc)}") from None
        try:
            calc.set_active_set(str(asi))
        except Exception as exc:
            raise DriverError(_pd.EXIT_POTENTIAL, f"cannot load active set {asi}: {_one_line(exc)}") from None
        sig2 = _file_signature(yaml, "potential") + _file_signature(asi, "active set")
        if sig2 == sig:
            break  # files did not change while loading
        time.sleep(0.05)
    from ase.data import atomic_numbers

    elements = tuple(str(e) for e in calc.basis.elements_name)
    nums = frozenset(atomic_numbers[e] for e in elements if e in atomic_numbers)
    try:
        cutoff = float(calc.cutoff)
    except (AttributeError, TypeError, ValueError):
        cutoff = 0.0
    if not (math.isfinite(cutoff) and cutoff >= 0):
        raise DriverError(
            _pd.EXIT_POTENTIAL, f"potential {yaml} has a cutoff of {cutoff}: expected a finite radius"
        )
    log.info("loaded potential %s (active set %s), elements %s, cutoff %g Å", yaml, asi, elements, cutoff)
    return LoadedPotential(yaml, asi, sig, calc, nums, elements, cutoff)


def _one_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {s[0] if s else ''}"[:300]


class PotentialCache:
    """Loaded potentials keyed by their paths; reloaded when either file changes (mtime, size or inode)."""

    def __init__(self, max_size: int = 2) -> None:
        self._items: dict[tuple[Path, Path], LoadedPotential] = {}
        self._lock = threading.Lock()
        self.max_size = max_size
        self.loads = 0

    def get(self, yaml: Path, asi: Path) -> LoadedPotential:
        key = (yaml, asi)
        sig = _file_signature(yaml, "potential") + _file_signature(asi, "active set")
        with self._lock:
            cur = self._items.get(key)
            if cur is not None and cur.signature == sig:
                return cur
            pot = load_potential(yaml, asi)
            self.loads += 1
            self._items.pop(key, None)
            self._items[key] = pot
            while len(self._items) > self.max_size:
                self._items.pop(next(iter(self._items)))
            return pot


_LOCAL_CACHE = PotentialCache()


# ------------------------------------------------------------------------------------------------------- a call
@dataclass
class CallResult:
    code: int
    message: str = ""
    max_gamma: float | None = None


def process_folder(workdir: Path | str, opts: DriverOptions, cache: PotentialCache) -> CallResult:
    """Answer one ext_pot call in ``workdir``: read the input, evaluate, apply the stop policy, write the result."""
    workdir = Path(workdir)
    out = workdir / OUTPUT_NAME
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    src = workdir / INPUT_NAME
    try:
        with open(src, "rb") as fh:
            data = fh.read(_pd.MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise DriverError(_pd.EXIT_INPUT, f"no {INPUT_NAME} in {workdir}") from None
    except OSError as exc:
        raise DriverError(_pd.EXIT_INPUT, f"cannot read {src}: {_one_line(exc)}") from None
    result, text = evaluate_text(_decode(data, str(src)), str(src), opts, cache)
    if text is not None:
        _atomic_write(out, text)
    return result


def _decode(data: bytes, source: str) -> str:
    if len(data) > _pd.MAX_INPUT_BYTES:
        raise DriverError(
            _pd.EXIT_INPUT, f"{source} holds more than {_pd.MAX_INPUT_BYTES >> 20} MiB: not an eOn structure"
        )
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DriverError(_pd.EXIT_INPUT, f"{source} is not text: {_one_line(exc)}") from None


def evaluate_text(
    text: str, source: str, opts: DriverOptions, cache: PotentialCache
) -> tuple[CallResult, str | None]:
    """Parse, check, evaluate and apply the stop policy to one structure in eOn's format; the result and the text
    of the answer (``from_extpot_to_eon``), None on a stop."""
    numbers, positions, cell = parse_extpot_input(text, source)
    basis = check_structure(numbers, positions, cell, source)
    pot = cache.get(opts.potential, opts.active_set)
    atoms, energy, forces, gamma = pot.evaluate(numbers, positions, cell, source, basis)
    mg = max_gamma_of(gamma)
    policy = opts.policy()
    stop = policy.record(atoms, gamma, energy, forces)
    if opts.calls_file is not None:
        _append_line(opts.calls_file, f"{mg:.6g}\n")
    if stop:
        return CallResult(
            _pd.EXIT_STOP,
            f"max gamma {mg:.4g} > {opts.gamma_max:g}: extrapolation stop; structure in {opts.candidates_dir}, "
            f"stop recorded in {opts.stop_file}",
            mg,
        ), None
    return CallResult(_pd.EXIT_OK, "", mg), format_extpot_output(energy, forces)


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _resolve_cached(items: tuple[tuple[str, str], ...], parent: str) -> DriverOptions:
    # the options depend on the call folder only through its parent (the default stop file and candidates)
    return resolve_options(dict(items), Path(parent) / "_")


def answer(workdir: Path | str, raw: dict[str, str], cache: PotentialCache) -> CallResult:
    """`process_folder` with option resolution and every failure turned into (code, one-line message)."""
    try:
        opts = _resolve_cached(tuple(sorted(raw.items())), str(Path(workdir).parent))
        return process_folder(workdir, opts, cache)
    except DriverError as exc:
        return CallResult(exc.code, str(exc))
    except Exception as exc:  # anything unexpected: still one line, never a traceback on eOn's stderr
        log.exception("driver call in %s failed", workdir)
        return CallResult(_pd.EXIT_INTERNAL, f"internal error: {_one_line(exc)}")


STDIN_SOURCE = "standard input"


def answer_text(
    data: bytes, cwd: Path | str, raw: dict[str, str], cache: PotentialCache
) -> tuple[CallResult, str]:
    """One call whose structure came on standard input (bytes in eOn's format), run from the folder ``cwd``:
    the result and the answer's text ("" on a stop or an error). Without ``run-dir``, the default stop file and
    candidates folder are in ``cwd``."""
    try:
        opts = _resolve_cached(tuple(sorted(raw.items())), str(Path(cwd)))
        result, text = evaluate_text(_decode(data, STDIN_SOURCE), STDIN_SOURCE, opts, cache)
        return result, text or ""
    except DriverError as exc:
        return CallResult(exc.code, str(exc)), ""
    except Exception as exc:  # anything unexpected: still one line, never a traceback
        log.exception("driver call on standard input (in %s) failed", cwd)
        return CallResult(_pd.EXIT_INTERNAL, f"internal error: {_one_line(exc)}"), ""


def run_folder(workdir: str, raw: dict[str, str]) -> tuple[int, str]:
    """The driver's fallback: answer the call in this process."""
    r = answer(workdir, raw, _LOCAL_CACHE)
    return r.code, r.message


def run_text(data: bytes, cwd: str, raw: dict[str, str]) -> tuple[int, str]:
    """The driver's fallback for a structure on standard input: (code, ``message\\0result text``)."""
    r, text = answer_text(data, cwd, raw, _LOCAL_CACHE)
    return r.code, f"{r.message}\0{text}"


# -------------------------------------------------------------------------------------------------- the server
class _Stop(Exception):
    pass


@dataclass
class _Stats:
    calls: int = 0
    busy: float = 0.0  # wall time spent answering EVAL requests (receive, evaluate, reply)
    stops: int = 0
    errors: int = 0
    max_gamma: float = 0.0
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, r: CallResult, seconds: float = 0.0) -> None:
        with self.lock:
            self.calls += 1
            self.busy += seconds
            self.stops += r.code == _pd.EXIT_STOP
            self.errors += r.code not in (_pd.EXIT_OK, _pd.EXIT_STOP)
            if r.max_gamma is not None and (math.isnan(r.max_gamma) or r.max_gamma > self.max_gamma):
                self.max_gamma = r.max_gamma

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": self.calls,
                "busy_seconds": self.busy,
                "stops": self.stops,
                "errors": self.errors,
                "max_gamma": self.max_gamma,
                "uptime": time.time() - self.started,
                "pid": os.getpid(),
            }


class Evaluator:
    """A persistent evaluator: serves driver calls on a Unix socket until told to stop."""

    def __init__(
        self,
        run_dir: Path,
        defaults: dict[str, str],
        socket_path: str | None = None,
        idle_timeout: float | None = None,
        watch_pid: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.defaults = dict(defaults)
        self.defaults.setdefault("run-dir", str(self.run_dir))
        self.socket_path = socket_path or _pd.socket_path_for(str(self.run_dir))
        self.pid_file = self.run_dir / PID_NAME
        self.idle_timeout = idle_timeout
        self.watch_pid = watch_pid
        self._ppid0 = os.getppid()
        self.cache = PotentialCache()
        self.stats = _Stats()
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    # preload so that the first call is fast and a bad potential fails at start
    def preload(self) -> None:
        opts = resolve_options(self.defaults, self.run_dir / "_")
        self.cache.get(opts.potential, opts.active_set)

    def _bind(self) -> socket.socket:
        sp = self.socket_path
        Path(sp).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.path.exists(sp):
            if ping(sp, timeout=2.0) is not None:
                raise EvaluatorError(f"an evaluator already answers on {sp}")
            os.unlink(sp)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(sp)
        finally:
            os.umask(old)
        s.listen(64)
        s.settimeout(1.0)
        return s

    def _write_pid_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "start_time": _proc_start_time(os.getpid()),
            "socket": self.socket_path,
            "run_dir": str(self.run_dir),
            "potential": self.defaults.get("potential"),
        }
        _atomic_write(self.pid_file, json.dumps(info) + "\n")

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        try:
            info = json.loads(self.pid_file.read_text())
            if info.get("pid") == os.getpid():
                self.pid_file.unlink()
        except (OSError, ValueError):
            pass

    def _watched_gone(self) -> bool:
        if self.watch_pid is None:
            return False
        if self.watch_pid == self._ppid0:
            return os.getppid() != self._ppid0
        return not _pid_alive(self.watch_pid)

    def serve_forever(self) -> None:
        def _term(signum: int, frame: Any) -> None:
            raise _Stop()

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        self._sock = self._bind()
        self._write_pid_file()
        log.info("evaluator %d serving %s (run dir %s)", os.getpid(), self.socket_path, self.run_dir)
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    if self._watched_gone():
                        log.info("watched process %s is gone: stopping", self.watch_pid)
                        break
                    if self.idle_timeout and time.monotonic() - self._last > self.idle_timeout:
                        log.info("idle for %.0f s: stopping", self.idle_timeout)
                        break
                    continue
                self._last = time.monotonic()
                # one request at a time, in this thread: evaluations are serialised anyway (one calculator),
                # requests are short and local, and no thread hand-off keeps the round trip short
                self._handle(conn)
        except _Stop:
            log.info("signal received: stopping")
        finally:
            self._cleanup()
            log.info("evaluator %d stopped: %s", os.getpid(), self.stats.as_dict())

    def _handle(self, conn: socket.socket) -> None:
        t0 = time.perf_counter()
        try:
            conn.settimeout(10.0)  # a client that connected and went silent delays the others this long
            chunks = []
            size = 0
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                chunks.append(b)
                size += len(b)
                if size > _pd.MAX_INPUT_BYTES + (1 << 20):
                    conn.sendall(
                        f"{_pd.EXIT_INPUT} request larger than {_pd.MAX_INPUT_BYTES >> 20} MiB".encode()
                    )
                    return
            reply, result = self._dispatch(b"".join(chunks))
            conn.sendall(reply.encode())
            if result is not None:
                self.stats.add(result, time.perf_counter() - t0)
        except Exception:
            log.exception("request failed")
        finally:
            conn.close()

    def _options(self, parts: list[str]) -> dict[str, str]:
        req = {}
        for kv in parts:
            k, _, v = kv.partition("=")
            if k in _pd.OPTIONS and k not in _pd.LOCAL_OPTIONS:
                req[k] = v
        raw = dict(self.defaults)
        if "potential" in req:  # another potential: its own active set, not the default one
            raw.pop("active-set", None)
        raw.update(req)
        return raw

    def _dispatch(self, data: bytes) -> tuple[str, CallResult | None]:
        if data.startswith(b"EVALTEXT\0"):
            head, _, text = data.partition(b"\0\0")
            parts = head.decode("utf-8", "surrogateescape").split("\0")
            if len(parts) < 2:
                return f"{_pd.EXIT_INTERNAL} malformed request", None
            r, out = answer_text(text, parts[1], self._options(parts[2:]), self.cache)
            return f"{r.code} {r.message}\0{out}", r
        parts = data.decode("utf-8", "surrogateescape").split("\0")
        verb = parts[0]
        if verb == "EVAL" and len(parts) >= 2:
            r = answer(parts[1], self._options(parts[2:]), self.cache)
            return f"{r.code} {r.message}", r
        if verb == "PING":
            return f"0 {os.getpid()}", None
        if verb == "STATS":
            return "0 " + json.dumps(self.stats.as_dict() | {"loads": self.cache.loads}), None
        if verb == "SHUTDOWN":
            self._stop.set()
            return "0 stopping", None
        return f"{_pd.EXIT_INTERNAL} unknown request {verb[:20]!r}", None


def _request(sock_path: str, payload: bytes, timeout: float) -> str | None:
    """One request over the evaluator's socket (the driver's own `forward`); the reply, or None."""
    answer = _pd.forward(sock_path, payload, timeout)
    return None if answer is None else f"{answer[0]} {answer[1]}"


def ping(sock_path: str, timeout: float = 5.0) -> int | None:
    """The evaluator's PID if one answers on this socket, else None."""
    r = _request(sock_path, b"PING", timeout)
    if r is None or not r.startswith("0 "):
        return None
    try:
        return int(r.split()[1])
    except (IndexError, ValueError):
        return None


def evaluator_stats(run_dir: Path | str, timeout: float = 5.0) -> dict[str, Any] | None:
    """Counters of the evaluator serving ``run_dir`` (calls, stops, errors, max_gamma, loads), or None."""
    r = _request(_pd.socket_path_for(str(Path(run_dir).absolute())), b"STATS", timeout)
    if r is None or not r.startswith("0 "):
        return None
    return json.loads(r[2:])


# ------------------------------------------------------------------------------------------ process management
def _proc_start_time(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()[19]


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class EvaluatorHandle:
    """A running evaluator started by `start_evaluator`."""

    run_dir: Path
    pid: int
    socket: str
    pid_file: Path
    log_file: Path

    def ping(self) -> bool:
        return ping(self.socket) == self.pid

    def stats(self) -> dict[str, Any] | None:
        return evaluator_stats(self.run_dir)

    def stop(self, timeout: float = 10.0) -> bool:
        return stop_evaluator(self.run_dir, timeout=timeout)

    def __enter__(self) -> EvaluatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_evaluator(
    run_dir: Path | str,
    potential_yaml: Path | str,
    asi: Path | str | None = None,
    *,
    gamma_max: float = DEFAULT_GAMMA_MAX,
    gamma_select: float | None = None,
    stop_file: Path | str | None = None,
    candidates_dir: Path | str | None = None,
    calls_file: Path | str | None = None,
    max_selected: int | None = None,
    min_distance_factor: float | None = None,
    python: str | None = None,
    idle_timeout: float | None = 3600.0,
    watch_pid: int | None = -1,
    timeout: float = 120.0,
) -> EvaluatorHandle:
    """Start the persistent evaluator for ``run_dir`` and wait until it answers (the potential is loaded).

    Its settings are the defaults for driver calls that do not set them. An evaluator already running for
    ``run_dir`` is stopped first. It exits by itself after ``idle_timeout`` seconds without a call and when the
    process ``watch_pid`` ends (default -1: the caller; None: never). Raises EvaluatorError with the log's tail
    when it does not come up.
    """
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_evaluator(run_dir)
    pot = Path(potential_yaml).absolute()
    args = ["--run-dir", str(run_dir), "--potential", str(pot), "--gamma-max", repr(float(gamma_max))]
    for flag, val in (
        ("--active-set", asi),
        ("--stop-file", stop_file),
        ("--candidates-dir", candidates_dir),
        ("--calls-file", calls_file),
    ):
        if val is not None:
            args += [flag, str(Path(val).absolute())]
    if gamma_select is not None:
        args += ["--gamma-select", repr(float(gamma_select))]
    if max_selected is not None:
        args += ["--max-selected", str(int(max_selected))]
    if min_distance_factor:
        args += ["--min-distance-factor", repr(float(min_distance_factor))]
    if idle_timeout:
        args += ["--idle-timeout", repr(float(idle_timeout))]
    if watch_pid == -1:
        watch_pid = os.getpid()
    if watch_pid is not None:
        args += ["--watch-pid", str(watch_pid)]
    log_file = run_dir / LOG_NAME
    py = python or sys.executable
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_file, "ab") as lf:
        proc = subprocess.Popen(
            [py, "-m", _MODULE, *args],
            stdin=subprocess.DEVNULL,
            stdout=lf,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    sock = _pd.socket_path_for(str(run_dir))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            raise EvaluatorError(
                f"evaluator for {run_dir} exited with code {proc.returncode}: {_tail(log_file)}"
            )
        if os.path.exists(sock) and ping(sock, timeout=2.0) == proc.pid:
            log.info("evaluator %d up for %s (%s)", proc.pid, run_dir, pot)
            return EvaluatorHandle(run_dir, proc.pid, sock, run_dir / PID_NAME, log_file)
        time.sleep(0.05)
    _kill(proc.pid, proc)
    raise EvaluatorError(f"evaluator for {run_dir} did not answer within {timeout:.0f} s: {_tail(log_file)}")


def _tail(p: Path, n: int = 3) -> str:
    try:
        lines = [x for x in p.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _kill(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, proc, timeout):
            return


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                _CHILDREN.pop(pid, None)
                return True
        elif not _pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def stop_evaluator(run_dir: Path | str, timeout: float = 10.0) -> bool:
    """Stop the evaluator serving ``run_dir`` (by the PID in its pid file, after checking it is ours).

    Returns True when one was running. Stale pid/socket files are removed. Never touches other processes.
    """
    run_dir = Path(run_dir).absolute()
    pid_file = run_dir / PID_NAME
    sock = _pd.socket_path_for(str(run_dir))
    stopped = False
    for cpid, cproc in list(_CHILDREN.items()):  # reap evaluators of ours that ended (killed, idle, watched)
        if cproc.poll() is not None:
            _CHILDREN.pop(cpid, None)
    try:
        info = json.loads(pid_file.read_text())
        pid = int(info["pid"])
    except FileNotFoundError:
        info, pid = None, None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable evaluator pid file %s: removed", pid_file)
        info, pid = None, None
    if pid is not None and _is_our_evaluator(pid, info or {}, run_dir):
        proc = _CHILDREN.get(pid)
        _request(sock, b"SHUTDOWN", 2.0)
        if not _wait_gone(pid, proc, timeout):
            _kill(pid, proc)
        stopped = True
        log.info("evaluator %d for %s stopped", pid, run_dir)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    if os.path.exists(sock) and ping(sock, timeout=1.0) is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
    return stopped


def _is_our_evaluator(pid: int, info: dict[str, Any], run_dir: Path) -> bool:
    if not _pid_alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if _MODULE.encode() not in cmd or str(run_dir).encode() not in cmd:
        return False
    st = info.get("start_time")
    return st is None or st == _proc_start_time(pid)


# ------------------------------------------------------------------------------------------ the driver program
def driver_path() -> Path:
    """Absolute path of the executable ``pace_driver.py`` (made executable if it is not).

    Its shebang is ``/usr/bin/env python3``: forwarding to an evaluator works with any Python 3; the fallback
    re-executes with ``PACE_DRIVER_PYTHON`` or the project's ``.venv/bin/python``. For eOn, prefer
    `write_driver_wrapper`, which pins this interpreter and starts faster.
    """
    p = Path(_driver.__file__).resolve()
    mode = p.stat().st_mode
    want = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode != want:
        with contextlib.suppress(OSError):
            p.chmod(want)
    return p


def _option_items(**options: Any) -> list[tuple[str, str]]:
    out = []
    for k, v in options.items():
        if v is None:
            continue
        name = k.replace("_", "-")
        if name not in _pd.OPTIONS:
            raise TypeError(f"unknown driver option {k!r}; known: {sorted(_pd.OPTIONS)}")
        if _pd.OPTIONS[name][1]:
            v = str(Path(v).absolute())
        out.append((name, str(v)))
    return out


def driver_environment(**options: Any) -> dict[str, str]:
    """Driver options (python names, e.g. ``potential=``, ``gamma_max=``, ``run_dir=``) as environment variables."""
    return {_pd.OPTIONS[name][0]: v for name, v in _option_items(**options)}


def write_driver_wrapper(dest: Path | str, *, python: str | None = None, **options: Any) -> Path:
    """Write an executable that runs the driver with ``python`` (default: this interpreter) and these options.

    The wrapper is a few lines of Python started as ``<python> -I -S`` (no site import: the quickest start-up);
    it imports the driver from the package folder (bytecode cached) and passes the options as command-line
    arguments, which win over the environment. Returns its absolute path: put it in eOn's ``ext_pot_path``.
    """
    dest = Path(dest).absolute()
    py = python or sys.executable
    args: list[str] = []
    for name, v in _option_items(**options):
        args += [f"--{name}", v]
    inf_dir = str(Path(_driver.__file__).resolve().parent)
    body = (
        "# generated by autopipec_fw.eon.extpot.evaluator.write_driver_wrapper: the eOn ext_pot driver\n"
        "import sys\n"
        f"sys.path.insert(0, {inf_dir!r})\n"
        "from pace_driver import main\n"
        f"sys.exit(main({args!r} + sys.argv[1:]))\n"
    )
    shebang = f"#!{py} -IS\n"
    if len(shebang) > 120 or any(c in py for c in " \t\n"):
        # the kernel limits shebang lines and splits nothing: go through sh for odd interpreter paths
        body_file = dest.with_name(dest.name + ".py")
        _atomic_write(body_file, body)
        text = f'#!/bin/sh\nexec {_sh_quote(py)} -I -S {_sh_quote(str(body_file))} "$@"\n'
    else:
        text = shebang + body
    dest.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(dest, text)
    dest.chmod(0o755)
    return dest


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}", description="persistent evaluator for pace_driver"
    )
    ap.add_argument("--run-dir", required=True, type=Path)
    for name in _pd.OPTIONS:
        if name != "run-dir" and name not in _pd.LOCAL_OPTIONS:
            ap.add_argument(f"--{name}")
    ap.add_argument("--socket", help="socket path (default <run-dir>/pace_evaluator.sock)")
    ap.add_argument("--idle-timeout", type=float, default=None)
    ap.add_argument("--watch-pid", type=int, default=None)
    ap.add_argument("--detach", action="store_true", help="start in the background, print its PID and exit")
    ap.add_argument("--stop", action="store_true", help="stop the evaluator of --run-dir (by its PID file)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.stop:
        print("stopped" if stop_evaluator(a.run_dir) else "no evaluator was running")  # noqa: T201 - CLI output
        return 0
    if a.detach:
        if not a.potential:
            ap.error("--potential is required")
        try:
            h = start_evaluator(
                a.run_dir,
                a.potential,
                a.active_set,
                gamma_max=float(a.gamma_max) if a.gamma_max else DEFAULT_GAMMA_MAX,
                gamma_select=float(a.gamma_select) if a.gamma_select else None,
                stop_file=a.stop_file,
                candidates_dir=a.candidates_dir,
                calls_file=a.calls_file,
                max_selected=int(a.max_selected) if a.max_selected else None,
                min_distance_factor=float(a.min_distance_factor) if a.min_distance_factor else None,
                idle_timeout=a.idle_timeout if a.idle_timeout is not None else 3600.0,
                watch_pid=a.watch_pid,
            )
        except (EvaluatorError, ValueError) as exc:
            log.error("%s", exc)
            return 1
        print(h.pid)  # noqa: T201 - CLI output
        return 0
    defaults = {}
    for name in _pd.OPTIONS:
        v = getattr(a, name.replace("-", "_"), None)
        if v is not None and name not in _pd.LOCAL_OPTIONS:
            defaults[name] = str(Path(v).absolute()) if _pd.OPTIONS[name][1] else str(v)
    ev = Evaluator(a.run_dir, defaults, a.socket, a.idle_timeout, a.watch_pid)
    try:
        ev.preload()
    except DriverError as exc:
        log.error("%s", exc)
        return exc.code
    try:
        ev.serve_forever()
    except EvaluatorError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
