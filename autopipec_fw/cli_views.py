"""What the CLI shows: the status tables and the live progress of run-loop (rich)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from autopipec_fw.config import Campaign
from autopipec_fw.runner import CampaignStatus

log = logging.getLogger(__name__)


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _gen_row(g: dict) -> list[str]:
    seconds = g.get("seconds")
    if g.get("reused_from") is not None:
        seconds_s = f"reused gen_{int(g['reused_from']):03d}"
    else:
        seconds_s = "-" if seconds is None else f"{float(seconds):.0f}"
    return [f"gen_{int(g.get('generation') or 0):03d}", _fmt(g.get("structures")),
            _fmt(g.get("test_energy_rmse"), ".2f"), _fmt(g.get("test_force_rmse"), ".1f"),
            _fmt(g.get("train_energy_rmse"), ".2f"), _fmt(g.get("train_force_rmse"), ".1f"), seconds_s]


def _stop_row(s: dict) -> list[str]:
    return [str(s.get("iteration")), _fmt(s.get("max_gamma"), ".1f"), _fmt(s.get("n_candidates")),
            _fmt(s.get("n_selected")), _fmt(s.get("n_labelled")), _fmt(s.get("not_labelled", 0))]


def print_status(console: Console, statuses: list[CampaignStatus]) -> None:
    """The status tables, each line whole (soft wrap: paths are never cut or folded)."""
    for r in status_tables(statuses):
        console.print(r, soft_wrap=True, highlight=False)


def status_tables(statuses: list[CampaignStatus]) -> list[RenderableType]:
    """Per campaign: a header (state, folder, figures), the generations, the stops, Fireworks by state and the
    failures. Paths and messages are printed whole (plain lines, never cut with "...")."""
    out: list[RenderableType] = []
    for st in statuses:
        target = f" / {st.kmc_steps_target}" if st.kmc_steps_target else ""
        sim = f"{st.simulated_time:.4g} s" if st.simulated_time is not None else "-"
        out.append(Text.assemble(("campaign ", "bold"), (st.name, "bold cyan"), f"  [{st.state}]  ",
                                 ("folder ", "dim"), st.campaign_dir))
        out.append(Text(f"iteration {st.iteration}   KMC steps {st.kmc_steps}{target}   simulated time {sim}   "
                        f"oracle calls {st.oracle_calls}   Fireworks: "
                        + (", ".join(f"{k} {v}" for k, v in sorted(st.fireworks.items())) or "none")))
        if st.running:
            out.append(Text("running: " + "; ".join(st.running)))
        if st.generations:
            t = Table(title="generations", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
            t.caption, t.caption_justify = "E: energy RMSE (meV/atom), F: force RMSE (meV/Å)", "left"
            for name in ("gen", "structures", "test E", "test F", "train E", "train F", "seconds"):
                t.add_column(name, justify="left" if name == "gen" else "right")
            for g in st.generations:
                t.add_row(*_gen_row(g))
            out.append(t)
        if st.stops:
            t = Table(title="stops (extrapolation)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
            for name in ("iteration", "max gamma", "candidates", "selected", "labelled", "not labelled"):
                t.add_column(name, justify="right")
            for s in st.stops:
                t.add_row(*_stop_row(s))
            out.append(t)
            for s in st.stops:
                if s.get("why_not_labelled"):
                    out.append(Text(f"stop {s['iteration']}: {s['not_labelled']} selected structure(s) not labelled "
                                    f"({s['why_not_labelled']})"))
        if st.loop_end:
            out.append(Text(f"loop end: {st.loop_end}"))
        if st.package:
            out.append(Text.assemble(("package: ", "green"), st.package))
        for f in st.failures:
            where = f"  (fw {f['fw_id']}" + (f", launch folder {f['launch_dir']}" if f.get("launch_dir") else "") + ")"
            out.append(Text.assemble(("failed: ", "red"), f"{f['firework']}: {f['message']}", (where, "dim")))
        out.append(Text(""))
    return out


def run_with_progress(campaign: Campaign, workspace: Path, launchpad_file: str | None, workers: int,
                      port: int) -> int:
    """mlip-auto run-loop: embedded server (unless a LaunchPad file is given), submit, run, report."""
    from autopipec_fw.cli_live import ProgressDisplay, err_console
    from autopipec_fw.runner import campaign_session, campaign_status

    console = err_console()
    # holds the campaign (a second run-loop refuses), the server (started and stopped here, or shared) and the
    # workflow (submitted once)
    with campaign_session(campaign, workspace, launchpad_file, port) as session:
        lp, layout, fw_id, added = session.lp, session.layout, session.fw_id, session.added
        console.print(f"campaign [bold]{campaign.name}[/bold] in {layout.root} "
                      f"({'submitted' if added else 'continuing'})", soft_wrap=True)
        runner = session.runner(workers=workers)
        if runner.wf_doc()["state"] != "COMPLETED":
            runner.recover()
            with ProgressDisplay(console) as display:
                display.update(runner.progress())
                runner.on_tick = lambda r: display.update(r.progress())
                runner.run()
        st = campaign_status(lp, fw_id)
        print_status(Console(), [st])
        if st.state == "COMPLETED":
            console.print(f"[green]done:[/green] {st.package}", soft_wrap=True)  # paths are never wrapped
            return 0
        console.print(f"[red]campaign {campaign.name} ended {st.state}[/red]; "
                      "fix the cause and run the same command again to continue", soft_wrap=True)
        return 1
