"""The ext_pot protocol between eOn, ``pace_driver.py`` and the persistent evaluator: standard library only.

eOn's side (``[Potential] potential = ext_pot``): in each call folder eOn writes `INPUT_NAME` (3 box rows, then
``Z x y z`` per atom, Å) and runs the driver there; the driver writes `OUTPUT_NAME` (energy in eV, then
``fx fy fz`` per atom in eV/Å) and exits `EXIT_OK`. A gamma stop exits `EXIT_STOP` (100) and leaves a line in the
stop file; bad input `EXIT_INPUT`, a bad potential `EXIT_POTENTIAL`, anything else `EXIT_INTERNAL`.

Our side: the driver forwards a call to the evaluator over a Unix socket (`socket_path_for`): one request
``EVAL\0<call folder>\0key=value...`` (`encode_request`), one reply ``<exit code> <one-line message>``
(`forward`). A structure given on standard input goes as ``EVALTEXT\0<current folder>\0key=value...\0\0<text>``;
its reply carries the result after the message: ``<exit code> <message>\0<result text>`` (`split_text_reply`).
`OPTIONS` lists the driver's options with their environment variables.

This module is imported by the driver on every force call: it must import nothing but ``posix`` and ``sys``
at module level (``os`` alone costs milliseconds there).
"""

import posix

INPUT_NAME = "from_eon_to_extpot"
OUTPUT_NAME = "from_extpot_to_eon"
SOCKET_NAME = "pace_evaluator.sock"
MAX_INPUT_BYTES = 64 << 20  # a bigger structure file (~800,000 atoms) is refused before it is read
STOP_NAME = "pace_stop"  # default stop file (in the run folder)
CANDIDATES_NAME = "pace_candidates"  # default candidates folder (in the run folder)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_POTENTIAL = 3
EXIT_STOP = 100
EXIT_COLLECT = 101  # our eOn client: a search run after a stop only to collect candidates; eOn drops it

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
    "min-distance-factor": (
        "PACE_DRIVER_MIN_DISTANCE_FACTOR",
        False,
        "a structure with two atoms closer than this x the sum of their covalent radii is unphysical: "
        "never a stop, never recorded (default: off; campaigns set gamma.min_distance_factor)",
    ),
    "calls-file": ("PACE_DRIVER_CALLS_FILE", True, "append one line (max gamma) per force call"),
    "run-dir": (
        "PACE_DRIVER_RUN_DIR",
        True,
        "aKMC run folder: holds the socket and the default stop file (pace_stop) and candidates dir "
        "(pace_candidates/); without it those defaults go to the parent of the call folder (eOn's job folder)",
    ),
    "socket": ("PACE_DRIVER_SOCKET", True, "evaluator socket (default <run-dir>/pace_evaluator.sock)"),
    "fallback": ("PACE_DRIVER_FALLBACK", False, "1 (default): load the potential when no evaluator answers"),
    "timeout": (
        "PACE_DRIVER_TIMEOUT",
        False,
        "seconds to wait for the evaluator's answer, and for standard input (default 600)",
    ),
    "io": (
        "PACE_DRIVER_IO",
        False,
        f"auto (default): the structure on standard input when it is redirected from a file, or piped in and no "
        f"{INPUT_NAME} is in the current folder, answer on standard output; files: eOn's {INPUT_NAME} / "
        f"{OUTPUT_NAME}; stdin: always standard input / output",
    ),
}
LOCAL_OPTIONS = ("socket", "fallback", "timeout", "io")  # the driver's own: never sent to the evaluator
IO_MODES = ("auto", "files", "stdin")


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


def encode_request(workdir, opts, text=None):
    """``EVAL`` (eOn's files in ``workdir``), or ``EVALTEXT`` with the structure ``text`` (bytes) after ``\\0\\0``."""
    parts = ["EVAL" if text is None else "EVALTEXT", workdir]
    for k, v in opts.items():
        if k in LOCAL_OPTIONS:
            continue
        parts.append(k + "=" + v)
    head = "\0".join(parts).encode("utf-8", "surrogateescape")
    return head if text is None else head + b"\0\0" + text


def split_text_reply(message):
    """An ``EVALTEXT`` reply's message: (one-line message, the result text for standard output)."""
    msg, _, out = message.partition("\0")
    return msg, out


def choose_io(mode, stdin_fd=0):
    """Return "files" or "stdin" for the ``--io`` option ``mode`` (see `OPTIONS`), from what standard input is."""
    if mode != "auto":
        return mode
    try:
        st = posix.fstat(stdin_fd)
    except OSError:
        return "files"  # closed
    kind = st.st_mode & 0o170000
    here = _exists(INPUT_NAME)
    if kind == 0o100000:  # a regular file: `pace_driver.py < from_eon_to_extpot`
        return "files" if (st.st_size == 0 and here) else "stdin"
    if kind in (0o010000, 0o140000):  # a pipe or socket: eOn's own stdin may be one, so its folder wins
        return "files" if here else "stdin"
    return "files"  # a terminal, /dev/null


def _exists(name):
    try:
        posix.stat(name)
    except OSError:
        return False
    return True


def read_stdin(timeout, fd=0):
    """Standard input as bytes (at most MAX_INPUT_BYTES + 1); raises TimeoutError when nothing more arrives for
    ``timeout`` seconds."""
    import select

    chunks = []
    size = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while size <= MAX_INPUT_BYTES:
        if not poller.poll(int(timeout * 1000)):
            raise TimeoutError(f"nothing arrived on standard input for {timeout:g} s")
        b = posix.read(fd, min(1 << 20, MAX_INPUT_BYTES + 1 - size))
        if not b:
            break
        chunks.append(b)
        size += len(b)
    return b"".join(chunks)


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
