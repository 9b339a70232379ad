"""ProductionDeployer: dist/<name>-<version>.zip, usable, checksummed, never overwritten, never outside dist/."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from autopipec_fw.production.deployer import (
    ProductionDeployer,
    ReleaseError,
    release_basename,
    release_potential,
)
from autopipec_fw.production.manifest import ProductionManifest, validate_metadata
from autopipec_fw.production.validate import GateFailedError


def _safe_extract(zpath: Path, dest: Path) -> Path:
    """Unpack after checking every member stays inside `dest`; returns the bundle folder."""
    with zipfile.ZipFile(zpath) as zf:
        for name in zf.namelist():
            p = PurePosixPath(name)
            assert not p.is_absolute() and ".." not in p.parts, name
        zf.extractall(dest)
        tops = {PurePosixPath(n).parts[0] for n in zf.namelist()}
    assert len(tops) == 1
    return dest / tops.pop()


@pytest.fixture(scope="module")
def released(cu_bulk_potential, bulk_campaign, bulk_validation, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("rel") / "dist"
    gen = cu_bulk_potential.generation
    return release_potential(bulk_campaign, gen, bulk_validation, dist, generations=[gen.to_dict()], stops=[])


def test_package_loads_and_reproduces_stored_energy(released: Path, cu_bulk_potential, tmp_path) -> None:
    from pyace import PyACECalculator

    assert released.name == "cu-bulk-test-1.0.0.zip" and released.parent.name == "dist"
    bundle = _safe_extract(released, tmp_path)
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(
        ["cu-bulk-test.yace", "cu-bulk-test.yaml", "cu-bulk-test.asi", "README.md", "report.html", "metadata.json"]
    )
    # pacemaker stored its own predictions for the training structures at fit time
    gdir = cu_bulk_potential.generation.dir
    pred = pd.read_pickle(gdir / "train_pred.pckl.gzip", compression="gzip")
    data = pd.read_pickle(gdir / "fitting_data_info.pckl.gzip", compression="gzip")
    idx = pred.index[:3]
    calc = PyACECalculator(str(bundle / "cu-bulk-test.yace"))
    for i in idx:
        atoms = data.loc[i, "ase_atoms"].copy()
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(pred.loc[i, "energy_pred"], abs=1e-6)
    # gamma from the shipped .yaml + .asi
    gcalc = PyACECalculator(str(bundle / "cu-bulk-test.yaml"))
    gcalc.set_active_set(str(bundle / "cu-bulk-test.asi"))
    atoms = data.loc[idx[0], "ase_atoms"].copy()
    atoms.calc = gcalc
    atoms.get_potential_energy()
    assert 0 < gcalc.results["gamma"].max() < 5  # a training structure
    readme = (bundle / "README.md").read_text()
    assert "pair_coeff  * * cu-bulk-test.yace Cu" in readme and 'PyACECalculator("cu-bulk-test.yace")' in readme


def test_metadata_validates_and_checksums_match(released: Path, tmp_path, bulk_validation, cu_bulk_potential) -> None:
    bundle = _safe_extract(released, tmp_path)
    data = json.loads((bundle / "metadata.json").read_text())
    validate_metadata(data)
    m = ProductionManifest.read(bundle / "metadata.json")
    assert set(m.files) == {p.name for p in bundle.iterdir()} - {"metadata.json"}
    for name, h in m.files.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == h
    assert m.verify_files(bundle) == []
    (bundle / "other.yace").write_bytes((bundle / f"{m.name}.yace").read_bytes())  # an added file is noticed
    assert m.verify_files(bundle) == ["other.yace"]
    (bundle / "other.yace").unlink()
    assert m.validation["passed"] is True
    assert m.validation["energy_rmse_meV_per_atom"] == pytest.approx(bulk_validation.energy_rmse)
    gen = cu_bulk_potential.generation
    assert m.training_set_size == gen.metrics["n_structures"] > 0 and m.generation == gen.index


def test_second_release_of_same_version_is_refused(released, cu_bulk_potential, bulk_campaign, bulk_validation) -> None:
    before = released.read_bytes()
    with pytest.raises(ReleaseError, match="already released"):
        release_potential(bulk_campaign, cu_bulk_potential.generation, bulk_validation, released.parent)
    assert released.read_bytes() == before
    assert sorted(p.name for p in released.parent.iterdir()) == [released.name]  # no temp files left


def test_failing_gate_packages_nothing(surface_validation, cu_bulk_potential, tmp_path) -> None:
    from autopipec_fw.config import Campaign

    dist = tmp_path / "dist"
    with pytest.raises(GateFailedError, match=r"validation failed: .*max_barrier_error"):
        release_potential(Campaign(), cu_bulk_potential.generation, surface_validation, dist)
    m = ProductionManifest.from_campaign(Campaign(), surface_validation.metrics() | {"passed": True}, 34)
    with pytest.raises(GateFailedError):
        ProductionDeployer(dist).deploy(cu_bulk_potential.generation, m, surface_validation.to_dict())
    assert not dist.exists()


@pytest.mark.parametrize(
    ("name", "version"),
    [("../evil", "1.0.0"), ("a/b", "1.0.0"), ("Cu", "1.0.0"), ("ok", "../1.0.0"), ("ok", "1.0"), ("a..b", "1.0.0")],
)
def test_names_cannot_leave_dist(name: str, version: str, tmp_path) -> None:
    with pytest.raises(ReleaseError):
        release_basename(name, version)
    with pytest.raises(ReleaseError):
        ProductionDeployer(tmp_path / "dist").package_path(name, version)
    assert release_basename("cu-ace", "1.2.0-rc.1") == "cu-ace-1.2.0-rc.1"


def test_release_raced_by_another_process_is_not_overwritten(
    cu_bulk_potential, bulk_campaign, bulk_validation, tmp_path, monkeypatch
) -> None:
    """Another process publishes the same version between our check and our publish: ours is dropped."""
    import os

    from autopipec_fw.production import deployer

    dist = tmp_path / "dist"
    real_link = os.link

    def racing_link(src, dst, *a, **k):
        Path(dst).write_bytes(b"the other release")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(deployer.os, "link", racing_link)
    with pytest.raises(ReleaseError, match="released meanwhile"):
        release_potential(bulk_campaign, cu_bulk_potential.generation, bulk_validation, dist)
    assert [p.name for p in dist.iterdir()] == ["cu-bulk-test-1.0.0.zip"]
    assert (dist / "cu-bulk-test-1.0.0.zip").read_bytes() == b"the other release"


def test_generation_without_active_set_is_refused(cu_bulk_potential, bulk_campaign, bulk_validation, tmp_path) -> None:
    gen = cu_bulk_potential.generation.to_dict() | {"asi": None}
    with pytest.raises(ReleaseError, match=r"no \.asi file"):
        release_potential(bulk_campaign, gen, bulk_validation, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()
