"""mlip-auto: the command line of autopipec-fw."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from autopipec_fw.config import ConfigError, load_campaign
from autopipec_fw.launchpad.locks import LockBusy

log = logging.getLogger("mlip-auto")


def _console():
    from autopipec_fw.cli_live import err_console

    return err_console()


def _error(e: BaseException) -> None:
    """The message as is: no markup (paths and field names may hold brackets), no wrapping (paths stay whole)."""
    from rich.text import Text

    _console().print(Text.assemble(("error: ", "red"), str(e)), soft_wrap=True, highlight=False)


# ---------------------------------------------------------------- db
def cmd_db(args: argparse.Namespace) -> int:
    from autopipec_fw.launchpad.files import write_fw_config, write_launchpad_file
    from autopipec_fw.launchpad.server import DatabaseError, EmbeddedServer

    ws = Path(args.workspace).resolve()
    server = EmbeddedServer(ws, port=args.port)
    if args.action == "start":
        info = server.start()
        write_launchpad_file(ws, host=info.host, port=info.port)
        write_fw_config(ws)
        from autopipec_fw.launchpad.files import ensure_initialized, load_launchpad

        if ensure_initialized(load_launchpad(ws / "my_launchpad.yaml")):
            print("initialised a new FireWorks database")
        print(f"embedded LaunchPad server running: {info.uri} (pid {info.pid})")
        print(f"store: {info.store}")
        print(f"wrote {ws / 'my_launchpad.yaml'} and {ws / 'FW_config.yaml'}")
    elif args.action == "stop":
        if server.in_use() and not args.force:
            raise DatabaseError(f"the embedded LaunchPad server of {ws} is in use by a running mlip-auto run-loop; "
                                "it stops the server itself when it ends (or use 'mlip-auto db stop --force')")
        print("stopped" if server.stop() else "no embedded LaunchPad server was running")
    else:
        st = server.status()
        if args.json:
            print(json.dumps(st))
        elif st["running"]:
            print(f"running: {st['uri']} (pid {st['pid']}, since {st['since']}), started by "
                  f"{st['owner_command'] or st['owner_kind']} (pid {st['owner_pid']}), store {st['store']} "
                  f"({st['store_bytes']} bytes)" + ("; in use by a run-loop" if st["in_use_by_run_loops"] else ""))
        else:
            print(f"not running; store {st['store']} ({st['store_bytes']} bytes)")
            return 3
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    campaign = _campaign_arg(args.config)  # a file, or a built-in example by name (default: the demo)
    if args.action == "check":
        from autopipec_fw.preflight import check_campaign

        # structure, calculator parameters, the DFT code (named with how to install it), finite numbers, license
        found = check_campaign(campaign, args.config or "built-in demo")
        print(f"{args.config or 'built-in demo'}: valid campaign '{campaign.name}'")
        if "executable" in found:
            print(f"oracle {found['calculator']}: {found['executable']}")
    else:
        sys.stdout.write(campaign.to_yaml())
    return 0


EXAMPLES = {"cu-adatom": "cu_adatom.yaml", "al-vacancy": "al_vacancy.yaml", "al-adatom-gpaw": "al_adatom_gpaw.yaml"}
DEFAULT_EXAMPLE = "cu-adatom"


def _campaign_arg(value: str | None, check: bool = False):
    """A campaign file path, or the name of a built-in example. ``check``: also everything checkable without a
    calculation (`autopipec_fw.preflight.check_campaign`), as submit and run-loop do before anything else."""
    if value is None:
        value = DEFAULT_EXAMPLE
    name = value.replace("_", "-")  # al_adatom_gpaw (the file's stem) names the same example
    if name in EXAMPLES and not Path(value).exists():
        from importlib.resources import files

        value = str(files("autopipec_fw") / "data" / "examples" / EXAMPLES[name])
    campaign = load_campaign(value)
    if check:
        from autopipec_fw.preflight import check_campaign

        check_campaign(campaign, value)
    return campaign


def _launchpad(path: str):
    from autopipec_fw.launchpad.files import load_launchpad

    return load_launchpad(Path(path))


def cmd_submit(args: argparse.Namespace) -> int:
    from autopipec_fw.runner import submit

    campaign = _campaign_arg(args.config, check=True)
    layout, fw_id, added = submit(campaign, _launchpad(args.launchpad))
    what = "added" if added else "already on the LaunchPad"
    print(f"campaign '{campaign.name}' {what} (workflow of fw {fw_id}); folder {layout.root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from autopipec_fw.runner import all_campaigns, campaign_status

    lp = _launchpad(args.launchpad)
    statuses = [campaign_status(lp, fid) for fid in all_campaigns(lp)]
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=1, default=str))
        return 0
    if not statuses:
        print("no campaigns on this LaunchPad")
        return 0
    from autopipec_fw.cli_views import print_status

    print_status(_console_out(), statuses)
    return 0


def _console_out():
    from rich.console import Console

    return Console()


def cmd_run_loop(args: argparse.Namespace) -> int:
    from autopipec_fw.cli_views import run_with_progress

    campaign = _campaign_arg(args.config, check=True)
    return run_with_progress(campaign, Path(args.workspace).resolve(), args.launchpad, args.workers, args.port)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autopipec_fw.dashboard import create_app, serve

    lp_file = Path(args.launchpad).resolve()
    lp = _launchpad(str(lp_file))  # a missing or bad LaunchPad file is an error now, not on the first page
    campaign_dir = Path(args.campaign).resolve() if args.campaign else None
    if campaign_dir is not None and not (campaign_dir / "campaign.yaml").is_file():
        raise FileNotFoundError(f"{campaign_dir / 'campaign.yaml'}: not a campaign folder (--campaign)")
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.user is None:
        log.warning("dashboard on %s without --user/--password: anyone who reaches this address sees it",
                    args.host)
    app = create_app(lambda: lp, campaign_dir, refresh=args.refresh, user=args.user, password=args.password,
                     source=f"LaunchPad {lp_file}" + (f", campaign {campaign_dir}" if campaign_dir else ""))
    try:
        serve(app, args.host, args.port)
    except KeyboardInterrupt:
        log.info("dashboard stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlip-auto", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the embedded LaunchPad database server")
    db.add_argument("action", choices=["start", "stop", "status"])
    db.add_argument("--workspace", default=".", help="folder holding .launchpad/ and my_launchpad.yaml")
    db.add_argument("--port", type=int, default=27018)
    db.add_argument("--json", action="store_true", help="status as JSON")
    db.add_argument("--force", action="store_true", help="stop: also while a run-loop uses the server")
    db.set_defaults(func=cmd_db)

    cfg = sub.add_parser("config", help="check or print a campaign file")
    cfg.add_argument("action", choices=["check", "show"])
    cfg.add_argument("--config", default=None, help="campaign YAML (default: the built-in demo)")
    cfg.set_defaults(func=cmd_config)

    sm = sub.add_parser("submit", help="add a campaign's workflow to the LaunchPad (once; again is a no-op)")
    sm.add_argument("--config", default=None, help="campaign YAML (default: the built-in demo)")
    sm.add_argument("--launchpad", default="my_launchpad.yaml", help="LaunchPad file (embedded server or MongoDB)")
    sm.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="per campaign: iteration, KMC steps, oracle calls, generations, stops")
    st.add_argument("--launchpad", default="my_launchpad.yaml")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    dash = sub.add_parser("dashboard", help="a live web view of the campaigns (figures of the loop, what runs, "
                          "what failed)")
    dash.add_argument("--launchpad", default="my_launchpad.yaml", help="LaunchPad file (embedded server or MongoDB)")
    dash.add_argument("--campaign", default=None, help="only this campaign folder (default: every campaign)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int, default=5050)
    dash.add_argument("--user", default=None, help="basic auth user (with --password)")
    dash.add_argument("--password", default=None, help="basic auth password (with --user)")
    dash.add_argument("--refresh", type=int, default=5, help="the page reloads every N seconds (0: never)")
    dash.set_defaults(func=cmd_dashboard)

    rl = sub.add_parser("run-loop", help="run a campaign end to end (default: the built-in demo) into dist/")
    rl.add_argument("--config", default=None, help="campaign YAML, or a built-in example name "
                    f"({', '.join(EXAMPLES)}); default: {DEFAULT_EXAMPLE}")
    rl.add_argument("--launchpad", default=None, help="LaunchPad file for your MongoDB; default: the embedded "
                    "server in the workspace, started (and stopped) here")
    rl.add_argument("--workspace", default=".", help="folder of the embedded server and campaigns/ (default: .)")
    rl.add_argument("--workers", type=int, default=2, help="Fireworks run at once (default 2)")
    rl.add_argument("--port", type=int, default=27018, help="port of the embedded server")
    rl.set_defaults(func=cmd_run_loop)
    return p


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from autopipec_fw.cli_live import setup_logging

    setup_logging(args.verbose)  # one handler for all log lines (FireWorks' own are dropped), DEBUG only with -v
    # SIGTERM (kill, a batch system's time limit) ends the command like Ctrl-C: what it started is stopped
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _error(e)
        return 2
    except LockBusy as e:  # another run-loop runs this campaign: it names itself
        _error(e)
        return 3
    except RuntimeError as e:  # DatabaseError and stage failures carry a readable message
        _error(e)
        return 1
    except KeyboardInterrupt:
        _console().print("interrupted")
        return 130
    except Exception as e:
        from pymongo.errors import ConnectionFailure

        if not isinstance(e, ConnectionFailure):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _error(RuntimeError(f"the LaunchPad database is not answering ({type(e).__name__}: {first[:200]}); "
                            "check it (mlip-auto db status) and run the same command again"))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
