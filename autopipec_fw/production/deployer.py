"""ProductionDeployer: a validated potential packed as ``dist/<name>-<version>.zip``.

The archive holds one folder ``<name>-<version>/`` with:

- ``<name>.yace``  the potential for LAMMPS ``pair_style pace`` and ASE ``PyACECalculator``,
- ``<name>.yaml`` + ``<name>.asi``  B-basis and active set, for the extrapolation grade (gamma),
- ``report.html``  the self-contained report, ``README.md`` usage notes,
- ``metadata.json``  the ``ProductionManifest``; its ``files`` maps every other file of the bundle to its
  sha256 (``report.html`` shows the manifest as it was before the report and metadata existed).

Rules: a potential that failed the validation gate is never packaged; a released version is never
overwritten (publishing uses a hard link, which fails if the name exists); nothing is written outside
``dist_dir`` (the name and version are checked, and the final path must lie directly in ``dist_dir``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autopipec_fw.config import SEMVER_RE, Campaign
from autopipec_fw.production.manifest import ProductionManifest
from autopipec_fw.production.report import write_report
from autopipec_fw.production.validate import GateFailedError, ValidationResult, generation_files

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SEMVER = re.compile(SEMVER_RE)


class ReleaseError(RuntimeError):
    """A release that cannot be made (version already released, bad name, missing file)."""


def release_basename(name: str, version: str) -> str:
    """``<name>-<version>``, after checking both cannot leave the dist folder."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or len(name) > 100:
        raise ReleaseError(
            f"package name {name!r}: expected lower-case letters, digits, '.', '_', '-' "
            "(starting with a letter or digit, no '..')"
        )
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ReleaseError(f"package version {version!r}: expected SemVer MAJOR.MINOR.PATCH (e.g. 1.0.0)")
    return f"{name}-{version}"


def readme_text(manifest: ProductionManifest) -> str:
    """The bundle's README.md: usage with LAMMPS and ASE, gamma, limits, citation."""
    n = manifest.name
    lim = manifest.limits
    els = " ".join(lim.elements)
    val = manifest.validation

    def fig(key: str, unit: str) -> str:
        v = val.get(key)
        return "n/a" if v is None else f"{v:.2f} {unit}"

    strain = (
        f"{lim.linear_strain_range[0]:+.3f} to {lim.linear_strain_range[1]:+.3f}" if lim.linear_strain_range else "n/a"
    )
    vol = (
        f"{lim.volume_per_atom_range[0]:.2f}-{lim.volume_per_atom_range[1]:.2f} Å³/atom"
        if lim.volume_per_atom_range
        else "n/a"
    )
    t0, t1 = lim.temperature_range
    temps = f"{t0:g} K" if t0 == t1 else f"{t0:g}-{t1:g} K"
    return f"""# {n} {manifest.version}

{manifest.description}

ACE potential (pacemaker/pyace) for {", ".join(lim.elements)}, trained on the fly with eOn aKMC by autopipec-fw.
Author: {manifest.author}. License: {manifest.license}. Created: {manifest.created}.

## Files

- `{n}.yace`: the potential (LAMMPS `pair_style pace`, ASE `PyACECalculator`).
- `{n}.yaml` + `{n}.asi`: B-basis form and active set, for the extrapolation grade gamma.
- `report.html`: validation, learning curve, parity, gamma per stop, KMC trajectory, barriers.
- `metadata.json`: version, limits of validity, oracle settings, software versions, sha256 of every file.

## LAMMPS (ML-PACE package)

```
pair_style  pace
pair_coeff  * * {n}.yace {els}
```

With the extrapolation grade (flag configurations outside the training domain):

```
pair_style  pace/extrapolation
pair_coeff  * * {n}.yaml {n}.asi {els}
fix         pace_gamma all pair 10 pace/extrapolation gamma 1
compute     max_pace_gamma all reduce max f_pace_gamma
```

## ASE

```python
from pyace import PyACECalculator

atoms.calc = PyACECalculator("{n}.yace")
energy = atoms.get_potential_energy()

# extrapolation grade per atom (needs the .yaml and the .asi)
calc = PyACECalculator("{n}.yaml")
calc.set_active_set("{n}.asi")
atoms.calc = calc
atoms.get_potential_energy()
gamma_max = calc.results["gamma"].max()
```

## Limits of validity

- Elements: {", ".join(lim.elements)}; cutoff {lim.cutoff:g} Å.
- Trust results only while max gamma stays below {lim.gamma_threshold:g} (the training threshold).
- Temperature sampled by aKMC: {temps}.
- Bulk volume per atom in the training data: {vol}; linear strain vs the ideal crystal: {strain}.
- Oracle: {manifest.oracle.calculator} (settings hash {manifest.oracle.settings_hash}); energies are
  relative to its reference, not comparable with other codes.

Validation on a held-out oracle set: energy RMSE {fig("energy_rmse_meV_per_atom", "meV/atom")}, force RMSE
{fig("force_rmse_meV_per_A", "meV/Å")}, barrier max error {fig("barrier_max_error_meV", "meV")}.

## Citation

```bibtex
{manifest.citation}
```
"""


