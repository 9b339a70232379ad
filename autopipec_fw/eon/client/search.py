"""Our eOn client: runs the jobs eOn's server hands out, on the pyeonclient bindings, in pure Python.

eOn's server (``python -m eon.server``, local communicator) starts ``client_path`` once per job, in the job's
folder (``config.ini``, ``pos.con`` and, for a process search, ``displacement.con`` + ``direction.dat``), and
reads back ``results.dat`` plus the job's ``.con`` files. This module is that program. The run folder holds a
small executable (written by `EonWrapper`, see `write_client_script`) that calls `main` with the path of a
settings file (`ClientSettings`, JSON) that says which potential to evaluate:

- ``potential = "ace"``: the ACE potential (B-basis ``.yaml`` + active set ``.asi``) in-process through
  ``pyeonclient.make_potential_from_ase``: no process per force call. Every force call goes through the shared
  `autopipec_fw.gamma.StopPolicy` (the campaign's one stop rule, carried in the settings file): above the threshold the structure is recorded as a
  candidate, a line is appended to the stop file, the force call fails and the job exits with `EXIT_STOP` (100);
  the supervisor sees the stop file and stops eOn.
- ``potential = "emt"``: ASE's EMT in-process (tests and benchmarks).
- ``potential = "config"``: whatever ``[Potential]`` in ``config.ini`` says (e.g. ``ext_pot`` with
  ``pace_driver.py``), evaluated by eOn's own potential factory.

Job types: ``process_search`` (what aKMC with client-side searches sends) is composed from the bound pieces the
same way eOn's C++ ``ProcessSearchJob`` does it (load pos.con; minimize first; displacement from
``displacement.con`` or ``direction.dat``; min-mode saddle search; relax both sides of the saddle; connectivity;
barrier checks; prefactors) and writes the same ``results.dat`` / ``reactant.con`` / ``saddle.con`` /
``product.con`` / ``mode.dat``. ``minimization``, ``point`` and ``saddle_search`` (server-side searches) are
handled too.

The worker (`autopipec_fw.eon.client.worker`) runs these jobs in forks of one warm process; every job appends one
JSON line to ``<run_dir>/client_calls.jsonl`` (job, type, force calls counted by our calculator, seconds spent in
the potential and in the job, exit code): the report sums these.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autopipec_fw.eon.extpot.protocol import EXIT_COLLECT, EXIT_STOP

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
SETTINGS_ENV = "AUTOPIPEC_EON_CLIENT_SETTINGS"

# MinModeSaddleSearch status codes (eOn's enum; pyeonclient.SaddleStatus)
STATUS_GOOD = 0
STATUS_BAD_NOT_CONNECTED = 6
STATUS_BAD_PREFACTOR = 7
STATUS_BAD_HIGH_BARRIER = 8
STATUS_BAD_MINIMA = 9
STATUS_FAILED_PREFACTOR = 10
STATUS_NEGATIVE_BARRIER = 14


class ExtrapolationStop(RuntimeError):
    """The potential was asked for a structure beyond its gamma threshold: the job must fail."""


@dataclass
class ClientSettings:
    """What the client evaluates; written as JSON in the run folder by `EonWrapper`."""

    run_dir: str
    potential: str = "ace"  # "ace" | "emt" | "config"
    potential_yaml: str | None = None
    active_set: str | None = None
    policy: dict[str, Any] | None = None  # `StopPolicy.to_dict()`: the campaign's one stop rule
    collect_after: str | None = None  # a stop file: once it holds a stop, finished searches only collect

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> ClientSettings:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read eOn client settings ({e})") from None
        if not isinstance(data, dict) or "run_dir" not in data:
            raise ValueError(f"{path}: eOn client settings must be a JSON object with 'run_dir'")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown eOn client settings {unknown}")
        s = cls(**data)
        if s.potential not in ("ace", "emt", "config"):
            raise ValueError(f"{path}: potential must be 'ace', 'emt' or 'config', got {s.potential!r}")
        if s.potential == "ace" and not (s.potential_yaml and s.active_set and s.policy):
            raise ValueError(f"{path}: potential 'ace' needs potential_yaml, active_set and policy")
        return s


@dataclass
class CallStats:
    """Force calls our calculator saw in this job, and the time spent in them."""

    force_calls: int = 0
    eon_force_calls: int = 0
    potential_seconds: float = 0.0
    max_gamma: float = 0.0
    stopped: bool = False
    errors: list[str] = field(default_factory=list)


_PARENT = os.getppid()


def _exit_if_orphaned() -> None:
    """The server that started us is gone (killed): stop computing for nobody."""
    if os.getppid() != _PARENT:
        os._exit(EXIT_ERROR)


def make_calculator(settings: ClientSettings, stats: CallStats) -> Any:
    """The ASE calculator evaluated in-process: ACE with the gamma stop, or EMT."""
    if settings.potential == "emt":
        from ase.calculators.emt import EMT

        class CountingEMT(EMT):
            def calculate(self, atoms=None, properties=("energy",), system_changes=()):  # type: ignore[override]
                _exit_if_orphaned()
                t0 = time.perf_counter()
                super().calculate(atoms, properties, system_changes)
                stats.potential_seconds += time.perf_counter() - t0
                stats.force_calls += 1

        return CountingEMT()

    from pyace import PyACECalculator

    from autopipec_fw.gamma import StopPolicy

    policy = StopPolicy(**(settings.policy or {}))

    class GuardedACE(PyACECalculator):  # type: ignore[misc]
        """PyACECalculator whose every evaluation goes through the StopPolicy."""

        def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=()):  # type: ignore[override]
            if stats.stopped:
                # eOn calls a failed potential once more: fail again, record nothing twice
                raise ExtrapolationStop("extrapolation stop already recorded in this job")
            _exit_if_orphaned()
            t0 = time.perf_counter()
            super().calculate(atoms, properties, system_changes)
            stats.potential_seconds += time.perf_counter() - t0
            stats.force_calls += 1
            gamma = self.results.get("gamma")
            if gamma is None:
                return
            import numpy as np

            g = float(np.max(gamma)) if np.all(np.isfinite(gamma)) else float("inf")
            stats.max_gamma = max(stats.max_gamma, g)
            lower = policy.select_lower if policy.select_lower is not None else policy.threshold
            if not g <= lower:
                if policy.record(atoms, gamma, self.results["energy"], self.results["forces"]):
                    stats.stopped = True
                    raise ExtrapolationStop(f"max gamma {g:.4g} > threshold {policy.threshold:g}")

    calc = GuardedACE(settings.potential_yaml)
    calc.set_active_set(settings.active_set)
    return calc


# ----------------------------------------------------------------------------------------------- helpers


def _ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read(path)
    return cp


def _potential_name(params: Any) -> str:
    return str(params.potential).rsplit(".", 1)[-1]


def _load(matter: Any, path: str) -> None:
    import pyeonclient as pec

    st = matter.con2matter(path)
    if not pec.io_ok(st):
        raise RuntimeError(f"cannot read {path} ({pec.io_status_name(st)})")


def _save(matter: Any, path: str) -> None:
    import pyeonclient as pec

    st = matter.matter2con(path)
    if not pec.io_ok(st):
        raise RuntimeError(f"cannot write {path} ({pec.io_status_name(st)})")


def _load_mode(path: Path, natoms: int) -> Any:
    import numpy as np

    vals = np.array(path.read_text().split(), dtype=float)
    if vals.size < 3 * natoms:
        raise RuntimeError(f"{path} ended after {vals.size // 3} of {natoms} atoms")
    return vals[: 3 * natoms].reshape(natoms, 3).copy()


def _save_mode(path: str, mode: Any, free: Any) -> None:
    # eOn's saveMode: one "x y z" line per atom, fixed atoms zero
    import numpy as np

    m = np.asarray(mode, dtype=float).reshape(-1, 3) * np.asarray(free, dtype=float).reshape(-1, 3)
    with open(path, "w") as fh:
        for row in m:
            fh.write(f"{row[0]:.12e} {row[1]:.12e} {row[2]:.12e}\n")


def _frame_positions(frame: Any, matter: Any) -> Any:
    """Positions of a climb ConFrame in the matter's atom order."""
    import numpy as np

    xyz = np.asarray(frame.coords_array(), dtype=float).reshape(-1, 3)
    if xyz.shape[0] != matter.n_atoms:
        raise RuntimeError(f"climb frame has {xyz.shape[0]} atoms, the structure {matter.n_atoms}")
    try:
        ids = np.asarray(frame.atom_ids_array(), dtype=np.int64).reshape(-1)
    except Exception:  # noqa: BLE001 - frames without ids are in matter order
        return xyz
    want = np.array([matter.get_atom_index(i) for i in range(matter.n_atoms)], dtype=np.int64)
    if ids.shape[0] != xyz.shape[0] or np.array_equal(ids, want):
        return xyz
    pos = {int(k): i for i, k in enumerate(ids)}
    try:
        return xyz[[pos[int(k)] for k in want]]
    except KeyError:
        return xyz


