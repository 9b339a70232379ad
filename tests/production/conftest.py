"""Fixtures of the production tests: a real-format eOn run folder (cached) and validation results."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from autopipec_fw.config import Campaign
from autopipec_fw.production.validate import ValidationResult, validate_potential

CACHE = Path(os.environ.get("AUTOPIPEC_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache")) / "production"


def _eon_run_cached() -> Path:
    """Build tests/production/eon_folder.py's run once; the cache key is the builder's source."""
    from tests.production import eon_folder

    key = hashlib.sha256(Path(eon_folder.__file__).read_bytes()).hexdigest()[:12]
    final = CACHE / f"eon_run-{key}"
    if not (final / "dynamics.txt").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".eon_run-"))
        eon_folder.build_eon_run(tmp / "run")
        try:
            os.rename(tmp / "run", final)
        except OSError:  # another process finished first
            if not (final / "dynamics.txt").is_file():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def eon_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the cached aKMC run folder (Cu adatom hops on Cu(100), EMT), safe to modify."""
    dst = tmp_path_factory.mktemp("eon") / "run"
    shutil.copytree(_eon_run_cached(), dst)
    return dst


@pytest.fixture(scope="session")
def bulk_campaign(tmp_path_factory) -> Campaign:
    """A bulk Cu campaign matching what cu_bulk_potential was trained on: perfect and strained bulk (a vacancy
    campaign's held-out set would hold vacancy hops, which that potential never saw)."""
    from ase.build import bulk
    from ase.io import write

    cell = tmp_path_factory.mktemp("bulk") / "cu_2x2x2.extxyz"
    write(cell, bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)), format="extxyz")
    return Campaign(
        name="cu-bulk-test",
        structure={"kind": "file", "file": str(cell)},
        validation={"n_holdout": 4},
        package={"name": "cu-bulk-test", "version": "1.0.0", "license": "MIT"},
    )


@pytest.fixture(scope="session")
def bulk_validation(cu_bulk_potential, bulk_campaign, tmp_path_factory) -> ValidationResult:
    """The bulk potential validated on fresh bulk structures (real oracle stage, EMT); no aKMC folder."""
    wd = tmp_path_factory.mktemp("validation_bulk")
    return validate_potential(cu_bulk_potential.generation, bulk_campaign, wd, [])


@pytest.fixture(scope="session")
def surface_validation(cu_bulk_potential, eon_run_dir, tmp_path_factory) -> ValidationResult:
    """The bulk potential validated on the adatom demo and its aKMC processes: outside its domain."""
    wd = tmp_path_factory.mktemp("validation_surface")
    return validate_potential(cu_bulk_potential.generation, Campaign(), wd, [eon_run_dir])
