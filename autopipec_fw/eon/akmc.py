"""The aKMC stage: eOn under custodian supervision.

`run_akmc(run_dir, atoms, generation_yaml, generation_asi, akmc, gamma)` runs (or resumes, ``atoms=None``) the
eOn aKMC simulation in ``run_dir`` until the requested KMC steps are done, an extrapolation stop happens, or it
fails, and returns an `AkmcResult`. `EonWrapper` does the work:

- the run folder: ``config.ini`` (rewritten before every round: KMC steps still to do, the current potential),
  ``pos.con`` (from ASE Atoms, FixAtoms respected), our client (``eon_client`` + ``client.json``) or the
  ext_pot driver wrapper, the stop file ``pace_stop`` and the ``candidates/`` folder;
- one custodian job (`EonJob`) per eOn server process: by default a continuous server (``eon-server
  --continuous``: round after round in one process until the KMC steps are done), or one process per round
  (``EonSettings.server_mode="rounds"``); with `ExtrapolationHandler` (monitor), `RoundLimitHandler` (monitor,
  continuous), `StaleLockHandler` and `ClientFailureHandler`; custodian's log goes to ``custodian.json`` (and a
  copy per call in ``custodian/``);
- resume: eOn's own state (``info.txt``, ``dynamics.txt``, ``states/``, ``prng.pkl``, ``jobs.tbl``) carries
  on; our bookkeeping lives in ``autopipec_state.json``; ``report.json`` is rewritten after every call.

Routes (`EonSettings`): ``runtime="local"`` uses the eOn server from the eon-akmc sdist and our pure-Python
client on pyeonclient (`client.py`), with the ACE potential in-process (``potential_mode="inprocess"``) or via
ext_pot + ``pace_driver.py`` and its persistent evaluator (``"ext_pot"``). ``runtime="external"`` uses the
user's own eOn (``client_path``: e.g. conda-forge's ``eonclient``; ``server_command``: e.g. ``["eon-server"]``)
through ext_pot + ``pace_driver.py``: nothing home-built is involved.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ase import Atoms

from autopipec_fw.config import AkmcSettings, GammaSettings
from autopipec_fw.eon.client.search import ClientSettings
from autopipec_fw.eon.client.worker import start_worker, stop_worker, write_client_script
from autopipec_fw.eon.config import akmc_config, write_config
from autopipec_fw.eon.handlers import (
    ClientFailureHandler,
    ExtrapolationHandler,
    RoundLimitHandler,
    StaleLockHandler,
    _log_size,
    collect_stop,
    rounds_in_log,
)
from autopipec_fw.eon.io import (
    con_text,
    read_con,
    read_dynamics,
    read_info,
    read_processes,
    search_statistics,
    states_dir,
    states_visited,
)
from autopipec_fw.eon.jobs import EonJob, kill_stray_clients
from autopipec_fw.eon.report import build_report, write_report
from autopipec_fw.eon.state import (
    CANDIDATES_DIR,
    CLIENT_SCRIPT,
    CLIENT_SETTINGS,
    DRIVER_CALLS,
    DRIVER_WRAPPER,
    REPORT_FILE,
    RESULT_FILE,
    STOP_FILE,
    RunState,
    StopRecord,
    atomic_write_text,
)
from autopipec_fw.gamma import StopPolicy

log = logging.getLogger(__name__)

Status = Literal["completed", "stopped", "failed"]


class EonRunError(RuntimeError):
    """The run folder cannot be used as asked (the message says why)."""


@dataclass
class EonRunOptions:
    """Settings not (yet) in `AkmcSettings` / `EonSettings`; defaults suit the demo.

    ``prefactor``: fixed prefactor (1/s) for every process; None = eOn computes harmonic TST prefactors (costs
    a Hessian per process). ``client_potential``: "ace" (the generation's potential) or "emt" (tests and
    benchmarks; no gamma). ``poll_seconds``: how often the monitor looks at the stop file during a round.
    ``persistent_worker``: our client's jobs run in forks of one warm worker process (no imports per search).
    ``extra_config``: more config.ini entries, ``{"Section": {"key": "value"}}``, written last.
    """

    prefactor: float | None = 1e12
    max_barrier: float = 10.0
    client_potential: Literal["ace", "emt"] = "ace"
    poll_seconds: float = 0.25
    persistent_worker: bool = True
    extra_config: dict[str, dict[str, str]] = field(default_factory=dict)
    max_dead_rounds: int = 2
    random_seed: int | None = None


@dataclass
class AkmcResult:
    """What one `run_akmc` call did. Totals (KMC steps, time, states, processes, force calls) are for the whole
    folder so far; ``candidates`` are the structures of the stop of THIS call (empty unless stopped)."""

    status: Status
    kmc_steps: int
    simulated_time: float
    states_visited: int
    processes: int
    force_calls: int
    stops: list[dict[str, Any]]
    candidates: list[Path]
    max_gamma: float | None
    report_path: Path
    message: str = ""
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [str(p) for p in self.candidates]
        d["report_path"] = str(self.report_path)
        return d


def _custodian_errors(custodian: Any) -> str:
    """The errors of the last job's corrections (what custodian gave up on), as one line."""
    try:
        corrections = custodian.run_log[-1]["corrections"]
    except (AttributeError, IndexError, KeyError):
        return ""
    errs = [str(e) for c in corrections[-3:] for e in c.get("errors", [])]
    return "; ".join(errs[-4:])