def _results(path: str, lines: list[tuple[Any, str]]) -> None:
    text = "".join(f"{v} {k}\n" for v, k in lines)
    with open(path, "w") as fh:
        fh.write(text)


def _e(x: float) -> str:
    return f"{x:.12e}"


# ----------------------------------------------------------------------------------------------- jobs


def run_process_search(params: Any, pot: Any, ini: configparser.ConfigParser) -> int:
    """eOn's ProcessSearchJob for min-mode searches, composed from the bindings; returns the search status."""
    import numpy as np
    import pyeonclient as pec

    f_min = f_saddle = f_pref = 0
    initial = pec.Matter(pot, params)
    _load(initial, "pos.con")
    if params.process_search_minimize_first:
        c0 = pot.force_call_counter
        initial.relax(inplace=True, quiet=True)
        f_min += pot.force_call_counter - c0
    n = initial.n_atoms
    free = np.array(initial.free_mask, dtype=float).reshape(n, 3)
    init_pos = np.array(initial.positions, dtype=float)

    method = ini.get("Saddle Search", "method", fallback="min_mode").strip().lower()
    if method != "min_mode":
        raise RuntimeError(f"saddle_search method {method!r} is not supported by this client (min_mode only)")
    disp_type = str(params.saddle_displace_type).lower()
    if disp_type != "load":
        raise RuntimeError(
            f"client_displace_type {disp_type!r} is not supported (the server displaces: 'load')"
        )

    saddle = pec.Matter(initial)
    mode = np.zeros((n, 3))
    if Path("displacement.con").is_file():
        disp = pec.Matter(pot, params)
        _load(disp, "displacement.con")
        if disp.n_atoms != n:
            raise RuntimeError(f"displacement.con holds {disp.n_atoms} atoms, pos.con {n}")
        pos = np.array(disp.positions, dtype=float)
        fixed = free[:, 0] < 0.5
        pos[fixed] = init_pos[fixed]
        saddle.positions = pos
        if Path("direction.dat").is_file():
            mode = _load_mode(Path("direction.dat"), n)
    elif Path("direction.dat").is_file():
        mode = _load_mode(Path("direction.dat"), n)
        norm = float(np.linalg.norm(mode))
        if not norm > 0:
            raise RuntimeError("direction.dat is a zero vector and there is no displacement.con")
        pos = init_pos + mode * (float(params.saddle_displace_magnitude) / norm)
        fixed = free[:, 0] < 0.5
        pos[fixed] = init_pos[fixed]
        saddle.positions = pos
    else:
        raise RuntimeError("failed to load displacement.con (and no usable direction.dat)")
    displacement_pos = np.array(saddle.positions, dtype=float)

    e_initial = initial.potential_energy
    c0 = pot.force_call_counter
    search = pec.MinModeSaddleSearch(saddle, np.ascontiguousarray(mode), e_initial, params, pot)
    status = int(search.run_retain_frames())
    frames = search.take_climb_frames()
    if frames:  # the search works on its own copy: its last climb frame is the saddle
        saddle.positions = np.ascontiguousarray(_frame_positions(frames[-1], saddle))
    eigvec = np.array(search.eigenvector, dtype=float).reshape(n, 3)
    e_saddle = saddle.potential_energy
    f_saddle += pot.force_call_counter - c0

    # eOn starts both minima as copies of the initial state: a search that fails before they are relaxed
    # reports the initial state as reactant and product (its energy, its reactant.con / product.con)
    min1 = pec.Matter(initial)
    min2 = pec.Matter(initial)
    barriers = [0.0, 0.0]
    prefactors = [0.0, 0.0]
    calls = {"min": 0, "pref": 0}
    if status == STATUS_GOOD:
        status, min1, min2 = _after_saddle(
            params, ini, pot, initial, saddle, eigvec, barriers, prefactors, calls
        )
    f_min += calls["min"]
    f_pref += calls["pref"]
    disp_dist = _per_atom_norm(displacement_pos, np.array(saddle.positions), np.array(saddle.cell))

    lines: list[tuple[Any, str]] = [
        (status, "termination_reason"),
        (pec.saddle_status_message(status), "termination_reason_text"),
        (int(params.random_seed), "random_seed"),
        (_potential_name(params), "potential_type"),
        (f_min + f_saddle + f_pref, "total_force_calls"),
        (f_min, "force_calls_minimization"),
        (f_saddle, "force_calls_saddle"),
        (_e(e_saddle), "potential_energy_saddle"),
        (_e(min1.potential_energy), "potential_energy_reactant"),
        (_e(min2.potential_energy), "potential_energy_product"),
        (_e(barriers[0]), "barrier_reactant_to_product"),
        (_e(barriers[1]), "barrier_product_to_reactant"),
        (_e(disp_dist), "displacement_saddle_distance"),
        (f_pref, "force_calls_prefactors"),
        (_e(prefactors[0]), "prefactor_reactant_to_product"),
        (_e(prefactors[1]), "prefactor_product_to_reactant"),
    ]
    _results("results.dat", lines)
    _save(min1, "reactant.con")
    _save_mode("mode.dat", eigvec, free)
    _save(saddle, "saddle.con")
    _save(min2, "product.con")
    return status


