"""Submitting a campaign, reporting on it, and running it locally (the engine of `mlip-auto run-loop`).

The local runner is an ordinary FireWorks worker pool: it launches the campaign's READY Fireworks by fw_id
(several at once where the graph allows), each exactly as `rlaunch singleshot --fw_id N` would, so everything it
does is equally possible with `qlaunch rapidfire` on SLURM. By default the launches are forked from one warm
launcher process (`autopipec_fw.launcher`: FireWorks and the stage code imported once) instead of a new `rlaunch`
process per Firework (``warm=False``). Interrupted, it is simply run again: Fireworks left RUNNING by workers that
provably no longer exist are rerun, finished ones are not.

One runner per campaign: `campaign_lock` (an flock on `<campaign>/.run-loop.lock` naming its holder) makes a
second `run-loop` on the same campaign refuse at once, naming the first (pid, host, since when). Beside other
workers (`rlaunch`, `qlaunch` on the same LaunchPad) the runner reruns a RUNNING Firework only when its launch is
provably dead: a launch this campaign's runner started (recorded in `launches/run-loop-launches.json`: pid,
process start time, host, launch id) whose process is gone, or any launch that FireWorks' lost-run detection
finds (no ping for `lost_after` seconds; default FireWorks' RUN_EXPIRATION_SECS, 4 h, while workers ping every
PING_TIME_SECS, 1 h). Live launches of other workers are waited for. `submit` holds `<campaign>/.submit.lock`, so
two submits of one campaign, even at the same moment, make one workflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopipec_fw.campaign import CampaignLayout, prepare_campaign, stage_records
from autopipec_fw.config import Campaign, ConfigError
from autopipec_fw.launcher import LauncherClient
from autopipec_fw.launchpad.locks import Holder, HolderLock, LockBusy, flocked
from autopipec_fw.processes import create_time, is_same_process, pid_alive

log = logging.getLogger(__name__)


def find_workflow(lp, campaign_dir: Path) -> int | None:
    """fw_id of one Firework of the campaign's workflow on this LaunchPad, or None."""
    doc = lp.workflows.find_one({"metadata.campaign_dir": str(campaign_dir)}, {"nodes": 1})
    return int(doc["nodes"][0]) if doc and doc.get("nodes") else None


RUN_LOCK = ".run-loop.lock"
SUBMIT_LOCK = ".submit.lock"


class CampaignBusy(LockBusy):
    """Another run-loop runs this campaign."""


def campaign_lock(campaign: Campaign, base: Path | None = None, command: str | None = None) -> HolderLock:
    """Hold the campaign for this process (one runner per campaign); raise CampaignBusy naming the holder.

    The lock is an flock, so a runner that died (kill -9, a lost node) leaves nothing to clean up: the next one
    takes over and logs whom it took over from."""
    root = campaign.resolved_workdir(base)
    root.mkdir(parents=True, exist_ok=True)
    lock = HolderLock(root / RUN_LOCK, f"campaign '{campaign.name}' ({root})")
    try:
        lock.acquire(Holder.me(command=command, campaign=campaign.name))
    except LockBusy as e:
        h = e.holder
        who = h.describe() if h else "another process"
        raise CampaignBusy(f"campaign '{campaign.name}' ({root}) is already being run by {who}; wait for it to "
                           f"end, or stop it (kill {h.pid if h else '<pid>'}) and run this again", h) from None
    if lock.previous is not None and lock.previous.pid != os.getpid():
        log.info("took over campaign %s from %s, which has ended", campaign.name, lock.previous.describe())
    return lock


