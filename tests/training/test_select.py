"""Selection: at most K distinct, D-optimal structures from the candidates of one stop."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from autopipec_fw.config import StructureSettings
from autopipec_fw.structures import surface_training_structures
from autopipec_fw.training.dataset import TrainingSet, structure_hash
from autopipec_fw.training.select import (
    SelectionError,
    _same_geometry,
    drop_near_duplicates,
    max_gamma,
    select_structures,
)


def candidates():
    out = surface_training_structures(StructureSettings(), n=10, rattle_stdev=0.08, seed=21)
    near = []
    for at in out[:4]:  # near-duplicates, as consecutive frames of a saddle search would be
        c = at.copy()
        c.positions += np.random.default_rng(0).normal(0, 0.005, c.positions.shape)
        near.append(c)
    return out + near


def test_near_duplicates_are_dropped():
    cands = candidates()
    kept = drop_near_duplicates(cands, tol=0.05)
    assert len(kept) == 10
    assert len(drop_near_duplicates(cands, tol=1e-6)) == 14
    assert drop_near_duplicates(cands, exclude_hashes={structure_hash(cands[0])})[0] is cands[1]


def test_selection_returns_at_most_k_distinct_structures(cu_bulk_potential):
    gen = cu_bulk_potential.generation
    cands = candidates()
    known = TrainingSet(cu_bulk_potential.training).atoms()[:2]
    pool = cands + known
    sel = select_structures(pool, gen, k=3, exclude_hashes=TrainingSet(cu_bulk_potential.training).hashes())
    assert 1 <= len(sel) <= 3
    for a, b in itertools.combinations(sel, 2):
        assert not _same_geometry(a, b, 0.05)
    hashes = {structure_hash(s) for s in sel}
    assert not hashes & {structure_hash(k) for k in known}
    assert hashes <= {structure_hash(c) for c in cands}
    assert all(s.info["selection"] in ("maxvol", "gamma") for s in sel)
    # what is picked is what the potential does not know
    assert max_gamma(sel, gen).min() > 5.0
    # fewer distinct candidates than K: all of them, once
    two = select_structures([cands[0], cands[10], cands[1]], gen, k=5)
    assert len(two) == 2


def test_selection_bad_input(cu_bulk_potential, tmp_path):
    gen = cu_bulk_potential.generation
    with pytest.raises(SelectionError, match="k must be a positive"):
        select_structures(candidates(), gen, k=0)
    missing = dataclasses.replace(gen, asi=tmp_path / "nothing.asi")
    with pytest.raises(SelectionError, match=r"nothing\.asi: missing"):
        select_structures(candidates(), missing, k=2)
