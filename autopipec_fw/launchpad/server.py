"""The embedded LaunchPad database: a MongoDB-wire-protocol server (mongoeco) on 127.0.0.1 with an SQLite store.

`mlip-auto db start|stop|status` manages it; `mlip-auto run-loop` uses it (`EmbeddedServer.use`). State lives in
`<workspace>/.launchpad/`: `store.sqlite` (the data), `server.json` (pid, host, port, owner; written by the server
itself), `server.log`, and the locks described in `EmbeddedServer`. Lifecycle rules:

- one server per store: the server process holds an flock on `store.sqlite.server.lock` for its whole life; a
  second one on the same store exits at once (code 3). A `server.json` whose server does not hold that lock is
  stale and removed.
- stopped only by its owner: `db start` makes the user the owner (only `db stop` stops it); a run-loop that
  starts it owns it and stops it when it ends, unless another run-loop still uses it, in which case the last
  run-loop to end stops it. A run-loop that finds a server started by a run-loop that has died (kill -9) adopts
  it with its ownership. A run-loop that merely uses a server owned by a live process never stops it.
- what mongoeco lacks is translated here, on our side of the wire (`translate_command`).
Stock `lpad`, `rlaunch`, `qlaunch` and `lpad webgui` use the server through the `my_launchpad.yaml` written next to
it (see `launchpad.files`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from autopipec_fw.launchpad.locks import Holder, HolderLock, LockBusy, SharedLock, flocked, is_locked
from autopipec_fw.processes import create_time, is_same_process, terminate
from autopipec_fw.processes import pid_alive as _pid_alive  # noqa: F401 - used by the tests

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 27018
STATE_DIR = ".launchpad"


class DatabaseError(RuntimeError):
    """The embedded server cannot be started, reached or stopped; the message says why."""


OWNER_RUN_LOOP = "run-loop"
OWNER_USER = "db start"


@dataclass
class ServerInfo:
    """What `server.json` says: the server process, and who started it (its owner)."""

    pid: int
    host: str
    port: int
    store: str
    started: float | None = None  # the server process's creation time
    since: str = ""
    owner_pid: int | None = None
    owner_host: str = ""
    owner_started: float | None = None
    owner_kind: str = OWNER_USER
    owner_command: str = ""

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def owner_alive(self) -> bool:
        """The process that started (or last adopted) the server still runs (on another host: assumed yes)."""
        if self.owner_pid is None:
            return False
        if self.owner_host and self.owner_host != socket.gethostname():
            return True
        return is_same_process(self.owner_pid, self.owner_started)

    def owner_description(self) -> str:
        what = f"'{self.owner_command}'" if self.owner_command else self.owner_kind
        return f"{what} (pid {self.owner_pid} on host {self.owner_host or '?'})"

    @classmethod
    def from_json(cls, text: str) -> ServerInfo:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


def store_lock_path(store: Path) -> Path:
    """The file the server process holds (flock) for its whole life: one server per store."""
    return Path(store).with_name(Path(store).name + ".server.lock")


class EmbeddedServer:
    """Start, stop and inspect the embedded server of one workspace.

    Files in `<workspace>/.launchpad/`: `store.sqlite` (the data), `store.sqlite.server.lock` (held by the
    server process while it runs: a second server on the same store refuses to start), `server.json` (written by
    the server: pid, port, owner), `server.log`, `control.lock` (start, adopt and stop happen one at a time),
    `users.lock` (a shared lock held by every run-loop using the server).
    """

    def __init__(self, workspace: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.workspace = Path(workspace).resolve()
        self.state = self.workspace / STATE_DIR
        self.store = self.state / "store.sqlite"
        self.info_file = self.state / "server.json"
        self.log_file = self.state / "server.log"
        self.control_file = self.state / "control.lock"
        self.users_file = self.state / "users.lock"
        self.host = host
        self.port = port

    # ---- state
    def running(self) -> bool:
        """A server process holds this store (whatever server.json says)."""
        return is_locked(store_lock_path(self.store))

    def info(self) -> ServerInfo | None:
        """The running server, or None. A `server.json` whose server is gone is stale and removed."""
        try:
            info = ServerInfo.from_json(self.info_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            if self.running():
                return None  # being written right now
            log.warning("%s is unreadable (%s); treating it as stale", self.info_file, e)
            self.info_file.unlink(missing_ok=True)
            return None
        if not self.running() or not is_same_process(info.pid, info.started):
            if self.running():
                return None  # another server holds the store and has not written its record yet
            log.warning("removing stale %s (server pid %d is not running)", self.info_file, info.pid)
            self.info_file.unlink(missing_ok=True)
            return None
        return info

    def in_use(self) -> bool:
        """Some run-loop uses the server (holds users.lock)."""
        return is_locked(self.users_file)

    def status(self) -> dict[str, object]:
        info = self.info()
        size = self.store.stat().st_size if self.store.exists() else 0
        if info is None:
            return {"running": False, "store": str(self.store), "store_bytes": size}
        return {"running": True, **asdict(info), "uri": info.uri, "store_bytes": size,
                "responding": port_in_use(info.host, info.port),
                "in_use_by_run_loops": is_locked(self.users_file)}

    def _write_owner(self, info: ServerInfo, owner: Holder, kind: str) -> ServerInfo:
        info = replace(info, owner_pid=owner.pid, owner_host=owner.host, owner_started=owner.started,
                       owner_kind=kind, owner_command=owner.command)
        _atomic_json(self.info_file, asdict(info))
        return info

    # ---- lifecycle
    def start(self, timeout: float = 60.0, owner: Holder | None = None, kind: str = OWNER_USER) -> ServerInfo:
        """Start the server (idempotent: an already running one is returned as is)."""
        self.state.mkdir(parents=True, exist_ok=True)
        with flocked(self.control_file, f"the embedded LaunchPad server of {self.workspace}", timeout=timeout):
            return self._start_locked(timeout, owner or Holder.me(), kind)

    def _start_locked(self, timeout: float, owner: Holder, kind: str) -> ServerInfo:
        running = self.info()
        if running is not None:
            log.info("embedded LaunchPad server already running (pid %d, port %d)", running.pid, running.port)
            return running
        _check_store(self.store)
        deadline = time.monotonic() + timeout
        while self.running():  # a server started by hand, still writing server.json (or shutting down)
            if time.monotonic() > deadline:
                raise DatabaseError(f"{store_lock_path(self.store)} is held by a process that never wrote "
                                    f"{self.info_file}; is another program serving this store?")
            time.sleep(0.1)
            running = self.info()
            if running is not None:
                return running
        if port_in_use(self.host, self.port):
            raise DatabaseError(
                f"port {self.port} on {self.host} is already in use by another program; "
                f"stop it or choose another port (mlip-auto db start --port N)"
            )
        self.info_file.unlink(missing_ok=True)
        record = {"pid": owner.pid, "host": owner.host, "started": owner.started, "kind": kind,
                  "command": owner.command}
        argv = [sys.executable, "-m", "autopipec_fw.launchpad.server", "serve",
                "--store", str(self.store), "--host", self.host, "--port", str(self.port),
                "--info-file", str(self.info_file), "--owner", json.dumps(record)]
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.state,
            )
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                running = self.info()
                if running is not None:  # lost a race for the store to a server started by hand
                    return running
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                raise DatabaseError(
                    "the embedded LaunchPad server exited at start-up (exit code "
                    f"{proc.returncode}); {self.log_file} ends with:\n  " + "\n  ".join(tail)
                )
            info = self.info()
            if info is not None and info.pid == proc.pid and _ping(info.uri):
                log.info("embedded LaunchPad server up: %s (pid %d)", info.uri, info.pid)
                return info
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        raise DatabaseError(f"the embedded LaunchPad server did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the running server (SIGTERM, then SIGKILL). Returns False if none was running."""
        self.state.mkdir(parents=True, exist_ok=True)
        with flocked(self.control_file, f"the embedded LaunchPad server of {self.workspace}", timeout=timeout + 60):
            return self._stop_locked(timeout)

    def _stop_locked(self, timeout: float) -> bool:
        info = self.info()
        if info is None:
            return False
        if not terminate(info.pid, timeout):
            raise DatabaseError(f"the embedded LaunchPad server (pid {info.pid}) could not be stopped")
        # a multi-threaded process shows as a zombie while its last threads still hold its files: wait for the
        # store lock to go, so that a stopped server's store is free
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        # the server removes its own record; a SIGKILLed one cannot
        self.info_file.unlink(missing_ok=True)
        log.info("embedded LaunchPad server (pid %d) stopped", info.pid)
        return True

    def use(self, command: str | None = None, timeout: float = 60.0) -> ServerLease:
        """A run-loop's use of the server: started here if none runs (then this process owns it), else adopted.

        A server whose owner was a run-loop that is gone (killed, crashed) is adopted *with* its ownership, so
        the last run-loop to leave stops it. A server started with `mlip-auto db start` is never stopped here."""
        self.state.mkdir(parents=True, exist_ok=True)
        me = Holder.me(command=command)
        users = SharedLock(self.users_file)
        with flocked(self.control_file, f"the embedded LaunchPad server of {self.workspace}", timeout=timeout):
            users.acquire()
            try:
                info = self.info()
                if info is None:
                    info = self._start_locked(timeout, me, OWNER_RUN_LOOP)
                    how = "started"
                elif info.owner_kind == OWNER_RUN_LOOP and not info.owner_alive():
                    log.warning("adopting the embedded LaunchPad server pid %d left by %s, which is gone; "
                                "it is stopped when the last run-loop using it ends", info.pid,
                                info.owner_description())
                    info = self._write_owner(info, me, OWNER_RUN_LOOP)
                    how = "adopted (owner gone)"
                else:
                    log.info("using the embedded LaunchPad server pid %d (port %d) started by %s; it is left "
                             "running", info.pid, info.port, info.owner_description())
                    how = "shared"
            except BaseException:
                users.release()
                raise
        if info.port != self.port:
            log.info("the running server listens on port %d (not %d); using it", info.port, self.port)
        return ServerLease(self, info, users, me, how)