def next_run_dir(root: Path) -> Path:
    """``root/runs/0001``, ``0002``, ...: the first number not taken (the folder is not created)."""
    runs = Path(root) / "runs"
    n = 1
    if runs.is_dir():
        taken = [int(p.name) for p in runs.iterdir() if p.is_dir() and p.name.isdigit()]
        n = max(taken, default=0) + 1
    return runs / f"{n:04d}"


def _check_atoms(atoms: Atoms) -> None:
    if not isinstance(atoms, Atoms):
        raise EonRunError(f"atoms: expected ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise EonRunError("atoms: the starting structure has no atoms")
    if abs(atoms.cell.volume) < 1e-6:
        raise EonRunError("atoms: eOn needs a periodic cell with non-zero volume (set atoms.cell)")
    from ase.constraints import FixAtoms

    for c in atoms.constraints:
        if not isinstance(c, FixAtoms):
            raise EonRunError(
                f"atoms: constraint {type(c).__name__} cannot be written to pos.con (only FixAtoms)"
            )


class EonWrapper:
    """One eOn aKMC run folder and its supervision (see the module docstring)."""

    def __init__(
        self,
        run_dir: Path | str,
        generation_yaml: Path | str,
        generation_asi: Path | str,
        akmc: AkmcSettings,
        gamma: GammaSettings,
        options: EonRunOptions | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.generation_yaml = Path(generation_yaml).absolute()
        self.generation_asi = Path(generation_asi).absolute()
        self.akmc = akmc
        self.gamma = gamma
        self.options = options or EonRunOptions()
        self.eon = akmc.eon
        self.stop_file = self.run_dir / STOP_FILE
        self.candidates_dir = self.run_dir / CANDIDATES_DIR
        # the campaign's one stop rule, for whichever route evaluates the potential
        self.policy = StopPolicy.from_settings(gamma, stop_file=self.stop_file, candidates_dir=self.candidates_dir)
        self._evaluator_started = False
        self._worker: Any = None
        self._job: EonJob | None = None

    # ------------------------------------------------------------------------------------------ folder

    @property
    def started(self) -> bool:
        return (self.run_dir / "pos.con").exists()

    def kmc_steps_done(self) -> int:
        return len(read_dynamics(self.run_dir))

    def _check_potential(self) -> None:
        if self.options.client_potential == "emt" and self.eon.runtime == "local":
            return
        for p, what in ((self.generation_yaml, "generation_yaml"), (self.generation_asi, "generation_asi")):
            if not p.is_file():
                raise EonRunError(f"{what}: {p} does not exist (the B-basis .yaml and its .asi active set)")

    def setup(self, atoms: Atoms | None) -> None:
        """Create the folder and its files; ``atoms`` starts a new run, None resumes an existing one."""
        self._check_potential()
        if atoms is None:
            if not self.started:
                raise EonRunError(f"{self.run_dir}: nothing to resume (no pos.con); pass the starting atoms")
        else:
            _check_atoms(atoms)
            text = con_text(atoms)
            pos = self.run_dir / "pos.con"
            if self.started:
                if pos.read_text() != text:
                    raise EonRunError(
                        f"{self.run_dir}: already holds an eOn run with another starting structure; "
                        "pass atoms=None to resume it or use a new folder"
                    )
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(pos, text)
        self.candidates_dir.mkdir(parents=True, exist_ok=True)
        state = RunState.load(self.run_dir)
        if not state.created:
            state.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state.target_kmc_steps = self.akmc.kmc_steps
        if str(self.generation_yaml) not in state.generations:
            state.generations.append(str(self.generation_yaml))
        state.save(self.run_dir)
        self._write_client()
        self.write_config(max(self.akmc.kmc_steps - self.kmc_steps_done(), 1))

    def _client_path(self) -> str:
        if self.eon.runtime == "external":
            if not self.eon.client_path:
                raise EonRunError("akmc.eon.client_path: the external runtime needs the eonclient executable")
            found = shutil.which(self.eon.client_path)
            if found is None:
                raise EonRunError(f"akmc.eon.client_path: {self.eon.client_path!r} is not an executable")
            return str(Path(found).absolute())
        return str(self.run_dir / CLIENT_SCRIPT)

    @property
    def collect_searches(self) -> int:
        """Searches after a stop that only collect candidates: our client only (it can keep eOn from registering
        them); a user's own eonclient stops at once."""
        return self.gamma.collect_searches if self.eon.runtime == "local" else 0

    def _uses_ext_pot(self) -> bool:
        return self.eon.runtime == "external" or self.eon.potential_mode == "ext_pot"

    def _driver_options(self) -> dict[str, Any]:
        return {
            "potential": self.generation_yaml,
            "active_set": self.generation_asi,
            **self.policy.driver_options(),
            "calls_file": self.run_dir / DRIVER_CALLS,
            "run_dir": self.run_dir,
        }

    def _write_client(self) -> None:
        if self._uses_ext_pot():
            from autopipec_fw.eon.extpot.evaluator import write_driver_wrapper

            write_driver_wrapper(self.run_dir / DRIVER_WRAPPER, **self._driver_options())
        if self.eon.runtime == "local":
            settings = ClientSettings(
                run_dir=str(self.run_dir),
                potential="config" if self._uses_ext_pot() else self.options.client_potential,
                potential_yaml=str(self.generation_yaml),
                active_set=str(self.generation_asi),
                policy=self.policy.to_dict(),
                collect_after=str(self.stop_file) if self.collect_searches else None,
            )
            settings.write(self.run_dir / CLIENT_SETTINGS)
            write_client_script(self.run_dir / CLIENT_SCRIPT, self.run_dir / CLIENT_SETTINGS)

    def config(self, max_kmc_steps: int) -> configparser.ConfigParser:
        """The config.ini eOn reads (server and clients)."""
        if self._uses_ext_pot():
            potential = {"potential": "ext_pot", "ext_pot_path": str(self.run_dir / DRIVER_WRAPPER)}
        else:
            potential = {"potential": "ase" if self.options.client_potential == "ace" else "emt"}
        return akmc_config(
            self.akmc, potential=potential, client_path=self._client_path(), max_kmc_steps=max_kmc_steps,
            prefactor=self.options.prefactor, max_barrier=self.options.max_barrier,
            random_seed=self.options.random_seed, extra=self.options.extra_config,
        )

    def write_config(self, max_kmc_steps: int) -> Path:
        return write_config(self.run_dir / "config.ini", self.config(max_kmc_steps))

    def _prepare_round(self) -> None:
        self.write_config(self.akmc.kmc_steps - self.kmc_steps_done())

    # ------------------------------------------------------------------------------------------ running

    @property
    def continuous(self) -> bool:
        if self.eon.server_mode is not None:
            return self.eon.server_mode == "continuous"
        return self.eon.runtime == "local"

    def server_command(self) -> list[str]:
        if self.eon.runtime == "external" and self.eon.server_command:
            argv = list(self.eon.server_command)
        else:
            argv = [sys.executable, "-m", "eon.server"]
        return argv + (["--continuous"] if self.continuous else [])

    def _env(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if self._uses_ext_pot():
            from autopipec_fw.eon.extpot.evaluator import driver_environment

            env.update(driver_environment(**self._driver_options()))
        return env

    def _start_evaluator(self) -> None:
        if not self._uses_ext_pot():
            return
        from autopipec_fw.eon.extpot.evaluator import start_evaluator

        start_evaluator(
            self.run_dir, self.generation_yaml, self.generation_asi, calls_file=self.run_dir / DRIVER_CALLS,
            **self.policy.driver_options(),
        )
        self._evaluator_started = True

    def _start_worker(self) -> None:
        if self.eon.runtime == "local" and not self._uses_ext_pot() and self.options.persistent_worker:
            self._worker = start_worker(self.run_dir / CLIENT_SETTINGS)

    def _stop_worker(self) -> None:
        if self._worker is not None:
            stop_worker(self.run_dir, self._worker)
            self._worker = None

    def _stop_evaluator(self) -> None:
        if self._evaluator_started:
            from autopipec_fw.eon.extpot.evaluator import stop_evaluator

            stop_evaluator(self.run_dir)
            self._evaluator_started = False

    def _stop_pending(self) -> bool:
        return self.stop_file.exists() and self.stop_file.stat().st_size > 0

    def _jobs(self, state: RunState, counter: list[int], limit: RoundLimitHandler) -> Iterator[EonJob]:
        while counter[0] < self.akmc.max_rounds and limit.rounds(self.run_dir) < self.akmc.max_rounds:
            if self.kmc_steps_done() >= self.akmc.kmc_steps or self._stop_pending() or limit.reached:
                return
            counter[0] += 1
            state = RunState.load(self.run_dir)  # handlers may have written to it since
            # rounds so far in this folder: one per server process, or eOn's own count with a continuous server
            state.rounds = rounds_in_log(self.run_dir, 0) + 1 if self.continuous else state.rounds + 1
            state.save(self.run_dir)
            self._job = EonJob(self.server_command(), self._env(), state.rounds, prepare=self._prepare_round)
            yield self._job

    def run(self, atoms: Atoms | None = None) -> AkmcResult:
        """Set the folder up (or resume it) and run rounds until done, stopped or failed."""
        from custodian.custodian import Custodian, CustodianError

        self.setup(atoms)
        state = RunState.load(self.run_dir)
        t0 = time.time()
        steps_before = self.kmc_steps_done()

        # a stop that happened before and was never handed back (the caller died): hand it back now
        pending = next((s for s in state.stops if not s.handed_back), None)
        if pending is None and self._stop_pending():
            kill_stray_clients(self.run_dir)
            pending = collect_stop(
                self.run_dir,
                self.stop_file,
                self.candidates_dir,
                "extrapolation: stop file found at start",
                str(self.generation_yaml),
                self.gamma.threshold,
            )
        if pending is not None:
            return self._finish(
                "stopped", pending, "stop recorded earlier, handed back now", t0, steps_before, 0
            )

        extrap = ExtrapolationHandler(
            str(self.stop_file),
            str(self.candidates_dir),
            str(self.generation_yaml),
            self.gamma.threshold,
            log_offset=_log_size(self.run_dir),
            collect_searches=self.collect_searches,
            collect_seconds=self.gamma.collect_seconds,
        )
        limit = RoundLimitHandler(self.akmc.max_rounds, _log_size(self.run_dir))
        handlers = [
            extrap,
            StaleLockHandler(),
            ClientFailureHandler(_log_size(self.run_dir), self.options.max_dead_rounds, continuous=self.continuous),
        ]
        if self.continuous:
            handlers.insert(1, limit)
        counter = [0]
        status: Status = "completed"
        message = ""
        custodian = Custodian(
            handlers,
            self._jobs(state, counter, limit),
            max_errors=max(10, 3 * self.akmc.max_rounds),
            max_errors_per_job=6,
            polling_time_step=self.options.poll_seconds,
            monitor_freq=1,
            directory=str(self.run_dir),
        )
        restore = _raise_on_sigterm()
        try:
            self._start_evaluator()
            self._start_worker()
            custodian.run()
        except CustodianError as e:
            message = _custodian_errors(custodian) or str(getattr(e, "message", e))
            status = "stopped" if extrap.last_stop is not None else "failed"
            if limit.reached and extrap.last_stop is None:
                message = self._max_rounds_message()
        except Exception as e:  # noqa: BLE001 - any other failure is reported, not raised through the stage
            log.exception("aKMC run in %s failed", self.run_dir)
            message = f"{type(e).__name__}: {e}"
            status = "failed"
        finally:
            # also when the run itself is ended (SIGTERM from a worker pool or a batch system's time limit,
            # Ctrl-C): the server runs in its own session, so nothing else would stop it
            if self._job is not None:
                self._job.terminate(self.run_dir)
            kill_stray_clients(self.run_dir)
            self._stop_worker()
            self._stop_evaluator()
            self._keep_custodian_log()
            restore()
        stop = extrap.last_stop
        if stop is None and self._stop_pending():  # the round ended before the monitor looked
            stop = collect_stop(
                self.run_dir,
                self.stop_file,
                self.candidates_dir,
                "extrapolation: gamma above threshold (stop file)",
                str(self.generation_yaml),
                self.gamma.threshold,
            )
        if stop is not None:
            status = "stopped"
            message = stop.reason
        elif status == "completed" and self.kmc_steps_done() < self.akmc.kmc_steps:
            status = "failed"
            message = self._max_rounds_message()
        rounds = limit.rounds(self.run_dir) if self.continuous else counter[0]
        return self._finish(status, stop, message, t0, steps_before, rounds)

    @staticmethod
    def summary(run_dir: Path, status: Status, message: str = "nothing left to do") -> AkmcResult:
        """The folder's figures as a result, without running anything."""
        run_dir = Path(run_dir)
        state = RunState.load(run_dir)
        report = build_report(run_dir, state, status)
        return AkmcResult(
            status=status, kmc_steps=report["kmc_steps"], simulated_time=report["simulated_time"],
            states_visited=len(report["states_visited"]), processes=len(report["processes"]),
            force_calls=int(report["force_calls"]["total"]), stops=[], candidates=[],
            max_gamma=report["force_calls"]["max_gamma"], report_path=write_report(run_dir, report),
            message=message,
        )

    def _max_rounds_message(self) -> str:
        return (f"max_rounds ({self.akmc.max_rounds}) reached with {self.kmc_steps_done()} of "
                f"{self.akmc.kmc_steps} KMC steps")

    def _keep_custodian_log(self) -> None:
        src = self.run_dir / "custodian.json"
        if src.exists():
            d = self.run_dir / "custodian"
            d.mkdir(exist_ok=True)
            n = len(list(d.glob("run_*.json"))) + 1
            shutil.copy2(src, d / f"run_{n:03d}.json")

    def _finish(
        self, status: Status, stop: StopRecord | None, message: str, t0: float, steps_before: int, rounds: int
    ) -> AkmcResult:
        state = RunState.load(self.run_dir)
        if self.continuous:
            state.rounds = max(state.rounds, rounds_in_log(self.run_dir, 0))
        candidates: list[Path] = []
        if stop is not None:
            for s in state.stops:
                if s.index == stop.index:
                    s.handed_back = True
                    candidates = [Path(c) for c in s.candidates]
        state.runs.append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                "wall_seconds": round(time.time() - t0, 3),
                "status": status,
                "message": message,
                "rounds": rounds,
                "kmc_steps_before": steps_before,
                "kmc_steps_after": self.kmc_steps_done(),
                "generation_yaml": str(self.generation_yaml),
                "stop": stop.index if stop is not None else None,
            }
        )
        state.save(self.run_dir)
        report = build_report(self.run_dir, state, status)
        report_path = write_report(self.run_dir, report)
        max_gamma = stop.max_gamma if stop is not None else report["force_calls"]["max_gamma"]
        result = AkmcResult(
            status=status,
            kmc_steps=report["kmc_steps"],
            simulated_time=report["simulated_time"],
            states_visited=len(report["states_visited"]),
            processes=len(report["processes"]),
            force_calls=int(report["force_calls"]["total"]),
            stops=[
                {
                    "index": s["index"],
                    "reason": s["reason"],
                    "max_gamma": s["max_gamma"],
                    "kmc_steps_at_stop": s["kmc_steps_at_stop"],
                    "n_candidates": len(s["candidates"]),
                }
                for s in report["stops"]
            ],
            candidates=candidates,
            max_gamma=max_gamma,
            report_path=report_path,
            message=message,
            rounds=rounds,
        )
        with contextlib.suppress(OSError):
            atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1) + "\n")
        log.info("aKMC %s: %s (%d KMC steps, %s)", self.run_dir, status, result.kmc_steps, message)
        return result


