#!/usr/bin/env python3
"""eOn ext_pot driver for an ACE potential with an extrapolation (gamma) stop.

eOn runs this program in a folder holding ``from_eon_to_extpot`` (3 box rows, then ``Z x y z`` per atom, Å);
it writes ``from_extpot_to_eon`` (energy in eV, then ``fx fy fz`` per atom in eV/Å) and exits 0.

When the largest per-atom gamma exceeds ``--gamma-max``, the structure goes to ``--candidates-dir`` (extxyz with
per-atom gamma, energy, forces), one line is appended to ``--stop-file``, no result file is written and the exit
code is 100. Bad input or potential: one line on stderr, exit 2 (input/options) or 3 (potential), no result file.

Every option can also be given as an environment variable (a bare ``ext_pot_path`` then works); command-line
options win. ``python pace_driver.py --help`` lists them.

Daemon mode: when a persistent evaluator (``autopipec_fw.eon.extpot.evaluator``) listens on ``--socket`` (default
``<run-dir>/pace_evaluator.sock``), this program only forwards the call to it and imports nothing but the standard
library's ``_socket``/``os``/``sys``. Without a reachable evaluator it loads the potential itself (fallback).

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
    P.EXIT_OK, P.EXIT_INTERNAL, P.EXIT_INPUT, P.EXIT_POTENTIAL, P.EXIT_STOP)
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
    return "\n".join(lines)


def _venv_python():
    import os

    env = os.environ.get("PACE_DRIVER_PYTHON")
    if env:
        return env
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
    cand = os.path.join(root, ".venv", "bin", "python")
    return cand if os.path.exists(cand) else None


def run_local(workdir, opts, argv):
    """Fallback: load the potential in this process (imports pyace: ~1 s)."""
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
            os.execv(other, [other, "-I", "-S", os.path.realpath(__file__), *argv])
        return EXIT_INTERNAL, (
            f"cannot load the potential: pyace is not importable by {sys.executable}; run the driver with the "
            "project's Python (set PACE_DRIVER_PYTHON, or use the wrapper from write_driver_wrapper)"
        )
    import logging

    from autopipec_fw.eon.extpot import evaluator

    logging.getLogger("autopipec_fw").setLevel(logging.WARNING)  # stderr is for the one-line error only
    return evaluator.run_folder(workdir, opts)


def main(argv=None):
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
    workdir = posix.getcwd()
    result = None
    sock = P.socket_path(opts)
    if sock:
        try:
            timeout = float(opts.get("timeout") or 600.0)
        except ValueError:
            sys.stderr.write(
                f"pace_driver: --timeout / PACE_DRIVER_TIMEOUT: expected seconds, got {opts['timeout']!r}\n"
            )
            return EXIT_INPUT
        result = P.forward(sock, P.encode_request(workdir, opts), timeout)
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