@dataclass
class ServerLease:
    """One run-loop's use of the embedded server; `release()` stops the server when this process owns it (or
    inherits it from a gone owner) and no other run-loop uses it."""

    server: EmbeddedServer
    info: ServerInfo
    users: SharedLock
    me: Holder
    how: str

    def alive(self) -> bool:
        return is_same_process(self.info.pid, self.info.started)

    def release(self, timeout: float = 20.0) -> bool:
        """True if the server was stopped here."""
        stopped = False
        try:
            with flocked(self.server.control_file, f"the embedded LaunchPad server of {self.server.workspace}",
                         timeout=timeout + 60):
                info = self.server.info()
                if info is not None and info.owner_kind == OWNER_RUN_LOOP:
                    mine = info.owner_pid == self.me.pid and info.owner_host == self.me.host
                    if (mine or not info.owner_alive()) and not self.users.others_present():
                        stopped = self.server._stop_locked(timeout)
                    elif mine:
                        log.info("leaving the embedded LaunchPad server running: another run-loop uses it "
                                 "(the last one to end stops it)")
        finally:
            self.users.release()
        return stopped


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


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


# ---- what mongoeco lacks, translated on our side of the wire
SUBSTR_OPERATORS = ("$substr", "$substrBytes", "$substrCP")
# MongoDB turns a date into this string when a string operator gets one (e.g. 2026-12-02T07:16:29.418Z)
MONGO_DATE_STRING = "%Y-%m-%dT%H:%M:%S.%LZ"
_NUMERIC_TYPES = ["int", "long", "double", "decimal"]
_VAR = "apfw_substr_arg"