def submit(campaign: Campaign, lp, base: Path | None = None) -> tuple[CampaignLayout, int, bool]:
    """Prepare the campaign folder and add its workflow, unless this LaunchPad already has it.

    One submit at a time per campaign folder (`<campaign>/.submit.lock`), so submitting twice, even at the
    same moment from two processes, adds one workflow. Label-neutral changes of the settings amend the campaign
    (`prepare_campaign`); when they take a finished workflow further (more KMC steps, a higher iteration cap) the
    missing Fireworks are appended (`extend_workflow`). A workflow whose folder was deleted (or made anew) is
    replaced; a folder with results whose workflow this LaunchPad no longer has is refused with what to do.
    Returns (layout, an fw_id of the workflow, whether it was added now)."""
    from autopipec_fw.workflows import campaign_workflow

    root = campaign.resolved_workdir(base)
    root.mkdir(parents=True, exist_ok=True)
    with flocked(root / SUBMIT_LOCK, f"submitting campaign '{campaign.name}' ({root})"):
        fresh = not (root / "campaign.yaml").exists()
        layout = prepare_campaign(campaign, root)
        marker = _read_marker(layout)
        existing = find_workflow(lp, layout.root)
        if existing is not None:
            uid = (lp.workflows.find_one({"nodes": existing}, {"metadata": 1}) or {}).get("metadata", {}).get(
                "campaign_uid")
            # made anew: stale once the workflow has done anything (its results were in the deleted folder)
            stale = (fresh and _has_progress(lp, existing)) or (
                marker.get("uid") is not None and uid is not None and marker["uid"] != uid)
            if not stale:
                if not marker:
                    _write_marker(layout, existing, uid)
                extend_workflow(lp, layout, existing)
                log.info("campaign %s is already on the LaunchPad (workflow of fw %d)", campaign.name, existing)
                return layout, existing, False
            _replace_stale(lp, layout, existing)
        elif _has_results(layout):
            raise ConfigError(
                f"{layout.root}: holds results of campaign '{campaign.name}' ({_results_summary(layout)}) but this "
                "LaunchPad has no workflow for it (deleted from the LaunchPad, or submitted to another one); a new "
                "workflow cannot take over its results. Run it on the LaunchPad that holds its workflow, or start "
                f"anew: move {layout.root} away (or give the campaign another name or workdir) and submit again"
            )
        import uuid

        wf = campaign_workflow(layout.campaign(), layout.root)
        uid = uuid.uuid4().hex
        wf.metadata["campaign_uid"] = uid
        id_map = lp.add_wf(wf)
        fw_id = min(id_map.values())
        _write_marker(layout, fw_id, uid)
        return layout, fw_id, True


WORKFLOW_MARKER = "workflow.json"


def _read_marker(layout: CampaignLayout) -> dict[str, Any]:
    try:
        data = json.loads((layout.root / WORKFLOW_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(layout: CampaignLayout, fw_id: int, uid: str | None) -> None:
    """Which workflow this folder belongs to (its uid is in the workflow's metadata too)."""
    path = layout.root / WORKFLOW_MARKER
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fw_id": fw_id, "uid": uid, "submitted": time.time()}, indent=1))
    os.replace(tmp, path)


def _has_progress(lp, fw_id: int) -> bool:
    wf = lp.workflows.find_one({"nodes": fw_id}, {"nodes": 1}) or {}
    return lp.fireworks.count_documents({"fw_id": {"$in": wf.get("nodes") or []},
                                         "state": {"$nin": ["READY", "WAITING"]}}) > 0


def _has_results(layout: CampaignLayout) -> bool:
    return any(layout.stages.glob("*.json")) or layout.dataset.exists() or any(layout.generations.glob("gen_*"))


def _results_summary(layout: CampaignLayout) -> str:
    gens = len(list(layout.generations.glob("gen_[0-9]*")))
    return f"{len(list(layout.stages.glob('*.json')))} stage records, {gens} generation(s)"


def _replace_stale(lp, layout: CampaignLayout, fw_id: int) -> None:
    """The LaunchPad's workflow for this folder belongs to a folder that no longer exists (deleted or made anew):
    delete it, unless a worker is still running one of its Fireworks."""
    wf = lp.workflows.find_one({"nodes": fw_id}, {"nodes": 1, "name": 1})
    running = [int(d["fw_id"]) for d in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}, "state": "RUNNING"},
                                                          {"fw_id": 1})]
    if running:
        raise ConfigError(
            f"{layout.root}: the LaunchPad's workflow for this folder (fw {fw_id}) belongs to a folder that was "
            f"deleted or made anew, and Fireworks {running} of it are RUNNING; stop their workers, delete it "
            f"(lpad delete_wflows -i {fw_id}) and submit again")
    log.warning("the LaunchPad's workflow for %s (fw %d) belongs to a folder that was deleted or made anew; it is "
                "deleted and the campaign submitted afresh", layout.root, fw_id)
    lp.delete_wf(fw_id, delete_launch_dirs=False)


