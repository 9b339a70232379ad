"""Fixtures of the production tests: validation results (the eOn run folder is tests/fixtures/eon.py's)."""

from __future__ import annotations

import pytest

from autopipec_fw.config import Campaign
from autopipec_fw.production.validate import ValidationResult, validate_potential


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
        validation={"n_holdout": 4, "max_barriers": 0},  # no aKMC here: a gate without barriers, explicitly
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
