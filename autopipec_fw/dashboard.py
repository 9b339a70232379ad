"""`mlip-auto dashboard`: a small live web view of the campaigns on a LaunchPad (Flask, self-contained HTML).

Per campaign it draws, as inline SVG (no script or style from elsewhere): the Fireworks over time from their
launches' start and end times (what runs now, what failed), the max gamma of each stop against the stop and
selection thresholds, the labels of each stop, the learning curve of the generations (train/test energy and force
RMSE against the gate's limits), the KMC steps and simulated time of each aKMC run, and once validated the
barriers learned vs the oracle's. The page reloads itself every few seconds (``refresh``); ``/api/campaign`` gives
the same figures as JSON. Figures come from the LaunchPad (`runner.campaign_status`, the launches) and from the
campaign folder (campaign.yaml for the thresholds, stages/*.json, the eOn trajectory).

Every figure's marks carry their numbers as ``data-*`` attributes (``data-x``, ``data-y``, ...), so a test or a
script can read them from the DOM.
"""

from __future__ import annotations

import datetime
import hmac
import html
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_COLOURS = {"COMPLETED": "#2e7d32", "RUNNING": "#1565c0", "FIZZLED": "#c62828", "READY": "#9e9e9e",
                 "WAITING": "#cfd8dc", "RESERVED": "#6a1b9a", "DEFUSED": "#5d4037", "PAUSED": "#f9a825"}
SERIES_COLOURS = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a"]


# ------------------------------------------------------------------------------------------------ figures
def _epoch(stamp: Any) -> float | None:
    if stamp is None:
        return None
    if isinstance(stamp, datetime.datetime):
        t = stamp
    else:
        try:
            t = datetime.datetime.fromisoformat(str(stamp))
        except ValueError:
            return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)  # FireWorks stores UTC
    return t.timestamp()


def fireworks_timeline(lp, fw_ids: list[int]) -> list[dict[str, Any]]:
    """One row per Firework: name, stage, state and its last launch's start and end (epoch s; end None while it
    runs, both None before it started)."""
    rows = []
    for fw in lp.fireworks.find({"fw_id": {"$in": fw_ids}}, {"fw_id": 1, "name": 1, "state": 1, "spec.stage": 1,
                                                            "launches": 1}):
        start = end = None
        if fw.get("launches"):
            launch = lp.launches.find_one({"launch_id": fw["launches"][-1]}, {"state_history": 1}) or {}
            for entry in launch.get("state_history") or []:
                if entry.get("state") == "RUNNING" and start is None:
                    start = _epoch(entry.get("created_on"))
                elif entry.get("state") in ("COMPLETED", "FIZZLED", "DEFUSED"):
                    end = _epoch(entry.get("created_on"))
        rows.append({"fw_id": int(fw["fw_id"]), "name": fw["name"].split(": ", 1)[-1], "state": fw["state"],
                     "stage": (fw.get("spec") or {}).get("stage"), "start": start, "end": end})
    rows.sort(key=lambda r: (r["start"] is None, r["start"] or 0, r["fw_id"]))
    return rows