def _per_atom_norm(a: Any, b: Any, cell: Any) -> float:
    """Largest per-atom displacement between two position sets (minimum image)."""
    import numpy as np

    d = b - a
    inv = np.linalg.inv(cell)
    frac = d @ inv
    frac -= np.round(frac)
    d = frac @ cell
    return float(np.max(np.linalg.norm(d, axis=1))) if len(d) else 0.0


def _after_saddle(
    params: Any,
    ini: configparser.ConfigParser,
    pot: Any,
    initial: Any,
    saddle: Any,
    eigvec: Any,
    barriers: list[float],
    prefactors: list[float],
    calls: dict[str, int],
) -> tuple[int, Any, Any]:
    """Relax both sides of the saddle, check connectivity, barriers and prefactors (ProcessSearchJob); returns
    (status, reactant-side minimum, product-side minimum)."""
    import numpy as np
    import pyeonclient as pec

    offset = float(params.opt_max_move)  # eOn resolves minimization_offset to the optimizer's max_move
    pos_s = np.array(saddle.positions, dtype=float)
    min1 = pec.Matter(saddle)
    min2 = pec.Matter(saddle)
    min1.positions = np.ascontiguousarray(pos_s - eigvec * offset)
    min2.positions = np.ascontiguousarray(pos_s + eigvec * offset)
    c0 = pot.force_call_counter
    _, ok1 = min1.relax(inplace=True, quiet=True)
    _, ok2 = min2.relax(inplace=True, quiet=True)
    calls["min"] += pot.force_call_counter - c0
    if not (ok1 and ok2):
        return STATUS_BAD_MINIMA, min1, min2
    if not pec.structures_equal(initial, min1) and pec.structures_equal(initial, min2):
        min1, min2 = min2, min1
    if not pec.structures_equal(initial, min1):
        return STATUS_BAD_NOT_CONNECTED, min1, min2
    if pec.structures_equal(initial, min2):
        return STATUS_BAD_NOT_CONNECTED, min1, min2
    if not params.process_search_minimize_first:
        min1 = initial
    c0 = pot.force_call_counter
    barriers[0] = saddle.potential_energy - min1.potential_energy
    barriers[1] = saddle.potential_energy - min2.potential_energy
    calls["min"] += pot.force_call_counter - c0
    max_e = float(params.saddle_max_energy)
    if barriers[0] > max_e or barriers[1] > max_e:
        return STATUS_BAD_HIGH_BARRIER, min1, min2
    if barriers[0] < 0 or barriers[1] < 0:
        return STATUS_NEGATIVE_BARRIER, min1, min2
    default_pref = ini.getfloat("Prefactor", "default_value", fallback=0.0)
    if default_pref:
        prefactors[0] = prefactors[1] = default_pref
        return STATUS_GOOD, min1, min2
    c0 = pot.force_call_counter
    try:
        p1, p2 = pec.get_prefactors(params, min1, saddle, min2)
    except RuntimeError:
        if "xtrapolation" in str(sys.exc_info()[1]):
            raise
        return STATUS_FAILED_PREFACTOR, min1, min2
    finally:
        calls["pref"] += pot.force_call_counter - c0
    lo, hi = params.prefactor_min_value, params.prefactor_max_value
    if not (lo <= p1 <= hi) or not (lo <= p2 <= hi):
        return STATUS_BAD_PREFACTOR, min1, min2
    prefactors[0], prefactors[1] = float(p1), float(p2)
    return STATUS_GOOD, min1, min2


