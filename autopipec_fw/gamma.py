"""The one stop rule: what happens after every force call of the ACE potential during aKMC.

Every route evaluates the potential through one `StopPolicy`, built from the campaign's `GammaSettings` by
`StopPolicy.from_settings`: the in-process eOn client (its settings file carries `StopPolicy.to_dict`) and
`pace_driver.py` (eOn's ext_pot program, directly or through the persistent evaluator: `StopPolicy.driver_options`
are its options). So an ext_pot run, an external eOn and the in-process client stop on the same structures.

- max per-atom gamma > ``threshold``: the structure is written to ``candidates_dir`` as a candidate
  (``reason="stop"``), one line is appended to ``stop_file``, and ``record`` returns True (the caller must then
  fail the force call so that eOn's job fails and the supervisor stops eOn);
- ``select_lower`` < max gamma <= ``threshold``: the structure is recorded as a candidate (``reason="select"``),
  nothing else happens, ``record`` returns False;
- otherwise nothing is written and ``record`` returns False.

A non-finite gamma counts as above the threshold.

Candidate files are extended XYZ (cell, pbc, species, positions, per-atom ``gamma``, ``energy``, ``forces``, and
``info`` keys ``max_gamma``, ``gamma_threshold``, ``gamma_select_lower``, ``reason``, ``recorded_at``). They are
written atomically (temporary file + ``os.replace``) under a name derived from the structure itself
(``<reason>-<hash>.extxyz``), so concurrent writers never collide and recording the same structure twice (eOn
calls a failed potential once more) leaves one file.

The stop file is a JSON-lines file: one object per stop, written with a single ``O_APPEND`` write, with the keys
``time`` (UTC ISO 8601), ``max_gamma``, ``threshold``, ``natoms``, ``candidate`` (absolute path) and ``pid``.
`read_stop_file` parses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipec_fw.config import GammaSettings

log = logging.getLogger(__name__)

CANDIDATE_SUFFIX = ".extxyz"
STOP = "stop"
SELECT = "select"


def structure_key(numbers: Sequence[int] | np.ndarray, positions: np.ndarray, cell: np.ndarray) -> str:
    """A short hash of species, cell and positions (rounded to 1e-8 Å), used to name candidate files."""
    h = hashlib.sha256()
    h.update(np.asarray(numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(cell, dtype=float), 8).tobytes())
    h.update(np.round(np.asarray(positions, dtype=float), 8).tobytes())
    return h.hexdigest()[:20]


def max_gamma_of(gamma_per_atom: Sequence[float] | np.ndarray) -> float:
    """The structure's extrapolation grade: the largest per-atom gamma (NaN if any is not finite)."""
    g = np.asarray(gamma_per_atom, dtype=float).reshape(-1)
    if g.size == 0:
        raise ValueError("gamma_per_atom is empty")
    if not np.all(np.isfinite(g)):
        return math.nan
    return float(g.max())


