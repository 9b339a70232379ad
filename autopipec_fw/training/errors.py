"""Error figures of a potential against labels, computed one way for the fit's test split, the quality check, the
refit verification and the gate's held-out set: energy per atom in meV/atom, force components in meV/Å."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike


def error_figures(energy_errors: ArrayLike, force_errors: Sequence[ArrayLike]) -> dict[str, float]:
    """RMSE and MAE of per-atom energy errors (eV/atom) and of every force component's error (eV/Å, one array
    per structure), in meV/atom and meV/Å."""
    de = 1000.0 * np.asarray(energy_errors, dtype=float).ravel()
    df = 1000.0 * np.concatenate([np.asarray(f, dtype=float).ravel() for f in force_errors])
    return {
        "energy_rmse": float(np.sqrt(np.mean(de**2))), "energy_mae": float(np.mean(np.abs(de))),
        "force_rmse": float(np.sqrt(np.mean(df**2))), "force_mae": float(np.mean(np.abs(df))),
    }


def prediction_errors(df: pd.DataFrame) -> dict[str, Any] | None:
    """Figures of a pacemaker predictions frame (`energy_pred`, `forces_pred` against `energy_corrected`,
    `forces`); None for an empty frame."""
    if len(df) == 0:
        return None
    nat = df["NUMBER_OF_ATOMS"].to_numpy(dtype=float) if "NUMBER_OF_ATOMS" in df else \
        df["ase_atoms"].map(len).to_numpy(dtype=float)
    de = (df["energy_pred"].to_numpy(dtype=float) - df["energy_corrected"].to_numpy(dtype=float)) / nat
    dfs = [np.asarray(p, dtype=float).reshape(-1, 3) - np.asarray(r, dtype=float).reshape(-1, 3)
           for p, r in zip(df["forces_pred"], df["forces"], strict=True)]
    return {**error_figures(de, dfs), "n_structures": int(len(df)), "n_atoms": int(np.sum(nat))}
