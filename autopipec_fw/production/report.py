"""report.html: one self-contained page about a released potential (plots embedded as base64 PNG).

Inputs are plain data so that the workflow can pass what it has; an empty series gives a note instead of a
plot:

- `generations`: one dict per generation, either `Generation.to_dict()` (``index`` + ``metrics``) or a flat
  metrics dict; every numeric ``*_rmse`` / ``*_mae`` figure is plotted against the generation index.
- `stops`: max gamma per aKMC stop, as numbers or dicts with ``max_gamma`` (and optionally ``iteration``).
- `kmc_trajectory`: KMC step records with ``time`` (s) and ``energy`` (eV) (``read_kmc_trajectory`` output).
- `validation`: a ``ValidationResult`` (or its dict): parity data and the barrier table.
- `manifest`: the ``ProductionManifest`` (or its dict).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    for attr in ("to_json_dict", "to_dict", "model_dump"):
        if hasattr(obj, attr):
            return dict(getattr(obj, attr)())
    raise TypeError(f"expected a mapping or a result object, got {type(obj).__name__}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False, layout="constrained")


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# ----------------------------------------------------------------------------------------------- plots


def learning_curve_series(generations: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{metric name: [(generation index, value), ...]} of the numeric *_rmse / *_mae figures."""
    series: dict[str, list[tuple[int, float]]] = {}
    for pos, g in enumerate(generations):
        g = dict(g)
        metrics = dict(g.get("metrics") or g)
        idx = g.get("index", metrics.get("generation", pos))
        idx = int(idx) if _finite(idx) else pos
        for k, v in metrics.items():
            if ("rmse" in k or "mae" in k) and _finite(v):
                series.setdefault(k, []).append((idx, float(v)))
    return series


def plot_learning_curve(generations: Sequence[Mapping[str, Any]]) -> str:
    series = learning_curve_series(generations)
    if not series:
        return _note("No generation metrics were given: no learning curve.")
    fig, axes = _figure(2)
    for ax, kind, unit in ((axes[0][0], "energy", "meV/atom"), (axes[0][1], "force", "meV/Å")):
        names = [k for k in series if kind in k]
        for k in sorted(names):
            xs, ys = zip(*sorted(series[k]), strict=True)
            ax.plot(xs, ys, marker="o", label=k)
        ax.set_xlabel("generation")
        _integer_x(ax)
        ax.set_ylabel(f"{kind} error ({unit})")
        if names:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {kind} metrics", ha="center", transform=ax.transAxes)
    return _img(_png(fig), "learning curve")


def plot_parity(parity: Mapping[str, Sequence[float]]) -> str:
    er, ep = list(parity.get("energy_ref") or []), list(parity.get("energy_pred") or [])
    fr, fp = list(parity.get("force_ref") or []), list(parity.get("force_pred") or [])
    if not (er and ep) and not (fr and fp):
        return _note("No held-out predictions were given: no parity plot.")
    fig, axes = _figure(2)
    for ax, ref, pred, label in (
        (axes[0][0], er, ep, "energy (eV/atom)"),
        (axes[0][1], fr, fp, "force component (eV/Å)"),
    ):
        if ref and pred:
            ax.scatter(ref, pred, s=6, alpha=0.6)
            lo, hi = min(min(ref), min(pred)), max(max(ref), max(pred))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        ax.set_xlabel(f"oracle {label}")
        ax.set_ylabel(f"ACE {label}")
    return _img(_png(fig), "parity plots")


def _stop_points(stops: Sequence[Any]) -> list[tuple[float, float]]:
    pts = []
    for i, s in enumerate(stops):
        if isinstance(s, Mapping):
            g = s.get("max_gamma")
            x = s.get("iteration", s.get("stop", i))
        else:
            g, x = s, i
        if _finite(g):
            pts.append((float(x) if _finite(x) else float(i), float(g)))
    return pts


def plot_gamma(stops: Sequence[Any], threshold: float | None) -> str:
    pts = _stop_points(stops)
    if not pts:
        return _note("No aKMC stop was recorded: no gamma plot.")
    fig, axes = _figure(1)
    ax = axes[0][0]
    xs, ys = zip(*pts, strict=True)
    ax.semilogy(xs, ys, marker="o", ls="-")
    if threshold:
        ax.axhline(threshold, color="r", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("stop")
    _integer_x(ax)
    ax.set_ylabel("max extrapolation grade γ")
    return _img(_png(fig), "max gamma per stop")


def plot_kmc(trajectory: Sequence[Mapping[str, Any]]) -> str:
    pts = [(float(r["time"]), float(r["energy"])) for r in trajectory if _finite(r.get("time")) and _finite(r.get("energy"))]
    if not pts:
        return _note("No KMC step was recorded: no trajectory plot.")
    fig, axes = _figure(2)
    steps = [int(r.get("step", i)) for i, r in enumerate(trajectory) if _finite(r.get("time")) and _finite(r.get("energy"))]
    times, energies = zip(*pts, strict=True)
    e0 = energies[0]
    axes[0][0].plot(steps, times, marker="o")
    axes[0][0].set_xlabel("KMC step")
    _integer_x(axes[0][0])
    axes[0][0].set_ylabel("simulated time (s)")
    axes[0][1].step(times, [1000.0 * (e - e0) for e in energies], where="post", marker="o")
    axes[0][1].set_xlabel("simulated time (s)")
    axes[0][1].set_ylabel("state energy - first state (meV)")
    for ax in axes[0]:
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4), useOffset=False)
    return _img(_png(fig), "KMC trajectory")


