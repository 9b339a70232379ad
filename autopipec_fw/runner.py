"""Submitting a campaign, reporting on it, and running it locally (the engine of `mlip-auto run-loop`).

The local runner is an ordinary FireWorks worker pool: it launches the campaign's READY Fireworks by fw_id
(several at once where the graph allows), each exactly as `rlaunch singleshot --fw_id N` would, so everything it
does is equally possible with `qlaunch rapidfire` on SLURM. By default the launches are forked from one warm
launcher process (`autopipec_fw.launcher`: FireWorks and the stage code imported once) instead of a new `rlaunch`
process per Firework (``warm=False``). Interrupted, it is simply run again: Fireworks left RUNNING by workers that
no longer exist are rerun, finished ones are not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopipec_fw.campaign import CampaignLayout, prepare_campaign, stage_records
from autopipec_fw.config import Campaign
from autopipec_fw.launcher import LauncherClient
from autopipec_fw.processes import pid_alive

log = logging.getLogger(__name__)


def find_workflow(lp, campaign_dir: Path) -> int | None:
    """fw_id of one Firework of the campaign's workflow on this LaunchPad, or None."""
    doc = lp.workflows.find_one({"metadata.campaign_dir": str(campaign_dir)}, {"nodes": 1})
    return int(doc["nodes"][0]) if doc and doc.get("nodes") else None


def submit(campaign: Campaign, lp, base: Path | None = None) -> tuple[CampaignLayout, int, bool]:
    """Prepare the campaign folder and add its workflow, unless this LaunchPad already has it.

    Returns (layout, an fw_id of the workflow, whether it was added now)."""
    from autopipec_fw.workflows import campaign_workflow

    root = campaign.resolved_workdir(base)
    layout = prepare_campaign(campaign, root)
    existing = find_workflow(lp, layout.root)
    if existing is not None:
        log.info("campaign %s is already on the LaunchPad (workflow of fw %d)", campaign.name, existing)
        return layout, existing, False
    wf = campaign_workflow(layout.campaign(), layout.root)
    id_map = lp.add_wf(wf)
    return layout, min(id_map.values()), True


# ---------------------------------------------------------------------------------------------- status
@dataclass
class CampaignStatus:
    name: str
    campaign_dir: str
    state: str
    fireworks: Counter = field(default_factory=Counter)
    running: list[str] = field(default_factory=list)
    iteration: int = 0
    kmc_steps: int = 0
    kmc_steps_target: int | None = None
    simulated_time: float | None = None
    oracle_calls: int = 0
    generations: list[dict[str, Any]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)
    loop_end: str | None = None
    package: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["fireworks"] = dict(self.fireworks)
        return d


def _figures_of(lp, fw_ids: list[int]) -> list[tuple[dict, dict]]:
    """(firework doc, stored_data of its last launch) for the finished Fireworks."""
    out = []
    for fw in lp.fireworks.find({"fw_id": {"$in": fw_ids}}, {"fw_id": 1, "name": 1, "state": 1, "spec.stage": 1,
                                                            "launches": 1}):
        stored: dict = {}
        if fw.get("launches"):
            launch = lp.launches.find_one({"launch_id": fw["launches"][-1]}, {"action.stored_data": 1})
            stored = ((launch or {}).get("action") or {}).get("stored_data") or {}
        out.append((fw, stored))
    return out


