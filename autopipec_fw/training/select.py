"""Selection: from the candidates of one stop, the few structures worth an oracle call.

Near-duplicates are dropped first (same species, same cell, every atom within `duplicate_tol` Å under the
minimum image convention), and so are structures already in the training set. The rest go through pyace's
D-optimal (MaxVol) selection against the generation's active set: a structure is picked when its atoms
enlarge the active set, those adding the most atoms first. If MaxVol picks nothing, the highest-gamma
structures are taken. At most `k` are returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from ase import Atoms
from ase.geometry import find_mic

from autopipec_fw.training.dataset import structure_hash

if TYPE_CHECKING:
    from autopipec_fw.training.fit import Generation

log = logging.getLogger(__name__)


class SelectionError(ValueError):
    """Candidates or a generation that selection cannot use; the message says which."""


def _same_geometry(a: Atoms, b: Atoms, tol: float) -> bool:
    if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers) or not np.array_equal(a.pbc, b.pbc):
        return False
    if not np.allclose(a.cell[:], b.cell[:], atol=1e-3):
        return False
    d = b.positions - a.positions
    if a.pbc.any():
        d, _ = find_mic(d, a.cell, a.pbc)
    return bool(np.max(np.linalg.norm(d, axis=1)) < tol)


def drop_near_duplicates(
    candidates: Iterable[Atoms], tol: float = 0.05, exclude_hashes: Iterable[str] = ()
) -> list[Atoms]:
    """Keep the first of each group of near-identical structures (max atomic displacement < `tol` Å)."""
    excluded = set(exclude_hashes)
    kept: list[Atoms] = []
    for at in candidates:
        if structure_hash(at) in excluded:
            continue
        if any(_same_geometry(k, at, tol) for k in kept):
            continue
        kept.append(at)
    return kept


def max_gamma(atoms_list: list[Atoms], generation: Generation) -> np.ndarray:
    """Largest per-atom extrapolation grade of each structure under `generation` (yaml + asi)."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(generation.yaml))
    calc.set_active_set(str(generation.asi))
    out = []
    for at in atoms_list:
        work = at.copy()
        work.set_constraint()
        work.calc = calc
        work.get_potential_energy()
        out.append(float(np.max(calc.results["gamma"])))
    return np.array(out)


def select_structures(
    candidates: list[Atoms],
    generation: Generation,
    k: int,
    duplicate_tol: float = 0.05,
    exclude_hashes: Iterable[str] = (),
    gamma_tolerance: float = 1.01,
) -> list[Atoms]:
    """At most `k` distinct, D-optimal structures from `candidates` (copies, `info["selection"]` set)."""
    if k <= 0:
        raise SelectionError(f"k must be a positive number of structures, got {k}")
    for f in (generation.yaml, generation.asi):
        if not f.is_file():
            raise SelectionError(f"{f}: missing; selection needs the generation's B-basis .yaml and .asi")
    bad = [i for i, at in enumerate(candidates) if not isinstance(at, Atoms) or len(at) == 0]
    if bad:
        raise SelectionError(f"candidates {bad}: not structures (empty or not ase.Atoms)")
    pool = drop_near_duplicates(candidates, duplicate_tol, exclude_hashes)
    log.info("selection: %d candidates, %d after dropping near-duplicates", len(candidates), len(pool))
    if not pool:
        return []
    if len(pool) <= k:
        chosen = list(range(len(pool)))
        how = "all"
    else:
        chosen, how = _maxvol(pool, generation, k, gamma_tolerance), "maxvol"
        if not chosen:
            g = max_gamma(pool, generation)
            chosen, how = [int(i) for i in np.argsort(-g)[:k]], "gamma"
    out = []
    for i in chosen[:k]:
        at = pool[i].copy()
        at.calc = None
        at.set_constraint()
        at.info["selection"] = how
        out.append(at)
    log.info("selection: picked %d (%s)", len(out), how)
    return out


def _maxvol(pool: list[Atoms], generation: Generation, k: int, gamma_tolerance: float) -> list[int]:
    from pyace import BBasisConfiguration
    from pyace.aceselect import select_structures_maxvol
    from pyace.activelearning import compute_A_active_inverse, load_active_inverse_set

    bconf = BBasisConfiguration(str(generation.yaml))
    extra = compute_A_active_inverse(load_active_inverse_set(str(generation.asi)))
    clean = [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in pool]
    df = pd.DataFrame({"ase_atoms": clean, "pool_index": range(len(clean))})
    selected = select_structures_maxvol(
        df,
        bconf,
        extra_A0_projections_dict=extra,
        batch_size_option="none",
        gamma_tolerance=gamma_tolerance,
        max_structures=k,
    )
    return [int(i) for i in selected["pool_index"]]
