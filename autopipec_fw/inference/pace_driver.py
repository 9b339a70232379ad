#!/usr/bin/env python3
"""eOn ext_pot driver for an ACE potential with an extrapolation (gamma) stop.

eOn runs this program in a folder holding ``from_eon_to_extpot`` (3 box rows, then ``Z x y z`` per atom, Å);
it writes ``from_extpot_to_eon`` (energy in eV, then ``fx fy fz`` per atom in eV/Å) and exits 0.

When the largest per-atom gamma exceeds ``--gamma-max``, the structure goes to ``--candidates-dir`` (extxyz with
per-atom gamma, energy, forces), one line is appended to ``--stop-file``, no result file is written and the exit
code is 100. Bad input or potential: one line on stderr, exit 2 (input/options) or 3 (potential), no result file.

Every option can also be given as an environment variable (a bare ``ext_pot_path`` then works); command-line
options win. ``python pace_driver.py --help`` lists them.

Daemon mode: when a persistent evaluator (``autopipec_fw.inference.evaluator``) listens on ``--socket`` (default
``<run-dir>/pace_evaluator.sock``), this program only forwards the call to it and imports nothing but the standard
library's ``_socket``/``os``/``sys``. Without a reachable evaluator it loads the potential itself (fallback).

This file must stay importable and runnable by any Python 3 without third-party packages on the forwarding path.
When the fallback needs pyace and the running interpreter lacks it, the driver re-executes itself with
``PACE_DRIVER_PYTHON`` or the project's ``.venv/bin/python`` next to the package.
"""

import posix  # the built-in half of `os`: importing os itself costs milliseconds on this path
import sys

INPUT_NAME = "from_eon_to_extpot"
OUTPUT_NAME = "from_extpot_to_eon"
SOCKET_NAME = "pace_evaluator.sock"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_POTENTIAL = 3
EXIT_STOP = 100

# option name -> (environment variable, is a path, help)
OPTIONS = {
    "potential": ("PACE_DRIVER_POTENTIAL", True, "B-basis potential .yaml (needed for gamma)"),
    "active-set": (
        "PACE_DRIVER_ACTIVE_SET",
        True,
        "active set .asi (default: the potential's name with .asi)",
    ),
    "gamma-max": ("PACE_DRIVER_GAMMA_MAX", False, "stop when max per-atom gamma exceeds this (default 5)"),
    "gamma-select": (
        "PACE_DRIVER_GAMMA_SELECT",
        False,
        "record a candidate (no stop) when max gamma is above this and at most gamma-max (default: off)",
    ),
    "max-selected": ("PACE_DRIVER_MAX_SELECTED", False, "keep at most this many non-stop candidates"),
    "stop-file": ("PACE_DRIVER_STOP_FILE", True, "file to append a JSON line to on a stop"),
    "candidates-dir": ("PACE_DRIVER_CANDIDATES_DIR", True, "folder for candidate structures (extxyz)"),
    "calls-file": ("PACE_DRIVER_CALLS_FILE", True, "append one line (max gamma) per force call"),
    "run-dir": (
        "PACE_DRIVER_RUN_DIR",
        True,
        "aKMC run folder: holds the socket and the default stop file (pace_stop) and candidates dir "
        "(pace_candidates/); without it those defaults go to the parent of the call folder (eOn's job folder)",
    ),
    "socket": ("PACE_DRIVER_SOCKET", True, "evaluator socket (default <run-dir>/pace_evaluator.sock)"),
    "fallback": ("PACE_DRIVER_FALLBACK", False, "1 (default): load the potential when no evaluator answers"),
    "timeout": ("PACE_DRIVER_TIMEOUT", False, "seconds to wait for the evaluator's answer (default 600)"),
}


class UsageError(Exception):
    pass


def parse_options(argv, environ):
    """Options as a dict of strings: command line over environment; relative paths made absolute."""
    opts = {}
    level = {}  # where each option came from: 0 environment, 1+ position on the command line
    for name, (env, _, _) in OPTIONS.items():
        v = environ.get(env)
        if v:
            opts[name] = v
            level[name] = 0
    i = 0
    n = len(argv)
    while i < n:
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise UsageError("help")
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r} (options are --name value)")
        name, eq, value = arg[2:].partition("=")
        if name not in OPTIONS:
            raise UsageError(f"unknown option --{name}")
        if not eq:
            i += 1
            if i >= n:
                raise UsageError(f"option --{name} needs a value")
            value = argv[i]
        opts[name] = value
        level[name] = i + 1
        i += 1
    # an active set belongs to the potential given with it: a potential given later uses its own .asi
    if "active-set" in opts and level.get("potential", -1) > level["active-set"]:
        del opts["active-set"]
    for name, (_, is_path, _) in OPTIONS.items():
        v = opts.get(name)
        if is_path and v and not v.startswith("/"):
            opts[name] = abspath(v)
    return opts


def abspath(p):
    """``os.path.abspath`` (lexical: joined with the current folder, ``.`` and ``..`` resolved) without os."""
    if not p.startswith("/"):
        p = posix.getcwd() + "/" + p
    parts = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return "/" + "/".join(parts)