def campaign_status(lp, fw_id: int) -> CampaignStatus:
    """Everything `mlip-auto status` shows, from the LaunchPad alone (small figures in stored_data)."""
    wf = lp.workflows.find_one({"nodes": fw_id})
    meta = wf.get("metadata", {})
    st = CampaignStatus(name=meta.get("campaign", wf["name"]), campaign_dir=meta.get("campaign_dir", "?"),
                        state=wf["state"])
    for fw, stored in sorted(_figures_of(lp, list(wf["nodes"])), key=lambda t: t[0]["fw_id"]):
        st.fireworks[fw["state"]] += 1
        stage = (fw.get("spec") or {}).get("stage")
        if fw["state"] == "RUNNING":
            st.running.append(fw["name"])
        if fw["state"] == "FIZZLED":
            exc = (stored.get("_exception") or {}).get("_stacktrace", "")
            st.errors.append(f"{fw['name']}: {exc.strip().splitlines()[-1] if exc else 'failed'}")
        if fw["state"] != "COMPLETED":
            continue
        if stage == "oracle":
            st.oracle_calls += int(stored.get("labelled", 0))
        elif stage == "fit":
            m = stored.get("metrics") or {}
            st.generations.append({"generation": stored.get("generation"),
                                   "training_set_size": stored.get("training_set_size"), **m})
        elif stage == "akmc":
            st.iteration = max(st.iteration, int(stored.get("iteration", 0)))
            st.kmc_steps = max(st.kmc_steps, int(stored.get("kmc_steps") or 0))
            st.kmc_steps_target = stored.get("kmc_steps_target")
            st.simulated_time = stored.get("simulated_time")
            if stored.get("status") == "stopped":
                st.stops.append({"iteration": stored.get("iteration"), "max_gamma": stored.get("max_gamma"),
                                 "n_selected": stored.get("n_selected")})
            if stored.get("loop_end"):
                st.loop_end = stored["loop_end"]
        elif stage == "package":
            st.package = stored.get("package")
    st.generations.sort(key=lambda g: g.get("generation") or 0)
    return st


def all_campaigns(lp) -> list[int]:
    return [int(d["nodes"][0]) for d in lp.workflows.find({"metadata.autopipec_fw": True}, {"nodes": 1})
            if d.get("nodes")]


# ---------------------------------------------------------------------------------------------- runner
@dataclass
class Worker:
    """One running launch: an `rlaunch` process (``proc``) or a child of the warm launcher (``launcher``); either
    way ``pid`` leads the launch's own process group."""

    fw_id: int
    name: str
    pid: int
    log_path: Path
    proc: subprocess.Popen | None = None
    launcher: LauncherClient | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.launcher is not None and self.launcher.exit_code(self.fw_id) is not None:
            return False
        return pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


