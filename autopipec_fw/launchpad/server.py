"""The embedded LaunchPad database: a MongoDB-wire-protocol server (mongoeco) on 127.0.0.1 with an SQLite store.

`mlip-auto db start|stop|status` manages it. State lives in `<workspace>/.launchpad/`:
`store.sqlite` (the data), `server.json` (pid, host, port), `server.log`. The server is a detached process
stopped by its PID. Stock `lpad`, `rlaunch`, `qlaunch` and `lpad webgui` use it through the
`my_launchpad.yaml` written next to it (see `launchpad.files`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from autopipec_fw.processes import pid_alive as _pid_alive

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 27018
STATE_DIR = ".launchpad"


class DatabaseError(RuntimeError):
    """The embedded server cannot be started, reached or stopped; the message says why."""


@dataclass
class ServerInfo:
    pid: int
    host: str
    port: int
    store: str

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"


def _pid_is_our_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)
    return b"autopipec_fw.launchpad.server" in cmdline


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _check_store(store: Path) -> None:
    """Refuse a store that exists but is not a readable SQLite database."""
    if not store.exists():
        return
    if not os.access(store, os.R_OK | os.W_OK):
        raise DatabaseError(f"{store}: the LaunchPad store is not readable and writable by this user")
    try:
        with open(store, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise DatabaseError(f"{store}: cannot read the LaunchPad store ({e.strerror})") from None
    if head and head != b"SQLite format 3\x00":
        raise DatabaseError(f"{store}: not an SQLite database (the LaunchPad store is damaged or not ours)")
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{store}: the LaunchPad store is unreadable ({e})") from None


class EmbeddedServer:
    """Start, stop and inspect the embedded server of one workspace."""

    def __init__(self, workspace: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.workspace = Path(workspace).resolve()
        self.state = self.workspace / STATE_DIR
        self.store = self.state / "store.sqlite"
        self.info_file = self.state / "server.json"
        self.log_file = self.state / "server.log"
        self.host = host
        self.port = port

    # ---- state
    def info(self) -> ServerInfo | None:
        """The recorded server, or None. A record whose process is gone is stale and removed."""
        try:
            data = json.loads(self.info_file.read_text())
            info = ServerInfo(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            log.warning("%s is unreadable (%s); treating it as stale", self.info_file, e)
            self.info_file.unlink(missing_ok=True)
            return None
        if not (_pid_alive(info.pid) and _pid_is_our_server(info.pid)):
            log.warning("removing stale PID file %s (process %d is not running)", self.info_file, info.pid)
            self.info_file.unlink(missing_ok=True)
            return None
        return info

    def status(self) -> dict[str, object]:
        info = self.info()
        size = self.store.stat().st_size if self.store.exists() else 0
        if info is None:
            return {"running": False, "store": str(self.store), "store_bytes": size}
        return {"running": True, **asdict(info), "uri": info.uri, "store_bytes": size,
                "responding": port_in_use(info.host, info.port)}

    # ---- lifecycle
    def start(self, timeout: float = 60.0) -> ServerInfo:
        """Start the server (idempotent: an already running one is returned as is)."""
        self.state.mkdir(parents=True, exist_ok=True)
        running = self.info()
        if running is not None:
            log.info("embedded LaunchPad server already running (pid %d, port %d)", running.pid, running.port)
            return running
        _check_store(self.store)
        if port_in_use(self.host, self.port):
            raise DatabaseError(
                f"port {self.port} on {self.host} is already in use by another program; "
                f"stop it or choose another port (mlip-auto db start --port N)"
            )
        argv = [sys.executable, "-m", "autopipec_fw.launchpad.server", "serve",
                "--store", str(self.store), "--host", self.host, "--port", str(self.port)]
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.state,
            )
        info = ServerInfo(pid=proc.pid, host=self.host, port=self.port, store=str(self.store))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                raise DatabaseError(
                    "the embedded LaunchPad server exited at start-up (exit code "
                    f"{proc.returncode}); {self.log_file} ends with:\n  " + "\n  ".join(tail)
                )
            if port_in_use(self.host, self.port) and _ping(info.uri):
                tmp = self.info_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(asdict(info)))
                os.replace(tmp, self.info_file)
                log.info("embedded LaunchPad server up: %s (pid %d)", info.uri, info.pid)
                return info
            time.sleep(0.2)
        proc.kill()
        raise DatabaseError(f"the embedded LaunchPad server did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the recorded server by its PID (SIGTERM, then SIGKILL). Returns False if none was running."""
        info = self.info()
        if info is None:
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(info.pid):
            log.warning("server pid %d ignored SIGTERM for %.0f s; killing it", info.pid, timeout)
            os.kill(info.pid, signal.SIGKILL)
            while _pid_alive(info.pid):
                time.sleep(0.05)
        self.info_file.unlink(missing_ok=True)
        log.info("embedded LaunchPad server (pid %d) stopped", info.pid)
        return True


def _ping(uri: str) -> bool:
    try:
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1500)
        try:
            client.admin.command("ping")
            return True
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False


# ---- the server process itself
async def _serve(store: Path, host: str, port: int) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    proxy = AsyncMongoEcoProxyServer(engine=SQLiteEngine(str(store)), host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    addr = await proxy.start()
    log.info("serving %s with store %s", addr.uri, store)
    try:
        await stop.wait()
    finally:
        await proxy.close()
        log.info("server closed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopipec_fw.launchpad.server")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--host", default=DEFAULT_HOST)
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args.store, args.host, args.port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log.error("port %d on %s is already in use", args.port, args.host)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