def _folder_figures(campaign_dir: Path) -> dict[str, Any]:
    """Thresholds (campaign.yaml), aKMC runs and validation (stage records), the KMC trajectory (eOn folders)."""
    from autopipec_fw.campaign import CampaignLayout, stage_records

    out: dict[str, Any] = {"thresholds": {}, "kmc": [], "trajectory": [], "validation": None, "folder_error": None}
    layout = CampaignLayout(campaign_dir)
    try:
        c = layout.campaign()
        out["thresholds"] = {
            "gamma_threshold": c.gamma.threshold, "gamma_select_lower": c.gamma.select_lower,
            "max_energy_rmse": c.validation.max_energy_rmse, "max_force_rmse": c.validation.max_force_rmse,
            "max_barrier_error": c.validation.max_barrier_error, "kmc_steps": c.akmc.kmc_steps,
            "max_iterations": c.akmc.max_iterations,
        }
    except Exception as e:  # noqa: BLE001 - a folder on another machine, or not prepared: say so on the page
        out["folder_error"] = str(e)
    rec = stage_records(layout) if layout.stages.is_dir() else {}
    out["kmc"] = [{"iteration": r.get("iteration"), "kmc_steps": r.get("kmc_steps"),
                   "simulated_time": r.get("simulated_time"), "status": r.get("status"),
                   "generation": r.get("generation")}
                  for k, r in sorted(rec.items()) if k.startswith("akmc_")]
    v = rec.get("validate")
    if v:
        out["validation"] = {
            "passed": v.get("passed"), "energy_rmse": v.get("energy_rmse"), "force_rmse": v.get("force_rmse"),
            "generation": v.get("generation"), "failures": v.get("failures") or [],
            "barriers": [{"name": b.get("name") or f"process {b.get('process', '?')}",
                          "learned": b.get("learned_barrier"), "oracle": b.get("oracle_barrier"),
                          "error_meV": (None if b.get("learned_barrier") is None or b.get("oracle_barrier") is None
                                        else round(1000 * abs(b["learned_barrier"] - b["oracle_barrier"]), 3))}
                         for b in v.get("barriers") or []],
        }
    try:
        out["trajectory"] = [{"step": int(r["step"]), "time": float(r["time"])}
                             for r in layout.akmc_runs().trajectory()]
    except Exception:  # noqa: BLE001 - no eOn run yet, or one being written
        out["trajectory"] = []
    return out


def campaign_view(lp, fw_id: int) -> dict[str, Any]:
    """Everything the page shows of one campaign, JSON-able."""
    from autopipec_fw.runner import campaign_status

    st = campaign_status(lp, fw_id)
    wf = lp.workflows.find_one({"nodes": fw_id}, {"nodes": 1})
    timeline = fireworks_timeline(lp, list(wf["nodes"]))
    now = time.time()
    view = {"name": st.name, "state": st.state, "campaign_dir": st.campaign_dir, "now": now,
            "status": st.to_dict(), "timeline": timeline,
            "running": [{"name": r["name"], "fw_id": r["fw_id"], "seconds": round(now - r["start"], 1)}
                        for r in timeline if r["state"] == "RUNNING" and r["start"] is not None],
            "failures": st.failures, "stops": st.stops, "generations": st.generations, "package": st.package,
            "loop_end": st.loop_end}
    view.update(_folder_figures(Path(st.campaign_dir)))
    return view


def campaign_fw_ids(lp, campaign_dir: Path | None = None) -> list[int]:
    """fw_ids (one per workflow) of the campaigns on the LaunchPad, or of the one in ``campaign_dir``."""
    from autopipec_fw.runner import all_campaigns

    ids = all_campaigns(lp)
    if campaign_dir is None:
        return ids
    want = str(Path(campaign_dir).resolve())
    return [i for i in ids
            if str(Path((lp.workflows.find_one({"nodes": i}, {"metadata": 1}) or {}).get("metadata", {})
                        .get("campaign_dir", "")).resolve()) == want]


# ------------------------------------------------------------------------------------------------ SVG
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: float) -> str:
    return f"{v:.3g}"


def _duration(v: float) -> str:
    if v < 10:
        return f"{v:.1f} s"
    if v < 600:
        return f"{v:.0f} s"
    return f"{v / 60:.0f} min" if v < 36000 else f"{v / 3600:.1f} h"


