"""Campaign settings: one YAML file validated by typed models.

Every stage reads its own section (`oracle`, `fit`, `gamma`, `akmc`, ...). The defaults describe the built-in
demo: a Cu adatom on Cu(100), labelled by EMT. A wrong field gives a `ConfigError` naming the file, the field
and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autopipec_fw.licenses import BibTeX, SpdxLicense

SEMVER_RE = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

PosFloat = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]


class ConfigError(ValueError):
    """A campaign file that cannot be used; the message names the file and field."""


class _Model(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` in any number field is refused naming the field (pacemaker, eOn and
    # the oracle codes die late and obscurely on them)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StructureSettings(_Model):
    """The starting configuration of the aKMC run."""

    kind: Literal["adatom_on_slab", "vacancy_in_bulk", "file"] = Field(
        "adatom_on_slab", description="how the starting structure is built"
    )
    element: str = Field("Cu", description="element of the host crystal")
    lattice: Literal["fcc", "bcc"] = "fcc"
    a: PosFloat | None = Field(None, description="lattice constant in Å; None = ASE's reference value")
    surface: Literal["100", "111", "110"] = Field("100", description="surface facet (adatom_on_slab)")
    size: tuple[PosInt, PosInt, PosInt] = Field((3, 3, 3), description="repetitions (slab: x, y, layers)")
    vacuum: PosFloat = Field(10.0, description="vacuum above the slab in Å")
    fixed_layers: int = Field(1, ge=0, description="bottom slab layers frozen in aKMC")
    fixed_far_atoms: int | None = Field(
        None, ge=0,
        description="bulk cells: the atoms farthest from the defect held fixed in aKMC, so that eOn's dimer cannot "
        "follow the uniform translation of the whole cell (with no fixed atom, 5 of 12 searches in a 31-atom Al "
        "vacancy cell ended at max iterations following it; with one the lattice slid past it to a symmetry copy; "
        "with 8 fixed, 14 of 16 were good at ~200 force calls). None: 8 for vacancy_in_bulk, 0 otherwise",
    )
    file: Path | None = Field(None, description="structure file read by ASE (kind: file)")

    @model_validator(mode="after")
    def _file_needed(self) -> StructureSettings:
        if self.kind == "file" and self.file is None:
            raise ValueError("kind 'file' needs 'file': a path ASE can read")
        return self


class OracleSettings(_Model):
    """The reference ("DFT") calculator, by name and parameters."""

    calculator: Literal["emt", "gpaw", "espresso", "vasp"] = Field("emt", description="ASE calculator name")
    parameters: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the calculator")
    command: str | None = Field(
        None,
        description="how to start the code: pw.x / vasp_std argv (e.g. 'mpirun -np 4 pw.x'); for gpaw the Python "
        "that runs it (e.g. 'mpirun -np 4 python3'; default: this Python)",
    )
    kpoint_density: PosFloat | None = Field(
        2.0,
        description="DFT codes: k-points per Å⁻¹ of reciprocal-lattice length (ASE's kpts={'density': d}; "
        "the same grid as VASP's KSPACING = 1/d Å⁻¹): n_i = max(1, ceil(2π |b_i| d)), Γ-centred, and 1 along "
        "non-periodic directions and along cell vectors whose atoms leave a vacuum gap > 5 Å. The grid of each "
        "structure is recorded in its oracle.json. 2.0 = VASP's default KSPACING 0.5. null: the fixed "
        "parameters.kpts for every structure (the code's default, Γ, when absent)",
    )
    max_scf_corrections: int = Field(
        2, ge=0,
        description="corrected reruns (custodian: more SCF iterations, gentler mixing) after an unconverged SCF "
        "before the single point fails; 0 fails at the first unconverged SCF",
    )
    batch_size: PosInt = Field(8, description="structures per oracle Firework (1 for expensive DFT)")

    def settings_hash(self) -> str:
        """Stable hash of everything that changes the labels: a training set never mixes two of these.
        Covers the k-point density of DFT codes (not the grid each structure gets from it)."""
        fields: dict[str, Any] = {"calculator": self.calculator, "parameters": self.parameters}
        if self.calculator != "emt":
            fields["kpoint_density"] = self.kpoint_density
        if self.calculator == "gpaw":  # labels carry the free energy since 2026-12 (oracle.jobs.label_energy)
            fields["energy"] = "free"
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class InitialDataSettings(_Model):
    """The small starting set labelled before the first fit."""

    n_strained: int = Field(10, ge=0, description="bulk cells under random strain")
    max_strain: float = Field(0.04, ge=0, le=0.5, description="largest strain component")
    n_rattled: int = Field(10, ge=0, description="rattled bulk cells")
    rattle_stdev: float = Field(0.06, ge=0, description="Å")
    n_vacancy: int = Field(4, ge=0, description="rattled bulk cells with one vacancy")
    n_surface: int = Field(
        40, ge=0,
        description="structures made from the campaign's own structure (adatom slab: adatom positions along "
        "hollow-bridge-top paths and the bare slab; vacancy: a neighbour part-way into the vacancy; otherwise "
        "rattled copies): the region aKMC explores first. Measured on the demo: with 6 the first aKMC run stopped "
        "at once and every stop paid a refit; with 40 the first potential already knows the hop paths")
    bulk_size: tuple[PosInt, PosInt, PosInt] = (2, 2, 2)
    seed: int = 42


class FitSettings(_Model):
    """pacemaker settings (initial fit and upfits)."""

    cutoff: PosFloat = Field(5.0, description="radial cutoff in Å")
    number_of_functions: PosInt = Field(
        40, description="ACE functions per element (measured on the demo: with 20 the adatom hop came out 53-58 meV "
        "too high, with 40 within 1 meV)")
    max_iterations: PosInt = Field(300, description="BFGS iterations of a fit from scratch (generation 0)")
    upfit_iterations: PosInt = Field(60, description="BFGS iterations of each warm start")
    upfit: bool = Field(
        False,
        description="later generations are warm starts (pacemaker -p from the previous potential, "
        "upfit_iterations) instead of fits from scratch (max_iterations). Off by default, by measurement on the "
        "demo: a warm start alone fits well (gen_001 data: 60 iterations, 26 s, test 1.03 meV/atom / 11.0 meV/Å; "
        "fresh 300 iterations, 62 s, 2.65 / 12.3), but the campaign with warm starts took 6 fits, 5 stops, 90 "
        "labels and 456 s against 4 fits, 3 stops, 82 labels and 320 s with fresh fits: a warm start learns a new "
        "region less (after a stop at gamma 6 it was 3.6 x worse on the old data) and the next run stops again",
    )
    warm_start_tolerance: float = Field(
        1.25, ge=1.0,
        description="a generation whose energy or force RMSE on the previous generation's structures exceeds this "
        "x the previous generation's (plus 0.5 meV/atom / 3 meV/Å) is fitted the other way too (fresh <-> warm "
        "start) and the better of the two is kept: a generation is not worse than the one before on the data "
        "both saw unless neither way does better")
    refit_tolerance: float = Field(
        0.0, ge=0,
        description="new labels (a stop's or a teaching round's) that the current generation already predicts "
        "within this x its own test RMSE (plus 0.5 meV/atom / 3 meV/Å), energies and forces, need no refit: the "
        "oracle has verified the potential where it extrapolated, so the potential is kept and only its active set "
        "is rebuilt over the grown training set (seconds instead of a fit; gamma there drops below 1). 0 (the default until measured on the demo and "
        "the sweep) always refits; a teaching round always refits")
    kappa: float = Field(0.3, ge=0, le=1, description="force weight in the loss")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="share of data held out by pacemaker")
    tf_threads: PosInt = Field(2, description="TensorFlow intra/inter-op threads")
    seed: int = 42


class GammaSettings(_Model):
    """Extrapolation grade thresholds (max per-atom gamma of a structure)."""

    threshold: PosFloat = Field(
        3.0, description="above this the potential is not trusted: aKMC stops and the structure is labelled "
        "(pacemaker's own recipe says ~5; measured on the demo: at 5 the learned hop came out 110 meV off, at 3 "
        "the gate passed)")
    select_lower: PosFloat = Field(1.5, description="between this and threshold: recorded as a candidate, no stop")
    max_selected: PosInt = Field(6, description="at most this many structures labelled per stop (K)")
    max_candidates: PosInt = Field(
        40, description="at most this many select-band structures kept per stop as the pool the K labels are "
        "chosen from (D-optimal); stop structures are always kept")
    collect_searches: int = Field(
        8, ge=0,
        description="after the first extrapolation of a run, this many more searches run only to collect "
        "candidates around it (our client: their results never reach eOn's tables, so no KMC step is drawn from a "
        "potential that has extrapolated there); then the run stops. 0 stops at once. An external eOn client "
        "always stops at once")
    collect_seconds: PosFloat = Field(300.0, description="the collection after a stop lasts at most this long (s)")
    min_distance_factor: float = Field(
        0.65, ge=0, lt=1,
        description="structures with two atoms closer than this x the sum of their covalent radii are "
        "unphysical: never a reason to stop aKMC (in-process client) and never labelled (they would only poison "
        "the fit)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> GammaSettings:
        if self.select_lower >= self.threshold:
            raise ValueError("select_lower must be below threshold")
        return self


class EonSettings(_Model):
    """Where eOn comes from. 'local' is the project's runtime; 'external' is the user's own installation."""

    runtime: Literal["local", "external"] = "local"
    potential_mode: Literal["inprocess", "ext_pot"] = Field(
        "inprocess", description="inprocess: our client evaluates ACE itself; ext_pot: via pace_driver.py"
    )
    client_path: str | None = Field(None, description="eonclient executable (external runtime)")
    server_command: list[str] | None = Field(None, description="argv of the eOn server (external runtime)")
    server_mode: Literal["continuous", "rounds"] | None = Field(
        None,
        description="continuous: one eOn server process runs round after round (eon-server --continuous) until "
        "the KMC steps are done; rounds: one server process per round (~1-2 s start-up each). Default: continuous "
        "with the local runtime, rounds with an external server_command (its argv is used as given)",
    )


class AkmcSettings(_Model):
    """eOn aKMC settings."""

    temperature: PosFloat = Field(300.0, description="K")
    kmc_steps: PosInt = Field(3, description="KMC steps the campaign must complete")
    confidence: float = Field(0.9, gt=0, lt=1)
    num_clients: PosInt = Field(2, description="clients run at once (local communicator)")
    searches_per_round: PosInt = Field(4, description="process searches per server round")
    max_rounds: PosInt = Field(200, description="server rounds per aKMC run before giving up")
    displace_radius: PosFloat = Field(3.3, description="Å around the displaced atom")
    displace_magnitude: PosFloat = Field(0.1, description="Å")
    saddle_max_iterations: PosInt = Field(
        1000, description="iterations of one saddle search before eOn gives it up (eOn's default 1000)"
    )
    max_iterations: PosInt = Field(8, description="cap on stop/label/retrain cycles")
    seed: int = 1234
    eon: EonSettings = Field(default_factory=EonSettings)


class ValidationSettings(_Model):
    """The graduation gate. A failed gate first teaches: it labels what failed (interior images of a failing
    barrier's path, the held-out structures with the largest errors), refits, and validates again on fresh
    held-out structures, up to `teach_rounds` times; only then does the campaign end without a package."""

    n_holdout: int = Field(8, ge=0, description="fresh oracle structures held out for validation")
    max_energy_rmse: PosFloat = Field(10.0, description="meV/atom")
    max_force_rmse: PosFloat = Field(100.0, description="meV/Å")
    max_barrier_error: PosFloat = Field(50.0, description="meV, learned vs oracle on the found processes")
    max_barriers: int = Field(4, ge=0, description="processes whose barriers are checked against the oracle")
    teach_rounds: int = Field(2, ge=0, description="label-refit-validate rounds a failed gate may add")
    teach_labels: PosInt = Field(8, description="at most this many oracle labels per teaching round")
    min_rate_fraction: float = Field(
        1e-3, ge=0, lt=1,
        description="only kinetically relevant processes are checked: at the aKMC temperature (same prefactor) "
        "at least this fraction of the rate of the fastest process of their state, i.e. barriers within "
        "kT ln(1/fraction) of the state's lowest; 0 checks the lowest distinct barriers whatever their rate",
    )


class PackageSettings(_Model):
    """Metadata of the released potential."""

    name: str = Field("cu-adatom-ace", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field("1.0.0", pattern=SEMVER_RE, description="SemVer")
    author: str = "autopipec-fw demo"
    license: SpdxLicense = Field("CC-BY-4.0", description="SPDX identifier")
    citation: BibTeX = Field(
        "@misc{autopipec_fw, title = {autopipec-fw: on-the-fly ACE potentials for aKMC}, year = {2026}}",
        description="BibTeX",
    )
    description: str = "ACE potential for Cu surface diffusion, trained on the fly in eOn aKMC"
    dist_dir: Path = Field(Path("dist"), description="where packages go (relative: to the current folder)")


class Campaign(_Model):
    """A whole campaign: one YAML file."""

    name: str = Field("cu-adatom-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    workdir: Path | None = Field(None, description="campaign folder; default campaigns/<name> next to the cwd")
    elements: list[str] = Field(default_factory=lambda: ["Cu"], min_length=1)
    structure: StructureSettings = Field(default_factory=StructureSettings)
    oracle: OracleSettings = Field(default_factory=OracleSettings)
    initial_data: InitialDataSettings = Field(default_factory=InitialDataSettings)
    fit: FitSettings = Field(default_factory=FitSettings)
    gamma: GammaSettings = Field(default_factory=GammaSettings)
    akmc: AkmcSettings = Field(default_factory=AkmcSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    package: PackageSettings = Field(default_factory=PackageSettings)

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, v: list[str]) -> list[str]:
        from ase.data import atomic_numbers

        bad = [e for e in v if e not in atomic_numbers]
        if bad:
            raise ValueError(f"unknown chemical symbol(s) {bad}")
        return v

    @model_validator(mode="after")
    def _structure_in_elements(self) -> Campaign:
        if self.structure.kind != "file" and self.structure.element not in self.elements:
            raise ValueError(f"structure.element {self.structure.element!r} is not in elements {self.elements}")
        return self

    def resolved_workdir(self, base: Path | None = None) -> Path:
        base = base or Path.cwd()
        wd = self.workdir if self.workdir is not None else Path("campaigns") / self.name
        return (base / wd).resolve() if not wd.is_absolute() else wd

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see the documented campaign fields)"
    got = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {msg}{shown}"


def campaign_from_dict(data: Any, source: str = "<campaign>") -> Campaign:
    """Validate campaign fields; every problem is one line ``<source>: <field>: <what was expected>``."""
    if data is None:
        raise ConfigError(f"{source}: (top level): the campaign file is empty; expected a mapping of campaign "
                          "fields (e.g. 'name: my-campaign'; `mlip-auto config show` prints every field)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of campaign fields, got {type(data).__name__}")
    try:
        return Campaign.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{source}: {_describe(err)}" for err in e.errors())) from None


def load_campaign(path: str | Path | None = None) -> Campaign:
    """Read and validate a campaign YAML; None gives the built-in demo."""
    if path is None:
        return Campaign()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read campaign file ({e.strerror})") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: not a campaign file: it holds binary data (NUL bytes); expected YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a campaign file: byte {e.start} is not UTF-8 text; expected YAML text "
                          "in UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    campaign = campaign_from_dict(data, str(path))
    # relative paths in the file are relative to the file
    if campaign.structure.file is not None and not campaign.structure.file.is_absolute():
        campaign.structure.file = (path.parent / campaign.structure.file).resolve()
    if campaign.workdir is not None and not campaign.workdir.is_absolute():
        campaign.workdir = (path.parent / campaign.workdir).resolve()
    return campaign


# ------------------------------------------------------------------------------------------------ amending
# Settings that never change a label, a fit or the aKMC run already made: a campaign under way may change them
# (`mlip-auto run-loop --config` / `submit` with the edited file continue it). Every other field is
# label-affecting: changing it needs a new campaign (another name or workdir). An entry names a field or a
# whole section.
LABEL_NEUTRAL: tuple[str, ...] = (
    "package",  # metadata, version and dist_dir of the release
    "validation.max_energy_rmse", "validation.max_force_rmse", "validation.max_barrier_error",
    "validation.max_barriers", "validation.min_rate_fraction", "validation.teach_rounds",
    "validation.teach_labels",  # the gate's thresholds and teaching budget
    "akmc.kmc_steps", "akmc.max_iterations", "akmc.max_rounds",  # how far the run goes (extend it)
    "oracle.batch_size", "fit.tf_threads",  # how the work is split, not what it computes
)


def flatten_settings(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted field name -> value (mappings flattened, lists and scalars kept whole)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten_settings(v, f"{prefix}.{k}" if prefix else str(k)))
        if not data and prefix:
            out[prefix] = {}
        return out
    return {prefix: data}


def is_label_neutral(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in LABEL_NEUTRAL)


def label_settings_hash(campaign: Campaign) -> str:
    """Hash of every label-affecting setting (all but `LABEL_NEUTRAL`): two campaigns with the same hash may share
    one campaign folder, the later amending the earlier."""
    flat = {k: v for k, v in flatten_settings(campaign.model_dump(mode="json")).items() if not is_label_neutral(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]