def extend_workflow(lp, layout: CampaignLayout, fw_id: int) -> list[int]:
    """A finished workflow whose campaign was amended to go further gets the Fireworks that take it there.

    The last aKMC record says why the loop ended; when the current settings lift that end (more `akmc.kmc_steps`
    than it completed, a higher `akmc.max_iterations` than the cap it hit, more `akmc.max_rounds` than it ran out
    of), aKMC resumes (after labelling and refitting the stop it had selected, for the iteration cap), then
    validate and package run again. Returns the new fw_ids (none when nothing is to be done)."""
    from fireworks import Workflow

    from autopipec_fw.firetasks import AkmcTask, PackageTask, ValidateTask
    from autopipec_fw.workflows import _fw, loop_detour

    wf = lp.workflows.find_one({"nodes": fw_id}, {"state": 1, "nodes": 1, "links": 1})
    if wf is None or wf.get("state") != "COMPLETED":
        return []  # a workflow under way reads the amended settings as it goes
    akmc = [r for k, r in sorted(stage_records(layout).items()) if k.startswith("akmc_")]
    if not akmc:
        return []
    last = max(akmc, key=lambda r: int(r.get("iteration", 0)))
    campaign = layout.campaign()
    target, steps, it = campaign.akmc.kmc_steps, int(last.get("kmc_steps") or 0), int(last["iteration"])
    cdir = str(layout.root)
    if last.get("status") == "stopped" and it + 1 < campaign.akmc.max_iterations:
        loop = loop_detour(campaign, cdir, it, last.get("selected_file"), int(last.get("n_selected") or 0),
                           last.get("generation"))
        fws, tail = list(loop.fws), loop.leaf_fw_ids
        why = f"akmc.max_iterations {campaign.akmc.max_iterations} lifts the iteration cap reached at stop {it}"
    elif last.get("status") == "completed" and steps < target:
        fws = [_fw(AkmcTask(campaign_dir=cdir, iteration=it), "akmc", campaign, f"aKMC #{it} (extended)")]
        tail, why = [fws[0].fw_id], f"akmc.kmc_steps {target} > the {steps} completed"
    elif last.get("status") == "incomplete" and steps < target and \
            campaign.akmc.max_rounds > int(last.get("max_rounds") or campaign.akmc.max_rounds):
        fws = [_fw(AkmcTask(campaign_dir=cdir, iteration=it), "akmc", campaign, f"aKMC #{it} (more rounds)")]
        tail, why = [fws[0].fw_id], f"akmc.max_rounds {campaign.akmc.max_rounds} > the {last.get('max_rounds')} run"
    else:
        return []
    parents = [f for f in fws if f.fw_id in set(tail)]
    val = _fw(ValidateTask(campaign_dir=cdir), "validate", campaign, "validate (extended)", parents=parents)
    pkg = _fw(PackageTask(campaign_dir=cdir), "package", campaign, "package (extended)", parents=[val])
    links = wf.get("links") or {}
    leaves = [int(n) for n in wf["nodes"] if not links.get(str(n))]
    new = Workflow([*fws, val, pkg], name=f"{campaign.name} extended")
    lp.append_wf(new, leaves, pull_spec_mods=False)
    after = (lp.workflows.find_one({"nodes": fw_id}, {"nodes": 1}) or {}).get("nodes") or []
    added = sorted(int(n) for n in set(after) - set(wf["nodes"]))
    log.warning("campaign %s extended (%s): Fireworks %s appended", campaign.name, why, added)
    return added


# ---------------------------------------------------------------------------------------------- status
@dataclass
class CampaignStatus:
    """What `mlip-auto status` shows (and `--json` prints), from the LaunchPad alone.

    ``generations``: one dict per fitted generation (``generation``, ``structures``, train/test energy RMSE in
    meV/atom and force RMSE in meV/Å, ``seconds``); ``stops``: one per extrapolation stop (``iteration``,
    ``max_gamma``, ``n_candidates``, ``n_selected``, ``n_labelled``, ``not_labelled`` and why); ``failures``: one
    per FIZZLED Firework (``firework``, ``fw_id``, ``message``, the whole ``error`` text, ``launch_dir``)."""

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
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """One line per failure: '<firework>: <message>'."""
        return [f"{f['firework']}: {f['message']}" for f in self.failures]

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["fireworks"] = dict(self.fireworks)
        return d


def _figures_of(lp, fw_ids: list[int]) -> list[tuple[dict, dict, dict]]:
    """(firework doc, stored_data of its last launch, that launch's doc without action) for the Fireworks."""
    out = []
    for fw in lp.fireworks.find({"fw_id": {"$in": fw_ids}}, {"fw_id": 1, "name": 1, "state": 1, "spec.stage": 1,
                                                            "spec._tasks": 1, "launches": 1}):
        stored: dict = {}
        launch: dict = {}
        if fw.get("launches"):
            launch = lp.launches.find_one({"launch_id": fw["launches"][-1]},
                                          {"action.stored_data": 1, "launch_dir": 1, "host": 1}) or {}
            stored = (launch.get("action") or {}).get("stored_data") or {}
        out.append((fw, stored, launch))
    return out


def error_message(stacktrace: str) -> tuple[str, str]:
    """(the exception's first line, its whole text) from a Python traceback as FireWorks stores it: what follows
    the last frame, with the exception's module path dropped (``OracleConfigError: ...``)."""
    lines = stacktrace.strip().splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=-1)
    rest = lines[last_frame + 1:]
    while rest and rest[0].startswith("    "):  # the frame's source line and its ^^^ markers
        rest = rest[1:]
    text = "\n".join(rest).strip() or (lines[-1] if lines else "failed")
    first = text.splitlines()[0]
    head, sep, tail = first.partition(": ")
    if sep and "." in head and " " not in head:
        first = f"{head.rsplit('.', 1)[-1]}: {tail}"
    return first, text


