#!/usr/bin/env python3
"""eOn ext_pot driver for an ACE potential with an extrapolation (gamma) stop.

eOn runs this program in a folder holding ``from_eon_to_extpot`` (3 box rows, then ``Z x y z`` per atom, Å);
it writes ``from_extpot_to_eon`` (energy in eV, then ``fx fy fz`` per atom in eV/Å) and exits 0.
The same structure can come on standard input instead (``pace_driver.py < from_eon_to_extpot``): the result then
goes to standard output, with the same stop rule and exit codes (``--io``: auto, files, stdin).

When the largest per-atom gamma exceeds ``--gamma-max``, the structure goes to ``--candidates-dir`` (extxyz with
per-atom gamma, energy, forces), one line is appended to ``--stop-file``, no result is written and the exit
code is 100. Bad input or potential: one line on stderr, exit 2 (input/options) or 3 (potential), no result;
anything unexpected: one line, exit 1. Degenerate structures (see the evaluator's `check_structure`) are bad input.

Every option can also be given as an environment variable (a bare ``ext_pot_path`` then works); command-line
options win. ``python pace_driver.py --help`` lists them.

Daemon mode: when a persistent evaluator (``autopipec_fw.eon.extpot.evaluator``) listens on ``--socket`` (default
``<run-dir>/pace_evaluator.sock``), this program only forwards the call to it and imports nothing but the standard
library's ``_socket``/``os``/``sys`` (and ``select`` for standard input). Without a reachable evaluator it loads
the potential itself (fallback).

This file must stay importable and runnable by any Python 3 without third-party packages on the forwarding path.
When the fallback needs pyace and the running interpreter lacks it, the driver re-executes itself with
``PACE_DRIVER_PYTHON`` or the project's ``.venv/bin/python`` next to the package.
"""

import posix  # the built-in half of `os`: importing os itself costs milliseconds on this path
import sys

if __package__:
    from . import protocol as P
else:  # run as a script (also `python -I`, which does not put the script's folder on sys.path) or the wrapper
    sys.path.insert(0, __file__.rpartition("/")[0] or ".")
    import protocol as P  # type: ignore[no-redef]

INPUT_NAME, OUTPUT_NAME = P.INPUT_NAME, P.OUTPUT_NAME
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_POTENTIAL, EXIT_STOP = (
    P.EXIT_OK,
    P.EXIT_INTERNAL,
    P.EXIT_INPUT,
    P.EXIT_POTENTIAL,
    P.EXIT_STOP,
)
OPTIONS = P.OPTIONS


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
    lines.append(
        f"  {INPUT_NAME} on standard input (e.g. pace_driver.py < {INPUT_NAME}): result on standard output"
    )
    return "\n".join(lines)


def _venv_python():
    import os

    env = os.environ.get("PACE_DRIVER_PYTHON")
    if env:
        return env
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
    cand = os.path.join(root, ".venv", "bin", "python")
    return cand if os.path.exists(cand) else None


def run_local(workdir, opts, argv, text=None):
    """Fallback: load the potential in this process (imports pyace: ~1 s). ``text``: the structure from stdin."""
    import os

    if sys.flags.no_site:
        import site

        site.main()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
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
            if text is not None:  # already read: hand it over as the new process's standard input
                fd = os.memfd_create("pace_driver_stdin")
                os.write(fd, text)
                os.lseek(fd, 0, os.SEEK_SET)
                os.dup2(fd, 0)
                argv = [*argv, "--io", "stdin"]
            os.execv(other, [other, "-I", "-S", os.path.realpath(__file__), *argv])
        return EXIT_INTERNAL, (
            f"cannot load the potential: pyace is not importable by {sys.executable}; run the driver with the "
            "project's Python (set PACE_DRIVER_PYTHON, or use the wrapper from write_driver_wrapper)"
        )
    import logging
    import warnings

    # stderr is for the one-line error only: no log records, tracebacks or numpy warnings there
    warnings.simplefilter("ignore")
    lg = logging.getLogger("autopipec_fw")
    lg.addHandler(logging.NullHandler())
    lg.propagate = False
    from autopipec_fw.eon.extpot import evaluator

    if text is None:
        return evaluator.run_folder(workdir, opts)
    return evaluator.run_text(text, workdir, opts)


def main(argv=None):
    """Run one call; whatever happens, at most one line on stderr and a documented exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("pace_driver: interrupted\n")
        return EXIT_INTERNAL
    except Exception as exc:  # never a traceback on eOn's stderr
        sys.stderr.write(f"pace_driver: internal error: {type(exc).__name__}: {_first_line(exc)}\n")
        return EXIT_INTERNAL


def _first_line(exc):
    s = str(exc).strip().splitlines()
    return s[0][:300] if s else ""


def _main(argv):
    if argv is None:
        argv = sys.argv[1:]
    try:
        opts = P.parse_options(argv, known_environment())
    except P.UsageError as exc:
        if str(exc) == "help":
            sys.stdout.write(usage() + "\n")
            return EXIT_OK
        sys.stderr.write(f"pace_driver: {exc}\n")
        return EXIT_INPUT
    io = opts.get("io", "auto").strip().lower() or "auto"
    if io not in P.IO_MODES:
        sys.stderr.write(
            f"pace_driver: --io / PACE_DRIVER_IO: expected one of {', '.join(P.IO_MODES)}, got {io!r}\n"
        )
        return EXIT_INPUT
    try:
        timeout = float(opts.get("timeout") or 600.0)
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError
    except ValueError:
        sys.stderr.write(
            f"pace_driver: --timeout / PACE_DRIVER_TIMEOUT: expected seconds > 0, got {opts['timeout']!r}\n"
        )
        return EXIT_INPUT
    text = None
    if P.choose_io(io) == "stdin":
        try:
            text = P.read_stdin(timeout)
        except (OSError, TimeoutError) as exc:
            sys.stderr.write(f"pace_driver: cannot read the structure from standard input: {exc}\n")
            return EXIT_INPUT
        if len(text) > P.MAX_INPUT_BYTES:
            sys.stderr.write(
                f"pace_driver: standard input holds more than {P.MAX_INPUT_BYTES >> 20} MiB: not an eOn structure\n"
            )
            return EXIT_INPUT
        if b"\0" in text:
            sys.stderr.write("pace_driver: standard input holds a NUL byte: not an eOn structure\n")
            return EXIT_INPUT
    workdir = posix.getcwd()
    result = None
    sock = P.socket_path(opts)
    if sock:
        result = P.forward(sock, P.encode_request(workdir, opts, text), timeout)
    if result is None:
        if opts.get("fallback", "1").strip().lower() in ("0", "no", "false", "off"):
            where = f"on {sock}" if sock else "(no --socket or --run-dir given)"
            sys.stderr.write(f"pace_driver: no evaluator answered {where} and fallback is off\n")
            return EXIT_INTERNAL
        result = run_local(workdir, opts, argv, text)
    code, message = result
    out = ""
    if text is not None:
        message, out = P.split_text_reply(message)
    if message:
        sys.stderr.write("pace_driver: " + message.strip().replace("\n", " ") + "\n")
    if out and code == EXIT_OK:
        data = out.encode()
        try:
            while data:
                data = data[posix.write(1, data) :]
        except OSError as exc:
            sys.stderr.write(f"pace_driver: cannot write the result to standard output: {exc.strerror}\n")
            return EXIT_INTERNAL
    return code


if __name__ == "__main__":
    sys.exit(main())
