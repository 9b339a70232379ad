"""Validation gate of a graduated potential.

Three questions, each answered against the oracle the campaign trained on:

1. Errors on a held-out set: fresh structures (rattled copies of the campaign's aKMC configuration and
   strained/rattled bulk, from seeds the initial data never used, plus some saddle points eOn found)
   labelled by the oracle stage's ``label_structures``; energy RMSE in meV/atom, force RMSE in meV/Å.
2. Barriers of the processes aKMC found: for each distinct process (up to ``max_barriers``), the learned
   potential's barrier against the oracle's on the same endpoints. Endpoints (``reactant_<id>.con``,
   ``product_<id>.con``) are relaxed with each calculator, then a climbing-image NEB whose initial path runs
   through eOn's saddle (``method="neb"``, used when the oracle is cheap, i.e. EMT), or, for expensive oracles
   (``method="path"``), oracle single points on the learned CI-NEB images (the oracle's barrier along the
   learned minimum-energy path).
3. Coverage: what the training data spans (elements, volume per atom, linear strain against the ideal crystal,
   shortest interatomic distance), reported as limits of validity.

The gate compares the figures with ``ValidationSettings`` (energy, force, barrier thresholds); a failing
potential is not packaged and ``ValidationResult.message()`` names every threshold that failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from autopipec_fw.config import Campaign, OracleSettings
from autopipec_fw.eon.io import ProcessRecord, read_con, read_processes, run_temperature
from autopipec_fw.production.kinetics import MOVED, displacements, group_processes, split_transitions
from autopipec_fw.training.errors import error_figures

log = logging.getLogger(__name__)

Labeller = Callable[[list[Atoms], OracleSettings, Path], list[Atoms]]
CalculatorFactory = Callable[[], Any]

# oracles cheap enough for a full CI-NEB per process
_CHEAP_ORACLES = {"emt"}


class ValidationError(ValueError):
    """Inputs of the validation that cannot be used (missing potential file, unreadable data)."""


class GateFailedError(RuntimeError):
    """The potential failed the validation gate; nothing is packaged. The message names the thresholds."""

    def __init__(self, result: ValidationResult):
        self.result = result
        super().__init__(result.message())


@dataclass
class BarrierRow:
    """One process: learned vs oracle barrier (eV) on the same endpoints."""

    run: str
    state: int
    process: int
    eon_barrier: float
    learned_barrier: float
    oracle_barrier: float
    method: str
    converged: bool
    note: str = ""  # e.g. endpoints that relax into one minimum: the process does not exist there
    name: str = ""  # e.g. "adatom hop" (`autopipec_fw.production.kinetics.name_process`)
    multiplicity: int = 1  # eOn processes equivalent to this one by symmetry
    states: list[int] = field(default_factory=list)  # states in which eOn found it
    path_file: str = ""  # the learned CI-NEB images (extxyz): what a failed gate teaches from

    @property
    def error_meV(self) -> float:
        return 1000.0 * abs(self.learned_barrier - self.oracle_barrier)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_meV"] = self.error_meV
        return d


@dataclass
class ValidationResult:
    """Figures of the gate. Energies in meV/atom, forces in meV/Å, barrier errors in meV."""

    passed: bool
    thresholds: dict[str, float]
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_holdout: int = 0
    n_holdout_atoms: int = 0
    energy_rmse: float | None = None
    energy_mae: float | None = None
    force_rmse: float | None = None
    force_mae: float | None = None
    holdout_max_gamma: float | None = None
    barriers: list[BarrierRow] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)  # the relevant processes, grouped by symmetry
    # processes left out of the kinetics checks: no atom moves more than kinetics.MOVED Å (grouped by symmetry)
    excluded_processes: list[dict[str, Any]] = field(default_factory=list)
    holdout_errors: list[dict[str, Any]] = field(default_factory=list)  # per held-out structure (meV/atom, meV/Å)
    holdout_file: str | None = None  # the labelled held-out structures (extxyz)
    holdout_seed: int = 7919
    barrier_mae: float | None = None
    barrier_max_error: float | None = None
    coverage: dict[str, Any] = field(default_factory=dict)
    temperatures: list[float] = field(default_factory=list)
    parity: dict[str, list[float]] = field(default_factory=dict)
    workdir: str | None = None  # where validation.json and the oracle's folders are

    def message(self) -> str:
        if self.passed:
            return "validation passed: " + self._figures()
        return "validation failed: " + "; ".join(self.failures) + " (" + self._figures() + ")"

    def _figures(self) -> str:
        def f(v: float | None, unit: str) -> str:
            return "n/a" if v is None else f"{v:.2f} {unit}"

        return (
            f"energy RMSE {f(self.energy_rmse, 'meV/atom')}, force RMSE {f(self.force_rmse, 'meV/Å')}, "
            f"barrier max error {f(self.barrier_max_error, 'meV')} over {len(self.barriers)} process(es)"
        )

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise GateFailedError(self)

    def metrics(self) -> dict[str, Any]:
        """The small figures (for the manifest and FireWorks stored_data): no parity data."""
        return {
            "passed": self.passed,
            "n_holdout": self.n_holdout,
            "n_holdout_atoms": self.n_holdout_atoms,
            "energy_rmse_meV_per_atom": self.energy_rmse,
            "energy_mae_meV_per_atom": self.energy_mae,
            "force_rmse_meV_per_A": self.force_rmse,
            "force_mae_meV_per_A": self.force_mae,
            "holdout_max_gamma": self.holdout_max_gamma,
            "n_barriers": len(self.barriers),
            "n_distinct_processes": len(self.processes),
            "n_excluded_processes": sum(int(g.get("multiplicity", 1)) for g in self.excluded_processes),
            "barrier_mae_meV": self.barrier_mae,
            "barrier_max_error_meV": self.barrier_max_error,
            "thresholds": dict(self.thresholds),
            "failures": list(self.failures),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["barriers"] = [b.to_dict() for b in self.barriers]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationResult:
        """Inverse of `to_dict`; keys this version does not know (e.g. figures a caller added) are ignored."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)} - {"barriers"}
        row_keys = {f.name for f in fields(BarrierRow)}
        rows = [BarrierRow(**{k: v for k, v in dict(b).items() if k in row_keys}) for b in d.get("barriers") or []]
        return cls(barriers=rows, **{k: v for k, v in d.items() if k in known})

    def write(self, path: Path) -> Path:
        """JSON (with parity data), written atomically."""
        path = Path(path)
        _atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=_json_default))
        return path

    @classmethod
    def read(cls, path: Path) -> ValidationResult:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ValidationError(f"{path}: not a validation result ({e})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# potential files and calculators
# ----------------------------------------------------------------------------------------------------------


def generation_files(generation: Any) -> dict[str, Path | None]:
    """The .yace/.yaml/.asi of a `Generation` (object or its `to_dict()`); .yace is required."""
    get = generation.get if isinstance(generation, Mapping) else lambda k, d=None: getattr(generation, k, d)
    files: dict[str, Path | None] = {}
    for key in ("yace", "yaml", "asi"):
        v = get(key, None)
        files[key] = Path(v) if v else None
    if files["yace"] is None or not files["yace"].is_file():
        raise ValidationError(f"generation: the .yace file {files['yace']} does not exist")
    for key in ("yaml", "asi"):
        if files[key] is not None and not files[key].is_file():
            raise ValidationError(f"generation: the .{key} file {files[key]} does not exist")
    return files


def ace_calculator_factory(generation: Any, with_gamma: bool = False) -> CalculatorFactory:
    """Fresh PyACECalculator instances on the generation's potential (yaml + asi when gamma is wanted)."""
    files = generation_files(generation)

    def make() -> Any:
        from pyace import PyACECalculator

        if with_gamma and files["yaml"] is not None and files["asi"] is not None:
            calc = PyACECalculator(str(files["yaml"]))
            calc.set_active_set(str(files["asi"]))
            return calc
        return PyACECalculator(str(files["yace"]))

    return make


def oracle_calculator_factory(settings: OracleSettings, directory: Path, symbols: set[str]) -> CalculatorFactory | None:
    """An in-process ASE calculator of the oracle for NEB, or None when it is too expensive for that."""
    if settings.calculator not in _CHEAP_ORACLES:
        return None

    def make() -> Any:
        from autopipec_fw.oracle.calculators import make_calculator

        return make_calculator(settings, directory, symbols)

    return make


def default_labeller(structures: list[Atoms], settings: OracleSettings, workdir: Path) -> list[Atoms]:
    """The oracle stage (one folder per structure, finished results reused)."""
    from autopipec_fw.oracle.label import label_structures

    return label_structures(structures, settings, workdir, source="validation")


# ----------------------------------------------------------------------------------------------------------
# held-out set
# ----------------------------------------------------------------------------------------------------------


def holdout_structures(campaign: Campaign, n: int, processes: Sequence[ProcessRecord] = (), seed: int = 7919) -> list[Atoms]:
    """`n` unlabelled structures the training never saw: up to n//4 eOn saddles, half of the rest rattled
    copies of the campaign's structure, the others strained/rattled bulk, all from seeds offset from the
    initial data's."""
    from autopipec_fw.structures import bulk_training_structures, surface_training_structures

    if n <= 0:
        return []
    out: list[Atoms] = []
    for p in list(processes)[: n // 4]:
        at = read_con(p.saddle)
        at.set_constraint()
        at.info["generator"] = "holdout-saddle"
        out.append(at)
    rest = n - len(out)
    n_surface = rest // 2 if campaign.structure.kind != "file" else 0
    n_bulk = rest - n_surface
    s = campaign.structure
    base_seed = campaign.initial_data.seed + seed
    if n_surface:
        out += surface_training_structures(s, n=n_surface, rattle_stdev=campaign.initial_data.rattle_stdev, seed=base_seed)
    if n_bulk:
        if s.kind == "file":
            from autopipec_fw.structures import build_structure, rattled

            rng = np.random.default_rng(base_seed)
            base = build_structure(s)
            out += [rattled(base, campaign.initial_data.rattle_stdev, rng, movable_only=False) for _ in range(n_bulk)]
        else:
            n_str = n_bulk // 2
            out += bulk_training_structures(
                s.element,
                s.lattice,
                s.a,
                n_strained=n_str,
                max_strain=campaign.initial_data.max_strain,
                n_rattled=n_bulk - n_str,
                rattle_stdev=campaign.initial_data.rattle_stdev,
                n_vacancy=0,
                bulk_size=campaign.initial_data.bulk_size,
                seed=base_seed,
            )
    for at in out:
        at.info["holdout"] = True
        if at.cell.rank == 3:
            at.pbc = True  # pyace needs fully periodic or non-periodic cells
    return out[:n]


def _write_structures(path: Path, structures: Sequence[Atoms], info: Mapping[str, Any] | None = None) -> Path:
    """Plain copies (geometry, and the labels they carry) written atomically as extxyz."""
    from ase.io import write

    out = []
    for at in structures:
        c = at.copy()
        c.set_constraint()
        if at.calc is not None and "energy" in (at.calc.results or {}):
            from ase.calculators.singlepoint import SinglePointCalculator

            c.calc = SinglePointCalculator(c, **{k: v for k, v in at.calc.results.items()
                                                 if k in ("energy", "forces", "stress")})
        c.info.update(info or {})
        out.append(c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp, out, format="extxyz")
    os.replace(tmp, path)
    return path


def _holdout_errors(
    labelled: Sequence[Atoms], make_calc: CalculatorFactory, reference_energies: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Per-atom energy and force-component errors. The potential predicts energies relative to the training
    set's per-element reference energies, so those are subtracted from the oracle's energies."""
    refs = dict(reference_energies or {})
    calc = make_calc()
    e_ref, e_pred, f_ref, f_pred, gammas = [], [], [], [], []
    for at in labelled:
        if at.calc is None:
            raise ValidationError("held-out structure came back from the oracle without a result")
        shift = sum(refs.get(sym, 0.0) for sym in at.get_chemical_symbols())
        ref_e = (at.get_potential_energy() - shift) / len(at)
        ref_f = at.get_forces()
        probe = at.copy()
        probe.calc = calc
        e_pred.append(probe.get_potential_energy() / len(at))
        f_pred.append(probe.get_forces())
        g = calc.results.get("gamma")
        if g is not None:
            gammas.append(float(np.max(g)))
        e_ref.append(ref_e)
        f_ref.append(ref_f)
    fig = error_figures(np.array(e_pred) - np.array(e_ref),
                        [np.asarray(fp) - np.asarray(fr) for fp, fr in zip(f_pred, f_ref, strict=True)])
    de = 1000.0 * (np.array(e_pred) - np.array(e_ref))
    per_structure = [
        {"index": i, "energy_error": float(de[i]),
         "force_rmse": float(1000.0 * np.sqrt(np.mean((np.asarray(fp) - np.asarray(fr)) ** 2)))}
        for i, (fp, fr) in enumerate(zip(f_pred, f_ref, strict=True))
    ]
    return {
        "per_structure": per_structure,
        **fig,
        "max_gamma": max(gammas) if gammas else None,
        "parity": {
            "energy_ref": [float(x) for x in e_ref],
            "energy_pred": [float(x) for x in e_pred],
            "force_ref": [float(x) for x in np.concatenate(f_ref).ravel()],
            "force_pred": [float(x) for x in np.concatenate(f_pred).ravel()],
        },
        "n_atoms": int(sum(len(a) for a in labelled)),
    }


# ----------------------------------------------------------------------------------------------------------
# barriers
# ----------------------------------------------------------------------------------------------------------


def distinct_processes(
    processes: Sequence[ProcessRecord], limit: int, structure_kind: str | None = None
) -> list[ProcessRecord]:
    """One representative per process distinct by symmetry (`group_processes`), lowest barrier first, at most
    `limit`."""
    if limit <= 0:
        return []
    return [g.representative for g in group_processes(processes, structure_kind)[:limit]]


def relevant_processes(
    processes: Sequence[ProcessRecord], temperature: float, min_rate_fraction: float
) -> list[ProcessRecord]:
    """Processes whose rate (same prefactor) at ``temperature`` K is at least ``min_rate_fraction`` of the fastest
    process of their state: barriers within kT ln(1/fraction) of that state's lowest. 0 keeps them all."""
    if min_rate_fraction <= 0:
        return list(processes)
    window = 8.617333262e-5 * temperature * math.log(1.0 / min_rate_fraction)
    lowest: dict[int, float] = {}
    for p in processes:
        lowest[p.state] = min(lowest.get(p.state, math.inf), p.barrier)
    return [p for p in processes if p.barrier <= lowest[p.state] + window]


def _relax(atoms: Atoms, calc: Any, fmax: float, steps: int) -> bool:
    from ase.optimize import FIRE

    atoms.calc = calc
    opt = FIRE(atoms, logfile=None)
    return bool(opt.run(fmax=fmax, steps=steps))


def neb_path(
    reactant: Atoms,
    saddle: Atoms,
    product: Atoms,
    make_calc: CalculatorFactory,
    n_images: int = 3,
    fmax: float = 0.05,
    steps: int = 400,
) -> tuple[list[Atoms], bool]:
    """Climbing-image NEB: endpoints relaxed with the calculator, the initial path through `saddle`.

    Returns the images (endpoints included, each with its calculator) and whether it converged.
    """
    from ase.mep import NEB
    from ase.optimize import FIRE

    r, p = reactant.copy(), product.copy()
    ok_r = _relax(r, make_calc(), fmax, steps)
    ok_p = _relax(p, make_calc(), fmax, steps)
    n_side = max(1, (n_images - 1) // 2)
    first = [r] + [r.copy() for _ in range(n_side)] + [saddle.copy()]
    second = [first[-1]] + [saddle.copy() for _ in range(n_side)] + [p]
    NEB(first, method="improvedtangent").interpolate(mic=True, apply_constraint=False)
    NEB(second, method="improvedtangent").interpolate(mic=True, apply_constraint=False)
    images = first + second[1:]
    for im in images[1:-1]:
        im.calc = make_calc()
    neb = NEB(images, climb=True, method="improvedtangent")
    ok = bool(FIRE(neb, logfile=None).run(fmax=fmax, steps=steps))
    return images, ok and ok_r and ok_p


def endpoint_separation(a: Atoms, b: Atoms) -> float:
    """Largest displacement of any atom between two structures of the same cell (Å, minimum image)."""
    d = displacements(a, b)
    return float(d.max()) if len(d) else 0.0


MERGED_ENDPOINTS = 0.2  # Å: relaxed reactant and product closer than this are the same minimum


def process_barriers(
    process: ProcessRecord,
    learned: CalculatorFactory,
    oracle: CalculatorFactory | None,
    settings: OracleSettings,
    workdir: Path,
    labeller: Labeller,
    method: Literal["neb", "path"],
    n_images: int = 3,
    fmax: float = 0.05,
) -> BarrierRow:
    reactant = read_con(process.reactant)
    saddle = read_con(process.saddle)
    product = read_con(process.product)
    images, ok_l = neb_path(reactant, saddle, product, learned, n_images=n_images, fmax=fmax)
    notes = []
    if endpoint_separation(images[0], images[-1]) < MERGED_ENDPOINTS:
        notes.append("learned potential: product relaxes into the reactant")
    e_l = [im.get_potential_energy() for im in images]
    learned_barrier = max(e_l[1:-1] + [e_l[-1]]) - e_l[0]
    path_file = Path(workdir) / f"path_s{process.state}_p{process.process}.extxyz"
    _write_structures(path_file, images, info={"validation": f"learned path state {process.state} process "
                                                             f"{process.process}"})
    if method == "neb":
        if oracle is None:
            raise ValidationError(f"oracle {settings.calculator!r} has no in-process calculator for NEB")
        o_images, ok_o = neb_path(reactant, saddle, product, oracle, n_images=n_images, fmax=fmax)
        if endpoint_separation(o_images[0], o_images[-1]) < MERGED_ENDPOINTS:
            notes.append("oracle: product relaxes into the reactant (no such process)")
        e_o = [im.get_potential_energy() for im in o_images]
        oracle_barrier = max(e_o[1:-1] + [e_o[-1]]) - e_o[0]
        ok = ok_l and ok_o
    else:
        plain = []
        for im in images:
            c = im.copy()
            c.set_constraint()
            c.info["validation"] = f"barrier path state {process.state} process {process.process}"
            plain.append(c)
        labelled = labeller(plain, settings, workdir)
        e_o = [a.get_potential_energy() for a in labelled]
        oracle_barrier = max(e_o[1:-1] + [e_o[-1]]) - e_o[0]
        ok = ok_l
    return BarrierRow(
        run=str(process.run_dir),
        state=process.state,
        process=process.process,
        eon_barrier=process.barrier,
        learned_barrier=float(learned_barrier),
        oracle_barrier=float(oracle_barrier),
        method=method,
        converged=ok,
        note="; ".join(notes),
        path_file=str(path_file),
    )


# ----------------------------------------------------------------------------------------------------------
# coverage
# ----------------------------------------------------------------------------------------------------------


def _reference_volume(campaign: Campaign) -> float | None:
    from ase.build import bulk

    from autopipec_fw.structures import lattice_constant

    s = campaign.structure
    try:
        a = lattice_constant(s.element, s.lattice, s.a)
    except ValueError:
        return None
    ref = bulk(s.element, s.lattice, a=a, cubic=True)
    return float(ref.get_volume() / len(ref))


def training_coverage(structures: Sequence[Atoms], campaign: Campaign) -> dict[str, Any]:
    """What the training data spans. Volume and strain count only bulk-like cells (fully periodic, no vacuum
    gap: density within 30 % of the ideal crystal); the shortest distance counts every structure."""
    from ase.neighborlist import neighbor_list

    elements: set[str] = set()
    volumes: list[float] = []
    dmin = math.inf
    n_atoms = 0
    v0 = _reference_volume(campaign)
    for at in structures:
        elements.update(at.get_chemical_symbols())
        n_atoms += len(at)
        if at.cell.rank == 3 and all(at.pbc):
            v = float(at.get_volume() / len(at))
            if v0 is None or v < 1.3 * v0:
                volumes.append(v)
        d = neighbor_list("d", at, cutoff=campaign.fit.cutoff)
        if len(d):
            dmin = min(dmin, float(d.min()))
    cov: dict[str, Any] = {
        "n_structures": len(structures),
        "n_atoms": n_atoms,
        "elements": sorted(elements),
        "cutoff": campaign.fit.cutoff,
        "min_interatomic_distance": None if math.isinf(dmin) else dmin,
        "volume_per_atom_range": [float(min(volumes)), float(max(volumes))] if volumes else None,
        "reference_volume_per_atom": v0,
        "linear_strain_range": None,
    }
    if volumes and v0:
        cov["linear_strain_range"] = [float((min(volumes) / v0) ** (1 / 3) - 1), float((max(volumes) / v0) ** (1 / 3) - 1)]
    return cov


def read_training_structures(path: Path) -> list[Atoms]:
    """Structures of a pacemaker DataFrame (gzip pickle with an `ase_atoms` column)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_pickle(path, compression="gzip" if path.suffix in (".gz", ".gzip") else "infer")
    except Exception as e:  # pandas/pickle raise many kinds for a bad file
        raise ValidationError(f"{path}: not a pacemaker training set ({type(e).__name__}: {e})") from None
    if "ase_atoms" not in getattr(df, "columns", []):
        raise ValidationError(f"{path}: training set has no 'ase_atoms' column")
    return list(df["ase_atoms"])


def _generation_metrics(generation: Any) -> dict[str, Any]:
    m = generation.get("metrics") if isinstance(generation, Mapping) else getattr(generation, "metrics", None)
    return dict(m or {})


def _find_training_data(generation: Any) -> Path | None:
    """The generation's training set: `metrics["dataset"]` (the campaign's store), else the copy in its folder."""
    ds = _generation_metrics(generation).get("dataset")
    if ds and Path(ds).is_file():
        return Path(ds)
    get = generation.get if isinstance(generation, Mapping) else lambda k, d=None: getattr(generation, k, d)
    d = get("dir", None)
    if d is None and get("yace", None):
        d = Path(get("yace")).parent
    if d is None:
        return None
    for name in ("training_data.pckl.gzip", "fitting_data_info.pckl.gzip"):
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


# ----------------------------------------------------------------------------------------------------------
# the gate
# ----------------------------------------------------------------------------------------------------------


def validate_potential(
    generation: Any,
    campaign: Campaign,
    workdir: Path,
    eon_run_dirs: Sequence[Path] = (),
    *,
    training_data: Path | None = None,
    labeller: Labeller | None = None,
    barrier_method: Literal["auto", "neb", "path"] = "auto",
    n_images: int = 3,
    fmax: float = 0.05,
    holdout_seed: int = 7919,
) -> ValidationResult:
    """Validate `generation` (a training `Generation` or its dict) against the campaign's oracle and gate.

    - `workdir`: folder for the oracle's held-out labels (``holdout/``), barrier paths (``barriers/``) and
      ``validation.json``; rerunning reuses finished oracle results.
    - `eon_run_dirs`: aKMC run folders whose processes are checked (empty: no barrier check).
    - `training_data`: the pacemaker DataFrame for the coverage figures; default: the generation folder's
      ``fitting_data_info.pckl.gzip`` if present.
    - `labeller`: the oracle stage (default ``autopipec_fw.oracle.label.label_structures``).
    - `barrier_method`: ``neb`` (CI-NEB with the oracle), ``path`` (oracle single points on the learned path);
      ``auto`` = ``neb`` for EMT, else ``path``.
    - `holdout_seed`: another seed gives other held-out structures (a gate that taught the potential validates
      again on structures it never learned from).
    """
    vs = campaign.validation
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    labeller = labeller or default_labeller
    learned = ace_calculator_factory(generation)
    with_gamma = ace_calculator_factory(generation, with_gamma=True)
    thresholds = {
        "max_energy_rmse": vs.max_energy_rmse,
        "max_force_rmse": vs.max_force_rmse,
        "max_barrier_error": vs.max_barrier_error,
    }
    result = ValidationResult(passed=False, thresholds=thresholds, workdir=str(workdir.resolve()))

    # how barriers are checked: decided (and refused) before any oracle work
    if barrier_method not in ("auto", "neb", "path"):
        raise ValidationError(f"barrier_method {barrier_method!r}: expected 'auto', 'neb' or 'path'")
    if barrier_method == "auto":
        method: Literal["neb", "path"] = "neb" if campaign.oracle.calculator in _CHEAP_ORACLES else "path"
    else:
        method = barrier_method
    oracle = (
        oracle_calculator_factory(campaign.oracle, workdir / "barriers" / "neb", set(campaign.elements))
        if method == "neb"
        else None
    )
    if method == "neb" and oracle is None:
        raise ValidationError(
            f"barrier_method 'neb' needs an in-process oracle ({sorted(_CHEAP_ORACLES)}); "
            f"oracle.calculator is {campaign.oracle.calculator!r}: use barrier_method 'path'"
        )
    processes: list[ProcessRecord] = []
    temps: list[float] = []
    for rd in eon_run_dirs:
        processes += read_processes(Path(rd), with_geometry=True)
        t = run_temperature(Path(rd))
        temps.append(t if t is not None else campaign.akmc.temperature)
    result.temperatures = sorted(set(temps)) or [campaign.akmc.temperature]
    kind = campaign.structure.kind
    processes, stays = split_transitions(processes)
    if stays:
        result.excluded_processes = [
            {**g.to_dict(), "reason": f"no atom moves more than {MOVED:g} Å between reactant and product"}
            for g in group_processes(stays, kind)
        ]
        lowest = min(p.barrier for p in stays)
        result.notes.append(
            f"{len(stays)} eOn process(es) move no atom more than {MOVED:g} Å between reactant and product "
            f"(lowest barrier {lowest * 1000:.2f} meV): one basin, not a transition between distinct minima; "
            "left out of the barrier check and of the rate window"
        )

    # 1. held-out errors
    holdout = holdout_structures(campaign, vs.n_holdout,
                                 [g.representative for g in group_processes(processes, kind)], seed=holdout_seed)
    result.holdout_seed = holdout_seed
    if holdout:
        labelled = labeller(holdout, campaign.oracle, workdir / "holdout")
        if len(labelled) != len(holdout):
            raise ValidationError(f"oracle returned {len(labelled)} results for {len(holdout)} held-out structures")
        errs = _holdout_errors(labelled, with_gamma, _generation_metrics(generation).get("reference_energies"))
        result.n_holdout = len(labelled)
        result.n_holdout_atoms = errs["n_atoms"]
        result.energy_rmse, result.energy_mae = errs["energy_rmse"], errs["energy_mae"]
        result.force_rmse, result.force_mae = errs["force_rmse"], errs["force_mae"]
        result.holdout_max_gamma = errs["max_gamma"]
        result.parity = errs["parity"]
        result.holdout_errors = errs["per_structure"]
        result.holdout_file = str(_write_structures(workdir / f"holdout_{holdout_seed}.extxyz", labelled,
                                                    info={"holdout": True}))
    else:
        result.notes.append("validation.n_holdout is 0: no held-out errors computed")

    # 2. barriers
    relevant = relevant_processes(processes, max(result.temperatures), vs.min_rate_fraction)
    if len(relevant) < len(processes):
        result.notes.append(
            f"{len(processes) - len(relevant)} of {len(processes)} processes are too slow to matter at "
            f"{max(result.temperatures):g} K (rate below {vs.min_rate_fraction:g} of their state's fastest): "
            "their barriers are not checked"
        )
    groups = group_processes(relevant, kind)
    result.processes = [g.to_dict() for g in groups]
    for g in groups[: vs.max_barriers]:
        p = g.representative
        row = process_barriers(
            p, learned, oracle, campaign.oracle, workdir / "barriers", labeller, method, n_images=n_images, fmax=fmax
        )
        row.name, row.multiplicity, row.states = g.name, g.multiplicity, g.states
        log.info(
            "%s (state %d process %d, x%d): learned %.3f eV, oracle %.3f eV (%s)",
            g.name, p.state, p.process, g.multiplicity, row.learned_barrier, row.oracle_barrier, method,
        )
        if not row.converged:
            result.notes.append(f"NEB of state {p.state} process {p.process} did not fully converge")
        if row.note:
            result.failures.append(f"state {p.state} process {p.process}: {row.note}")
        result.barriers.append(row)
    if result.barriers:
        errs_b = [b.error_meV for b in result.barriers]
        result.barrier_mae = float(np.mean(errs_b))
        result.barrier_max_error = float(np.max(errs_b))
    elif vs.max_barriers == 0:
        result.notes.append("validation.max_barriers is 0: barriers not checked")
    else:
        # a gate that checked no barrier has not checked the kinetics: fail, and say why
        runs = ", ".join(str(r) for r in eon_run_dirs)
        why = ("no eOn run folder was given" if not eon_run_dirs else
               f"every process aKMC found in {runs} moves no atom more than {MOVED:g} Å" if stays and not processes
               else f"aKMC found no process with complete geometry in {runs}")
        result.failures.append(f"no process to check barriers against: {why} (validation.max_barriers = "
                               f"{vs.max_barriers}; set it to 0 to gate without barriers)")

    # 3. coverage
    tdata = training_data or _find_training_data(generation)
    if tdata is not None:
        result.coverage = training_coverage(read_training_structures(tdata), campaign)
    else:
        result.notes.append("training data not found: coverage limited to the campaign settings")
        result.coverage = {"elements": list(campaign.elements), "cutoff": campaign.fit.cutoff}

    # the gate
    def check(value: float | None, limit: float, what: str, field_name: str, unit: str) -> None:
        if value is None:
            return
        if not math.isfinite(value) or value > limit:
            result.failures.append(
                f"{what} {value:.2f} {unit} exceeds validation.{field_name} = {limit:g} {unit}"
            )

    check(result.energy_rmse, vs.max_energy_rmse, "energy RMSE", "max_energy_rmse", "meV/atom")
    check(result.force_rmse, vs.max_force_rmse, "force RMSE", "max_force_rmse", "meV/Å")
    check(result.barrier_max_error, vs.max_barrier_error, "barrier error", "max_barrier_error", "meV")
    result.passed = not result.failures
    result.write(workdir / "validation.json")
    log.info("%s", result.message())
    return result


# ----------------------------------------------------------------------------------------------------------
# a failed gate teaches
# ----------------------------------------------------------------------------------------------------------


def teaching_structures(result: ValidationResult, n: int, images_per_barrier: int = 3) -> list[Atoms]:
    """What a failed gate labels before it validates again (at most ``n``): interior images of the learned path
    of every barrier above the threshold (the region the potential gets wrong), then the held-out structures
    with the largest errors relative to the thresholds (only those at least half-way to a threshold).
    An empty list: nothing to learn from (the failure is of another kind, e.g. a process that does not exist)."""
    from ase.io import read

    out: list[Atoms] = []
    limit = result.thresholds.get("max_barrier_error", math.inf)
    for row in sorted(result.barriers, key=lambda b: -b.error_meV):
        if row.error_meV <= limit or not row.path_file or not Path(row.path_file).is_file():
            continue
        images = read(row.path_file, index=":", format="extxyz")[1:-1]
        # the images nearest the learned saddle first
        energies = [im.get_potential_energy() if im.calc is not None else 0.0 for im in images]
        for k in np.argsort(energies)[::-1][:images_per_barrier]:
            im = images[int(k)]
            im.info["teach"] = f"barrier state {row.state} process {row.process}"
            out.append(im)
    if result.holdout_file and Path(result.holdout_file).is_file() and result.holdout_errors:
        held = read(result.holdout_file, index=":", format="extxyz")
        e_lim = result.thresholds.get("max_energy_rmse", math.inf)
        f_lim = result.thresholds.get("max_force_rmse", math.inf)

        def badness(e: dict[str, Any]) -> float:
            return max(abs(e["energy_error"]) / e_lim, e["force_rmse"] / f_lim)

        for e in sorted(result.holdout_errors, key=badness, reverse=True):
            if badness(e) < 0.5 or e["index"] >= len(held):
                break
            at = held[e["index"]]
            at.info["teach"] = f"held-out structure {e['index']} (energy error {e['energy_error']:.1f} meV/atom)"
            out.append(at)
    for at in out:
        at.calc = None
    return out[:n]