def _stage_task(fw: dict) -> dict:
    tasks = (fw.get("spec") or {}).get("_tasks") or []
    return tasks[0] if tasks and isinstance(tasks[0], dict) else {}


def campaign_status(lp, fw_id: int) -> CampaignStatus:
    """Everything `mlip-auto status` shows, from the LaunchPad alone (small figures in stored_data)."""
    wf = lp.workflows.find_one({"nodes": fw_id})
    meta = wf.get("metadata", {})
    st = CampaignStatus(name=meta.get("campaign", wf["name"]), campaign_dir=meta.get("campaign_dir", "?"),
                        state=wf["state"])
    labelled: Counter = Counter()  # structures_file -> structures labelled by COMPLETED oracle Fireworks
    pending: Counter = Counter()  # structures_file -> oracle Fireworks not (yet) COMPLETED
    for fw, stored, launch in sorted(_figures_of(lp, list(wf["nodes"])), key=lambda t: t[0]["fw_id"]):
        st.fireworks[fw["state"]] += 1
        stage = (fw.get("spec") or {}).get("stage")
        if fw["state"] == "RUNNING":
            st.running.append(fw["name"])
        if fw["state"] == "FIZZLED":
            exc = (stored.get("_exception") or {}).get("_stacktrace", "")
            message, text = error_message(exc) if exc else ("failed (no error recorded)", "")
            st.failures.append({"firework": fw["name"], "fw_id": int(fw["fw_id"]), "stage": stage,
                                "message": message, "error": text, "launch_dir": launch.get("launch_dir"),
                                "host": launch.get("host")})
        if stage == "oracle" and fw["state"] != "COMPLETED":
            pending[_stage_task(fw).get("structures_file")] += 1
        if fw["state"] != "COMPLETED":
            continue
        if stage == "oracle":
            st.oracle_calls += int(stored.get("labelled", 0))
            labelled[stored.get("structures_file") or _stage_task(fw).get("structures_file")] += \
                int(stored.get("labelled", 0))
        elif stage == "fit":
            m = stored.get("metrics") or {}
            st.generations.append({
                "generation": stored.get("generation"), "structures": stored.get("training_set_size"),
                "train_energy_rmse": m.get("train_energy_rmse"), "train_force_rmse": m.get("train_force_rmse"),
                "test_energy_rmse": m.get("test_energy_rmse"), "test_force_rmse": m.get("test_force_rmse"),
                "seconds": stored.get("seconds", m.get("seconds")), "reused_from": m.get("reused_from"),
                "upfit": m.get("upfit"),
            })
        elif stage == "akmc":
            if int(stored.get("iteration", 0)) >= st.iteration:  # the latest aKMC run's figures (fw_ids need not
                st.iteration = int(stored.get("iteration", 0))  # follow the loop's order)
                st.kmc_steps_target = stored.get("kmc_steps_target")
                st.simulated_time = stored.get("simulated_time")
            st.kmc_steps = max(st.kmc_steps, int(stored.get("kmc_steps") or 0))
            if stored.get("status") == "stopped":
                st.stops.append({"iteration": stored.get("iteration"), "max_gamma": stored.get("max_gamma"),
                                 "n_candidates": stored.get("n_candidates"), "n_selected": stored.get("n_selected"),
                                 "selected_file": stored.get("selected_file"), "loop_end": stored.get("loop_end"),
                                 "kmc_steps": stored.get("kmc_steps")})
            if stored.get("loop_end"):
                st.loop_end = stored["loop_end"]
        elif stage == "package":
            st.package = stored.get("package")
    for s in st.stops:
        n_sel = int(s.get("n_selected") or 0)
        s["n_labelled"] = min(n_sel, labelled.get(s.get("selected_file"), 0)) if s.get("selected_file") else 0
        s["not_labelled"] = n_sel - s["n_labelled"]
        if not s["not_labelled"]:
            s["why_not_labelled"] = None
        elif s.get("loop_end"):
            s["why_not_labelled"] = f"loop ended: {s['loop_end']}"
        elif pending.get(s.get("selected_file")):
            s["why_not_labelled"] = "oracle not finished"
        else:
            s["why_not_labelled"] = "not labelled"
    st.stops.sort(key=lambda s: s.get("iteration") or 0)
    st.generations.sort(key=lambda g: g.get("generation") or 0)
    st.stops.sort(key=lambda s: s.get("iteration") or 0)
    return st