class _Axes:
    """A plot area: data ranges mapped to pixels (y up)."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, w: int = 460, h: int = 220,
                 margin: tuple[int, int, int, int] = (60, 12, 24, 34)) -> None:
        self.left, self.right, self.top, self.bottom = margin
        self.w, self.h = w, h
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        return self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def frame(self, xlabel: str, ylabel: str, xticks: list[float] | None = None) -> list[str]:
        out = [f'<line x1="{self.left}" y1="{self.h - self.bottom}" x2="{self.w - self.right}" '
               f'y2="{self.h - self.bottom}" stroke="#555"/>',
               f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.h - self.bottom}" stroke="#555"/>']
        for k in range(5):
            v = self.y0 + k * (self.y1 - self.y0) / 4
            out.append(f'<text x="{self.left - 4}" y="{self.y(v) + 4:.1f}" text-anchor="end" '
                       f'font-size="10">{_num(v)}</text>')
        for v in xticks or []:
            out.append(f'<text x="{self.x(v):.1f}" y="{self.h - self.bottom + 13}" text-anchor="middle" '
                       f'font-size="10">{_num(v)}</text>')
        out.append(f'<text x="{(self.left + self.w - self.right) / 2:.0f}" y="{self.h - 4}" text-anchor="middle" '
                   f'font-size="11">{_e(xlabel)}</text>')
        out.append(f'<text x="12" y="{(self.top + self.h - self.bottom) / 2:.0f}" font-size="11" '
                   f'transform="rotate(-90 12 {(self.top + self.h - self.bottom) / 2:.0f})" '
                   f'text-anchor="middle">{_e(ylabel)}</text>')
        return out

    def hline(self, v: float, label: str, colour: str = "#c62828", left: bool = False) -> str:
        y = self.y(v)
        x, anchor = (self.left + 4, "start") if left else (self.w - self.right - 2, "end")
        return (f'<g class="limit" data-y="{v}" data-label="{_e(label)}"><line x1="{self.left}" y1="{y:.1f}" '
                f'x2="{self.w - self.right}" y2="{y:.1f}" stroke="{colour}" stroke-dasharray="5 3"/>'
                f'<text x="{x}" y="{y - 3:.1f}" text-anchor="{anchor}" font-size="10" '
                f'fill="{colour}">{_e(label)} {_num(v)}</text></g>')


def _svg(fig_id: str, title: str, body: list[str], w: int = 460, h: int = 220) -> str:
    return (f'<figure><figcaption>{_e(title)}</figcaption><svg id="{_e(fig_id)}" class="chart" '
            f'xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{_e(title)}">' + "".join(body) + "</svg></figure>")


def _empty(fig_id: str, title: str, why: str) -> str:
    return (f'<figure><figcaption>{_e(title)}</figcaption><p id="{_e(fig_id)}" class="empty">{_e(why)}</p>'
            "</figure>")


def svg_timeline(rows: list[dict[str, Any]], now: float, fig_id: str = "timeline") -> str:
    """The Fireworks over time: one bar per launched Firework, coloured by state (a running one reaches now)."""
    started = [r for r in rows if r["start"] is not None]
    if not started:
        return _empty(fig_id, "Fireworks over time", "no Firework has started yet")
    t0 = min(r["start"] for r in started)
    t1 = max([r["end"] or now for r in started] + [t0 + 1])
    row_h, label_w, w = 16, 190, 760
    h = 30 + row_h * len(started)
    ax = _Axes(0, t1 - t0, 0, 1, w=w, h=h, margin=(label_w, 40, 4, 24))
    body = []
    for i, r in enumerate(started):
        y = 4 + i * row_h
        end = r["end"] or now
        x = ax.x(r["start"] - t0)
        width = max(2.0, ax.x(end - t0) - x)
        colour = STATE_COLOURS.get(r["state"], "#777")
        secs = end - r["start"]
        body.append(f'<g class="fw" data-fw-id="{r["fw_id"]}" data-state="{_e(r["state"])}" '
                    f'data-stage="{_e(r["stage"])}" data-start="{r["start"] - t0:.3f}" data-seconds="{secs:.3f}">'
                    f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end" font-size="10">{_e(r["name"])}</text>'
                    f'<rect x="{x:.1f}" y="{y + 1}" width="{width:.1f}" height="{row_h - 4}" fill="{colour}">'
                    f'<title>{_e(r["name"])}: {_e(r["state"])}, {secs:.1f} s</title></rect></g>')
    ticks = [k * (t1 - t0) / 4 for k in range(5)]
    for v in ticks:
        body.append(f'<text x="{ax.x(v):.1f}" y="{h - 8}" text-anchor="middle" font-size="10">{_duration(v)}</text>')
    return _svg(fig_id, "Fireworks over time (from their launches; colour = state)", body, w, h)


def _split_limits(limits: list[tuple[float, str]], values: list[float]) -> tuple[list, list]:
    """(near, far): a limit far above the data (> 3 x its largest value) would flatten the data against the axis,
    so it is written as a note above the plot instead of a line."""
    top = max(values) if values else 0.0
    near = [(v, lab) for v, lab in limits if top <= 0 or v <= 3 * top]
    return near, [(v, lab) for v, lab in limits if (v, lab) not in near]


def _far_notes(ax: _Axes, far: list[tuple[float, str]]) -> list[str]:
    return [f'<g class="limit off-scale" data-y="{v}" data-label="{_e(lab)}"><text x="{ax.w - ax.right - 2}" '
            f'y="{ax.top + 8 + 11 * i}" text-anchor="end" font-size="10" fill="#c62828">{_e(lab)} {_num(v)} '
            "(above the scale)</text></g>" for i, (v, lab) in enumerate(far)]


def svg_bars(fig_id: str, title: str, groups: list[tuple[Any, list[float | None]]], names: list[str],
             xlabel: str, ylabel: str, limits: list[tuple[float, str]] = ()) -> str:
    """Grouped bars: one group per x label, one bar per series (``names``), optional dashed limit lines."""
    values = [v for _, vs in groups for v in vs if v is not None]
    if not values:
        return _empty(fig_id, title, "nothing yet")
    limits, far = _split_limits(list(limits), values)
    top = max(values + [v for v, _ in limits]) * 1.1 or 1.0
    ax = _Axes(-0.5, len(groups) - 0.5, 0, top)
    body = ax.frame(xlabel, ylabel)
    slot = (ax.x(1) - ax.x(0)) * 0.8 / max(1, len(names))
    for gi, (label, vs) in enumerate(groups):
        cx = ax.x(gi)
        body.append(f'<text x="{cx:.1f}" y="{ax.h - ax.bottom + 13}" text-anchor="middle" font-size="10">'
                    f'{_e(label)}</text>')
        for si, v in enumerate(vs):
            if v is None:
                continue
            x = cx - slot * len(names) / 2 + si * slot
            body.append(f'<rect class="bar" data-series="{_e(names[si])}" data-x="{_e(label)}" data-y="{v}" '
                        f'x="{x:.1f}" y="{ax.y(v):.1f}" width="{slot * 0.9:.1f}" '
                        f'height="{max(0.0, ax.y(0) - ax.y(v)):.1f}" fill="{SERIES_COLOURS[si % 4]}">'
                        f'<title>{_e(names[si])} {_e(label)}: {_num(v)}</title></rect>')
    body += [ax.hline(v, lab, left=i % 2 == 1) for i, (v, lab) in enumerate(limits)]
    body += _far_notes(ax, far) + _legend(ax, names)
    return _svg(fig_id, title, body)


def _legend(ax: _Axes, names: list[str]) -> list[str]:
    out = []
    for i, n in enumerate(names):
        x = ax.left + 8 + i * 110
        out.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{SERIES_COLOURS[i % 4]}"/>'
                   f'<text x="{x + 14}" y="13" font-size="10">{_e(n)}</text>')
    return out


def svg_lines(fig_id: str, title: str, series: dict[str, list[tuple[float, float | None]]], xlabel: str,
              ylabel: str, limits: list[tuple[float, str]] = (), diagonal: bool = False,
              points_only: bool = False) -> str:
    """Lines with markers (or markers alone), one per series; dashed limit lines; optionally y = x."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not pts:
        return _empty(fig_id, title, "nothing yet")
    limits, far = _split_limits(list(limits), [p[1] for p in pts])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts] + [v for v, _ in limits]
    lo_x, hi_x = min(xs) - 0.3, max(xs) + 0.3  # the first and last points off the axes
    lo_y, hi_y = (min(ys + xs), max(ys + xs)) if diagonal else (0.0, max(ys))
    pad_y = (hi_y - lo_y) * 0.1 or abs(hi_y) * 0.1 or 1.0
    if diagonal:
        pad_y = max(pad_y, 0.05 * abs(hi_y))
        lo_x, hi_x = lo_y - pad_y, hi_y + pad_y
    ax = _Axes(lo_x, hi_x, lo_y - (pad_y if diagonal else 0), hi_y + pad_y)
    if diagonal:
        ticks = [ax.x0 + k * (ax.x1 - ax.x0) / 4 for k in range(5)]
    else:
        ticks = sorted(set(xs)) if len(set(xs)) <= 12 else [min(xs) + k * (max(xs) - min(xs)) / 4 for k in range(5)]
    body = ax.frame(xlabel, ylabel, ticks)
    if diagonal:
        body.append(f'<line class="diagonal" x1="{ax.x(ax.x0):.1f}" y1="{ax.y(ax.x0):.1f}" x2="{ax.x(ax.x1):.1f}" '
                    f'y2="{ax.y(ax.x1):.1f}" stroke="#999" stroke-dasharray="2 2"/>')
    for si, (name, s) in enumerate(series.items()):
        colour = SERIES_COLOURS[si % 4]
        good = [(x, y) for x, y in s if y is not None]
        if len(good) > 1 and not points_only:
            d = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in good)
            body.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y in good:
            body.append(f'<circle class="point" data-series="{_e(name)}" data-x="{x}" data-y="{y}" '
                        f'cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="3.5" fill="{colour}">'
                        f'<title>{_e(name)} {_num(x)}: {_num(y)}</title></circle>')
    body += [ax.hline(v, lab, left=i % 2 == 1) for i, (v, lab) in enumerate(limits)]
    body += _far_notes(ax, far) + _legend(ax, list(series))
    return _svg(fig_id, title, body)


