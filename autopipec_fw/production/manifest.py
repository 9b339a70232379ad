"""ProductionManifest: the metadata of a released potential, written as ``metadata.json``.

The manifest is a pydantic model (typed, with field errors that name the field) and is also checked against
the JSON schema shipped next to this module (``metadata.schema.json``) whenever it is written or read, so
that a consumer without our code can validate a bundle with any JSON-schema tool.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autopipec_fw.config import SEMVER_RE, Campaign
from autopipec_fw.licenses import BibTeX, SpdxLicense, check_bibtex, check_spdx  # noqa: F401 (re-exported)

SCHEMA_PATH = Path(__file__).with_name("metadata.schema.json")
SCHEMA_VERSION = "1.0"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SEMVER = re.compile(SEMVER_RE)

class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the field or file and what was expected."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the stack that made the potential."""

    def dist(name: str) -> str:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return "not installed"

    try:
        import importlib

        eon_version = str(importlib.import_module("eon.version").version)
    except Exception:  # the server may be absent (external runtime) or have no generated version.py
        eon_version = dist("eon-akmc")
    import autopipec_fw

    ace = dist("python-ace")
    return {
        "autopipec_fw": autopipec_fw.__version__,
        "pyace": ace,
        "pacemaker": ace,  # pacemaker is a console script of python-ace
        "tensorpotential": dist("tensorpotential"),
        "eon": eon_version,
        "pyeonclient": dist("pyeonclient"),
        "ase": dist("ase"),
        "python": platform.python_version(),
    }


def oracle_info(campaign: Campaign) -> dict[str, Any]:
    """Oracle name, effective parameters (defaults included) and the hash the training set carries."""
    settings = campaign.oracle
    try:
        from autopipec_fw.oracle.calculators import effective_parameters
        from autopipec_fw.oracle.label import oracle_hash

        params, h = effective_parameters(settings), oracle_hash(settings)
    except ImportError:  # oracle stage not installed: the raw settings
        params, h = dict(settings.parameters), settings.settings_hash()
    return {"calculator": settings.calculator, "parameters": json.loads(json.dumps(params, default=str)), "settings_hash": h}


class Limits(BaseModel):
    """Where the potential may be trusted."""

    model_config = ConfigDict(extra="forbid")

    elements: list[str] = Field(min_length=1)
    cutoff: float = Field(gt=0, description="Å")
    gamma_threshold: float = Field(gt=0, description="max per-atom extrapolation grade accepted in training")
    temperature_range: tuple[float, float] = Field(description="K, sampled by aKMC")
    volume_per_atom_range: tuple[float, float] | None = Field(None, description="Å^3/atom, bulk-like training cells")
    linear_strain_range: tuple[float, float] | None = Field(None, description="relative to the ideal crystal")
    min_interatomic_distance: float | None = Field(None, description="Å, shortest distance in the training data")


class OracleInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calculator: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    settings_hash: str


