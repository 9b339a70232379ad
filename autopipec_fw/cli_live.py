"""The terminal side of the CLI: one log handler for everything, and run-loop's live progress view.

On a terminal, run-loop shows one rich Live display that redraws in place (stage, iteration, KMC steps / target,
oracle calls, elapsed, a bar for each stage whose length is known); log lines are printed once each through the
same console, so they scroll past the display without tearing it. In a pipe or a file there are no control codes:
the log lines as they are, and one plain progress line whenever the figures change.

FireWorks gives its loggers (``launchpad``, ...) a handler of their own on standard output; with ours on the root
logger every line would appear twice. `load_launchpad` drops FireWorks' console handlers when the application has
set up logging, so each line comes once, through ours, and DEBUG only with -v.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%H:%M:%S"
QUIET = ("pymongo", "urllib3", "matplotlib", "asyncio", "PIL", "werkzeug")  # their DEBUG is wire chatter, even with -v
LEVEL_STYLE = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}
_console: Console | None = None


def err_console() -> Console:
    """The one console on standard error that log lines and the live display share."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


class ConsoleLogHandler(logging.Handler):
    """Log records printed through a rich console: whole lines (paths never wrapped, no markup read in messages);
    while a Live display runs on that console the lines go above it and the display is redrawn below."""

    def __init__(self, console: Console, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.console = console
        self.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            style = next((s for lvl, s in sorted(LEVEL_STYLE.items(), reverse=True) if record.levelno >= lvl), "")
            self.console.print(Text(self.format(record), style=style), soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool, console: Console | None = None) -> ConsoleLogHandler:
    """Our handler on the root logger, once: INFO and above, DEBUG too with ``verbose``. FireWorks' loggers pass
    DEBUG records on to the root (they set their own level to DEBUG), so the level is the handler's."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, ConsoleLogHandler):
            root.removeHandler(h)
    handler = ConsoleLogHandler(console or err_console(), logging.DEBUG if verbose else logging.INFO)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


# ------------------------------------------------------------------------------------------------ the live view
def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _bar(done: int | None, total: int | None, width: int = 30) -> RenderableType:
    if done is None or not total:
        return Text("")
    return ProgressBar(total=float(total), completed=float(min(done, total)), width=width)


def progress_view(p: dict[str, Any]) -> RenderableType:
    """The live display of one run-loop: a renderable of `LocalRunner.progress` figures."""
    t = Table(show_header=False, box=None, padding=(0, 1), title_justify="left",
              title=Text.assemble(("run-loop ", "bold"), (p.get("campaign", ""), "bold cyan"),
                                  f"   elapsed {_clock(p.get('elapsed'))}"))
    t.add_column("what", style="bold", no_wrap=True)
    t.add_column("bar", no_wrap=True)
    t.add_column("figures", no_wrap=True)
    if not p["running"]:
        t.add_row("stage", Text(""), "(scheduling)")
    for i, st in enumerate(p["running"]):
        fig = f"{st['done']}/{st['total']} {st['unit']}  " if st.get("total") else ""
        t.add_row("stage" if i == 0 else "", _bar(st.get("done"), st.get("total")),
                  Text.assemble((st["name"], "cyan"), f"  {fig}{_clock(st.get('seconds'))}"))
    t.add_row("iteration", _bar(p["iteration"], p.get("max_iterations")),
              f"{p['iteration']} / {p.get('max_iterations', '?')}")
    sim = p.get("simulated_time")
    t.add_row("KMC steps", _bar(p["kmc_steps"], p["kmc_target"]),
              f"{p['kmc_steps']} / {p['kmc_target']}" + (f"  ({sim:.3g} s simulated)" if sim else ""))
    t.add_row("oracle calls", Text(""), str(p["oracle_calls"]))
    t.add_row("generations", Text(""), f"{p['generations']}   stops {p['stops']}")
    return Group(t)


def progress_line(p: dict[str, Any]) -> str:
    """The same figures as one plain line (pipes and files)."""
    stages = []
    for st in p["running"]:
        fig = f" {st['done']}/{st['total']} {st['unit']}" if st.get("total") else ""
        stages.append(f"{st['name']}{fig} ({_clock(st.get('seconds'))})")
    return (f"[{_clock(p.get('elapsed'))}] stage {', '.join(stages) or '(scheduling)'}; "
            f"iteration {p['iteration']}/{p.get('max_iterations', '?')}; "
            f"KMC steps {p['kmc_steps']}/{p['kmc_target']}; oracle calls {p['oracle_calls']}; "
            f"generations {p['generations']}; stops {p['stops']}")


def _change_key(p: dict[str, Any]) -> tuple:
    """What a plain progress line is printed for: everything but the clocks and the fit's iteration count."""
    return (tuple(st["name"] for st in p["running"]), p["iteration"], p["kmc_steps"], p["oracle_calls"],
            p["generations"], p["stops"])


class ProgressDisplay:
    """run-loop's progress: a Live display on a terminal, plain lines elsewhere. Use as a context manager and
    call `update` with `LocalRunner.progress` figures on every tick."""

    def __init__(self, console: Console, plain_every: float = 60.0) -> None:
        self.console = console
        self.live: Live | None = None
        self.plain_every = plain_every  # plain mode: a line when the figures change, and at least this often
        self._last_key: tuple | None = None
        self._last_time = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.console.is_terminal:
            self.live = Live(Text("starting ..."), console=self.console, refresh_per_second=4, transient=False,
                             redirect_stdout=True, redirect_stderr=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)  # type: ignore[arg-type]
            self.live = None

    def update(self, p: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(progress_view(p))
            return
        key, now = _change_key(p), time.monotonic()
        if key != self._last_key or now - self._last_time >= self.plain_every:
            self.console.print(Text(progress_line(p)), soft_wrap=True, highlight=False)
            self._last_key, self._last_time = key, now