def _coerced_to_string(expr: object) -> dict:
    """An expression that is ``expr`` as MongoDB's string operators see it: a date becomes its ISO string, a
    number its decimal string; anything else is passed through (mongoeco then judges it as MongoDB would)."""
    v = f"$${_VAR}"
    return {"$let": {"vars": {_VAR: expr}, "in": {"$cond": [
        {"$eq": [{"$type": v}, "date"]},
        {"$dateToString": {"date": v, "format": MONGO_DATE_STRING}},
        {"$cond": [{"$in": [{"$type": v}, _NUMERIC_TYPES]}, {"$toString": v}, v]},
    ]}}}


def _translate_expression(node: object) -> object:
    if isinstance(node, list):
        return [_translate_expression(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$literal":
            out[key] = value
        elif key in SUBSTR_OPERATORS and isinstance(value, list) and len(value) == 3:
            first = _translate_expression(value[0])
            if not (isinstance(first, str) and not first.startswith("$")):  # a literal string needs nothing
                first = _coerced_to_string(first)
            out[key] = [first, *(_translate_expression(x) for x in value[1:])]
        else:
            out[key] = _translate_expression(value)
    return out


def translate_command(body: dict) -> dict:
    """The command as mongoeco can run it. Today: `$substr` (and `$substrBytes`, `$substrCP`) on a date or a
    number in an aggregation, which MongoDB allows (FireWorks' `lpad report` and the webgui's /report/ pages
    take `$substr` of the workflows' `updated_on` date) and mongoeco refuses ("requires the first argument to
    evaluate to a string")."""
    if not body or next(iter(body)) != "aggregate" or not isinstance(body.get("pipeline"), list):
        return body
    translated = dict(body)
    translated["pipeline"] = _translate_expression(body["pipeline"])
    return translated


def _translating_proxy(engine: object, host: str, port: int):
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    proxy = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port)
    # every request (OP_MSG and legacy OP_QUERY) is turned into a request context here (mongoeco 4.11)
    build = proxy._executor._build_request_context

    def build_translated(body: dict, **kwargs: object):
        return build(translate_command(body), **kwargs)

    proxy._executor._build_request_context = build_translated
    return proxy


# ---- the server process itself
async def _serve(store: Path, host: str, port: int, info_file: Path | None, owner: dict) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine

    proxy = _translating_proxy(SQLiteEngine(str(store)), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    addr = await proxy.start()
    me = os.getpid()
    if info_file is not None:
        info = ServerInfo(pid=me, host=host, port=addr.port, store=str(store), started=create_time(me),
                          since=time.strftime("%Y-%m-%dT%H:%M:%S%z"), owner_pid=owner.get("pid"),
                          owner_host=owner.get("host", ""), owner_started=owner.get("started"),
                          owner_kind=owner.get("kind", OWNER_USER), owner_command=owner.get("command", ""))
        _atomic_json(info_file, asdict(info))
    log.info("serving %s with store %s", addr.uri, store)
    try:
        await stop.wait()
    finally:
        await proxy.close()
        if info_file is not None:
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                if ServerInfo.from_json(info_file.read_text()).pid == me:
                    info_file.unlink()
        log.info("server closed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopipec_fw.launchpad.server")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--store", required=True, type=Path)
    s.add_argument("--host", default=DEFAULT_HOST)
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--info-file", type=Path, default=None, help="server.json to write once serving")
    s.add_argument("--owner", default="{}", help="JSON: pid, host, started, kind, command of the starter")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = args.store.resolve()
    lock = HolderLock(store_lock_path(store), f"the LaunchPad store {store}")
    try:
        lock.acquire(Holder.me(command=f"embedded LaunchPad server (port {args.port})"))
    except LockBusy as e:
        log.error("another server already serves this store: %s", e)
        return 3
    try:
        asyncio.run(_serve(store, args.host, args.port, args.info_file, json.loads(args.owner)))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log.error("port %d on %s is already in use", args.port, args.host)
            return 2
        raise
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
