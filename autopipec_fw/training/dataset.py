"""The training-set store: pacemaker's DataFrame (gzip pickle), with provenance on every record.

Columns: `ase_atoms`, `energy`, `energy_corrected`, `forces` (n×3, eV/Å), `stress` (Voigt, eV/Å³ or None),
`name`, `structure_hash`, `source` (the stage that asked for the label), `oracle_hash` (hash of the oracle
settings), `added` (UTC time). `DataFrame.attrs` holds the oracle hash and the per-element reference energies:
`energy_corrected = energy - sum(reference_energies[symbol])`, which is what the ACE potential learns.

A set never mixes oracle settings (`MixedOracleError`); a structure already present (same `structure_hash`)
is not added again; every write goes through a temporary file and `os.replace`, under a file lock.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms

from autopipec_fw.training.locking import atomic_write_bytes, file_lock

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
COLUMNS = [
    "name",
    "ase_atoms",
    "energy",
    "energy_corrected",
    "forces",
    "stress",
    "structure_hash",
    "source",
    "oracle_hash",
    "added",
]


class DatasetError(ValueError):
    """A training set that cannot be read or extended; the message names the file."""


class MixedOracleError(DatasetError):
    """Labels from different oracle settings must not share one training set."""


def structure_hash(atoms: Atoms, decimals: int = 3) -> str:
    """Stable 16-hex-digit hash of species, positions, cell and periodicity (rounded to `decimals`).

    Rounding to 1e-3 Å makes the hash survive file round trips (extxyz keeps 8 decimals): only a coordinate
    within 5e-9 Å of a rounding boundary could flip, about 1 in 10^5 per coordinate.
    """
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    # + 0.0 turns -0.0 into 0.0 so that the same geometry always gives the same bytes
    h.update((np.round(np.asarray(atoms.positions, dtype=np.float64), decimals) + 0.0).tobytes())
    h.update((np.round(np.asarray(atoms.cell[:], dtype=np.float64), decimals) + 0.0).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.bool_).tobytes())
    return h.hexdigest()[:16]


def _labels(atoms: Atoms, where: str) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces (unconstrained) and stress (or None) of a labelled structure."""
    calc = atoms.calc
    if calc is None or "energy" not in getattr(calc, "results", {}) or "forces" not in calc.results:
        raise DatasetError(
            f"{where}: structure has no energy and forces attached (label it with the oracle first)"
        )
    energy = float(calc.results["energy"])
    forces = np.array(calc.results["forces"], dtype=float).reshape(len(atoms), 3)
    stress = calc.results.get("stress")
    stress = None if stress is None else np.array(stress, dtype=float)
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise DatasetError(f"{where}: energy or forces are not finite")
    return energy, forces, stress


def fit_reference_energies(atoms_list: list[Atoms], energies: list[float]) -> dict[str, float]:
    """Per-element energies (eV/atom) that best explain `energies` by composition (least squares)."""
    elements = sorted({s for at in atoms_list for s in at.get_chemical_symbols()})
    counts = np.array(
        [[at.get_chemical_symbols().count(e) for e in elements] for at in atoms_list], dtype=float
    )
    sol, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)
    return {e: float(v) for e, v in zip(elements, sol, strict=True)}