class ProductionDeployer:
    """Packs validated potentials into `dist_dir`."""

    def __init__(self, dist_dir: Path):
        self.dist_dir = Path(dist_dir)

    def package_path(self, name: str, version: str) -> Path:
        base = release_basename(name, version)
        dist = self.dist_dir.resolve()
        path = (dist / f"{base}.zip").resolve()
        if path.parent != dist:
            raise ReleaseError(f"package path {path} would leave {dist}")
        return path

    def is_released(self, name: str, version: str) -> bool:
        return self.package_path(name, version).exists()

    def deploy(
        self,
        generation: Any,
        manifest: ProductionManifest,
        validation: ValidationResult | Mapping[str, Any],
        *,
        generations: Sequence[Mapping[str, Any]] = (),
        stops: Sequence[Any] = (),
        kmc_trajectory: Sequence[Mapping[str, Any]] = (),
        pictures: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``dist/<name>-<version>.zip`` and return its path.

        - `generation`: the `Generation` (or its dict) whose .yace/.yaml/.asi are shipped.
        - `manifest`: the `ProductionManifest` (``files`` is filled here).
        - `validation`: the `ValidationResult` (or its dict); a failed gate raises `GateFailedError` and
          writes nothing.
        - `generations`, `stops`, `kmc_trajectory`: plain data for report.html (see `report.write_report`).

        Raises `ReleaseError` when this name and version were already released.
        """
        result = validation if isinstance(validation, ValidationResult) else ValidationResult.from_dict(validation)
        if not result.passed:
            raise GateFailedError(result)
        target = self.package_path(manifest.name, manifest.version)
        if target.exists():
            raise ReleaseError(
                f"{target.name} is already released in {target.parent}; a released version is never overwritten "
                "(raise package.version in the campaign)"
            )
        files = generation_files(generation)
        missing = [k for k in ("yaml", "asi") if files[k] is None]
        if missing:
            raise ReleaseError(f"generation: no .{' / .'.join(missing)} file; the bundle needs them for gamma")
        base = release_basename(manifest.name, manifest.version)
        self.dist_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.dist_dir, prefix=f".{base}.staging-"))
        tmp_zip: Path | None = None
        try:
            bundle: list[Path] = []
            for key in ("yace", "yaml", "asi"):
                dst = staging / f"{manifest.name}.{key}"
                shutil.copyfile(files[key], dst)  # type: ignore[arg-type]
                bundle.append(dst)
            readme = staging / "README.md"
            readme.write_text(readme_text(manifest), encoding="utf-8")
            bundle.append(readme)
            shown = manifest.with_files(bundle)
            report = write_report(staging / "report.html", shown, result, generations, stops, kmc_trajectory,
                                  pictures=pictures)
            bundle.append(report)
            final_manifest = manifest.with_files(bundle)
            meta = final_manifest.write(staging / "metadata.json")
            bundle.append(meta)

            fd, name = tempfile.mkstemp(dir=self.dist_dir, prefix=f".{base}.", suffix=".zip.tmp")
            os.close(fd)
            tmp_zip = Path(name)
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for p in bundle:
                    zf.write(p, arcname=f"{base}/{p.name}")
            with zipfile.ZipFile(tmp_zip) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise ReleaseError(f"{tmp_zip}: archive member {bad} is corrupt")
            os.chmod(tmp_zip, 0o644)
            try:
                os.link(tmp_zip, target)  # atomic and never replaces an existing release
            except FileExistsError:
                raise ReleaseError(f"{target.name} was released meanwhile by another process; not overwritten") from None
            except OSError:  # file system without hard links
                if target.exists():
                    raise ReleaseError(f"{target.name} is already released; not overwritten") from None
                os.replace(tmp_zip, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if tmp_zip is not None:
                tmp_zip.unlink(missing_ok=True)
        log.info("released %s", target)
        return target


def release_potential(
    campaign: Campaign,
    generation: Any,
    validation: ValidationResult | Mapping[str, Any],
    dist_dir: Path,
    *,
    training_set_size: int | None = None,
    generations: Sequence[Mapping[str, Any]] = (),
    stops: Sequence[Any] = (),
    kmc_trajectory: Sequence[Mapping[str, Any]] = (),
    pictures: Mapping[str, Any] | None = None,
    **manifest_overrides: Any,
) -> Path:
    """Manifest from the campaign + validation, then `ProductionDeployer(dist_dir).deploy(...)`.

    `training_set_size` defaults to the generation's ``metrics["n_structures"]``.
    """
    result = validation if isinstance(validation, ValidationResult) else ValidationResult.from_dict(validation)
    if not result.passed:
        raise GateFailedError(result)
    get = generation.get if isinstance(generation, Mapping) else lambda k, d=None: getattr(generation, k, d)
    metrics = dict(get("metrics", None) or {})
    if training_set_size is None:
        training_set_size = int(metrics.get("n_structures") or result.coverage.get("n_structures") or 0)
    index = get("index", None)
    manifest = ProductionManifest.from_campaign(
        campaign, result, training_set_size, generation=int(index) if index is not None else None, **manifest_overrides
    )
    return ProductionDeployer(dist_dir).deploy(
        generation, manifest, result, generations=generations, stops=stops, kmc_trajectory=kmc_trajectory,
        pictures=pictures,
    )