# ------------------------------------------------------------------------------------------------ the page
CSS = """body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}h1{font-size:1.3em}
h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}figure{display:inline-block;margin:.4em 1em .4em 0;
vertical-align:top}figcaption{font-size:.9em;font-weight:600}.state{padding:.1em .4em;border-radius:3px;color:#fff}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.15em .6em;text-align:right}td.l,th.l{text-align:left}
.failure{color:#c62828}.path{font-family:monospace;word-break:break-all}.empty{color:#777;font-size:.9em}"""


def _state(s: str) -> str:
    return f'<span class="state" style="background:{STATE_COLOURS.get(s, "#777")}">{_e(s)}</span>'


def render_campaign(v: dict[str, Any]) -> str:
    th = v.get("thresholds") or {}
    st = v["status"]
    out = [f'<section class="campaign" data-name="{_e(v["name"])}" data-state="{_e(v["state"])}">',
           f'<h2>campaign {_e(v["name"])} {_state(v["state"])}</h2>',
           f'<p>folder <span class="path">{_e(v["campaign_dir"])}</span><br>',
           f'iteration <b id="iteration">{st["iteration"]}</b>'
           + (f' of {th["max_iterations"]}' if th.get("max_iterations") else "")
           + f' &middot; KMC steps <b id="kmc-steps">{st["kmc_steps"]}</b>'
           + (f' / {st["kmc_steps_target"]}' if st.get("kmc_steps_target") else "")
           + " &middot; simulated time <b id=\"simulated-time\">"
           + (f'{st["simulated_time"]:.4g} s' if st.get("simulated_time") is not None else "-")
           + f'</b> &middot; oracle calls <b id="oracle-calls">{st["oracle_calls"]}</b> &middot; Fireworks: '
           + ", ".join(f"{_e(k)} {n}" for k, n in sorted(st["fireworks"].items())) + "</p>"]
    if v.get("folder_error"):
        out.append(f'<p class="failure">campaign folder: {_e(v["folder_error"])}</p>')
    running = v.get("running") or []
    out.append('<div id="running"><b>running now:</b> ' + (", ".join(
        f'<span class="run" data-fw-id="{r["fw_id"]}">{_e(r["name"])} ({r["seconds"]:.0f} s)</span>'
        for r in running) or "nothing") + "</div>")
    if v.get("failures"):
        out.append('<div id="failures"><b>failed:</b><ul>')
        for f in v["failures"]:
            where = f' &middot; launch folder <span class="path">{_e(f["launch_dir"])}</span>' \
                if f.get("launch_dir") else ""
            out.append(f'<li class="failure" data-fw-id="{f["fw_id"]}">{_e(f["firework"])}: '
                       f'<span class="message">{_e(f["message"])}</span>{where}</li>')
        out.append("</ul></div>")
    if v.get("loop_end"):
        out.append(f'<p>loop end: {_e(v["loop_end"])}</p>')
    if v.get("package"):
        out.append(f'<p>package: <span class="path">{_e(v["package"])}</span></p>')
    out.append(svg_timeline(v["timeline"], v["now"], fig_id="timeline"))
    out.append("<div>")
    stops = v.get("stops") or []
    limits = []
    if th.get("gamma_threshold"):
        limits.append((float(th["gamma_threshold"]), "stop threshold"))
    if th.get("gamma_select_lower"):
        limits.append((float(th["gamma_select_lower"]), "select above"))
    out.append(svg_bars("max-gamma", "max gamma per stop (extrapolation grade)",
                        [(s["iteration"], [s.get("max_gamma")]) for s in stops], ["max gamma"], "stop (iteration)",
                        "max gamma", limits))
    out.append(svg_bars("labels", "structures per stop: selected and labelled by the oracle",
                        [(s["iteration"], [float(s.get("n_selected") or 0), float(s.get("n_labelled") or 0)])
                         for s in stops], ["selected", "labelled"], "stop (iteration)", "structures"))
    gens = v.get("generations") or []
    e_lim = [(float(th["max_energy_rmse"]), "gate")] if th.get("max_energy_rmse") else []
    f_lim = [(float(th["max_force_rmse"]), "gate")] if th.get("max_force_rmse") else []
    out.append(svg_lines("learning-energy", "learning curve: energy RMSE (meV/atom)",
                         {"test": [(g["generation"], g.get("test_energy_rmse")) for g in gens],
                          "train": [(g["generation"], g.get("train_energy_rmse")) for g in gens]},
                         "generation", "meV/atom", e_lim))
    out.append(svg_lines("learning-force", "learning curve: force RMSE (meV/Å)",
                         {"test": [(g["generation"], g.get("test_force_rmse")) for g in gens],
                          "train": [(g["generation"], g.get("train_force_rmse")) for g in gens]},
                         "generation", "meV/Å", f_lim))
    kmc = [k for k in v.get("kmc") or [] if k.get("iteration") is not None]
    k_lim = [(float(th["kmc_steps"]), "target")] if th.get("kmc_steps") else []
    out.append(svg_bars("kmc-steps", "KMC steps after each aKMC run", [(k["iteration"], [k.get("kmc_steps")])
                                                                       for k in kmc],
                        ["KMC steps"], "aKMC run (iteration)", "KMC steps", k_lim))
    traj = v.get("trajectory") or []
    if traj:
        out.append(svg_lines("simulated-time-chart", "simulated time (s) after each KMC step",
                             {"simulated time": [(i + 1, t["time"]) for i, t in enumerate(traj)]},
                             "KMC steps taken", "s"))
    else:
        out.append(svg_lines("simulated-time-chart", "simulated time (s) after each aKMC run",
                             {"simulated time": [(k["iteration"], k.get("simulated_time")) for k in kmc]},
                             "aKMC run (iteration)", "s"))
    val = v.get("validation")
    if val and val.get("barriers"):
        out.append(svg_lines("barriers", "barriers: learned vs oracle (eV)",
                             {"process": [(b["oracle"], b["learned"]) for b in val["barriers"]
                                          if b["oracle"] is not None]},
                             "oracle barrier (eV)", "learned barrier (eV)", diagonal=True, points_only=True))
    else:
        out.append(_empty("barriers", "barriers: learned vs oracle (eV)", "not validated yet"))
    out.append("</div>")
    if val:
        lim = th.get("max_barrier_error")
        out.append(f'<p id="validation" data-passed="{str(bool(val.get("passed"))).lower()}">validation of '
                   f'gen_{int(val.get("generation") or 0):03d}: <b>{"passed" if val.get("passed") else "failed"}</b>'
                   + (f'; held-out energy RMSE {val["energy_rmse"]:.3g} meV/atom' if val.get("energy_rmse")
                      is not None else "")
                   + (f', force RMSE {val["force_rmse"]:.3g} meV/Å' if val.get("force_rmse") is not None else "")
                   + "".join(f"; {_e(x)}" for x in val.get("failures") or []) + "</p>")
        if val.get("barriers"):
            out.append('<table id="barrier-table"><tr><th class="l">process</th><th>learned (eV)</th>'
                       '<th>oracle (eV)</th><th>error (meV)</th><th>limit (meV)</th></tr>')
            for b in val["barriers"]:
                out.append(f'<tr><td class="l">{_e(b["name"])}</td><td>{_num(b["learned"])}</td>'
                           f'<td>{_num(b["oracle"])}</td><td>{b["error_meV"]}</td><td>{lim or "-"}</td></tr>')
            out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


