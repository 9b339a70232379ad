"""Data integrity: every stage checks that the training set is what earlier stages wrote (size against the stage
records, structure hashes against the generation's own snapshot); a missing or shrunk set is an error naming the
file and how many rows are missing, never a silent restart; the package describes the generation it packages."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from autopipec_fw.campaign import (
    CampaignLayout,
    TrainingSetMismatch,
    check_training_set,
    fit,
    label_batch,
    package,
    prepare_campaign,
    record_stage,
)
from autopipec_fw.config import Campaign
from autopipec_fw.training.dataset import TrainingSet, write_frame


def folder(tmp_path: Path, cu_bulk_potential, campaign: Campaign | None = None) -> CampaignLayout:
    """A campaign folder after its first fit: the training set and gen_000 of the cached bulk potential, and
    the oracle's stage record of the rows it added."""
    c = campaign or Campaign(name="integrity", package={"dist_dir": tmp_path / "dist"})
    layout = prepare_campaign(c, tmp_path / "c")
    layout.dataset.parent.mkdir(parents=True)
    shutil.copyfile(cu_bulk_potential.training, layout.dataset)
    layout.generations.mkdir()
    shutil.copytree(cu_bulk_potential.generation.dir, layout.generations / "gen_000")
    n = len(TrainingSet(layout.dataset))
    record_stage(layout, "oracle_initial_0000", {"added": n, "labelled": n, "training_set_size": n})
    return layout


def test_intact_set_passes(tmp_path: Path, cu_bulk_potential) -> None:
    layout = folder(tmp_path, cu_bulk_potential)
    assert check_training_set(layout) == len(TrainingSet(layout.dataset)) > 0


def test_a_deleted_set_is_an_error_not_a_restart(tmp_path: Path, cu_bulk_potential) -> None:
    layout = folder(tmp_path, cu_bulk_potential)
    n = len(TrainingSet(layout.dataset))
    layout.dataset.unlink()
    layout.structures.mkdir(exist_ok=True)
    write(layout.structures / "iter_000.extxyz", [bulk("Cu", "fcc", a=3.7, cubic=True)], format="extxyz")
    with pytest.raises(TrainingSetMismatch) as err:  # the oracle stage: before any single point
        label_batch(layout, "iter_000.extxyz", [0], "iter_000")
    msg = str(err.value)
    assert str(layout.dataset) in msg and "missing" in msg and f"all {n} rows are missing" in msg
    assert "gen_000" in msg and "training_data.pckl.gzip" in msg  # where to restore it from
    assert not layout.dataset.exists() and not (layout.oracle).exists()  # nothing labelled, no new set
    with pytest.raises(TrainingSetMismatch, match=f"all {n} rows are missing"):
        fit(layout, 1)
    assert not (layout.generations / "gen_001").exists()


def test_a_shrunk_or_replaced_set_is_named(tmp_path: Path, cu_bulk_potential) -> None:
    layout = folder(tmp_path, cu_bulk_potential)
    frame = TrainingSet(layout.dataset).frame()
    n = len(frame)
    write_frame(frame.iloc[:3].copy(), layout.dataset)
    with pytest.raises(TrainingSetMismatch) as err:
        fit(layout, 1)
    assert f"holds 3 structures, but earlier stages wrote {n}" in str(err.value)
    assert f"{n - 3} rows are missing" in str(err.value)

    # as many rows, but not the ones gen_000 was fitted on: the hashes tell
    other = frame.copy()
    other["structure_hash"] = [f"{i:016x}" for i in range(n)]
    other.attrs = frame.attrs
    write_frame(other, layout.dataset)
    with pytest.raises(TrainingSetMismatch, match=f"{n} of the {n} structures gen_000 was fitted on are not in it"):
        check_training_set(layout)


def test_without_stage_records_the_generation_still_guards(tmp_path: Path, cu_bulk_potential) -> None:
    layout = folder(tmp_path, cu_bulk_potential)
    shutil.rmtree(layout.stages)
    n = len(TrainingSet(layout.dataset))
    layout.dataset.unlink()
    with pytest.raises(TrainingSetMismatch, match=f"gen_000 was fitted on {n}"):
        check_training_set(layout)


def test_the_package_describes_its_own_generation(tmp_path: Path, cu_bulk_potential, bulk_campaign,
                                                  bulk_validation) -> None:
    """Labels added after the packaged generation was fitted (a stop at the iteration cap, say) do not count in
    its metadata: training_set_size is that generation's own snapshot."""
    c = bulk_campaign.model_copy(update={"package": bulk_campaign.package.model_copy(
        update={"dist_dir": tmp_path / "dist"})})
    layout = folder(tmp_path, cu_bulk_potential, c)
    fitted = len(pd.read_pickle(layout.generations / "gen_000" / "training_data.pckl.gzip", compression="gzip"))
    extra = [bulk("Cu", "fcc", a=a, cubic=True) for a in (3.55, 3.66)]
    for a in extra:
        a.calc = EMT()
        a.get_forces()
    ts = TrainingSet(layout.dataset)
    ts.add(extra, source="iter_000", oracle_hash=ts.oracle_hash)
    assert len(ts) == fitted + 2
    layout.validation.mkdir()
    (layout.validation / "validation.json").write_text(json.dumps(bulk_validation.to_dict(), default=str))
    record_stage(layout, "validate", {"generation": 0, "passed": True})
    out = package(layout)
    assert out["training_set_size"] == fitted and out["generation"] == 0
    with zipfile.ZipFile(out["package"]) as zf:
        meta = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("metadata.json"))))
    assert meta["training_set_size"] == fitted and meta["generation"] == 0