@dataclass
class LocalRunner:
    """Runs one campaign's Fireworks with up to `workers` launches at once (warm launcher, or rlaunch processes)."""

    lp: Any
    launchpad_file: Path
    layout: CampaignLayout
    fw_id: int
    workers: int = 2
    poll: float = 1.0
    fworker_file: Path | None = None
    on_tick: Callable[[LocalRunner], None] | None = None
    warm: bool = True
    _live: list[Worker] = field(default_factory=list)
    _launcher: LauncherClient | None = None

    def wf_doc(self) -> dict:
        return self.lp.workflows.find_one({"nodes": self.fw_id})

    def fw_states(self) -> dict[int, tuple[str, str]]:
        wf = self.wf_doc()
        return {int(d["fw_id"]): (d["state"], d["name"])
                for d in self.lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"fw_id": 1, "state": 1, "name": 1})}

    def recover(self) -> list[int]:
        """Rerun Fireworks left RUNNING (their workers are gone: this runner owns the campaign's workers) or
        FIZZLED by an interrupted earlier run. Finished Fireworks are never rerun."""
        rerun = []
        for fid, (state, name) in self.fw_states().items():
            if state in ("RUNNING", "RESERVED", "FIZZLED"):
                log.warning("rerunning %s (fw %d, was %s)", name, fid, state)
                self.lp.rerun_fw(fid)
                rerun.append(fid)
        return rerun

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        cfg = self.launchpad_file.parent / "FW_config.yaml"
        if cfg.exists():
            env["FW_CONFIG_FILE"] = str(cfg)
        return env

    def _warm_launcher(self) -> LauncherClient | None:
        if not self.warm:
            return None
        if self._launcher is None or not self._launcher.alive():
            log_file = self.layout.root / "launches" / "launcher.log"
            self._launcher = LauncherClient(Path(self.launchpad_file).resolve(),
                                            Path(self.fworker_file).resolve() if self.fworker_file else None,
                                            self._env(), log_file)
        return self._launcher

    def _spawn(self, fid: int, name: str) -> Worker:
        launches = self.layout.root / "launches"
        launches.mkdir(parents=True, exist_ok=True)
        log_path = launches / f"fw_{fid}.log"
        launcher = self._warm_launcher()
        if launcher is not None:
            try:
                pid = launcher.run(fid, launches.resolve(), log_path.resolve())
                log.info("started %s (fw %d) in warm launch pid %d", name, fid, pid)
                return Worker(fid, name, pid, log_path, launcher=launcher)
            except (RuntimeError, ValueError, OSError) as e:
                log.warning("warm launcher unusable (%s); starting rlaunch processes instead", e)
                self.warm = False
                self._close_launcher()
        argv = [str(Path(sys.executable).parent / "rlaunch"), "-l", str(self.launchpad_file)]
        if self.fworker_file is not None:
            argv += ["-w", str(self.fworker_file)]
        argv += ["singleshot", "--fw_id", str(fid)]
        env = self._env()
        with open(log_path, "ab") as f:
            proc = subprocess.Popen(argv, cwd=launches, stdout=f, stderr=subprocess.STDOUT,  # noqa: S603
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.info("started %s (fw %d) in worker pid %d", name, fid, proc.pid)
        return Worker(fid, name, proc.pid, log_path, proc=proc)

    def step(self) -> str:
        """One scheduling round; returns the workflow state."""
        self._live = [w for w in self._live if w.alive()]
        states = self.fw_states()
        busy = {w.fw_id for w in self._live}
        ready = sorted(fid for fid, (s, _) in states.items() if s == "READY" and fid not in busy)
        for fid in ready[: max(0, self.workers - len(self._live))]:
            self._live.append(self._spawn(fid, states[fid][1]))
        return self.wf_doc()["state"]

    def run(self) -> str:
        """Until the workflow is COMPLETED, or FIZZLED/DEFUSED with nothing left to run."""
        try:
            while True:
                state = self.step()
                if self.on_tick:
                    self.on_tick(self)
                if not self._live and state in ("COMPLETED", "FIZZLED", "DEFUSED", "PAUSED"):
                    return state
                if not self._live and state not in ("RUNNING", "READY", "RESERVED"):
                    # nothing running and nothing ready: e.g. a FIZZLED Firework blocks its children
                    states = Counter(s for s, _ in self.fw_states().values())
                    if states.get("READY", 0) == 0 and states.get("RUNNING", 0) == 0:
                        return "FIZZLED" if states.get("FIZZLED") else state
                if self._launcher is not None and self._live:
                    self._launcher.wait_for_exit(self.poll)  # the next Firework starts as soon as one ends
                else:
                    time.sleep(self.poll)
        finally:
            self.stop_workers()

    def stop_workers(self) -> None:
        for w in self._live:
            if w.alive():
                log.warning("stopping worker for %s (pid %d)", w.name, w.pid)
                w.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for w in self._live:
            while w.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if w.alive():
                w.signal(signal.SIGKILL)
            if w.proc is not None:
                w.proc.wait()
        self._live = []
        self._close_launcher()

    def _close_launcher(self) -> None:
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None

    def progress(self) -> dict[str, Any]:
        """Live figures for the progress display, from the campaign folder's stage records."""
        rec = stage_records(self.layout)
        akmc = [r for k, r in sorted(rec.items()) if k.startswith("akmc_")]
        oracle = sum(int(r.get("labelled", 0)) for k, r in rec.items() if k.startswith("oracle_"))
        fits = [r for k, r in rec.items() if k.startswith("fit_")]
        last = akmc[-1] if akmc else {}
        return {
            "running": [w.name.split(": ", 1)[-1] for w in self._live],
            "iteration": last.get("iteration", 0), "kmc_steps": last.get("kmc_steps", 0),
            "kmc_target": self.layout.campaign().akmc.kmc_steps, "oracle_calls": oracle,
            "generations": len(fits), "stops": sum(1 for r in akmc if r.get("status") == "stopped"),
        }