def run_minimization(params: Any, pot: Any) -> None:
    import pyeonclient as pec

    m = pec.Matter(pot, params)
    _load(m, "pos.con")
    c0 = pot.force_call_counter
    _, ok = m.relax(inplace=True, quiet=True)
    _save(m, "min.con")
    status = 0 if ok else 1
    _results(
        "results.dat",
        [
            (status, "termination_reason"),
            ("GOOD" if ok else "FAIL_MAX_ITERATIONS", "termination_reason_text"),
            ("minimization", "job_type"),
            (_potential_name(params), "potential_type"),
            (pot.force_call_counter - c0, "total_force_calls"),
            (_e(m.potential_energy), "potential_energy"),
        ],
    )


def run_point(params: Any, pot: Any) -> None:
    import numpy as np
    import pyeonclient as pec

    m = pec.Matter(pot, params)
    _load(m, "pos.con")
    e = m.potential_energy
    f = np.array(m.forces, dtype=float)
    _results(
        "results.dat",
        [
            (0, "termination_reason"),
            ("point", "job_type"),
            (_potential_name(params), "potential_type"),
            (1, "total_force_calls"),
            (_e(e), "potential_energy"),
            (_e(float(np.max(np.linalg.norm(f, axis=1)))), "max_atom_force"),
        ],
    )


