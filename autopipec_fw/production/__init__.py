"""Production stage: validation gate, manifest (metadata.json), report.html and the dist/ package.

    result = validate_potential(generation, campaign, workdir, eon_run_dirs)   # ValidationResult
    zip_path = release_potential(campaign, generation, result, dist_dir, ...)  # manifest + report + zip

Nothing here imports FireWorks.
"""

from autopipec_fw.production.deployer import ProductionDeployer, ReleaseError, release_potential
from autopipec_fw.production.manifest import ManifestError, ProductionManifest, validate_metadata
from autopipec_fw.production.report import write_report
from autopipec_fw.production.validate import (
    GateFailedError,
    ValidationError,
    ValidationResult,
    validate_potential,
)

__all__ = [
    "GateFailedError",
    "ManifestError",
    "ProductionDeployer",
    "ProductionManifest",
    "ReleaseError",
    "ValidationError",
    "ValidationResult",
    "release_potential",
    "validate_metadata",
    "validate_potential",
    "write_report",
]