def all_campaigns(lp) -> list[int]:
    return [int(d["nodes"][0]) for d in lp.workflows.find({"metadata.autopipec_fw": True}, {"nodes": 1})
            if d.get("nodes")]


# ---------------------------------------------------------------------------------------------- runner
LAUNCH_RECORDS = "run-loop-launches.json"


def run_expiration_secs(workspace: Path | None = None) -> float:
    """FireWorks' lost-run timeout: RUN_EXPIRATION_SECS of the workspace's FW_config.yaml, else FireWorks' own
    (4 h, four missed pings of PING_TIME_SECS = 1 h)."""
    from fireworks.fw_config import RUN_EXPIRATION_SECS

    if workspace is not None:
        import yaml

        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            cfg = yaml.safe_load((Path(workspace) / "FW_config.yaml").read_text()) or {}
            if isinstance(cfg, dict) and cfg.get("RUN_EXPIRATION_SECS") is not None:
                return float(cfg["RUN_EXPIRATION_SECS"])
    return float(RUN_EXPIRATION_SECS)


def _last_ping_age(launch_doc: dict) -> float | None:
    """Seconds since the launch's last ping (its RUNNING state's updated_on), or None if unknown."""
    import datetime

    for entry in reversed(launch_doc.get("state_history") or []):
        if entry.get("state") != "RUNNING":
            continue
        stamp = entry.get("updated_on") or entry.get("created_on")
        try:
            t = stamp if isinstance(stamp, datetime.datetime) else datetime.datetime.fromisoformat(str(stamp))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.UTC)  # FireWorks stores UTC
        return (datetime.datetime.now(datetime.UTC) - t).total_seconds()
    return None


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
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.launcher is not None and self.launcher.exit_code(self.fw_id) is not None:
            return False
        return pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def exit_code(self) -> int | None:
        """The launch process's exit code once it has ended (negative: killed by that signal), else None."""
        if self.proc is not None:
            return self.proc.poll()
        if self.launcher is not None:
            return self.launcher.exit_code(self.fw_id)
        return None


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
    health: Callable[[], None] | None = None  # raises when the LaunchPad is gone (checked every round)
    warm: bool = True
    lost_after: float | None = None  # seconds without a ping before another worker's launch counts as lost
    lost_check_every: float = 60.0  # how often a running runner looks for lost launches of other workers
    _live: list[Worker] = field(default_factory=list)
    _launcher: LauncherClient | None = None
    max_reruns: int = 1  # a launch of ours that dies mid-run is rerun this often, then FIZZLED
    _waiting_for: set[int] = field(default_factory=set)
    _reruns: dict[int, int] = field(default_factory=dict)
    _last_lost_check: float = field(default_factory=time.monotonic)
    _started: float = field(default_factory=time.monotonic)
    _campaign: Campaign | None = None

    def wf_doc(self) -> dict:
        return self.lp.workflows.find_one({"nodes": self.fw_id})

    def fw_states(self) -> dict[int, tuple[str, str]]:
        wf = self.wf_doc()
        return {int(d["fw_id"]): (d["state"], d["name"])
                for d in self.lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"fw_id": 1, "state": 1, "name": 1})}

    # ---- which launches are ours, and which are provably dead
    @property
    def records_file(self) -> Path:
        return self.layout.root / "launches" / LAUNCH_RECORDS

    def _records(self) -> dict[str, dict]:
        try:
            data = json.loads(self.records_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            log.warning("%s is unreadable (%s); this campaign's earlier launches count as other workers'",
                        self.records_file, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_records(self, records: dict[str, dict]) -> None:
        self.records_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.records_file.with_name(f".{self.records_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, self.records_file)

    def _launch_ids(self, fid: int) -> tuple[list[int], list[int]]:
        doc = self.lp.fireworks.find_one({"fw_id": fid}, {"launches": 1, "archived_launches": 1}) or {}
        return list(doc.get("launches") or []), list(doc.get("archived_launches") or [])

    def _record_spawn(self, fid: int, pid: int, known: list[int]) -> None:
        records = self._records()
        records[str(fid)] = {"pid": pid, "started": create_time(pid), "host": socket.gethostname(),
                             "runner_pid": os.getpid(), "spawned_at": time.time(), "known_launches": known,
                             "launch_dir": str((self.layout.root / "launches").resolve()), "launch_id": None}
        self._save_records(records)

    def _identify_launches(self) -> None:
        """Fill in the launch id of each live worker's launch once FireWorks has made it."""
        records = self._records()
        changed = False
        for w in self._live:
            rec = records.get(str(w.fw_id))
            if rec is None or rec.get("launch_id") is not None or rec.get("pid") != w.pid:
                continue
            launches, _ = self._launch_ids(w.fw_id)
            new = [lid for lid in launches if lid not in set(rec.get("known_launches") or [])]
            if not new:
                continue
            doc = self.lp.launches.find_one({"launch_id": new[-1]}, {"host": 1, "launch_dir": 1}) or {}
            if doc.get("host") == rec["host"] and doc.get("launch_dir") == rec["launch_dir"]:
                rec["launch_id"] = int(new[-1])
                changed = True
        if changed:
            self._save_records(records)

    def _ended(self, ended: list[Worker]) -> None:
        """Workers that exited. One whose Firework is still RUNNING died mid-launch (killed, crashed): its launch
        is provably dead, so the Firework is rerun, up to ``max_reruns`` times per runner; after that its launch
        is marked FIZZLED, so the workflow says so (the next run-loop reruns it once more)."""
        records = self._records()
        for w in ended:
            if w.exit_code() == 0:
                continue  # its launch ended as FireWorks ends launches (or another worker had the Firework)
            doc = self.lp.fireworks.find_one({"fw_id": w.fw_id}, {"state": 1, "launches": 1}) or {}
            if doc.get("state") != "RUNNING" or not doc.get("launches"):
                continue
            dead, why = self.launch_verdict(w.fw_id, records, lost=set())
            if not dead:
                continue
            launch_id = int(doc["launches"][-1])
            if self._reruns.get(w.fw_id, 0) < self.max_reruns:
                self._reruns[w.fw_id] = self._reruns.get(w.fw_id, 0) + 1
                log.warning("%s (fw %d): %s before finishing; rerunning it (log: %s)", w.name, w.fw_id, why,
                            w.log_path)
                self.lp.rerun_fw(w.fw_id)
            else:
                log.error("%s (fw %d): %s before finishing, again; its launch %d is marked FIZZLED (log: %s)",
                          w.name, w.fw_id, why, launch_id, w.log_path)
                self.lp.mark_fizzled(launch_id)
        self._forget([w.fw_id for w in ended])

    def _forget(self, fids: list[int]) -> None:
        records = self._records()
        if any(str(f) in records for f in fids):
            for f in fids:
                records.pop(str(f), None)
            self._save_records(records)

    def _lost_fw_ids(self, fids: list[int]) -> set[int]:
        """FireWorks' lost-run detection over these Fireworks: RUNNING launches without a ping for
        ``lost_after`` seconds (nothing is changed in the database here)."""
        if not fids:
            return set()
        _, lost, _ = self.lp.detect_lostruns(expiration_secs=self.lost_after_seconds(),
                                             query={"fw_id": {"$in": fids}})
        return {int(f) for f in lost}

    def lost_after_seconds(self) -> float:
        if self.lost_after is not None:
            return float(self.lost_after)
        return run_expiration_secs(self.launchpad_file.parent)

    def launch_verdict(self, fid: int, records: dict[str, dict] | None = None,
                       lost: set[int] | None = None) -> tuple[bool, str]:
        """(provably dead?, why) for the current launch of RUNNING Firework ``fid``."""
        records = self._records() if records is None else records
        launches, _ = self._launch_ids(fid)
        if not launches:
            return True, "it is RUNNING without any launch"
        launch_id = int(launches[-1])
        doc = self.lp.launches.find_one({"launch_id": launch_id},
                                        {"host": 1, "launch_dir": 1, "state": 1, "state_history": 1}) or {}
        rec = records.get(str(fid))
        ours = rec is not None and rec.get("host") == socket.gethostname() and (
            rec.get("launch_id") == launch_id
            or (rec.get("launch_id") is None and launch_id not in set(rec.get("known_launches") or [])
                and doc.get("host") == rec.get("host") and doc.get("launch_dir") == rec.get("launch_dir")))
        if ours:
            if is_same_process(int(rec["pid"]), rec.get("started")):
                return False, f"its launch {launch_id} (pid {rec['pid']}) still runs"
            return True, (f"its launch {launch_id} was started by mlip-auto run-loop pid {rec.get('runner_pid')} "
                          f"as pid {rec['pid']}, which is gone")
        lost = self._lost_fw_ids([fid]) if lost is None else lost
        host = doc.get("host", "?")
        if fid in lost:
            return True, (f"launch {launch_id} on host {host} has not pinged for more than "
                          f"{self.lost_after_seconds():.0f} s (FireWorks' lost-run detection)")
        ping = _last_ping_age(doc)
        age = f", last ping {ping:.0f} s ago" if ping is not None else ""
        return False, f"launch {launch_id} on host {host} is another worker's and alive{age}"

    def recover(self, exclude: set[int] | None = None, fizzled: bool = True) -> list[int]:
        """Rerun Fireworks whose launch is provably dead (see `launch_verdict`) and, at start, those FIZZLED by
        an earlier run. Finished Fireworks and live launches of other workers are never rerun; RESERVED ones
        (a queue reservation of `qlaunch`) are left to FireWorks (`lpad detect_unreserved`)."""
        exclude = exclude or set()
        rerun = []
        states = self.fw_states()
        running = [fid for fid, (s, _) in states.items() if s == "RUNNING" and fid not in exclude]
        records = self._records()
        lost = self._lost_fw_ids(running)
        for fid, (state, name) in sorted(states.items()):
            if fid in exclude:
                continue
            if state == "FIZZLED" and fizzled:
                log.warning("rerunning %s (fw %d, was FIZZLED)", name, fid)
            elif state == "RUNNING":
                dead, why = self.launch_verdict(fid, records, lost)
                if not dead:
                    if fid not in self._waiting_for:
                        log.info("not rerunning %s (fw %d, RUNNING): %s; waiting for it", name, fid, why)
                        self._waiting_for.add(fid)
                    continue
                log.warning("rerunning %s (fw %d, was RUNNING): %s", name, fid, why)
            elif state == "RESERVED" and fizzled:
                log.info("%s (fw %d) is RESERVED in a queue; left to FireWorks", name, fid)
                continue
            else:
                continue
            self.lp.rerun_fw(fid)
            self._waiting_for.discard(fid)
            rerun.append(fid)
        self._forget(rerun)
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
        current, archived = self._launch_ids(fid)
        known = sorted({*current, *archived})
        launcher = self._warm_launcher()
        if launcher is not None:
            try:
                pid = launcher.run(fid, launches.resolve(), log_path.resolve())
                self._record_spawn(fid, pid, known)
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
        self._record_spawn(fid, proc.pid, known)
        log.info("started %s (fw %d) in worker pid %d", name, fid, proc.pid)
        return Worker(fid, name, proc.pid, log_path, proc=proc)

    def step(self) -> str:
        """One scheduling round; returns the workflow state."""
        if self.health is not None:
            self.health()
        ended = [w for w in self._live if not w.alive()]
        self._live = [w for w in self._live if w.alive()]
        if ended:
            self._ended(ended)
        self._identify_launches()
        busy = {w.fw_id for w in self._live}
        if self._waiting_for and time.monotonic() - self._last_lost_check > self.lost_check_every:
            self._last_lost_check = time.monotonic()
            self.recover(exclude=busy, fizzled=False)  # another worker's launch may have been lost meanwhile
        states = self.fw_states()
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
        """Live figures for the progress display: the campaign folder's stage records, the eOn run folders (KMC
        steps as they are taken) and the running fits' pacemaker logs (iterations done of the fit's maxiter)."""
        if self._campaign is None:
            self._campaign = self.layout.campaign()
        campaign = self._campaign
        rec = stage_records(self.layout)
        akmc = [r for k, r in sorted(rec.items()) if k.startswith("akmc_")]
        oracle = sum(int(r.get("labelled", 0)) for k, r in rec.items() if k.startswith("oracle_"))
        fits = [r for k, r in rec.items() if k.startswith("fit_")]
        last = akmc[-1] if akmc else {}
        kmc_steps, sim_time = int(last.get("kmc_steps") or 0), last.get("simulated_time")
        with contextlib.suppress(Exception):  # a run folder being written: the stage records' figures stand
            trajectory = self.layout.akmc_runs().trajectory()
            if trajectory:  # one row per KMC step taken (eOn numbers them from 0)
                kmc_steps, sim_time = max(kmc_steps, len(trajectory)), float(trajectory[-1]["time"])
        now = time.monotonic()
        running = []
        for w in sorted(self._live, key=lambda w: w.fw_id):
            stage: dict[str, Any] = {"name": w.name.split(": ", 1)[-1], "fw_id": w.fw_id,
                                     "seconds": round(now - w.started, 1), "done": None, "total": None, "unit": ""}
            if "fit gen_" in stage["name"]:  # fit, refit, upfit gen_NNN
                gen = stage["name"].split("fit gen_", 1)[1][:3]
                done, total = fit_progress(self.layout.generations, f"gen_{gen}")
                stage.update(done=done, total=total, unit="fit iterations")
            running.append(stage)
        return {
            "campaign": campaign.name, "elapsed": round(now - self._started, 1), "running": running,
            # the loop's iteration under way: after a stop, the next one (its labels, refit and resumed aKMC)
            "iteration": int(last.get("iteration", 0)) + (1 if last.get("status") == "stopped" else 0),
            "max_iterations": campaign.akmc.max_iterations,
            "kmc_steps": kmc_steps, "kmc_target": campaign.akmc.kmc_steps, "simulated_time": sim_time,
            "oracle_calls": oracle, "generations": len(fits),
            "stops": sum(1 for r in akmc if r.get("status") == "stopped"),
        }


_ITERATION = re.compile(rb"Iteration:?\s+#(\d+)")


def fit_progress(generations: Path, name: str) -> tuple[int | None, int | None]:
    """(iterations done, maxiter) of the fit of generation ``name`` now under way (``<name>.partial-*``), read
    from its pacemaker input.yaml and the tail of its log; (None, None) while neither exists yet."""
    import yaml

    inputs = sorted(generations.glob(f"{name}.partial-*/**/input.yaml"), key=lambda p: p.stat().st_mtime)
    if not inputs:
        return None, None
    work = inputs[-1].parent
    total = None
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        total = int((yaml.safe_load(inputs[-1].read_text()) or {}).get("fit", {}).get("maxiter"))
    done = 0
    for log_name in ("log.txt", "pacemaker.out"):
        try:
            with open(work / log_name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                found = _ITERATION.findall(f.read())
        except OSError:
            continue
        if found:
            done = max(done, int(found[-1]))
    if total is not None:
        done = min(done, total)
    return done, total


# ---------------------------------------------------------------------------------------------- a run-loop's session
@dataclass
class Session:
    """What `campaign_session` holds: the LaunchPad, the campaign's folder and workflow, the server lease."""

    lp: Any
    launchpad_file: Path
    layout: CampaignLayout
    fw_id: int
    added: bool
    lease: Any = None  # launchpad.server.ServerLease when run on the embedded server

    def health(self) -> None:
        if self.lease is not None and not self.lease.alive():
            raise server_gone(self.lease)

    def runner(self, **kwargs: Any) -> LocalRunner:
        return LocalRunner(self.lp, self.launchpad_file, self.layout, self.fw_id, health=self.health, **kwargs)


def server_gone(lease: Any) -> RuntimeError:
    from autopipec_fw.launchpad.server import DatabaseError

    info = lease.info
    return DatabaseError(f"the embedded LaunchPad server (pid {info.pid}, port {info.port}) has stopped while this "
                         f"run-loop used it; the campaign is kept in {info.store}: run the same command again "
                         "to continue")


@contextlib.contextmanager
def database_errors(launchpad_file: Path, lease: Any = None) -> Iterator[None]:
    """A LaunchPad that stops answering is one line naming it, not a pymongo traceback."""
    from pymongo.errors import ConnectionFailure

    from autopipec_fw.launchpad.server import DatabaseError

    try:
        yield
    except ConnectionFailure as e:
        if lease is not None and not lease.alive():
            raise server_gone(lease) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"the embedded LaunchPad server at {lease.info.uri}" if lease is not None else \
            f"the LaunchPad of {launchpad_file}"
        raise DatabaseError(f"{where} is not answering ({type(e).__name__}: {first[:200]}); check it "
                            "(mlip-auto db status) and run the same command again") from None


@contextlib.contextmanager
def campaign_session(campaign: Campaign, workspace: Path, launchpad_file: str | Path | None = None,
                     port: int = 27018, command: str | None = None) -> Iterator[Session]:
    """Everything a run-loop holds while it runs a campaign, released however it ends:

    1. the campaign (`campaign_lock`): a second run-loop on it refuses at once, naming this one;
    2. the embedded server of the workspace (unless ``launchpad_file`` names another LaunchPad): started here
       and then stopped here, or used as it runs (`EmbeddedServer.use`);
    3. the campaign's workflow, submitted once (`submit`).
    ``command`` names this process in the lock records (default: its command line)."""
    from autopipec_fw.launchpad.files import (
        ensure_initialized,
        load_launchpad,
        write_fw_config,
        write_launchpad_file,
    )
    from autopipec_fw.launchpad.server import EmbeddedServer

    workspace = Path(workspace).resolve()
    lock = campaign_lock(campaign, workspace, command=command)
    lease = None
    try:
        if launchpad_file is None:
            lease = EmbeddedServer(workspace, port=port).use(command=command)
            write_launchpad_file(workspace, host=lease.info.host, port=lease.info.port)
            write_fw_config(workspace)
            lp_path = workspace / "my_launchpad.yaml"
        else:
            lp_path = Path(launchpad_file).resolve()
        with database_errors(lp_path, lease):
            lp = load_launchpad(lp_path)
            ensure_initialized(lp)
            layout, fw_id, added = submit(campaign, lp, base=workspace)
            yield Session(lp, lp_path, layout, fw_id, added, lease)
    finally:
        try:
            if lease is not None:
                lease.release()
        finally:
            lock.release()