def known_environment():
    """The driver's variables from the environment (str), read through posix without importing os."""
    env = posix.environ
    out = {}
    for name, _, _ in OPTIONS.values():
        v = env.get(name.encode())
        if v:
            out[name] = v.decode("utf-8", "surrogateescape")
    return out


def usage():
    lines = [
        f"usage: pace_driver.py [--option value ...]   (run by eOn's ext_pot in the folder holding {INPUT_NAME})",
        "options (each also read from the environment variable shown; the command line wins):",
    ]
    for name, (env, _, text) in OPTIONS.items():
        lines.append(f"  --{name:<15} {env:<28} {text}")
    lines.append("exit codes: 0 ok, 100 gamma stop, 2 bad input/options, 3 bad potential, 1 internal error")
    return "\n".join(lines)


def socket_path(opts):
    """The evaluator socket these options point at, or None."""
    s = opts.get("socket")
    if s:
        return s
    run_dir = opts.get("run-dir")
    if run_dir:
        return socket_path_for(run_dir)
    return None


def socket_path_for(run_dir):
    """``<run_dir>/pace_evaluator.sock``, or a short path under the temp dir when that is too long for AF_UNIX."""
    d = abspath(run_dir)
    p = d + "/" + SOCKET_NAME
    if len(p.encode()) <= 100:
        return p
    import hashlib  # only for very long run-dir paths
    import os

    h = hashlib.sha256(d.encode()).hexdigest()[:24]
    base = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, f"autopipec-{os.getuid()}", h + ".sock")


def encode_request(workdir, opts):
    parts = ["EVAL", workdir]
    for k, v in opts.items():
        if k in ("socket", "fallback", "timeout"):
            continue
        parts.append(k + "=" + v)
    return "\0".join(parts).encode("utf-8", "surrogateescape")


def forward(sock_path, payload, timeout):
    """Send one request; (code, message) from the evaluator, or None when no evaluator answered."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            s.connect(sock_path)
        except OSError:
            return None
        s.settimeout(timeout)
        try:
            s.sendall(payload)
            s.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        except OSError:
            return None
    finally:
        s.close()
    reply = b"".join(chunks).decode("utf-8", "replace")
    code, _, message = reply.partition(" ")
    if not code.isdigit():
        return None  # the evaluator died mid-call: fall back
    return int(code), message


def _venv_python():
    import os

    env = os.environ.get("PACE_DRIVER_PYTHON")
    if env:
        return env
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    cand = os.path.join(root, ".venv", "bin", "python")
    return cand if os.path.exists(cand) else None


def run_local(workdir, opts, argv):
    """Fallback: load the potential in this process (imports pyace: ~1 s)."""
    import os

    if sys.flags.no_site:
        import site

        site.main()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    if root not in sys.path:
        sys.path.append(root)
    import importlib.util

    if importlib.util.find_spec("pyace") is None:
        other = _venv_python()
        if (
            other
            and not os.environ.get("_PACE_DRIVER_REEXEC")
            and os.path.realpath(other) != os.path.realpath(sys.executable)
        ):
            os.environ["_PACE_DRIVER_REEXEC"] = "1"
            os.execv(other, [other, "-I", "-S", os.path.realpath(__file__), *argv])
        return EXIT_INTERNAL, (
            f"cannot load the potential: pyace is not importable by {sys.executable}; run the driver with the "
            "project's Python (set PACE_DRIVER_PYTHON, or use the wrapper from write_driver_wrapper)"
        )
    import logging

    from autopipec_fw.inference import evaluator

    logging.getLogger("autopipec_fw").setLevel(logging.WARNING)  # stderr is for the one-line error only
    return evaluator.run_folder(workdir, opts)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    try:
        opts = parse_options(argv, known_environment())
    except UsageError as exc:
        if str(exc) == "help":
            sys.stdout.write(usage() + "\n")
            return EXIT_OK
        sys.stderr.write(f"pace_driver: {exc}\n")
        return EXIT_INPUT
    workdir = posix.getcwd()
    result = None
    sock = socket_path(opts)
    if sock:
        try:
            timeout = float(opts.get("timeout") or 600.0)
        except ValueError:
            sys.stderr.write(
                f"pace_driver: --timeout / PACE_DRIVER_TIMEOUT: expected seconds, got {opts['timeout']!r}\n"
            )
            return EXIT_INPUT
        result = forward(sock, encode_request(workdir, opts), timeout)
    if result is None:
        if opts.get("fallback", "1").strip().lower() in ("0", "no", "false", "off"):
            where = f"on {sock}" if sock else "(no --socket or --run-dir given)"
            sys.stderr.write(f"pace_driver: no evaluator answered {where} and fallback is off\n")
            return EXIT_INTERNAL
        result = run_local(workdir, opts, argv)
    code, message = result
    if message:
        sys.stderr.write("pace_driver: " + message.strip().replace("\n", " ") + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