def _render(atoms: Any, ax: Any, title: str, highlight: Sequence[int] = ()) -> None:
    from ase.visualize.plot import plot_atoms

    a = atoms.copy()
    a.set_constraint()
    colors = ["#d62728" if i in set(highlight) else "#c9a66b" for i in range(len(a))]
    slab = a.cell.rank == 3 and a.cell.lengths()[2] > 1.5 * max(a.cell.lengths()[:2])
    plot_atoms(a, ax, rotation="0x,0y,0z" if slab else "15x,15y,0z", radii=0.6, colors=colors)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_structure(atoms: Any, title: str) -> str:
    """A picture of one structure (top view for a slab)."""
    fig, axes = _figure(1)
    _render(atoms, axes[0][0], title)
    return _img(_png(fig), title)


def plot_process(reactant: Any, saddle: Any, product: Any, name: str) -> str:
    """Initial, saddle and final configuration of a process, the atoms that move (> 0.5 Å) in red."""
    import numpy as np
    from ase.geometry import find_mic

    d, _ = find_mic(product.positions - reactant.positions, reactant.cell, reactant.pbc)
    moved = [int(i) for i in np.flatnonzero(np.linalg.norm(d, axis=1) > 0.5)]
    fig, axes = _figure(3)
    for ax, at, t in zip(axes[0], (reactant, saddle, product), ("initial", "saddle", "final"), strict=True):
        _render(at, ax, f"{name}: {t}", moved)
    return _img(_png(fig), f"{name}: initial, saddle, final")


def _pictures(pictures: Mapping[str, Any] | None) -> list[str]:
    """The starting structure and the dominant process, from .con paths (a missing file gives a note)."""
    from autopipec_fw.eon.io import EonFormatError, read_con

    pictures = dict(pictures or {})
    out = ["<h2>Starting structure and dominant process</h2>"]
    try:
        if pictures.get("start"):
            out.append(plot_structure(read_con(Path(pictures["start"])), "starting structure (aKMC)"))
        proc = pictures.get("process")
        if proc:
            out.append(plot_process(read_con(Path(proc["reactant"])), read_con(Path(proc["saddle"])),
                                    read_con(Path(proc["product"])), str(proc.get("name") or "process")))
            if proc.get("caption"):
                out.append(_note(str(proc["caption"])))
    except (EonFormatError, OSError) as e:
        out.append(_note(f"picture not drawn: {e}"))
    if len(out) == 1:
        out.append(_note("No aKMC structure was given: no pictures."))
    return out


# ----------------------------------------------------------------------------------------------- tables


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def barrier_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return _note("No aKMC process was checked against the oracle: no barrier table.")
    head = "<tr><th>process</th><th>multiplicity</th><th>states</th><th>state</th><th>eOn id</th>" \
        "<th>eOn barrier (eV)</th><th>ACE barrier (eV)</th><th>oracle barrier (eV)</th><th>error (meV)</th>" \
        "<th>method</th><th>converged</th><th>note</th></tr>"
    body = []
    for r in rows:
        err = r.get("error_meV")
        if err is None and _finite(r.get("learned_barrier")) and _finite(r.get("oracle_barrier")):
            err = 1000.0 * abs(r["learned_barrier"] - r["oracle_barrier"])
        states = ", ".join(str(x) for x in r.get("states") or [])
        cells = [r.get("name") or "", r.get("multiplicity", 1), states, r.get("state"), r.get("process"),
                 r.get("eon_barrier"), r.get("learned_barrier"), r.get("oracle_barrier"), err, r.get("method"),
                 r.get("converged"), r.get("note", "")]
        body.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def process_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """The kinetically relevant processes aKMC found, one row per process distinct by symmetry."""
    if not groups:
        return _note("aKMC found no kinetically relevant process.")
    head = ("<tr><th>process</th><th>multiplicity (eOn processes)</th><th>states</th><th>lowest barrier (eV)</th>"
            "<th>atoms moving</th><th>largest displacement (Å)</th></tr>")
    body = []
    for g in groups:
        cells = [g.get("name"), g.get("multiplicity"), ", ".join(str(x) for x in g.get("states") or []),
                 g.get("barrier"), g.get("moved_atoms"), g.get("hop_length")]
        body.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    return f'<table class="processes">{head}{"".join(body)}</table>'


