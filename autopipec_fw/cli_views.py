"""What the CLI shows: the status tables and the live progress of run-loop (rich)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autopipec_fw.config import Campaign
from autopipec_fw.runner import CampaignStatus

log = logging.getLogger(__name__)


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def status_tables(statuses: list[CampaignStatus]) -> list[Table]:
    out = []
    for st in statuses:
        t = Table(title=f"campaign {st.name}  [{st.state}]", title_justify="left", show_header=False)
        t.add_row("folder", st.campaign_dir)
        t.add_row("fireworks", ", ".join(f"{k} {v}" for k, v in sorted(st.fireworks.items())))
        if st.running:
            t.add_row("running", "; ".join(st.running))
        t.add_row("iteration", str(st.iteration))
        target = f" / {st.kmc_steps_target}" if st.kmc_steps_target else ""
        t.add_row("KMC steps", f"{st.kmc_steps}{target}")
        t.add_row("simulated time", _fmt(st.simulated_time, ".4g") + (" s" if st.simulated_time is not None else ""))
        t.add_row("oracle calls", str(st.oracle_calls))
        for g in st.generations:
            t.add_row(f"gen_{int(g.get('generation') or 0):03d}",
                      f"{g.get('training_set_size', '?')} structures; "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in g.items()
                                  if k not in ("generation", "training_set_size") and isinstance(v, int | float)))
        for s in st.stops:
            t.add_row(f"stop {s['iteration']}", f"max gamma {_fmt(s.get('max_gamma'))}, "
                      f"{s.get('n_selected')} structures to the oracle")
        if st.loop_end:
            t.add_row("loop end", st.loop_end)
        if st.package:
            t.add_row("package", st.package)
        for e in st.errors:
            t.add_row("[red]error[/red]", e)
        out.append(t)
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
        Console().print(*status_tables([st]))
        if st.state == "COMPLETED":
            console.print(f"[green]done:[/green] {st.package}", soft_wrap=True)  # paths are never wrapped
            return 0
        console.print(f"[red]campaign {campaign.name} ended {st.state}[/red]; "
                      "fix the cause and run the same command again to continue", soft_wrap=True)
        return 1