def _job_name(params: Any) -> str:
    return str(params.job).rsplit(".", 1)[-1].lower()


def run_job(settings: ClientSettings | None, workdir: Path) -> tuple[int, CallStats, str]:
    """Run the job in ``workdir``; returns (exit code, our force-call stats, job type)."""
    import pyeonclient as pec

    stats = CallStats()
    os.chdir(workdir)
    ini_path = workdir / "config.ini"
    if not ini_path.is_file():
        raise FileNotFoundError(f"{ini_path}: no config.ini in the job folder")
    params = pec.Parameters()
    params.load(str(ini_path))
    ini = _ini(ini_path)
    job = _job_name(params)
    if settings is None or settings.potential == "config":
        pot = pec.make_potential(params)
    else:
        calc = make_calculator(settings, stats)
        pot = pec.make_potential_from_ase(calc)
    try:
        if job == "process_search":
            run_process_search(params, pot, ini)
        elif job == "minimization":
            run_minimization(params, pot)
        elif job == "point":
            run_point(params, pot)
        else:
            # anything else: eOn's own job class, with a potential built from config.ini
            if settings is not None and settings.potential != "config":
                raise RuntimeError(f"job type {job!r} is only supported with the config.ini potential")
            files = pec.run_job(params)
            log.info("job %s wrote %s", job, files)
    except RuntimeError as e:
        # our calculator's stop, or (ext_pot) the driver's: its exit 100 reaches us as a failed potential, after
        # it wrote the stop file
        if stats.stopped or "ExtrapolationStop" in str(e) or "extrapolation stop" in str(e) or (
            settings is not None and _collecting(settings)
        ):
            stats.stopped = True
            return EXIT_STOP, stats, job
        raise
    finally:
        stats.eon_force_calls = int(pot.force_call_counter)
    if stats.stopped:
        return EXIT_STOP, stats, job
    if job == "process_search" and settings is not None and _collecting(settings):
        # the run has extrapolated: this search ran to collect candidates only; eOn must not register it (a
        # job without results.dat failed), so no KMC step is drawn from tables this potential left incomplete
        Path("results.dat").unlink(missing_ok=True)
        return EXIT_COLLECT, stats, job
    return EXIT_OK, stats, job


def _collecting(settings: ClientSettings) -> bool:
    p = settings.collect_after
    try:
        return bool(p) and os.stat(p).st_size > 0
    except OSError:
        return False
