"""A campaign folder and the plain function of each stage that works on it.

Each function takes the campaign folder (and a small argument or two), calls the stage module (oracle, training,
dynamics, production) and returns a small JSON-able dict of figures. The FireWorks layer (firetasks/) only moves
these dicts around; nothing here imports FireWorks.

Layout of a campaign folder:

    campaign.yaml              the validated settings (written once; a different one is refused)
    structures/<batch>.extxyz  structures waiting for the oracle (initial set, selections of each stop)
    oracle/<structure_hash>/   one folder per single point, raw output kept
    data/training.pckl.gzip    the training set (pacemaker DataFrame, provenance on every row)
    generations/gen_NNN/       one fitted potential per generation (.yaml, .yace, .asi, metrics)
    akmc/runs/NNNN/            eOn run folders, one per potential generation ("segments": a retrain starts the
                               next from the current configuration, KMC steps and simulated time carried over)
    akmc/report.json           the whole KMC trajectory, processes and searches, tagged by segment and generation
    stages/<stage>.json        the figures each stage returned (for status, report and benchmarks)
    validation/                held-out set and barrier checks
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autopipec_fw.config import (
    LABEL_NEUTRAL,
    Campaign,
    ConfigError,
    campaign_from_dict,
    flatten_settings,
    is_label_neutral,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CampaignLayout:
    """Paths of one campaign folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "campaign.yaml"

    @property
    def structures(self) -> Path:
        return self.root / "structures"

    @property
    def oracle(self) -> Path:
        return self.root / "oracle"

    @property
    def dataset(self) -> Path:
        return self.root / "data" / "training.pckl.gzip"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def akmc(self) -> Path:
        """The campaign's aKMC folder (`autopipec_fw.eon.akmc.CampaignAkmc`: segments.json, runs/, report.json)."""
        return self.root / "akmc"

    def akmc_runs(self):
        from autopipec_fw.eon.akmc import CampaignAkmc

        return CampaignAkmc(self.akmc)

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    def campaign(self) -> Campaign:
        try:
            data = yaml.safe_load(self.config.read_text())
        except OSError as e:
            raise ConfigError(f"{self.config}: cannot read the campaign settings ({e.strerror}); "
                              "was the campaign prepared (mlip-auto submit)?") from None
        return campaign_from_dict(data, str(self.config))


def settings_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields that differ between two campaigns' settings (as dumped to YAML): dotted name -> (old, new)."""
    a, b = flatten_settings(old), flatten_settings(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def expand_path(path: str | Path) -> Path:
    """`~` and `$VARS` expanded, made absolute (tasks run in launcher folders, so relative paths are refused)."""
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    if not p.is_absolute():
        raise ConfigError(f"campaign folder {str(path)!r} must be absolute (after ~ and $VAR expansion)")
    return p


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Stopwatch:
    """When a stage's work started (epoch, for the overhead benchmark) and how long it took."""

    def __init__(self) -> None:
        self.started = time.time()
        self._t0 = time.perf_counter()

    def figures(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self._t0, 3), "started": round(self.started, 3)}