def is_physical(atoms: Atoms, factor: float) -> bool:
    """No two atoms closer than ``factor`` x the sum of their covalent radii (``factor`` <= 0: always True)."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if factor <= 0 or len(atoms) < 2:
        return True
    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, float(2 * radii.max() * factor))
    return bool(np.all(d >= factor * (radii[i] + radii[j])))


@dataclass
class StopPolicy:
    """What to do with one evaluated structure, given its per-atom gamma.

    ``select_lower=None`` records nothing below the threshold. ``stop_file`` None: no stop line is written
    (the caller still sees True). ``candidates_dir`` None: no candidate is written. ``max_selected`` caps the
    number of ``select`` candidates kept in ``candidates_dir`` (stop candidates are always written).
    ``min_distance_factor``: a structure with two atoms closer than this times the sum of their covalent radii
    is unphysical (a search that walked into the repulsive core): it is neither recorded nor a reason to stop
    (the oracle would never label it, so stopping for it teaches nothing); ``skipped_unphysical`` counts them.
    """

    threshold: float
    select_lower: float | None = None
    stop_file: Path | str | None = None
    candidates_dir: Path | str | None = None
    max_selected: int | None = None
    min_distance_factor: float | None = None
    skipped_unphysical: int = field(default=0, init=False)

    @classmethod
    def from_settings(
        cls, gamma: GammaSettings, *, stop_file: Path | str | None, candidates_dir: Path | str | None
    ) -> StopPolicy:
        """The campaign's stop rule (``gamma`` section) writing to this stop file and candidates folder."""
        return cls(
            threshold=gamma.threshold,
            select_lower=gamma.select_lower,
            stop_file=stop_file,
            candidates_dir=candidates_dir,
            max_selected=gamma.max_candidates,
            min_distance_factor=gamma.min_distance_factor or None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (`StopPolicy(**d)` rebuilds it): what our eOn client's settings file carries."""
        return {
            "threshold": self.threshold,
            "select_lower": self.select_lower,
            "stop_file": str(self.stop_file) if self.stop_file is not None else None,
            "candidates_dir": str(self.candidates_dir) if self.candidates_dir is not None else None,
            "max_selected": self.max_selected,
            "min_distance_factor": self.min_distance_factor,
        }

    def driver_options(self) -> dict[str, Any]:
        """The same rule as ``pace_driver.py`` options (python names, as `write_driver_wrapper` takes them)."""
        return {
            "gamma_max": self.threshold,
            "gamma_select": self.select_lower,
            "max_selected": self.max_selected,
            "min_distance_factor": self.min_distance_factor,
            "stop_file": self.stop_file,
            "candidates_dir": self.candidates_dir,
        }

    def __post_init__(self) -> None:
        if not (
            isinstance(self.threshold, int | float) and math.isfinite(self.threshold) and self.threshold > 0
        ):
            raise ValueError(f"threshold must be a positive number, got {self.threshold!r}")
        if self.select_lower is not None:
            if not math.isfinite(self.select_lower) or self.select_lower < 0:
                raise ValueError(f"select_lower must be a non-negative number, got {self.select_lower!r}")
            if self.select_lower >= self.threshold:
                raise ValueError(
                    f"select_lower ({self.select_lower}) must be below threshold ({self.threshold})"
                )
        if self.max_selected is not None and self.max_selected < 0:
            raise ValueError(f"max_selected must be >= 0, got {self.max_selected!r}")
        self.stop_file = Path(self.stop_file).absolute() if self.stop_file is not None else None
        self.candidates_dir = (
            Path(self.candidates_dir).absolute() if self.candidates_dir is not None else None
        )

    def classify(self, max_gamma: float) -> str | None:
        """ "stop", "select" or None for a structure of this grade."""
        if not math.isfinite(max_gamma) or max_gamma > self.threshold:
            return STOP
        if self.select_lower is not None and max_gamma > self.select_lower:
            return SELECT
        return None

    def record(
        self,
        atoms: Atoms,
        gamma_per_atom: Sequence[float] | np.ndarray,
        energy: float,
        forces: np.ndarray | Sequence[Sequence[float]],
    ) -> bool:
        """Record this structure as the policy says; True when the caller must stop (gamma > threshold)."""
        gamma = np.asarray(gamma_per_atom, dtype=float).reshape(-1)
        if gamma.shape[0] != len(atoms):
            raise ValueError(f"gamma_per_atom has {gamma.shape[0]} values for {len(atoms)} atoms")
        mg = max_gamma_of(gamma)
        kind = self.classify(mg)
        if kind is None:
            return False
        if self.min_distance_factor and not is_physical(atoms, self.min_distance_factor):
            self.skipped_unphysical += 1
            if self.skipped_unphysical == 1:
                log.info("max gamma %.4g for a structure with atoms closer than %.2f x their covalent radii: "
                         "unphysical, not recorded, no stop", mg, self.min_distance_factor)
            return False
        path: Path | None = None
        if self.candidates_dir is not None and (kind == STOP or not self._select_full()):
            path = write_candidate(
                self.candidates_dir,
                atoms,
                gamma,
                energy,
                forces,
                reason=kind,
                info={"gamma_threshold": self.threshold, "gamma_select_lower": self.select_lower},
            )
        if kind == STOP:
            if self.stop_file is not None:
                append_stop_line(self.stop_file, mg, self.threshold, len(atoms), path)
            log.info("max gamma %.4g > threshold %.4g: stop (candidate %s)", mg, self.threshold, path)
            return True
        return False

    def _select_full(self) -> bool:
        if self.max_selected is None:
            return False
        assert isinstance(self.candidates_dir, Path)
        try:
            n = sum(1 for p in self.candidates_dir.iterdir() if p.name.startswith(SELECT + "-"))
        except FileNotFoundError:
            return False
        return n >= self.max_selected


def write_candidate(
    candidates_dir: Path | str,
    atoms: Atoms,
    gamma_per_atom: Sequence[float] | np.ndarray,
    energy: float,
    forces: np.ndarray | Sequence[Sequence[float]],
    *,
    reason: str,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write one candidate extxyz atomically; returns its absolute path (named by reason and structure hash)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    d = Path(candidates_dir).absolute()
    d.mkdir(parents=True, exist_ok=True)
    gamma = np.asarray(gamma_per_atom, dtype=float).reshape(-1)
    f = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
    a = atoms.copy()
    a.calc = None
    for k in [k for k in a.arrays if k not in ("numbers", "positions")]:
        del a.arrays[k]
    a.info = {}
    a.constraints = []
    a.new_array("gamma", gamma)
    mg = max_gamma_of(gamma)
    a.info["max_gamma"] = mg
    a.info["reason"] = reason
    a.info["recorded_at"] = time.time()
    for k, v in (info or {}).items():
        if v is not None:
            a.info[k] = v
    a.calc = SinglePointCalculator(a, energy=float(energy), forces=f)
    key = structure_key(a.numbers, a.positions, np.asarray(a.cell))
    final = d / f"{reason}-{key}{CANDIDATE_SUFFIX}"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=CANDIDATE_SUFFIX, dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            write(fh, a, format="extxyz")
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def append_stop_line(
    stop_file: Path | str, max_gamma: float, threshold: float, natoms: int, candidate: Path | None
) -> None:
    """Append one JSON line to the stop file with a single O_APPEND write (safe with concurrent writers)."""
    p = Path(stop_file)
    p.parent.mkdir(parents=True, exist_ok=True)
    rec = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_gamma": max_gamma if math.isfinite(max_gamma) else None,
        "threshold": threshold,
        "natoms": natoms,
        "candidate": str(candidate) if candidate is not None else None,
        "pid": os.getpid(),
    }
    line = (json.dumps(rec) + "\n").encode()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_stop_file(stop_file: Path | str) -> list[dict[str, Any]]:
    """The stops recorded in a stop file (empty list when it does not exist); unparsable lines are skipped."""
    p = Path(stop_file)
    if not p.exists():
        return []
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not a stop record, skipped: %r", p, n, line[:80])
    return out


def read_candidates(candidates_dir: Path | str, reason: str | None = None) -> list[Atoms]:
    """All candidates in a folder, oldest first; each with ``info["candidate_file"]`` and ``arrays["gamma"]``.

    ``reason`` ("stop" or "select") keeps only those. A missing folder gives an empty list.
    """
    from ase.io import read

    d = Path(candidates_dir)
    if not d.is_dir():
        return []
    out: list[Atoms] = []
    for p in sorted(d.glob("*" + CANDIDATE_SUFFIX)):
        if p.name.startswith("."):
            continue
        if reason is not None and not p.name.startswith(reason + "-"):
            continue
        a = read(p, format="extxyz")
        assert not isinstance(a, list)
        a.info["candidate_file"] = str(p.absolute())
        out.append(a)
    out.sort(key=lambda a: (float(a.info.get("recorded_at", 0.0)), a.info["candidate_file"]))
    return out