def render_page(views: list[dict[str, Any]], refresh: int, source: str) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    body = "\n".join(render_campaign(v) for v in views) if views else \
        '<p id="no-campaigns">no campaigns on this LaunchPad yet</p>'
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>mlip-auto dashboard</title>'
            f"<style>{CSS}</style></head><body><h1>mlip-auto dashboard</h1>"
            f'<p class="empty">{_e(source)} &middot; updated {_e(stamp)}'
            + (f" &middot; reloads every {int(refresh)} s" if refresh > 0 else "") + "</p>"
            f"{body}</body></html>")


# ------------------------------------------------------------------------------------------------ the app
def create_app(get_lp: Callable[[], Any], campaign_dir: Path | None = None, refresh: int = 5,
               user: str | None = None, password: str | None = None, source: str = ""):
    """The Flask app. ``get_lp`` returns the LaunchPad (called per request: it may be reconnected)."""
    from flask import Flask, Response, request

    if (user is None) != (password is None):
        raise ValueError("dashboard: give both --user and --password for basic auth, or neither")
    app = Flask("autopipec_fw.dashboard")

    @app.before_request
    def _auth():
        if user is None:
            return None
        a = request.authorization
        if a is not None and a.type == "basic" and hmac.compare_digest(str(a.username or ""), user) \
                and hmac.compare_digest(str(a.password or ""), str(password)):
            return None
        return Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="mlip-auto dashboard"'})

    def views() -> list[dict[str, Any]]:
        lp = get_lp()
        return [campaign_view(lp, i) for i in campaign_fw_ids(lp, campaign_dir)]

    def _unavailable(e: Exception, page: bool = False) -> Response:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        log.warning("dashboard: %s: %s", type(e).__name__, first)
        text = f"the LaunchPad is not answering ({type(e).__name__}: {first})"
        headers = {"Retry-After": str(max(refresh, 5))}
        if not page:
            return Response(text + "\n", 503, {**headers, "Content-Type": "text/plain; charset=utf-8"})
        # the page keeps reloading, so it comes back by itself with the database
        return Response(f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="refresh" '
                        f'content="{max(refresh, 5)}"><title>mlip-auto dashboard</title></head><body>'
                        f'<p id="unavailable">{_e(text)}</p></body></html>', 503, headers, mimetype="text/html")

    @app.get("/")
    def index():
        from pymongo.errors import PyMongoError

        try:
            return Response(render_page(views(), refresh, source), mimetype="text/html")
        except PyMongoError as e:
            return _unavailable(e, page=True)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.get("/api/campaign")
    def api():
        from pymongo.errors import PyMongoError

        try:
            data = views()
        except PyMongoError as e:
            return _unavailable(e)
        name = request.args.get("name")
        if name is not None:
            data = [v for v in data if v["name"] == name]
        return Response(json.dumps(data, default=str), mimetype="application/json")

    return app


def serve(app, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), threaded, without Flask's development banner."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines (with colour codes)
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # werkzeug would print and exit
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e} (another program on "
                               "that port? choose another: mlip-auto dashboard --port N)") from None
    try:
        server = make_server(host, port, app, threaded=True)
    except SystemExit:  # werkzeug prints "Address already in use" and exits; say it our way
        raise RuntimeError(f"port {port} on {host} is already in use by another program; stop it or choose "
                           "another port (mlip-auto dashboard --port N)") from None
    except OSError as e:
        raise RuntimeError(f"cannot serve the dashboard on {host}:{port} ({e.strerror or e})") from None
    log.info("dashboard on http://%s:%d/ (Ctrl-C to stop)", host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