def _raise_on_sigterm() -> Callable[[], None]:
    """While a run is supervised, SIGTERM raises SystemExit (so that its clean-up runs) instead of killing the
    process outright; only in the main thread and only over the default action. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return lambda: None

    def _exit(signum: int, frame: Any) -> None:
        log.warning("aKMC run: SIGTERM, stopping eOn")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    return lambda: signal.signal(signal.SIGTERM, previous)


def run_akmc(
    run_dir: Path,
    atoms: Atoms | None,
    generation_yaml: Path,
    generation_asi: Path,
    akmc: AkmcSettings,
    gamma: GammaSettings,
    *,
    options: EonRunOptions | None = None,
) -> AkmcResult:
    """Run or resume (``atoms=None``) eOn aKMC in ``run_dir`` with this generation's potential.

    Returns when ``akmc.kmc_steps`` KMC steps are done in the folder ("completed"), on an extrapolation stop
    ("stopped": ``candidates`` holds that stop's structures, handed back exactly once) or on a failure
    ("failed", ``message`` says why). Bad input raises `EonRunError` naming the field.
    """
    return EonWrapper(run_dir, generation_yaml, generation_asi, akmc, gamma, options).run(atoms)


# ------------------------------------------------------------------------------------------ a campaign's runs
SEGMENTS_FILE = "segments.json"
CAMPAIGN_REPORT = "report.json"


@dataclass
class Segment:
    """One eOn run folder of a campaign, computed by one potential generation from start to end.

    ``kmc_steps_before`` / ``time_before``: KMC steps and simulated time (s) of the earlier segments, carried over;
    ``started_from``: where its starting configuration came from (``{"segment", "state", "file"}``; None for the
    campaign's own starting structure)."""

    index: int
    run_dir: str
    generation: str
    kmc_steps_before: int = 0
    time_before: float = 0.0
    started_from: dict[str, Any] | None = None
    created: str = ""
    potential: str = ""  # sha256 of the potential file: the same potential again resumes this segment

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


class CampaignAkmc:
    """The eOn aKMC of one campaign (``<campaign>/akmc/``): one eOn run folder ("segment") per potential.

    eOn's tables belong to the potential that computed them (its saddle and reactant energies, hence barriers,
    rates and the 0.01 eV repeat test). Resuming the same folder after a retrain would let the KMC draw from
    processes of several generations at once. So a new generation starts a new segment, ``runs/NNNN``, from the
    current configuration of the last one (its current state's reactant), with the KMC steps and simulated time
    carried over: every rate a KMC step is drawn from comes from the generation that segment names. The same
    generation again (a resume after a crash, or a stop whose labels did not change the potential) resumes the
    segment in place. ``segments.json`` records the segments; ``report.json`` is the whole trajectory, each step
    and each process tagged with its segment and generation.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.file = self.root / SEGMENTS_FILE

    # -------------------------------------------------------------------------------------- bookkeeping
    def segments(self) -> list[Segment]:
        if self.file.exists():
            try:
                data = json.loads(self.file.read_text())
                return [Segment(**s) for s in data["segments"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise EonRunError(f"{self.file}: unreadable segment list ({e})") from None
        # a folder from before segments existed: runs/0001 alone, resumed after every retrain
        legacy = self.root / "runs" / "0001"
        if (legacy / "pos.con").exists():
            gens = RunState.load(legacy).generations
            return [Segment(1, str(legacy), gens[-1] if gens else "", created="legacy")]
        return []

    def _save(self, segments: list[Segment]) -> None:
        atomic_write_text(self.file, json.dumps({"segments": [asdict(s) for s in segments]}, indent=1) + "\n")

    @property
    def started(self) -> bool:
        return bool(self.segments())

    def current(self) -> Segment | None:
        segs = self.segments()
        return segs[-1] if segs else None

    def run_dirs(self) -> list[Path]:
        return [s.path for s in self.segments()]

    @staticmethod
    def _key(generation_yaml: Path | str, options: EonRunOptions | None) -> str:
        key = str(Path(generation_yaml).absolute())
        return key + "#emt" if options is not None and options.client_potential == "emt" else key

    @staticmethod
    def _potential_hash(generation_yaml: Path | str, options: EonRunOptions | None) -> str:
        import hashlib

        if options is not None and options.client_potential == "emt":
            return "emt"
        try:
            return hashlib.sha256(Path(generation_yaml).read_bytes()).hexdigest()[:16]
        except OSError:
            return ""

    @staticmethod
    def _same(seg: Segment, key: str, potential: str) -> bool:
        if seg.potential and potential:
            return seg.potential == potential
        return seg.generation == key

    @staticmethod
    def totals(seg: Segment) -> tuple[int, float]:
        """KMC steps and simulated time at the end of ``seg`` (its own plus those carried over)."""
        return (seg.kmc_steps_before + len(read_dynamics(seg.path)),
                seg.time_before + float(read_info(seg.path)["time_simulated"]))

    def _next_segment(self, prev: Segment, key: str) -> Segment:
        steps, t = self.totals(prev)
        state = int(read_info(prev.path)["current_state"])
        start = states_dir(prev.path) / str(state) / "reactant.con"
        if not start.is_file():  # no round finished yet: the segment's own starting structure
            start = prev.path / "pos.con"
        return Segment(
            index=prev.index + 1, run_dir=str(self.root / "runs" / f"{prev.index + 1:04d}"), generation=key,
            kmc_steps_before=steps, time_before=t,
            started_from={"segment": prev.index, "state": state, "file": str(start)},
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    # -------------------------------------------------------------------------------------- running
    def run(
        self,
        atoms: Atoms | None,
        generation_yaml: Path,
        generation_asi: Path,
        akmc: AkmcSettings,
        gamma: GammaSettings,
        *,
        options: EonRunOptions | None = None,
    ) -> AkmcResult:
        """Run the campaign's aKMC with this generation until its KMC steps are done, a stop, or a failure.

        ``atoms``: the campaign's starting structure (used only when no segment exists yet). A generation other
        than the current segment's starts the next segment; the same one resumes it. The result's totals (KMC
        steps, simulated time, force calls, states, processes) are the campaign's, over all segments."""
        segs = self.segments()
        key = self._key(generation_yaml, options)
        pot = self._potential_hash(generation_yaml, options)
        if segs and self.totals(segs[-1])[0] >= akmc.kmc_steps:
            return self._campaign_result(EonWrapper.summary(segs[-1].path, "completed"))
        if not segs:
            if atoms is None:
                raise EonRunError(f"{self.root}: no eOn run yet; pass the starting structure")
            segs = [Segment(1, str(self.root / "runs" / "0001"), key,
                            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), potential=pot)]
            self._save(segs)
        elif not self._same(segs[-1], key, pot):
            if not segs[-1].generation:  # a legacy folder without a recorded generation: adopt it
                segs[-1].generation, segs[-1].potential = key, pot
            else:
                segs.append(self._next_segment(segs[-1], key))
                segs[-1].potential = pot
                log.info("aKMC: new segment %s for %s (from %s; %d KMC steps, %.3g s carried over)",
                         segs[-1].run_dir, key, segs[-1].started_from, segs[-1].kmc_steps_before,
                         segs[-1].time_before)
            self._save(segs)
        seg = segs[-1]
        start: Atoms | None = None
        if not (seg.path / "pos.con").exists():
            start = atoms if seg.started_from is None else read_con(Path(seg.started_from["file"]))
        remaining = akmc.kmc_steps - seg.kmc_steps_before
        seg_akmc = akmc.model_copy(update={"kmc_steps": max(remaining, 1)})
        opts = options or EonRunOptions()
        if opts.random_seed is None and seg.index > 1:  # another displacement sequence in each segment
            opts = dataclasses.replace(opts, random_seed=akmc.seed + 1000 * (seg.index - 1))
        result = EonWrapper(seg.path, generation_yaml, generation_asi, seg_akmc, gamma, opts).run(start)
        return self._campaign_result(result)

    def _campaign_result(self, result: AkmcResult) -> AkmcResult:
        report = self.write_report()
        result.kmc_steps = report["kmc_steps"]
        result.simulated_time = report["simulated_time"]
        result.states_visited = report["states_visited"]
        result.processes = len(report["processes"])
        result.force_calls = report["force_calls"]
        result.report_path = self.root / CAMPAIGN_REPORT
        return result

    # -------------------------------------------------------------------------------------- reading
    def trajectory(self) -> list[dict[str, Any]]:
        """Every KMC step of the campaign: global ``step`` and ``time``, with its ``segment`` and ``generation``
        (the potential whose rates it was drawn from)."""
        out: list[dict[str, Any]] = []
        for seg in self.segments():
            for row in read_dynamics(seg.path):
                out.append({**row, "step": seg.kmc_steps_before + int(row["step"]),
                            "segment_step": int(row["step"]), "time": seg.time_before + float(row["time"]),
                            "segment": seg.index, "generation": seg.generation})
        return out

    def processes(self) -> list[dict[str, Any]]:
        out = []
        for seg in self.segments():
            for p in read_processes(seg.path) if seg.path.is_dir() else []:
                out.append({**p.to_dict(), "segment": seg.index, "generation": seg.generation})
        return out

    def write_report(self) -> dict[str, Any]:
        """``akmc/report.json``: the campaign's trajectory, processes, searches and force calls, per segment."""
        segs = self.segments()
        rows = []
        force_calls = 0
        visited = 0
        for seg in segs:
            rep_path = seg.path / REPORT_FILE
            try:
                rep = json.loads(rep_path.read_text())
            except (OSError, ValueError):
                rep = {}
            steps, t = self.totals(seg)
            n_visited = len(states_visited(read_dynamics(seg.path)))
            visited += n_visited - (1 if seg.index > 1 else 0)  # a segment starts in the last one's state
            fc = int((rep.get("force_calls") or {}).get("total") or 0)
            force_calls += fc
            rows.append({
                "segment": seg.index, "run_dir": seg.run_dir, "generation": seg.generation,
                "started_from": seg.started_from, "kmc_steps_before": seg.kmc_steps_before,
                "kmc_steps": steps - seg.kmc_steps_before, "time_before": seg.time_before,
                "simulated_time": t - seg.time_before, "states_visited": n_visited, "force_calls": fc,
                "searches": search_statistics(seg.path), "status": rep.get("status"), "stops": rep.get("stops", []),
            })
        last = self.totals(segs[-1]) if segs else (0, 0.0)
        report = {
            "root": str(self.root), "kmc_steps": last[0], "simulated_time": last[1], "states_visited": visited,
            "force_calls": force_calls, "segments": rows, "trajectory": self.trajectory(),
            "processes": self.processes(),
        }
        atomic_write_text(self.root / CAMPAIGN_REPORT, json.dumps(report, indent=1, default=str) + "\n")
        return report
