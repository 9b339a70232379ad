"""Training-set store: provenance, no duplicates, no mixed oracles, atomic writes, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.label import label_structures, oracle_hash
from autopipec_fw.structures import bulk_training_structures
from autopipec_fw.training.dataset import DatasetError, MixedOracleError, TrainingSet, structure_hash


@pytest.fixture
def labelled(tmp_path):
    structures = bulk_training_structures("Cu", n_strained=2, n_rattled=3, n_vacancy=1, seed=5)
    return label_structures(structures, OracleSettings(), tmp_path / "calc")


def test_structure_hash():
    a = bulk("Cu", cubic=True)
    b = a.copy()
    b.positions[0] += [1e-7, 0, -1e-7]  # below the rounding
    assert structure_hash(a) == structure_hash(b)
    b.positions[0, 2] = -0.0
    assert structure_hash(a) == structure_hash(b)
    c = a.copy()
    c.positions[1] += [0.01, 0, 0]
    assert structure_hash(a) != structure_hash(c)
    d = a.copy()
    d.numbers[0] = 29 + 18  # Ag in place of a Cu
    assert structure_hash(a) != structure_hash(d)


def test_add_records_provenance_in_pacemaker_format(tmp_path, labelled):
    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    h = oracle_hash(OracleSettings())
    assert ts.add(labelled[:4], "initial", h) == 4
    assert ts.add(labelled, "akmc-stop-1", h) == 2  # the first four are known
    df = pd.read_pickle(tmp_path / "data.pckl.gzip", compression="gzip")  # what pacemaker reads
    assert {
        "ase_atoms",
        "energy",
        "energy_corrected",
        "forces",
        "structure_hash",
        "source",
        "oracle_hash",
    } <= set(df.columns)
    assert list(df["source"]) == ["initial"] * 4 + ["akmc-stop-1"] * 2
    assert set(df["oracle_hash"]) == {h}
    assert list(df["structure_hash"]) == [structure_hash(a) for a in labelled]
    refs = df.attrs["reference_energies"]
    for row, at in zip(df.itertuples(), labelled, strict=True):
        assert row.forces.shape == (len(at), 3)
        assert row.energy == pytest.approx(at.get_potential_energy())
        assert row.energy_corrected == pytest.approx(row.energy - len(at) * refs["Cu"])
    # stored structures come back with their labels
    back = ts.atoms()
    assert np.allclose(back[5].get_forces(), labelled[5].get_forces())


def test_mixed_oracle_settings_are_refused(tmp_path, labelled):
    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    ts.add(labelled[:2], "initial", oracle_hash(OracleSettings()))
    other = OracleSettings(calculator="espresso")
    with pytest.raises(MixedOracleError, match="never mixes oracle settings"):
        ts.add(labelled[2:], "initial", oracle_hash(other))
    # a structure tagged by a different oracle than the one claimed is refused too
    with pytest.raises(MixedOracleError, match="structure 0 of the batch"):
        TrainingSet(tmp_path / "other.pckl.gzip").add(labelled[2:3], "x", oracle_hash(other))
    assert len(ts) == 2


def test_unlabelled_and_unreadable_input(tmp_path, labelled):
    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    with pytest.raises(DatasetError, match="structure 0 of the batch: structure has no energy and forces"):
        ts.add([bulk("Cu")], "initial", "abc")
    bad = bulk("Cu")
    bad.calc = SinglePointCalculator(bad, energy=float("nan"), forces=np.zeros((1, 3)))
    with pytest.raises(DatasetError, match="not finite"):
        ts.add([bad], "initial", "abc")
    junk = tmp_path / "junk.pckl.gzip"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="junk.pckl.gzip: not a readable training set"):
        len(TrainingSet(junk))


def test_write_is_atomic(tmp_path, labelled, monkeypatch):
    path = tmp_path / "data.pckl.gzip"
    ts = TrainingSet(path)
    h = oracle_hash(OracleSettings())
    ts.add(labelled[:3], "initial", h)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        ts.add(labelled[3:], "akmc", h)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old set is intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "data.pckl.gzip",
        "data.pckl.gzip.lock",
    ]
    assert ts.add(labelled[3:], "akmc", h) == 3


def _add_in_child(path, structures, source, h):
    TrainingSet(path).add(structures, source, h)


def test_concurrent_writers_lose_nothing(tmp_path, labelled):
    path = tmp_path / "data.pckl.gzip"
    h = oracle_hash(OracleSettings())
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_add_in_child, args=(path, [at], f"p{i}", h)) for i, at in enumerate(labelled)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(TrainingSet(path).hashes()) == sorted(structure_hash(a) for a in labelled)


def test_hash_survives_file_round_trips_and_labelling(tmp_path):
    from ase.io import read, write

    from autopipec_fw.config import StructureSettings
    from autopipec_fw.structures import surface_training_structures

    structures = surface_training_structures(StructureSettings(), n=20, rattle_stdev=0.1, seed=8)
    write(tmp_path / "c.extxyz", structures)
    back = read(tmp_path / "c.extxyz", ":")
    assert [structure_hash(a) for a in structures] == [structure_hash(b) for b in back]
    labelled = label_structures(structures[:3], OracleSettings(), tmp_path / "calc")
    for src, lab in zip(structures[:3], labelled, strict=True):
        assert np.array_equal(lab.positions, src.positions)  # the caller's exact geometry
        assert structure_hash(lab) == lab.info["structure_hash"] == structure_hash(src)
        assert (tmp_path / "calc" / structure_hash(src) / "result.extxyz").exists()
