"""Fit stage: pacemaker fit and upfits, one generation folder each (gen_000, gen_001, ...).

A generation folder holds `input.yaml`, the training-data snapshot it was fitted on, pacemaker's own
outputs (log.txt, *_pred.pckl.gzip, fitting_data_info.pckl.gzip), `potential.yaml` (B-basis: energies,
forces and gamma), `potential.yace`, `potential.asi` (active set) and `generation.json` (metrics, provenance).
It is built under a temporary name and renamed when complete: a folder named gen_NNN is always whole, and
nothing is ever overwritten. External programs run with argument lists and bounded TensorFlow threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from autopipec_fw.config import FitSettings
from autopipec_fw.training.dataset import TrainingSet, write_frame
from autopipec_fw.training.errors import error_figures, prediction_errors
from autopipec_fw.training.locking import atomic_write_text, file_lock

log = logging.getLogger(__name__)

GEN_RE = re.compile(r"^gen_(\d{3,})$")
DATA_FILE = "training_data.pckl.gzip"
POTENTIAL_YAML = "potential.yaml"
POTENTIAL_YACE = "potential.yace"
POTENTIAL_ASI = "potential.asi"
GENERATION_JSON = "generation.json"
# bump when what a generation folder holds or how it is made changes (cache keys of test fixtures use it)
RECIPE_VERSION = 2


class FitError(RuntimeError):
    """A fit that could not produce a generation; the message names the folder and the log to read."""


@dataclass
class Generation:
    """One fitted potential: its folder and files, and pacemaker's metrics (meV/atom, meV/Å)."""

    index: int
    dir: Path
    yaml: Path
    yace: Path
    asi: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"gen_{self.index:03d}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dir", "yaml", "yace", "asi"):
            d[k] = str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Generation:
        return cls(
            index=int(d["index"]),
            dir=Path(d["dir"]),
            yaml=Path(d["yaml"]),
            yace=Path(d["yace"]),
            asi=Path(d["asi"]),
            metrics=dict(d.get("metrics") or {}),
        )

    @classmethod
    def load(cls, gen_dir: Path) -> Generation:
        """Read `generation.json` of a generation folder (paths re-anchored to where the folder is now)."""
        gen_dir = Path(gen_dir).resolve()
        f = gen_dir / GENERATION_JSON
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise FitError(f"{f}: not a readable generation record ({e})") from None
        d.update(
            dir=str(gen_dir),
            yaml=str(gen_dir / POTENTIAL_YAML),
            yace=str(gen_dir / POTENTIAL_YACE),
            asi=str(gen_dir / POTENTIAL_ASI),
        )
        return cls.from_dict(d)