def excluded_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """eOn processes the gate left out of the kinetics (no net displacement), with the reason; nothing if none."""
    if not groups:
        return ""
    head = ("<tr><th>left out of the gate</th><th>multiplicity (eOn processes)</th><th>states</th>"
            "<th>barrier (eV)</th><th>largest displacement (Å)</th><th>reason</th></tr>")
    body = []
    for g in groups:
        cells = [g.get("name"), g.get("multiplicity"), ", ".join(str(x) for x in g.get("states") or []),
                 g.get("barrier"), g.get("hop_length"), g.get("reason", "")]
        body.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    return f'<table class="excluded">{head}{"".join(body)}</table>'


def _kv_table(d: Mapping[str, Any]) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, Mapping | list | tuple):
            v = json.dumps(v, default=str)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.note{color:#777;font-style:italic}.pass{color:#070}.fail{color:#b00}pre{background:#f6f6f6;padding:.6em;font-size:.8em;overflow:auto}
img{max-width:100%}
"""


def render_report(
    manifest: Any,
    validation: Any = None,
    generations: Sequence[Mapping[str, Any]] = (),
    stops: Sequence[Any] = (),
    kmc_trajectory: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
    pictures: Mapping[str, Any] | None = None,
) -> str:
    """The HTML text of the report (see the module doc for the inputs)."""
    m = _as_dict(manifest)
    v = _as_dict(validation)
    name = f"{m.get('name', 'potential')} {m.get('version', '')}".strip()
    title = title or f"ACE potential {name}"
    limits = dict(m.get("limits") or {})
    passed = v.get("passed", (m.get("validation") or {}).get("passed"))
    status = (
        '<p class="pass">Validation gate: passed</p>' if passed
        else '<p class="fail">Validation gate: FAILED</p>' if passed is False
        else _note("No validation result was given.")
    )
    summary = {k: v.get(k) for k in ("n_holdout", "energy_rmse", "force_rmse", "holdout_max_gamma",
                                      "barrier_mae", "barrier_max_error") if k in v}
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(m.get('description', '')))}</p>",
        status,
        _kv_table({"author": m.get("author"), "license": m.get("license"), "created": m.get("created"),
                   "training set size": m.get("training_set_size"), "generation": m.get("generation")}),
        "<h2>Validation (held-out oracle set; energies meV/atom, forces meV/Å, barriers meV)</h2>",
        _kv_table(summary) if summary else _note("No validation figures."),
        *(_note(n) for n in v.get("notes", [])),
        *(f'<p class="fail">{html.escape(f)}</p>' for f in v.get("failures", [])),
        "<h2>Learning curve per generation</h2>",
        plot_learning_curve(generations),
        f"<h2>Parity on the held-out set (generation {html.escape(str(m.get('generation')))})</h2>",
        plot_parity(v.get("parity") or {}),
        "<h2>Maximum extrapolation grade per aKMC stop</h2>",
        plot_gamma(stops, limits.get("gamma_threshold")),
        _note("Each stop is met by the generation the stop's aKMC run used (see the stops table of "
              "metadata.json / akmc report)."),
        "<h2>KMC trajectory</h2>",
        plot_kmc(kmc_trajectory),
        _kmc_generations(kmc_trajectory),
        *_pictures(pictures),
        "<h2>Processes found (distinct by symmetry)</h2>",
        process_table(v.get("processes") or []),
        excluded_table(v.get("excluded_processes") or []),
        f"<h2>Barriers: learned (generation {html.escape(str(m.get('generation')))}) vs oracle</h2>",
        barrier_table(v.get("barriers") or []),
        "<h2>Limits of validity</h2>",
        _kv_table(limits) if limits else _note("No limits given."),
        "<h2>Manifest (metadata.json)</h2>",
        f"<pre>{html.escape(json.dumps(m, indent=2, default=str))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _kmc_generations(trajectory: Sequence[Mapping[str, Any]]) -> str:
    """Which generation's rates each KMC step was drawn from (one line per eOn segment)."""
    spans: list[tuple[Any, Any, int, int]] = []
    for r in trajectory:
        seg, gen, step = r.get("segment"), r.get("generation"), int(r.get("step", 0))
        if spans and spans[-1][0] == seg:
            spans[-1] = (seg, gen, spans[-1][2], step)
        else:
            spans.append((seg, gen, step, step))
    if not spans or spans[0][0] is None:
        return ""
    items = "".join(f"<li>KMC steps {a}-{b}: segment {seg}, rates from {html.escape(_gen_label(gen))}</li>"
                    for seg, gen, a, b in spans)
    return f'<ul class="kmc-generations">{items}</ul>'


def _gen_label(gen: Any) -> str:
    p = Path(str(gen))
    return p.parent.name if p.name.startswith("potential") else str(gen)


def write_report(
    path: Path,
    manifest: Any,
    validation: Any = None,
    generations: Sequence[Mapping[str, Any]] = (),
    stops: Sequence[Any] = (),
    kmc_trajectory: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
    pictures: Mapping[str, Any] | None = None,
) -> Path:
    """Write report.html (atomically) and return its path."""
    text = render_report(manifest, validation, generations, stops, kmc_trajectory, title, pictures)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("report written: %s (%d kB)", path, len(text) // 1024)
    return path