def record_stage(layout: CampaignLayout, name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Keep the figures a stage returned in stages/<name>.json (rerunning the stage replaces them)."""
    _atomic_write_text(layout.stages / f"{name}.json", json.dumps(figures, indent=1, default=str))
    return figures


def stage_records(layout: CampaignLayout) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(layout.stages.glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable stage record, skipped", p)
    return out


# ------------------------------------------------------------------------------------------------ integrity
class TrainingSetMismatch(ConfigError):
    """The training set is not what earlier stages wrote (missing, shrunk, or without a generation's data)."""


def expected_training_set(layout: CampaignLayout) -> tuple[int, str, set[str] | None, str | None]:
    """What earlier stages wrote to the training set: (at least this many structures, where that figure comes
    from, the structure hashes the latest generation was fitted on (None: no generation), its name)."""
    from autopipec_fw.training.fit import latest_generation

    records = stage_records(layout)
    added = sum(int(r.get("added") or 0) for k, r in records.items() if k.startswith("oracle_"))
    sizes = [(int(r.get("training_set_size") or 0), k) for k, r in records.items()
             if k.startswith(("oracle_", "fit_")) and r.get("training_set_size")]
    n, where = added, f"the oracle stage records add up to {added}"
    if sizes and max(sizes)[0] > n:
        n, where = max(sizes)[0], f"stages/{max(sizes)[1]}.json recorded {max(sizes)[0]}"
    gen = latest_generation(layout.generations)
    hashes = _fitted_on(gen) if gen is not None else None
    if hashes is not None and len(hashes) > n:
        n, where = len(hashes), f"{gen.name} was fitted on {len(hashes)}"
    return n, where, hashes, gen.name if gen is not None else None


def check_training_set(layout: CampaignLayout) -> int:
    """Refuse (TrainingSetMismatch) a training set that is not what earlier stages wrote: missing, with fewer
    structures than the stage records and generations show, or without structures a generation was fitted on.
    A set is never silently restarted. Returns how many structures it holds."""
    from autopipec_fw.training.dataset import TrainingSet

    n, where, gen_hashes, gen_name = expected_training_set(layout)
    fix = (f"restore it from a backup ({layout.generations}/{gen_name}/training_data.pckl.gzip holds the data "
           f"{gen_name} was fitted on), or start a new campaign (another name or workdir)" if gen_name else
           "restore it from a backup, or start a new campaign (another name or workdir)")
    if not layout.dataset.exists():
        if n == 0:
            return 0
        raise TrainingSetMismatch(f"{layout.dataset}: missing, but earlier stages wrote {n} structures to it "
                                  f"({where}): all {n} rows are missing; {fix}")
    hashes = TrainingSet(layout.dataset).hashes()
    if len(hashes) < n:
        raise TrainingSetMismatch(f"{layout.dataset}: holds {len(hashes)} structures, but earlier stages wrote {n} "
                                  f"({where}): {n - len(hashes)} rows are missing; {fix}")
    if gen_hashes and not gen_hashes <= hashes:
        lost = len(gen_hashes - hashes)
        raise TrainingSetMismatch(f"{layout.dataset}: {lost} of the {len(gen_hashes)} structures {gen_name} was "
                                  f"fitted on are not in it (structure hashes differ): it is not the set earlier "
                                  f"stages wrote; {fix}")
    return len(hashes)


def _set_digest(hashes: set[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ stages
def prepare_campaign(campaign: Campaign, root: Path) -> CampaignLayout:
    """Create the folder and write campaign.yaml; a folder holding a different campaign is refused."""
    layout = CampaignLayout(Path(root))
    layout.root.mkdir(parents=True, exist_ok=True)
    dist = Path(os.path.expandvars(os.path.expanduser(str(campaign.package.dist_dir))))
    package = campaign.package.model_copy(update={"dist_dir": dist if dist.is_absolute() else Path.cwd() / dist})
    pinned = campaign.model_copy(update={"workdir": layout.root, "package": package})
    text = pinned.to_yaml()
    if layout.config.exists():
        try:  # compared as written: a file the current rules refuse (an old license, say) can still be amended
            stored = yaml.safe_load(layout.config.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{layout.config}: cannot read the campaign settings ({e})") from None
        changes = settings_changes(stored if isinstance(stored, dict) else {}, pinned.model_dump(mode="json"))
        if not changes:
            return layout
        affecting = {k: v for k, v in changes.items() if not is_label_neutral(k)}
        if affecting:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(affecting.items())[:6])
            more = f" (and {len(affecting) - 6} more)" if len(affecting) > 6 else ""
            name = (stored or {}).get("name", "?") if isinstance(stored, dict) else "?"
            raise ConfigError(
                f"{layout.config}: this folder already holds campaign '{name}' with other settings that change "
                f"labels ({shown}{more}); a campaign's data never mixes them. To run these settings start a new "
                "campaign: give it another name or workdir in the file, or move this folder away first (its "
                "workflow is then replaced on the next submit). Label-neutral settings may change in place: "
                + ", ".join(LABEL_NEUTRAL)
            )
        _atomic_write_text(layout.config, text)
        _record_amendment(layout, changes)
        log.info("campaign %s amended (label-neutral): %s", pinned.name,
                 "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        return layout
    _atomic_write_text(layout.config, text)
    return layout


AMENDMENTS = "amendments.json"


def _record_amendment(layout: CampaignLayout, changes: dict[str, tuple[Any, Any]]) -> None:
    path = layout.root / AMENDMENTS
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        history = []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}})
    _atomic_write_text(path, json.dumps(history, indent=1, default=str))


def initial_structures(layout: CampaignLayout) -> dict[str, Any]:
    """Write the unlabelled starting set to structures/initial.extxyz (kept if already there)."""
    from ase.io import read, write

    from autopipec_fw.structures import initial_training_structures

    path = layout.structures / "initial.extxyz"
    if not path.exists():
        structures = initial_training_structures(layout.campaign())
        layout.structures.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".initial.extxyz.tmp")
        write(tmp, structures, format="extxyz")
        os.replace(tmp, path)
    n = len(read(path, index=":", format="extxyz"))
    return record_stage(layout, "initial_structures", {"file": str(path), "n_structures": n})


def label_batch(layout: CampaignLayout, structures_file: str, indices: list[int], source: str) -> dict[str, Any]:
    """Oracle single points for some structures of a batch file; results go into the training set.

    Rerunning adds nothing new: finished single points are read back from oracle/, and the training set skips
    structures it already holds.
    """
    from ase.io import read

    from autopipec_fw.oracle.label import label_structures, oracle_hash, reference_energies_for
    from autopipec_fw.training.dataset import TrainingSet

    campaign = layout.campaign()
    check_training_set(layout)  # before any single point: a missing or shrunk set is never restarted
    all_structures = read(layout.structures / structures_file, index=":", format="extxyz")
    try:
        todo = [all_structures[i] for i in indices]
    except IndexError:
        raise ConfigError(f"{structures_file}: holds {len(all_structures)} structures, asked for {indices}") from None
    clock = _Stopwatch()
    labelled = label_structures(todo, campaign.oracle, layout.oracle, source=source)
    timing = clock.figures()
    added = TrainingSet(layout.dataset).add(
        labelled, source=source, oracle_hash=oracle_hash(campaign.oracle),
        reference_energies=reference_energies_for(campaign.oracle, campaign.elements),
    )
    first = f"{indices[0]:04d}" if indices else "none"
    hashes = TrainingSet(layout.dataset).hashes()
    return record_stage(layout, f"oracle_{Path(structures_file).stem}_{first}", {
        "structures_file": structures_file, "indices": indices, "labelled": len(labelled), "added": added,
        **timing, "calculator": campaign.oracle.calculator,
        "training_set_size": len(hashes), "training_set_digest": _set_digest(hashes),
    })


def fit(layout: CampaignLayout, generation: int, always_refit: bool = False) -> dict[str, Any]:
    """Fit generation `generation` on the whole training set: 0 from scratch; N > 0 afresh by default (a warm
    start from N-1 with `fit.upfit`), judged against N-1 on N-1's data: when worse (`fit.warm_start_tolerance`)
    the other kind of fit runs too and the better is kept. An existing generation is reused. When the previous
    generation already predicts the new labels within `fit.refit_tolerance` (and not `always_refit`), its potential
    is kept and only its active set is rebuilt over the grown training set (no refit)."""
    from autopipec_fw.training.dataset import TrainingSet
    from autopipec_fw.training.fit import (
        Generation,
        derive_generation,
        fit_generation,
        latest_generation,
        verify_new_labels,
    )

    campaign = layout.campaign()
    check_training_set(layout)
    gen_dir = layout.generations / f"gen_{generation:03d}"
    clock = _Stopwatch()
    if (gen_dir / "generation.json").exists():
        gen = Generation.load(gen_dir)
        log.info("%s already fitted; reused", gen_dir)
        timing = {"seconds": 0.0, "started": clock.figures()["started"]}
    else:
        previous = latest_generation(layout.generations)
        if previous is not None and previous.index != generation - 1:
            raise ConfigError(f"{layout.generations}: asked to fit gen_{generation:03d} but the latest is "
                              f"{previous.name}")
        if previous is not None and _fitted_on(previous) == TrainingSet(layout.dataset).hashes():
            # the training set did not grow since the previous generation: the same potential, no refit
            gen = derive_generation(previous, gen_dir)
            log.info("%s: training set unchanged since %s; its potential is reused (no refit)", gen_dir.name,
                     previous.name)
        else:
            gen = None
            if previous is not None and campaign.fit.refit_tolerance > 0 and not always_refit:
                # the oracle has just labelled where the potential extrapolated: if it was right there, keep it
                frame = TrainingSet(layout.dataset).frame()
                seen = _fitted_on(previous) or set()
                new = frame[~frame["structure_hash"].isin(seen)]
                check = verify_new_labels(previous, new, campaign.fit.refit_tolerance)
                log.info("%s on the %d new labels: energy RMSE %s meV/atom, force RMSE %s meV/Å (%s)",
                         previous.name, len(new), _r(check.get("energy_rmse")), _r(check.get("force_rmse")),
                         "verified: no refit" if check["verified"] else "refit")
                if check["verified"]:
                    gen = derive_generation(previous, gen_dir, frame, campaign.fit, check)
            if gen is None:
                gen = fit_generation(layout.dataset, campaign.fit, campaign.elements, layout.generations,
                                     previous=previous, warm_start=campaign.fit.upfit, index=generation)
        timing = clock.figures()
    fitted_on = _fitted_on(gen) or set()  # the generation's own snapshot, not the set as it is now
    return record_stage(layout, f"fit_{generation:03d}", {
        "generation": gen.index, "dir": str(gen.dir), "metrics": gen.metrics,
        "training_set_size": len(fitted_on) or gen.metrics.get("n_structures"),
        "training_set_digest": _set_digest(fitted_on), **timing,
    })


def _r(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fitted_on(gen) -> set[str] | None:
    """Structure hashes of the training-data snapshot a generation was fitted on (None when unreadable)."""
    from autopipec_fw.training.fit import DATA_FILE

    try:
        import pandas as pd

        return set(pd.read_pickle(gen.dir / DATA_FILE, compression="gzip")["structure_hash"])
    except (OSError, KeyError, ValueError, EOFError):
        return None


def akmc(layout: CampaignLayout, iteration: int) -> dict[str, Any]:
    """Run (or resume) aKMC on the latest generation. On a stop, the selected candidates are written to
    structures/iter_NNN.extxyz for the oracle; the returned dict says what happened and what comes next."""
    from ase.io import write

    from autopipec_fw.gamma import is_physical, read_candidates
    from autopipec_fw.structures import build_structure
    from autopipec_fw.training.dataset import TrainingSet
    from autopipec_fw.training.fit import latest_generation
    from autopipec_fw.training.select import select_structures

    campaign = layout.campaign()
    check_training_set(layout)
    gen = latest_generation(layout.generations)
    if gen is None:
        raise ConfigError(f"{layout.generations}: no fitted generation; the fit stage must run before aKMC")
    runs = layout.akmc_runs()
    atoms = None if runs.started else build_structure(campaign.structure)
    clock = _Stopwatch()
    result = runs.run(atoms, gen.yaml, gen.asi, campaign.akmc, campaign.gamma)
    segment = runs.current()
    timing = clock.figures()
    out: dict[str, Any] = {
        "iteration": iteration, "generation": gen.index, "status": result.status,
        "segment": segment.index if segment else None, "run_dir": segment.run_dir if segment else None,
        "kmc_steps": result.kmc_steps, "kmc_steps_target": campaign.akmc.kmc_steps,
        "max_rounds": campaign.akmc.max_rounds, "max_iterations": campaign.akmc.max_iterations,
        "simulated_time": result.simulated_time, "states_visited": result.states_visited,
        "force_calls": result.force_calls, "max_gamma": result.max_gamma,
        **timing, "selected_file": None, "n_selected": 0, "n_candidates": 0,
    }
    try:  # time spent inside the potential (for the overhead benchmark); cumulative over the segment
        fc = json.loads((segment.path / "report.json").read_text()).get("force_calls", {}) if segment else {}
        out["potential_seconds"] = (fc.get("client") or {}).get("potential_seconds")
    except (OSError, ValueError):
        out["potential_seconds"] = None
    if result.status == "failed" and result.message.startswith("max_rounds"):
        # eOn kept searching without reaching its confidence: end the loop here, as with the iteration cap
        out["status"] = "incomplete"
        out["loop_end"] = f"aKMC made no further progress: {result.message}"
        log.warning("%s", out["loop_end"])
        return record_stage(layout, f"akmc_{iteration:03d}", out)
    if result.status == "failed":
        where = segment.run_dir if segment else layout.akmc
        raise RuntimeError(f"{where}: eOn aKMC failed ({result.message}); see {where}/report.json")
    if result.status == "stopped":
        candidates = []
        for p in result.candidates:
            candidates += read_candidates(Path(p).parent) if Path(p).is_dir() else _read_one(Path(p))
        out["n_candidates"] = len(candidates)
        physical = [a for a in candidates if is_physical(a, campaign.gamma.min_distance_factor)]
        if len(physical) < len(candidates):
            log.warning("dropped %d of %d candidates with atoms closer than %.2f x the covalent radii sum",
                        len(candidates) - len(physical), len(candidates), campaign.gamma.min_distance_factor)
        out["n_unphysical"] = len(candidates) - len(physical)
        candidates = physical
        known = TrainingSet(layout.dataset).hashes() if layout.dataset.exists() else set()
        selected = select_structures(candidates, gen, campaign.gamma.max_selected, exclude_hashes=known) \
            if candidates else []
        if selected:
            name = f"iter_{iteration:03d}.extxyz"
            path = layout.structures / name
            tmp = path.with_name(f".{name}.tmp")
            clean = [_unlabelled(a) for a in selected]
            write(tmp, clean, format="extxyz")
            os.replace(tmp, path)
            out.update(selected_file=name, n_selected=len(selected))
        if iteration + 1 >= campaign.akmc.max_iterations:
            out["loop_end"] = (f"iteration cap reached ({campaign.akmc.max_iterations}) after "
                               f"{result.kmc_steps} of {campaign.akmc.kmc_steps} KMC steps")
    else:
        out["loop_end"] = f"completed {result.kmc_steps} KMC steps"
    return record_stage(layout, f"akmc_{iteration:03d}", out)


def _read_one(path: Path) -> list:
    from ase.io import read

    a = read(path, format="extxyz")
    a.info["candidate_file"] = str(path)
    return [a]


def _unlabelled(atoms):  # the oracle labels it afresh; keep geometry and provenance only
    from ase import Atoms

    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for k in ("max_gamma", "candidate_file"):
        if k in atoms.info:
            clean.info[k] = atoms.info[k]
    return clean


def validate(layout: CampaignLayout, round: int = 0) -> dict[str, Any]:
    """The graduation gate on the latest generation (held-out oracle set, barriers of the processes found).

    ``round`` > 0: after teaching, on fresh held-out structures (another seed: what was learned from is no longer
    held out). A failed gate with teaching rounds left writes what it teaches to structures/teach_RR.extxyz and
    says so (``teach_file``, ``n_teach``); the caller labels those, refits and validates again."""
    from ase.io import write

    from autopipec_fw.production.validate import teaching_structures, validate_potential
    from autopipec_fw.training.fit import latest_generation

    campaign = layout.campaign()
    check_training_set(layout)
    gen = latest_generation(layout.generations)
    if gen is None:
        raise ConfigError(f"{layout.generations}: no fitted generation to validate")
    runs = list(reversed(layout.akmc_runs().run_dirs()))  # the latest segment (the final potential's) first
    clock = _Stopwatch()
    result = validate_potential(gen, campaign, layout.validation, runs, training_data=layout.dataset,
                                holdout_seed=7919 + 1000 * round)
    figures = {"generation": gen.index, "round": round, **clock.figures(), **result.to_dict(),
               "teach_file": None, "n_teach": 0}
    figures.pop("parity", None)  # bulky; kept in validation/validation.json
    vs = campaign.validation
    if not result.passed and round < vs.teach_rounds:
        teach = teaching_structures(result, vs.teach_labels)
        if teach:
            name = f"teach_{round:02d}.extxyz"
            path = layout.structures / name
            tmp = path.with_name(f".{name}.tmp")
            write(tmp, teach, format="extxyz")
            os.replace(tmp, path)
            figures.update(teach_file=name, n_teach=len(teach))
            log.warning("validation round %d failed (%s): teaching %d structures, then validating again",
                        round, "; ".join(result.failures), len(teach))
    if not result.passed and not figures["teach_file"]:
        figures["advice"] = _gate_advice(result, campaign, round)
    record_stage(layout, f"validate_{round:02d}", figures)
    record_stage(layout, "validate", figures)
    return figures


def _gate_advice(result, campaign: Campaign, round: int) -> str:
    """What to change when the gate failed for good: one line per kind of failure."""
    out = []
    text = " ".join(result.failures)
    if "energy RMSE" in text or "force RMSE" in text:
        out.append("more or more varied training data (initial_data.*), or a larger basis "
                   "(fit.number_of_functions)")
    if "barrier error" in text:
        out.append("a lower gamma.threshold (stop earlier near saddles) or more teaching "
                   "(validation.teach_rounds / teach_labels)")
    if "no process" in text:
        out.append("aKMC found no process: check akmc.kmc_steps / max_rounds and the run's report")
    if "relaxes into the reactant" in text:
        out.append("a process the oracle does not have: the potential invents a minimum; more data near it")
    if round >= campaign.validation.teach_rounds:
        out.append(f"the teaching budget (validation.teach_rounds = {campaign.validation.teach_rounds}) is used up")
    return "; ".join(out)


def _pictures(runs, result) -> dict[str, Any]:
    """What report.html draws: the campaign's starting structure and its dominant process (the lowest-barrier
    process distinct by symmetry that the gate checked), from the eOn run folders."""
    segs = runs.segments()
    out: dict[str, Any] = {}
    if segs:
        out["start"] = str(segs[0].path / "pos.con")
    if result.barriers:
        b = result.barriers[0]
        pd = Path(b.run) / "states" / str(b.state) / "procdata"
        out["process"] = {
            "name": b.name or "lowest process", "reactant": str(pd / f"reactant_{b.process}.con"),
            "saddle": str(pd / f"saddle_{b.process}.con"), "product": str(pd / f"product_{b.process}.con"),
            "caption": f"{b.name or 'process'}: barrier {b.eon_barrier:.3f} eV in eOn's table, "
                       f"{b.learned_barrier:.3f} eV with the packaged potential (CI-NEB), {b.oracle_barrier:.3f} eV "
                       f"with the oracle; seen {b.multiplicity} time(s) in states {b.states}",
        }
    return out


class GateFailed(RuntimeError):
    """The potential did not graduate; nothing is packaged."""


def package(layout: CampaignLayout) -> dict[str, Any]:
    """Manifest, report and zip of the validated latest generation into the campaign's dist folder."""
    from autopipec_fw.production.deployer import release_potential
    from autopipec_fw.production.validate import ValidationResult
    from autopipec_fw.training.fit import latest_generation

    campaign = layout.campaign()
    check_training_set(layout)
    gen = latest_generation(layout.generations)
    if gen is None:
        raise ConfigError(f"{layout.generations}: no fitted generation to package")
    vfile = layout.validation / "validation.json"
    try:
        result = ValidationResult.from_dict(json.loads(vfile.read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{vfile}: no readable validation result ({e}); the validate stage must run first") from None
    if not result.passed:
        raise GateFailed(f"{campaign.name}: not packaged: {result.message()}")
    records = stage_records(layout)
    generations = [r for k, r in sorted(records.items()) if k.startswith("fit_")]
    generations = [{"generation": r["generation"], "training_set_size": r.get("training_set_size"), **r["metrics"]}
                   for r in generations]
    stops = [{"iteration": r["iteration"], "max_gamma": r.get("max_gamma"), "n_selected": r.get("n_selected"),
              "kmc_steps": r.get("kmc_steps")}
             for k, r in sorted(records.items()) if k.startswith("akmc_") and r.get("status") == "stopped"]
    runs = layout.akmc_runs()
    trajectory = runs.trajectory()
    validated = (stage_records(layout).get("validate") or {}).get("generation")
    if validated is not None and int(validated) != gen.index:
        raise ConfigError(f"{layout.stages / 'validate.json'}: the gate validated {_gen_name(validated)}, but the "
                          f"latest generation is {gen.name}; the validate stage must run on it first")
    fitted_on = _fitted_on(gen)  # the package describes its own generation's data, not the set as it is now
    size = len(fitted_on) if fitted_on is not None else int(gen.metrics.get("n_structures") or 0)
    path = release_potential(
        campaign, gen, result, Path(campaign.package.dist_dir), training_set_size=size,
        generations=generations, stops=stops, kmc_trajectory=trajectory, pictures=_pictures(runs, result),
    )
    return record_stage(layout, "package", {"package": str(path), "version": campaign.package.version,
                                            "generation": gen.index, "training_set_size": size,
                                            "training_set_digest": _set_digest(fitted_on or set())})


def _gen_name(index: Any) -> str:
    return f"gen_{int(index):03d}"
