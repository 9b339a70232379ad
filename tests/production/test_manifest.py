"""ProductionManifest: field validation with clear errors, JSON schema, checksums."""

from __future__ import annotations

import hashlib
import json

import pytest

from autopipec_fw.config import Campaign
from autopipec_fw.production.manifest import (
    ManifestError,
    ProductionManifest,
    check_spdx,
    load_schema,
    validate_metadata,
)
from autopipec_fw.production.validate import ValidationResult


def _passed() -> ValidationResult:
    return ValidationResult(
        passed=True,
        thresholds={"max_energy_rmse": 10.0, "max_force_rmse": 100.0, "max_barrier_error": 50.0},
        energy_rmse=1.5,
        force_rmse=20.0,
        coverage={"elements": ["Cu"], "volume_per_atom_range": [11.0, 12.5], "linear_strain_range": [-0.02, 0.02]},
        temperatures=[300.0, 500.0],
    )


def _manifest(**over) -> ProductionManifest:
    return ProductionManifest.from_campaign(Campaign(), _passed(), training_set_size=40, generation=2, **over)


def test_from_campaign_fields() -> None:
    m = _manifest()
    c = Campaign()
    assert (m.name, m.version, m.license) == (c.package.name, c.package.version, c.package.license)
    assert m.limits.temperature_range == (300.0, 500.0)
    assert m.limits.gamma_threshold == c.gamma.threshold and m.limits.cutoff == c.fit.cutoff
    assert m.oracle.calculator == "emt" and m.oracle.settings_hash
    assert m.software["eon"] == "3.6.0"  # the server in third_party
    for k in ("pyace", "pacemaker", "autopipec_fw", "ase"):
        assert m.software[k] and m.software[k] != "not installed"
    assert m.validation["energy_rmse_meV_per_atom"] == 1.5


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0", "latest", "1.0.0-"])
def test_non_semver_version_is_refused(version: str) -> None:
    with pytest.raises(ManifestError, match=r"version: .*not a SemVer"):
        _manifest(version=version)


@pytest.mark.parametrize("version", ["0.1.0", "1.2.3-rc.1", "2.0.0+build.5"])
def test_semver_accepted(version: str) -> None:
    assert _manifest(version=version).version == version


@pytest.mark.parametrize("lic", ["MIT License", "GPL", "cc-by-4.0", "Apache 2.0", "", "MIT AND", "(MIT"])
def test_bad_spdx_is_refused(lic: str) -> None:
    with pytest.raises(ManifestError, match=r"^invalid production manifest: license: "):
        _manifest(license=lic)


def test_spdx_hint_and_expressions() -> None:
    with pytest.raises(ValueError, match="did you mean 'CC-BY-4.0'"):
        check_spdx("cc-by-4.0")
    for ok in ("MIT", "CC0-1.0", "MIT OR Apache-2.0", "(MIT AND BSD-3-Clause) OR CC-BY-4.0",
               "GPL-2.0-or-later WITH Classpath-exception-2.0", "LicenseRef-Internal-1"):
        assert check_spdx(ok) == ok


def test_bad_citation_and_unknown_field() -> None:
    with pytest.raises(ManifestError, match="citation: expected one BibTeX entry"):
        _manifest(citation="Smith et al. 2026")
    with pytest.raises(ManifestError, match="colour: unknown field"):
        _manifest(colour="red")


def test_metadata_schema_round_trip_and_checksums(tmp_path) -> None:
    f = tmp_path / "a.yace"
    f.write_bytes(b"potential")
    m = _manifest().with_files([f])
    assert list(m.files) == ["a.yace"]
    assert m.files["a.yace"] == hashlib.sha256(b"potential").hexdigest()
    out = m.write(tmp_path / "metadata.json")
    data = json.loads(out.read_text())
    validate_metadata(data)  # the shipped schema accepts what we write
    assert ProductionManifest.read(out) == m
    assert m.verify_files(tmp_path) == []
    f.write_bytes(b"tampered")
    assert m.verify_files(tmp_path) == ["a.yace"]
    f.write_bytes(b"potential")
    (tmp_path / "extra.yace").write_bytes(b"slipped in")  # files ADDED to a bundle are noticed too
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("deeper")
    assert m.verify_files(tmp_path) == ["extra.yace", "sub/x.txt"]
    f.unlink()
    assert m.file_problems(tmp_path) == {"changed": [], "missing": ["a.yace"], "added": ["extra.yace", "sub/x.txt"]}


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("version",), "1.0", "version"),
        (("files", "a.yace"), "xyz", "files.a.yace"),
        (("limits", "elements"), ["cu"], "limits.elements.0"),
        (("validation", "passed"), False, "validation.passed"),
    ],
)
def test_schema_rejects_tampered_metadata(tmp_path, path, value, where) -> None:
    f = tmp_path / "a.yace"
    f.write_bytes(b"x")
    data = _manifest().with_files([f]).to_json_dict()
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ManifestError, match=rf"does not match metadata.schema.json: {where}"):
        validate_metadata(data)
    assert load_schema()["$schema"].startswith("https://json-schema.org/")