def generation_dirs(generations_root: Path) -> list[tuple[int, Path]]:
    root = Path(generations_root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = GEN_RE.match(p.name)
        if m and p.is_dir() and (p / GENERATION_JSON).exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_generation(generations_root: Path) -> Generation | None:
    """The complete generation with the highest index, or None."""
    dirs = generation_dirs(generations_root)
    return Generation.load(dirs[-1][1]) if dirs else None


# --------------------------------------------------------------------------------------------- helpers
def tool_path(name: str) -> str:
    """A pyace console script: next to the running interpreter first (the venv), then PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        raise FitError(f"{name}: not found next to {sys.executable} nor on PATH (install python-ace)")
    return found


def tool_env(threads: int) -> dict[str, str]:
    """Environment for pacemaker & co: bounded TensorFlow/BLAS threads, no GPU probing, quiet TF."""
    env = dict(os.environ)
    n = str(int(threads))
    env.update(
        {
            "TF_NUM_INTRAOP_THREADS": n,
            "TF_NUM_INTEROP_THREADS": n,
            "OMP_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
            "MPLBACKEND": "Agg",
        }
    )
    return env


def run_tool(argv: list[str], cwd: Path, threads: int, log_name: str, timeout: float | None = None) -> None:
    """Run a console script in `cwd`, output appended to `cwd/log_name`; a non-zero exit is a FitError."""
    logf = Path(cwd) / log_name
    with open(logf, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(  # noqa: S603 - argument list, no shell
                argv,
                cwd=cwd,
                env=tool_env(threads),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FitError(f"{cwd}: {Path(argv[0]).name} timed out after {timeout} s; see {logf}") from None
    if proc.returncode != 0:
        tail = logf.read_text(errors="replace").strip().splitlines()[-8:]
        raise FitError(
            f"{cwd}: {Path(argv[0]).name} exited with code {proc.returncode}; see {logf}\n  "
            + "\n  ".join(tail)
        )


def pacemaker_input(
    settings: FitSettings,
    elements: list[str],
    data_file: str,
    n_structures: int,
    upfit: bool,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """pacemaker's input.yaml (as a dict) from the campaign's fit settings."""
    data: dict[str, Any] = {"filename": data_file}
    n_test = int(n_structures * settings.test_fraction)
    if settings.test_fraction > 0 and n_test >= 1:
        data["test_size"] = settings.test_fraction
    return {
        "seed": settings.seed,
        "metadata": {"origin": "autopipec-fw", **{k: str(v) for k, v in (metadata or {}).items()}},
        "potential": {
            "deltaSplineBins": 0.001,
            "elements": sorted(elements),
            "embeddings": {
                "ALL": {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}
            },
            "bonds": {
                "ALL": {
                    "radbase": "SBessel",
                    "radparameters": [5.25],
                    "rcut": float(settings.cutoff),
                    "dcut": 0.01,
                    "NameOfCutoffFunction": "cos",
                }
            },
            "functions": {
                "number_of_functions_per_element": int(settings.number_of_functions),
                "UNARY": {"nradmax_by_orders": [15, 6, 4, 3, 2, 2], "lmax_by_orders": [0, 3, 3, 2, 2, 1]},
                "BINARY": {"nradmax_by_orders": [15, 6, 3, 2, 2, 1], "lmax_by_orders": [0, 3, 2, 1, 1, 0]},
                "TERNARY": {"nradmax_by_orders": [15, 3, 3, 2, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
                "ALL": {"nradmax_by_orders": [15, 3, 2, 1, 1], "lmax_by_orders": [0, 2, 2, 1, 1]},
            },
        },
        "data": data,
        "fit": {
            "loss": {"kappa": float(settings.kappa), "L1_coeffs": 1e-8, "L2_coeffs": 1e-8},
            "optimizer": "BFGS",
            "maxiter": int(settings.upfit_iterations if upfit else settings.max_iterations),
            "repulsion": "auto",
        },
        "backend": {"evaluator": "tensorpot", "batch_size": 100, "display_step": 50},
    }


def _rmse_from_predictions(path: Path) -> dict[str, float] | None:
    """Energy RMSE per atom (meV/atom) and force RMSE (meV/Å) from pacemaker's *_pred.pckl.gzip."""
    if not path.exists():
        return None
    out = prediction_errors(pd.read_pickle(path, compression="gzip"))
    return None if out is None else {k: out[k] for k in ("energy_rmse", "force_rmse", "n_structures", "n_atoms")}


def read_metrics(gen_dir: Path) -> dict[str, Any]:
    """Train/test energy RMSE per atom (meV/atom) and force RMSE (meV/Å) of a fitted folder."""
    gen_dir = Path(gen_dir)
    train = _rmse_from_predictions(gen_dir / "train_pred.pckl.gzip")
    test = _rmse_from_predictions(gen_dir / "test_pred.pckl.gzip")
    m: dict[str, Any] = {"train": train, "test": test}
    for part, vals in (("train", train), ("test", test)):
        m[f"{part}_energy_rmse"] = None if vals is None else vals["energy_rmse"]
        m[f"{part}_force_rmse"] = None if vals is None else vals["force_rmse"]
    m["units"] = {"energy_rmse": "meV/atom", "force_rmse": "meV/Å"}
    return m


def _cleanup_stale_partials(root: Path) -> None:
    for p in root.glob("gen_*.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # its fitter died: keep what it left, out of the way
            log.warning("%s: left by a fit that died; moved to %s", p.name, _set_aside(p, root))
        except PermissionError:
            pass


# --------------------------------------------------------------------------------------------- API
def fit_generation(
    dataset_path: Path,
    settings: FitSettings,
    elements: list[str],
    generations_root: Path,
    previous: Generation | None = None,
    timeout: float | None = None,
    warm_start: bool = True,
    index: int | None = None,
) -> Generation:
    """Fit on the whole dataset: from scratch, or with `previous` and `warm_start` continuing from its potential
    (`pacemaker -p`). With `previous`, the fit is judged against it on its data (never worse: else the other kind
    of fit runs too and the better is kept, `metrics["quality_check"]`).

    Returns the new Generation (`index`, or the next free index under `generations_root`), with .yaml, .yace, .asi
    and metrics.
    """
    dataset_path = Path(dataset_path).resolve()
    root = Path(generations_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ts = TrainingSet(dataset_path)
    if not dataset_path.exists():
        raise FitError(f"{dataset_path}: training set does not exist (label structures first)")
    if previous is not None and not Path(previous.yaml).is_file():
        raise FitError(f"{previous.yaml}: previous generation's potential is missing; cannot upfit")
    frame = ts.frame()  # one consistent snapshot: the fit uses exactly this
    n_structures = len(frame)
    if n_structures == 0:
        raise FitError(f"{dataset_path}: training set is empty")
    present = sorted({s for at in frame["ase_atoms"] for s in at.get_chemical_symbols()})
    extra = sorted(set(present) - set(elements))
    if extra:
        raise FitError(f"{dataset_path}: holds element(s) {extra} not in the fit's elements {elements}")
    with file_lock(root / ".fit.lock"):
        _cleanup_stale_partials(root)
        existing = generation_dirs(root)
        free = existing[-1][0] + 1 if existing else 0
        if index is not None and index != free:  # asked for generation N: makes N or fails
            raise FitError(f"{root}: asked to fit gen_{index:03d} but the next free generation is gen_{free:03d} "
                           "(another fit ran meanwhile?); nothing was fitted")
        index = free
        final = root / f"gen_{index:03d}"
        if final.exists():
            raise FitError(
                f"{final}: exists but is not a complete generation; move it away (nothing is overwritten)"
            )
        work = root / f"{final.name}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            return _fit_in(work, final, index, frame, settings, elements, previous, timeout, dataset_path,
                           warm_start)
        except BaseException:
            kept = _set_aside(work, root)
            log.error("%s: fit failed; its folder is kept as %s", final.name, kept)
            raise


def _set_aside(work: Path, root: Path) -> Path:
    """Move a failed fit's folder to root/failed/gen_NNN-<k> (never overwriting)."""
    base = work.name.split(".partial-")[0]
    (root / "failed").mkdir(exist_ok=True)
    k = 0
    while (root / "failed" / f"{base}-{k}").exists():
        k += 1
    dest = root / "failed" / f"{base}-{k}"
    os.rename(work, dest)
    return dest


def _fit_in(
    work: Path,
    final: Path,
    index: int,
    frame: pd.DataFrame,
    settings: FitSettings,
    elements: list[str],
    previous: Generation | None,
    timeout: float | None,
    dataset_path: Path,
    warm_start: bool = True,
) -> Generation:
    t0 = time.monotonic()
    write_frame(frame, work / DATA_FILE)
    n_structures = len(frame)
    upfit = previous is not None
    first = "warm" if previous is not None and warm_start else "fresh"
    inp = _run_pacemaker(work, index, n_structures, settings, elements, previous if first == "warm" else None,
                         timeout)
    check: dict[str, Any] | None = None
    if previous is not None:
        # never worse than the previous generation on the data both saw: else try the other kind, keep the better
        check = {**_quality_check(work, previous, settings), "first": first, "kept": first}
        if check["worse"]:
            second = "fresh" if first == "warm" else "warm"
            log.warning("%s: the %s fit is worse than %s on the data both saw (force RMSE %.1f vs %.1f meV/Å, "
                        "energy RMSE %.2f vs %.2f meV/atom); trying a %s fit", final.name, first, previous.name,
                        check["force_rmse"], check["previous_force_rmse"], check["energy_rmse"],
                        check["previous_energy_rmse"], second)
            aside = _move_aside(work, f"{first}_fit")
            inp2 = _run_pacemaker(work, index, n_structures, settings, elements,
                                  previous if second == "warm" else None, timeout)
            errs = _shared_errors(work, _prediction_hashes(previous.dir))
            check["second"] = second
            check["second_energy_rmse"], check["second_force_rmse"] = errs["energy_rmse"], errs["force_rmse"]
            if _score(errs, check) <= _score(check, check):
                check["kept"], inp = second, inp2
            else:  # the second is no better: the first comes back
                _move_aside(work, f"{second}_fit")
                for f in list(aside.iterdir()):
                    os.rename(f, work / f.name)
                aside.rmdir()
        log.info("%s: kept the %s fit", final.name, check["kept"])
    upfit = (check["kept"] if check else first) == "warm"
    # active set over every labelled structure (train and test split), all atoms: whatever the oracle
    # labelled counts as known, so the same candidates do not stop the next run again
    run_tool(
        [tool_path("pace_activeset"), "-d", DATA_FILE, "-a", POTENTIAL_YAML],
        work,
        settings.tf_threads,
        "tools.out",
    )
    for f in (POTENTIAL_YACE, POTENTIAL_ASI):
        if not (work / f).is_file():
            raise FitError(f"{work}: {f} was not produced; see {work / 'tools.out'}")
    metrics = read_metrics(work)
    metrics.update(
        {
            "generation": index,
            "recipe_version": RECIPE_VERSION,
            "upfit": upfit,
            "quality_check": check,
            "previous": previous.index if previous else None,
            "n_structures": n_structures,
            "n_atoms": int(sum(len(a) for a in frame["ase_atoms"])),
            "max_iterations": inp["fit"]["maxiter"],
            "oracle_hash": frame.attrs.get("oracle_hash"),
            "reference_energies": frame.attrs.get("reference_energies"),
            "seconds": round(time.monotonic() - t0, 1),
            "dataset": str(dataset_path),
        }
    )
    gen = Generation(
        index=index,
        dir=final,
        yaml=final / POTENTIAL_YAML,
        yace=final / POTENTIAL_YACE,
        asi=final / POTENTIAL_ASI,
        metrics=metrics,
    )
    atomic_write_text(work / GENERATION_JSON, json.dumps(gen.to_dict(), indent=2, default=str))
    os.rename(work, final)
    log.info(
        "%s: done in %.0f s; test force RMSE %s meV/Å, energy RMSE %s meV/atom",
        final.name,
        metrics["seconds"],
        metrics.get("test_force_rmse"),
        metrics.get("test_energy_rmse"),
    )
    return gen


def _run_pacemaker(work: Path, index: int, n_structures: int, settings: FitSettings, elements: list[str],
                   previous: Generation | None, timeout: float | None) -> dict[str, Any]:
    """One pacemaker fit in ``work`` (a warm start from ``previous`` via `pacemaker -p`, else from scratch), then
    the .yace; returns the input it ran."""
    upfit = previous is not None
    inp = pacemaker_input(
        settings,
        elements,
        DATA_FILE,
        n_structures,
        upfit,
        metadata={"generation": index, "previous": previous.index if previous else None},
    )
    atomic_write_text(work / "input.yaml", yaml.safe_dump(inp, sort_keys=False))
    argv = [tool_path("pacemaker"), "input.yaml", "-o", POTENTIAL_YAML]
    if previous is not None:
        shutil.copyfile(previous.yaml, work / "previous_potential.yaml")
        argv += ["-p", "previous_potential.yaml"]
    log.info("gen_%03d: %s on %d structures", index, "warm start" if upfit else "fit", n_structures)
    run_tool(argv, work, settings.tf_threads, "pacemaker.out", timeout)
    if not (work / POTENTIAL_YAML).is_file():
        raise FitError(f"{work}: pacemaker finished without writing {POTENTIAL_YAML}; see {work / 'log.txt'}")
    run_tool(
        [tool_path("pace_yaml2yace"), POTENTIAL_YAML, "-o", POTENTIAL_YACE],
        work,
        settings.tf_threads,
        "tools.out",
    )
    return inp


def _predictions(gen_dir: Path) -> pd.DataFrame | None:
    """pacemaker's predictions on a fitted folder's whole data (train and test split together)."""
    parts = []
    for name in ("train_pred.pckl.gzip", "test_pred.pckl.gzip"):
        f = Path(gen_dir) / name
        if f.exists():
            parts.append(pd.read_pickle(f, compression="gzip"))
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    return df if "structure_hash" in df else None


def _prediction_hashes(gen_dir: Path) -> set[str]:
    df = _predictions(gen_dir)
    return set() if df is None else set(df["structure_hash"])


def _shared_errors(gen_dir: Path, hashes: set[str]) -> dict[str, float]:
    """Energy (meV/atom) and force (meV/Å) RMSE of a fitted folder's predictions on the structures in
    ``hashes`` (NaN when none of them is in its data)."""
    df = _predictions(gen_dir)
    if df is None:
        return {"energy_rmse": float("nan"), "force_rmse": float("nan"), "n_structures": 0}
    out = prediction_errors(df[df["structure_hash"].isin(hashes)])
    if out is None:
        return {"energy_rmse": float("nan"), "force_rmse": float("nan"), "n_structures": 0}
    return {"energy_rmse": out["energy_rmse"], "force_rmse": out["force_rmse"], "n_structures": out["n_structures"]}


def _score(errors: dict[str, Any], ref: dict[str, Any]) -> float:
    """Energy and force RMSE on the shared data, each relative to the previous generation's: lower is better."""
    return (errors["energy_rmse"] / max(ref["previous_energy_rmse"], 1e-6)
            + errors["force_rmse"] / max(ref["previous_force_rmse"], 1e-6))


def _move_aside(work: Path, name: str) -> Path:
    """Move a fit's files (all but the training data and other set-aside fits) into work/name."""
    dest = work / name
    dest.mkdir()
    for f in list(work.iterdir()):
        if f.name != DATA_FILE and not f.name.endswith("_fit"):
            os.rename(f, dest / f.name)
    return dest


def _quality_check(work: Path, previous: Generation, settings: FitSettings) -> dict[str, Any]:
    """Is the fit in ``work`` worse than ``previous`` on the data both saw (the previous generation's structures)?
    Worse: an RMSE above ``settings.warm_start_tolerance`` x the previous one's plus a floor (0.5 meV/atom,
    3 meV/Å: below that the difference is noise)."""
    shared = _prediction_hashes(previous.dir)
    new = _shared_errors(work, shared)
    old = _shared_errors(previous.dir, shared)
    tol = settings.warm_start_tolerance
    worse = bool(
        new["n_structures"] > 0 and old["n_structures"] > 0
        and (new["force_rmse"] > tol * old["force_rmse"] + 3.0 or new["energy_rmse"] > tol * old["energy_rmse"] + 0.5)
    )
    return {"shared_structures": new["n_structures"], "energy_rmse": new["energy_rmse"],
            "force_rmse": new["force_rmse"], "previous_energy_rmse": old["energy_rmse"],
            "previous_force_rmse": old["force_rmse"], "tolerance": tol, "worse": worse}


# ------------------------------------------------------------------------------------------------------------
# no refit where the oracle verified the potential
# ------------------------------------------------------------------------------------------------------------


def errors_on(generation: Generation, frame: pd.DataFrame) -> dict[str, float] | None:
    """Energy RMSE per atom (meV/atom) and force RMSE (meV/Å) of `generation` on the labelled structures of
    `frame` (against `energy_corrected`, what the potential learns); None for an empty frame."""
    from pyace import PyACECalculator

    if len(frame) == 0:
        return None
    calc = PyACECalculator(str(generation.yace))
    de, dfs = [], []
    for at, e_ref, f_ref in zip(frame["ase_atoms"], frame["energy_corrected"], frame["forces"], strict=True):
        probe = at.copy()
        probe.calc = calc
        de.append((probe.get_potential_energy() - float(e_ref)) / len(at))
        dfs.append(probe.get_forces() - np.asarray(f_ref, dtype=float).reshape(-1, 3))
    fig = error_figures(de, dfs)
    return {"energy_rmse": fig["energy_rmse"], "force_rmse": fig["force_rmse"], "n_structures": len(frame)}


def verify_new_labels(previous: Generation, new: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Does `previous` already predict the `new` labels as well as its own test split (within `tolerance` x
    its test RMSE, + 0.5 meV/atom / 3 meV/Å)? ``{"verified": bool, ...figures}``; 0 never verifies."""
    m = previous.metrics or {}
    own_e = m.get("test_energy_rmse") if m.get("test_energy_rmse") is not None else m.get("train_energy_rmse")
    own_f = m.get("test_force_rmse") if m.get("test_force_rmse") is not None else m.get("train_force_rmse")
    out: dict[str, Any] = {"verified": False, "tolerance": tolerance, "n_new": len(new),
                           "own_energy_rmse": own_e, "own_force_rmse": own_f}
    if tolerance <= 0 or own_e is None or own_f is None or len(new) == 0:
        return out
    errs = errors_on(previous, new)
    assert errs is not None
    lim_e, lim_f = tolerance * own_e + 0.5, tolerance * own_f + 3.0
    out.update({"energy_rmse": errs["energy_rmse"], "force_rmse": errs["force_rmse"],
                "limit_energy_rmse": lim_e, "limit_force_rmse": lim_f,
                "verified": errs["energy_rmse"] <= lim_e and errs["force_rmse"] <= lim_f})
    return out


def derive_generation(previous: Generation, final: Path, frame: pd.DataFrame | None = None,
                      settings: FitSettings | None = None, verification: Mapping[str, Any] | None = None
                      ) -> Generation:
    """`final` as `previous`'s potential (same yaml/yace), no refit. Without `frame` (the training set did not
    grow) a plain copy with its own index; with `frame` (the grown training set, whose new labels the oracle
    verified) its active set is rebuilt over `frame`: what the oracle verified counts as known. Written in a
    partial folder, renamed at the end."""
    final = Path(final)
    index = int(final.name.split("_")[1])
    t0 = time.monotonic()
    work = final.with_name(f"{final.name}.partial-{os.getpid()}")
    with file_lock(final.parent / ".fit.lock"):
        if final.exists():
            raise FitError(f"{final}: exists; nothing is overwritten")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(previous.dir, work)
        metrics: dict[str, Any] = {**(previous.metrics or {}), "generation": index, "reused_from": previous.index}
        if frame is not None:
            (work / POTENTIAL_ASI).unlink(missing_ok=True)
            write_frame(frame, work / DATA_FILE)
            try:
                run_tool([tool_path("pace_activeset"), "-d", DATA_FILE, "-a", POTENTIAL_YAML], work,
                         (settings or FitSettings()).tf_threads, "tools.out")
                if not (work / POTENTIAL_ASI).is_file():
                    raise FitError(f"{work}: {POTENTIAL_ASI} was not produced; see {work / 'tools.out'}")
            except BaseException:
                log.error("%s: active set not rebuilt; its folder is kept as %s", final.name,
                          _set_aside(work, final.parent))
                raise
            metrics.update({
                "previous": previous.index, "active_set_extended": True, "verification": dict(verification or {}),
                "quality_check": None, "n_structures": len(frame),
                "n_atoms": int(sum(len(a) for a in frame["ase_atoms"])),
            })
        metrics["seconds"] = round(time.monotonic() - t0, 1)
        gen = Generation(index=index, dir=final, yaml=final / POTENTIAL_YAML, yace=final / POTENTIAL_YACE,
                         asi=final / POTENTIAL_ASI, metrics=metrics)
        atomic_write_text(work / GENERATION_JSON, json.dumps(gen.to_dict(), indent=2, default=str))
        os.rename(work, final)
    if frame is not None and verification:
        log.info("%s: %s predicts the %d new labels within tolerance (energy %.2f <= %.2f meV/atom, forces %.1f <= "
                 "%.1f meV/Å): no refit, active set rebuilt over %d structures in %.0f s", final.name,
                 previous.name, verification["n_new"], verification["energy_rmse"],
                 verification["limit_energy_rmse"], verification["force_rmse"], verification["limit_force_rmse"],
                 len(frame), metrics["seconds"])
    return gen
