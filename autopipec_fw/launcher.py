"""A warm Firework launcher: one process that imports FireWorks and the stage code once, then forks a child per
Firework. The child does what `rlaunch singleshot --fw_id N` does (`launch_rocket(launchpad, fworker, fw_id=N)`:
a launch document, a launcher folder, the Firetasks), so the LaunchPad sees an ordinary launch; it only skips the
seconds an `rlaunch` process spends importing Python, FireWorks, ASE and pyace before it starts.

    python -m autopipec_fw.launcher --launchpad my_launchpad.yaml [--fworker my_fworker.yaml]

Protocol, one line each way: the runner writes ``run <fw_id> <launch folder> <log file>`` on stdin; the launcher
answers ``started <fw_id> <pid>`` and, when that child has exited, ``exited <fw_id> <returncode>`` on stdout.
Each child leads its own process group (a Firework's own subprocesses, e.g. pacemaker, go with it). End of stdin
(the runner is gone) or SIGTERM: the children's groups get SIGTERM and the launcher exits; their Fireworks stay
RUNNING in the database, which is what a lost node looks like, and `mlip-auto run-loop` reruns them next time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

# imported once here, before any fork: what every stage's Firetask needs (not TensorFlow: fits run pacemaker in a
# subprocess)
PRELOAD = (
    "fireworks.core.rocket_launcher",
    "fireworks.core.launchpad",
    "fireworks.core.fworker",
    "autopipec_fw.firetasks",
    "autopipec_fw.campaign",
    "autopipec_fw.workflows",
    "ase.io",
    "autopipec_fw.oracle.label",
    "autopipec_fw.training.dataset",
    "autopipec_fw.training.fit",
    "autopipec_fw.training.select",
    "autopipec_fw.eon.akmc",
    "autopipec_fw.gamma",
    "autopipec_fw.production.validate",
    "autopipec_fw.production.deployer",
    "pyace",
    "custodian.custodian",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import what can be imported; returns the modules that failed (they are imported by the child instead)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional stage dependency missing is the child's business
            failed.append(name)
    return failed


def _child(fw_id: int, launch_dir: Path, log_file: Path, launchpad_file: Path, fworker_file: Path | None) -> int:
    """In the forked child: run Firework ``fw_id`` like `rlaunch singleshot --fw_id`."""
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    # our stage code's log lines go to the Firework's log; FireWorks' own loggers have their own handlers
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: not logging.getLogger(record.name).handlers)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        from fireworks.core.fworker import FWorker
        from fireworks.core.launchpad import LaunchPad
        from fireworks.core.rocket_launcher import launch_rocket

        os.chdir(launch_dir)
        lp = LaunchPad.from_file(str(launchpad_file))
        fworker = FWorker.from_file(str(fworker_file)) if fworker_file else FWorker()
        launch_rocket(lp, fworker, fw_id=fw_id)
        return 0
    except BaseException:  # noqa: BLE001 - reported in the Firework's log, the runner sees the return code
        traceback.print_exc()
        return 1


class Launcher:
    """The launcher's loop: read requests, fork children, report their exits."""

    def __init__(self, launchpad_file: Path, fworker_file: Path | None) -> None:
        self.launchpad_file = launchpad_file
        self.fworker_file = fworker_file
        self.children: dict[int, int] = {}  # pid -> fw_id
        self.stopping = False

    def _say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def start(self, fw_id: int, launch_dir: Path, log_file: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                rc = _child(fw_id, launch_dir, log_file, self.launchpad_file, self.fworker_file)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(rc)
        self.children[pid] = fw_id
        self._say(f"started {fw_id} {pid}")

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            fw_id = self.children.pop(pid, None)
            if fw_id is not None:
                self._say(f"exited {fw_id} {os.waitstatus_to_exitcode(status)}")

    def stop_children(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.reap()

    def handle(self, line: str) -> None:
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[0] == "run" and parts[1].isdigit():
            self.start(int(parts[1]), Path(parts[2]), Path(parts[3]))
        elif line.strip():
            log.error("launcher: cannot read request %r (expected 'run <fw_id> <folder> <log>')", line)

    def loop(self) -> int:
        def _term(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        buf = b""
        stdin = sys.stdin.fileno()
        try:
            while not self.stopping:
                try:
                    ready, _, _ = select.select([stdin], [], [], 0.05)
                except InterruptedError:
                    continue
                if ready:
                    chunk = os.read(stdin, 65536)
                    if not chunk:
                        break  # the runner is gone
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self.handle(line.decode())
                self.reap()
        finally:
            self.stop_children()
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launchpad", type=Path, required=True)
    ap.add_argument("--fworker", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    failed = preload()
    if failed:
        log.info("launcher: not preloaded (imported per Firework instead): %s", ", ".join(failed))
    Launcher(args.launchpad.resolve(), args.fworker.resolve() if args.fworker else None).loop()
    return 0



class LauncherClient:
    """The runner's side: starts ``python -m autopipec_fw.launcher`` and talks to it."""

    def __init__(self, launchpad_file: Path, fworker_file: Path | None, env: dict[str, str], log_file: Path) -> None:
        argv = [sys.executable, "-m", "autopipec_fw.launcher", "--launchpad", str(launchpad_file)]
        if fworker_file is not None:
            argv += ["--fworker", str(fworker_file)]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as err:
            self.proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True
            )
        self.started: dict[int, int] = {}
        self.exited: dict[int, int] = {}
        self._cond = threading.Condition()
        self._exit_event = threading.Event()
        self._reader = threading.Thread(target=self._read, name="launcher-reader", daemon=True)
        self._reader.start()
        log.info("warm launcher started (pid %d)", self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode(errors="replace").split()
            if len(parts) == 3 and parts[1].lstrip("-").isdigit() and parts[2].lstrip("-").isdigit():
                with self._cond:
                    if parts[0] == "started":
                        self.started[int(parts[1])] = int(parts[2])
                    elif parts[0] == "exited":
                        self.exited[int(parts[1])] = int(parts[2])
                        self._exit_event.set()
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, fw_id: int, launch_dir: Path, log_file: Path, timeout: float = 120.0) -> int:
        """Ask for Firework ``fw_id``; returns the child's pid once it is forked."""
        for p in (launch_dir, log_file):
            if any(c.isspace() for c in str(p)):
                raise ValueError(f"{p}: the warm launcher needs paths without white space")
        with self._cond:
            self.started.pop(fw_id, None)
            self.exited.pop(fw_id, None)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {fw_id} {launch_dir} {log_file}\n".encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while fw_id not in self.started:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    raise RuntimeError(f"the warm launcher (pid {self.proc.pid}) did not start fw {fw_id}")
                self._cond.wait(min(left, 0.5))
            return self.started[fw_id]

    def wait_for_exit(self, timeout: float) -> bool:
        """Sleep until a launch exits (True) or ``timeout`` seconds pass (False)."""
        happened = self._exit_event.wait(timeout)
        self._exit_event.clear()
        return happened

    def exit_code(self, fw_id: int) -> int | None:
        with self._cond:
            return self.exited.get(fw_id)

    def close(self, timeout: float = 20.0) -> None:
        """End of stdin: the launcher stops what still runs and exits."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=5)


if __name__ == "__main__":
    raise SystemExit(main())