class ProductionManifest(BaseModel):
    """Everything a user needs to know about a released potential. Serialised as ``metadata.json``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: str = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    version: str = Field(description="SemVer 2.0.0, e.g. 1.0.0")
    description: str = ""
    author: str = Field(min_length=1)
    license: SpdxLicense = Field(description="SPDX license identifier or expression")
    citation: BibTeX = Field(description="BibTeX entry")
    created: str = Field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    training_set_size: int = Field(ge=0, description="structures in the final training set")
    generation: int | None = Field(None, ge=0)
    validation: dict[str, Any] = Field(description="figures of the validation gate")
    limits: Limits
    oracle: OracleInfo
    software: dict[str, str]
    files: dict[str, str] = Field(default_factory=dict, description="bundle file name -> sha256 (hex)")

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"{v!r} is not a SemVer 2.0.0 version (MAJOR.MINOR.PATCH, e.g. '1.0.0' or '1.2.0-rc.1')")
        return v

    @field_validator("created")
    @classmethod
    def _iso(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{v!r} is not an ISO 8601 date-time") from None
        return v

    @field_validator("files")
    @classmethod
    def _hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, h in v.items():
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise ValueError(f"file name {name!r} must be a plain name inside the bundle")
            if not SHA256_RE.match(h):
                raise ValueError(f"files[{name!r}]: {h!r} is not a sha256 hex digest")
        return v

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, **fields: Any) -> ProductionManifest:
        """Like the constructor, but a bad field raises `ManifestError` naming the field and the fix."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise ManifestError(_describe(e)) from None

    @classmethod
    def from_campaign(
        cls,
        campaign: Campaign,
        validation: Any,
        training_set_size: int,
        generation: int | None = None,
        **overrides: Any,
    ) -> ProductionManifest:
        """Manifest from the campaign (package metadata, oracle, gamma, fit cutoff) and a `ValidationResult`
        (metrics, coverage, temperatures). `overrides` replace any field (e.g. version, author)."""
        cov = dict(getattr(validation, "coverage", {}) or {})
        temps = list(getattr(validation, "temperatures", []) or [campaign.akmc.temperature])
        pkg = campaign.package
        fields: dict[str, Any] = {
            "name": pkg.name,
            "version": pkg.version,
            "description": pkg.description,
            "author": pkg.author,
            "license": pkg.license,
            "citation": pkg.citation,
            "training_set_size": training_set_size,
            "generation": generation,
            "validation": validation.metrics() if hasattr(validation, "metrics") else dict(validation),
            "limits": {
                "elements": cov.get("elements") or list(campaign.elements),
                "cutoff": campaign.fit.cutoff,
                "gamma_threshold": campaign.gamma.threshold,
                "temperature_range": (min(temps), max(temps)),
                "volume_per_atom_range": cov.get("volume_per_atom_range"),
                "linear_strain_range": cov.get("linear_strain_range"),
                "min_interatomic_distance": cov.get("min_interatomic_distance"),
            },
            "oracle": oracle_info(campaign),
            "software": software_versions(),
        }
        fields.update(overrides)
        return cls.build(**fields)

    # -- files ----------------------------------------------------------------------------------------

    def with_files(self, paths: Iterable[Path]) -> ProductionManifest:
        """A copy whose `files` holds the sha256 of each path (keyed by its file name)."""
        files = dict(self.files)
        for p in paths:
            files[Path(p).name] = sha256_file(Path(p))
        return self.model_copy(update={"files": files})

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def write(self, path: Path) -> Path:
        """Write ``metadata.json`` (validated against the schema first)."""
        data = self.to_json_dict()
        validate_metadata(data)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> ProductionManifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: cannot read metadata ({e})") from None
        validate_metadata(data, source=str(path))
        try:
            return cls(**data)
        except ValidationError as e:
            raise ManifestError(f"{path}: " + _describe(e)) from None

    def file_problems(self, folder: Path) -> dict[str, list[str]]:
        """The bundle in ``folder`` against the manifest: ``changed`` (sha256 differs), ``missing``, and
        ``added`` (files, in subfolders too, that the manifest does not list; metadata.json itself is not listed)."""
        folder = Path(folder)
        out: dict[str, list[str]] = {"changed": [], "missing": [], "added": []}
        for name, h in self.files.items():
            p = folder / name
            if not p.is_file():
                out["missing"].append(name)
            elif sha256_file(p) != h:
                out["changed"].append(name)
        listed = set(self.files) | {"metadata.json"}
        out["added"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                              if not p.is_dir() and p.relative_to(folder).as_posix() not in listed)
        return out

    def verify_files(self, folder: Path) -> list[str]:
        """Names of bundle files that are not as the manifest says: changed or missing ones, then files added to
        the bundle that it does not list. Empty: the bundle is exactly what was released."""
        p = self.file_problems(folder)
        return p["changed"] + p["missing"] + p["added"]


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(manifest)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}")
    return "invalid production manifest: " + "; ".join(lines)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_metadata(data: Mapping[str, Any], source: str = "metadata.json") -> None:
    """Check `data` against metadata.schema.json; `ManifestError` names the failing field."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(load_schema())
    validator = validator_cls(load_schema(), format_checker=validator_cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(dict(data)), key=lambda e: list(e.path))
    if errors:
        msgs = [f"{'.'.join(str(p) for p in e.path) or '(top level)'}: {e.message}" for e in errors]
        raise ManifestError(f"{source}: does not match {SCHEMA_PATH.name}: " + "; ".join(msgs))
