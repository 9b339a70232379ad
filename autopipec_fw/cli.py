"""mlip-auto: the command line of autopipec-fw."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from autopipec_fw.config import ConfigError, load_campaign

log = logging.getLogger("mlip-auto")


def _console():
    from rich.console import Console

    return Console(stderr=True)


# ---------------------------------------------------------------- db
def cmd_db(args: argparse.Namespace) -> int:
    from autopipec_fw.launchpad.files import write_fw_config, write_launchpad_file
    from autopipec_fw.launchpad.server import EmbeddedServer

    ws = Path(args.workspace).resolve()
    server = EmbeddedServer(ws, port=args.port)
    if args.action == "start":
        info = server.start()
        write_launchpad_file(ws, host=info.host, port=info.port)
        write_fw_config(ws)
        print(f"embedded LaunchPad server running: {info.uri} (pid {info.pid})")
        print(f"store: {info.store}")
        print(f"wrote {ws / 'my_launchpad.yaml'} and {ws / 'FW_config.yaml'}")
    elif args.action == "stop":
        print("stopped" if server.stop() else "no embedded LaunchPad server was running")
    else:
        st = server.status()
        if args.json:
            print(json.dumps(st))
        elif st["running"]:
            print(f"running: {st['uri']} (pid {st['pid']}), store {st['store']} ({st['store_bytes']} bytes)")
        else:
            print(f"not running; store {st['store']} ({st['store_bytes']} bytes)")
            return 3
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    campaign = load_campaign(args.config)
    if args.action == "check":
        print(f"{args.config or 'built-in demo'}: valid campaign '{campaign.name}'")
    else:
        sys.stdout.write(campaign.to_yaml())
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
    db.set_defaults(func=cmd_db)

    cfg = sub.add_parser("config", help="check or print a campaign file")
    cfg.add_argument("action", choices=["check", "show"])
    cfg.add_argument("--config", default=None, help="campaign YAML (default: the built-in demo)")
    cfg.set_defaults(func=cmd_config)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


# later stages register their sub-commands here (run-loop, submit, status, ...)
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _console().print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    except RuntimeError as e:  # DatabaseError and stage failures carry a readable message
        _console().print(f"[red]error:[/red] {e}", highlight=False)
        return 1
    except KeyboardInterrupt:
        _console().print("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