class TrainingSet:
    """The pacemaker training DataFrame at `path` (gzip pickle, protocol 4)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # ---------------------------------------------------------------- reading
    def _read(self) -> pd.DataFrame:
        if not self.path.exists():
            df = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
            df.attrs = {"format": FORMAT_VERSION, "oracle_hash": None, "reference_energies": None}
            return df
        try:
            df = pd.read_pickle(self.path, compression="gzip")
        except Exception as e:
            raise DatasetError(
                f"{self.path}: not a readable training set ({type(e).__name__}: {e})"
            ) from None
        if not isinstance(df, pd.DataFrame) or not {"ase_atoms", "energy_corrected", "forces"} <= set(
            df.columns
        ):
            raise DatasetError(
                f"{self.path}: not a pacemaker training set (expected a DataFrame with columns "
                "ase_atoms, energy_corrected, forces)"
            )
        df.attrs.setdefault("oracle_hash", None)
        df.attrs.setdefault("reference_energies", None)
        return df

    def frame(self) -> pd.DataFrame:
        """A copy of the stored DataFrame (empty with the right columns when nothing is stored yet)."""
        return self._read().copy()

    def __len__(self) -> int:
        return len(self._read())

    @property
    def oracle_hash(self) -> str | None:
        return self._read().attrs.get("oracle_hash")

    @property
    def reference_energies(self) -> dict[str, float] | None:
        return self._read().attrs.get("reference_energies")

    def hashes(self) -> set[str]:
        return set(self._read()["structure_hash"])

    def atoms(self) -> list[Atoms]:
        """The stored structures with their labels attached (SinglePointCalculator)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for row in self._read().itertuples():
            at = row.ase_atoms.copy()
            results = {"energy": row.energy, "forces": row.forces}
            if row.stress is not None:
                results["stress"] = row.stress
            at.calc = SinglePointCalculator(at, **results)
            out.append(at)
        return out

    # ---------------------------------------------------------------- writing
    def add(
        self,
        atoms_list: Iterable[Atoms],
        source: str,
        oracle_hash: str,
        reference_energies: Mapping[str, float] | None = None,
    ) -> int:
        """Add labelled structures; returns how many were actually added (known structures are skipped).

        `reference_energies` fixes the per-element energy subtracted into `energy_corrected` when the set is
        new (default: least squares over this first batch); afterwards the stored ones are always used.
        """
        atoms_list = list(atoms_list)
        if not source or not isinstance(source, str):
            raise DatasetError(f"{self.path}: 'source' must name the stage that produced the structures")
        if not oracle_hash:
            raise DatasetError(f"{self.path}: 'oracle_hash' is required (OracleSettings.settings_hash())")
        labelled = [
            _labels(at, f"{self.path}: structure {i} of the batch") for i, at in enumerate(atoms_list)
        ]
        with file_lock(self.lock_path):
            df = self._read()
            stored = df.attrs.get("oracle_hash")
            if stored is not None and stored != oracle_hash:
                raise MixedOracleError(
                    f"{self.path}: holds labels of oracle settings {stored}, refusing labels of different "
                    f"settings {oracle_hash}; a training set never mixes oracle settings (start a new set or "
                    "relabel everything with one oracle)"
                )
            for i, at in enumerate(atoms_list):
                tagged = at.info.get("oracle_hash")
                if tagged is not None and tagged != oracle_hash:
                    raise MixedOracleError(
                        f"{self.path}: structure {i} of the batch was labelled with oracle settings {tagged}, "
                        f"not {oracle_hash}"
                    )
            refs = df.attrs.get("reference_energies")
            if refs is None and atoms_list:
                refs = (
                    {str(k): float(v) for k, v in reference_energies.items()}
                    if reference_energies is not None
                    else fit_reference_energies(atoms_list, [e for e, _, _ in labelled])
                )
            known = set(df["structure_hash"])
            now = datetime.now(UTC).isoformat(timespec="seconds")
            rows = []
            for at, (energy, forces, stress) in zip(atoms_list, labelled, strict=True):
                h = at.info.get("structure_hash") or structure_hash(at)
                if h != structure_hash(at):
                    h = structure_hash(at)
                if h in known:
                    continue
                known.add(h)
                symbols = at.get_chemical_symbols()
                missing = sorted(set(symbols) - set(refs or {}))
                if missing:
                    raise DatasetError(
                        f"{self.path}: no reference energy for element(s) {missing}; the set was started "
                        f"with {sorted(refs or {})}"
                    )
                clean = Atoms(numbers=at.numbers, positions=at.positions, cell=at.cell, pbc=at.pbc)
                clean.info.update(
                    {k: v for k, v in at.info.items() if isinstance(v, str | int | float | bool)}
                )
                e_corr = energy - sum(refs[s] for s in symbols)  # type: ignore[index]
                rows.append(
                    {
                        "name": f"{source}/{h}",
                        "ase_atoms": clean,
                        "energy": energy,
                        "energy_corrected": e_corr,
                        "forces": forces,
                        "stress": stress,
                        "structure_hash": h,
                        "source": source,
                        "oracle_hash": oracle_hash,
                        "added": now,
                    }
                )
            if not rows:
                log.info("%s: nothing new to add (%d structures already present)", self.path, len(atoms_list))
                return 0
            new = pd.DataFrame(rows, columns=COLUMNS)
            attrs = {"format": FORMAT_VERSION, "oracle_hash": oracle_hash, "reference_energies": refs}
            out = pd.concat([df, new], ignore_index=True) if len(df) else new
            out.attrs = attrs
            self._write(out)
            log.info("%s: added %d structures from %s (now %d)", self.path, len(rows), source, len(out))
            return len(rows)

    def _write(self, df: pd.DataFrame) -> None:
        write_frame(df, self.path)


def write_frame(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as pacemaker reads it (gzip pickle, protocol 4), atomically."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        pickle.dump(df, gz, protocol=4)
    atomic_write_bytes(Path(path), buf.getvalue())
