"""Fuzzing the driver: seeded random and mutated eOn inputs through the evaluator's entry point (`answer`) and
through real driver processes (daemon, fallback, files and stdin). Every answer must be a valid result (exit 0
and a well-formed result), a gamma stop (exit 100, nothing written), or the one-line error with exit 2; within a
time bound per input, and never a traceback. ``PACE_FUZZ_SEED`` picks another seed (default 15)."""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from autopipec_fw.eon.extpot import pace_driver
from autopipec_fw.eon.extpot.evaluator import PotentialCache, answer

from .conftest import adatom_slab, clean_env, eon_input_text

SEED = int(os.environ.get("PACE_FUZZ_SEED", "15"))
IN, OUT = pace_driver.INPUT_NAME, pace_driver.OUTPUT_NAME
ALLOWED = {pace_driver.EXIT_OK, pace_driver.EXIT_INPUT, pace_driver.EXIT_STOP}
# a small structure: parsing, checks and pyace together take milliseconds; the bound allows a loaded machine
SECONDS_IN_PROCESS = 2.0
SECONDS_PROCESS = 10.0

_FLOATS = ["nan", "-nan", "inf", "-inf", "1e309", "1e300", "-1e300", "1e20", "1e8", "-3e3", "5e-324", "0", "-0",
           "1_000", "0x10", "1,5", "", "abc", "\u0661", "1e", "--1", ".", "+.5"]  # fmt: skip
_ZS = ["0", "-1", "119", "1000000000000000000000", "1e21", "29", "29", "79", "1", "Cu", "29.0", "+29", "0x1d",
       "9" * 5000, ""]  # fmt: skip


def _small_structure(rng: random.Random) -> str:
    """1-12 Cu atoms in a random (possibly skewed) box: random but mostly physical."""
    n = rng.randint(1, 12)
    cell = np.diag([rng.uniform(2.0, 12.0) for _ in range(3)])
    for i in range(3):
        for j in range(3):
            if i != j and rng.random() < 0.3:
                cell[i, j] = rng.uniform(-3.0, 3.0)
    nprng = np.random.default_rng(rng.getrandbits(32))
    pos = nprng.random((n, 3)) @ cell
    rows = ["\t".join(f"{x:.10f}" for x in r) for r in cell]
    rows += [f"29\t{p[0]:.10f}\t{p[1]:.10f}\t{p[2]:.10f}" for p in pos]
    return "\n".join(rows) + "\n"


def _base(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.2:
        return eon_input_text(bulk("Cu", "fcc", a=rng.uniform(3.3, 3.9), cubic=True).repeat((2, 1, 1)))
    if k < 0.35:
        return eon_input_text(adatom_slab(rattle=0.05, seed=rng.randint(0, 999)))
    return _small_structure(rng)


def _lines(text: str) -> list[str]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _scale_axis(rng: random.Random, t: str) -> str:
    ls = _lines(t)
    i = rng.randrange(3)
    f = 10 ** rng.uniform(-4, 6)
    try:
        ls[i] = "\t".join(repr(float(x) * f) for x in ls[i].split())
    except (ValueError, IndexError):
        return t
    return _join(ls)


def _token(rng: random.Random, t: str, choices: list[str], column: int | None = None) -> str:
    ls = _lines(t)
    if not ls:
        return t
    i = rng.randrange(len(ls))
    f = ls[i].split()
    if not f:
        return t
    c = column if column is not None and column < len(f) and i >= 3 else rng.randrange(len(f))
    f[c] = rng.choice(choices)
    ls[i] = "\t".join(f)
    return _join(ls)


def _near_copy(rng: random.Random, t: str) -> str:
    """A copy of an atom at 10^-6 .. 1 Å from it (or at the same place)."""
    ls = _lines(t)
    if len(ls) < 4:
        return t
    f = ls[rng.randrange(3, len(ls))].split()
    try:
        xyz = [float(x) for x in f[1:4]]
    except ValueError:
        return t
    if len(xyz) != 3:
        return t
    d = 0.0 if rng.random() < 0.3 else 10 ** rng.uniform(-6, 0)
    xyz[rng.randrange(3)] += d
    ls.append("\t".join([f[0], *(repr(x) for x in xyz)]))
    return _join(ls)


def _structural(rng: random.Random, t: str) -> str:
    ls = _lines(t)
    k = rng.randrange(7)
    if k == 0 and ls:
        del ls[rng.randrange(len(ls))]
    elif k == 1 and ls:
        i = rng.randrange(len(ls))
        ls.insert(i, ls[i])
    elif k == 2:
        ls.insert(rng.randrange(len(ls) + 1), "")
    elif k == 3 and ls:
        i = rng.randrange(len(ls))
        ls[i] += "\t" + rng.choice(["0", "x", "1e3"])
    elif k == 4:
        return _join(ls).replace("\n", "\r\n")
    elif k == 5:
        return _join(ls).replace("\t", "  ")
    elif k == 6 and len(ls) > 3:
        return _join(ls[:3] + ls[3:] * rng.randint(2, 3))  # atoms on top of each other
    return _join(ls)


def _bytes(rng: random.Random, t: str) -> str | bytes:
    b = bytearray(t.encode())
    k = rng.randrange(5)
    if k == 0 and b:
        return bytes(b[: rng.randrange(len(b))])  # truncated anywhere
    if k == 1 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)  # one random byte (maybe not UTF-8)
        return bytes(b)
    if k == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    if k == 3:
        return rng.choice(["", " ", "\n", "\n\n\n", "\t\t\n", "0 0 0\n" * 3, "1\n2\n3\n4\n"])
    return t.rstrip("\n")  # no final newline


MUTATORS: list[tuple[str, Callable[[random.Random, str], str | bytes]]] = [
    ("scale", _scale_axis),
    ("float", lambda r, t: _token(r, t, _FLOATS)),
    ("Z", lambda r, t: _token(r, t, _ZS, column=0)),
    ("near", _near_copy),
    ("lines", _structural),
    ("bytes", _bytes),
]


def fuzz_inputs(seed: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` (description, input bytes): a random base structure with 0-3 random mutations each."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        text: str | bytes = _base(rng)
        names = []
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            name, mut = rng.choice(MUTATORS)
            if isinstance(text, bytes):
                break
            text = mut(rng, text)
            names.append(name)
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        out.append((f"seed {seed} #{k} [{'+'.join(names) or 'none'}]", data))
    return out


def _check_result(folder_text: str, n_atoms: int, where: str) -> None:
    lines = folder_text.splitlines()
    assert len(lines) == n_atoms + 1, where
    assert math.isfinite(float(lines[0])), where
    f = np.array([[float(x) for x in ln.split()] for ln in lines[1:]])
    assert f.shape == (n_atoms, 3) and np.isfinite(f).all(), where


def _n_atoms(data: bytes) -> int:
    return len([ln for ln in data.decode().split("\n") if ln.strip()]) - 3


def test_fuzz_entry_point(tmp_path, cu_surface_potential, caplog):
    """4,000 inputs through `answer`, the function behind both the evaluator and the fallback."""
    cache = PotentialCache()
    raw = {
        "potential": str(cu_surface_potential.yaml),
        "active-set": str(cu_surface_potential.asi),
        "run-dir": str(tmp_path / "run"),
        "gamma-max": "5",
    }
    wd = tmp_path / "run" / "extpot_1_0"
    wd.mkdir(parents=True)
    codes: Counter[int] = Counter()
    slowest = 0.0
    for where, data in fuzz_inputs(SEED, 4000):
        (wd / IN).write_bytes(data)
        t0 = time.perf_counter()
        r = answer(wd, raw, cache)
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        codes[r.code] += 1
        assert dt < SECONDS_IN_PROCESS, (where, dt, data[:300])
        assert r.code in ALLOWED, (where, r.code, r.message, data[:300])
        if r.code == pace_driver.EXIT_OK:
            assert r.message == ""
            _check_result((wd / OUT).read_text(), _n_atoms(data), where)
        else:
            assert r.message and "\n" not in r.message, (where, r.message)
            assert not (wd / OUT).exists(), where
    assert not [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")]
    # the generator reaches every outcome (else it tests less than it claims)
    assert codes[pace_driver.EXIT_OK] > 100 and codes[pace_driver.EXIT_INPUT] > 300, codes
    assert codes[pace_driver.EXIT_STOP] > 10, codes
    assert cache.loads == 1


def _run_driver(
    cmd: list[str], cwd: Path, data: bytes, stdin_mode: bool
) -> tuple[subprocess.CompletedProcess, float]:
    if not stdin_mode:
        (cwd / IN).write_bytes(data)
    t0 = time.perf_counter()
    r = subprocess.run(
        [*cmd, "--io", "stdin" if stdin_mode else "files"],
        cwd=cwd,
        input=data if stdin_mode else None,
        stdin=None if stdin_mode else subprocess.DEVNULL,
        env=clean_env(),
        capture_output=True,
        timeout=120,
    )
    return r, time.perf_counter() - t0


def _check_process(
    r: subprocess.CompletedProcess, dt: float, cwd: Path, data: bytes, stdin_mode: bool, where: str
):
    err = r.stderr.decode("utf-8", "replace")
    assert dt < SECONDS_PROCESS, (where, dt)
    assert "Traceback" not in err, (where, err)
    assert r.returncode in ALLOWED, (where, r.returncode, err, data[:300])
    assert len(err.splitlines()) <= 1 and (err == "" or err.startswith("pace_driver: ")), (where, err)
    result = r.stdout.decode() if stdin_mode else ((cwd / OUT).read_text() if (cwd / OUT).exists() else "")
    if r.returncode == pace_driver.EXIT_OK:
        assert err == "", (where, err)
        _check_result(result, _n_atoms(data), where)
    else:
        assert err and result == "" and r.stdout == b"", (where, err)


@pytest.mark.parametrize("mode,count", [("daemon", 400), ("fallback", 16)])
def test_fuzz_driver_process(tmp_path, daemon, mode, count):
    """Real driver processes, half of the inputs on standard input: exit code, stderr and result as documented."""
    wrapper = daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper
    inputs = fuzz_inputs(SEED + 1 + (mode == "fallback"), count)
    codes: Counter[int] = Counter()
    for k, (where, data) in enumerate(inputs):
        cwd = tmp_path / f"extpot_{k}_0"
        cwd.mkdir()
        stdin_mode = bool(k % 2)
        r, dt = _run_driver([str(wrapper)], cwd, data, stdin_mode)
        _check_process(r, dt, cwd, data, stdin_mode, f"{mode} {'stdin' if stdin_mode else 'files'} {where}")
        codes[r.returncode] += 1
    assert codes[pace_driver.EXIT_INPUT] >= count // 5, codes
    assert codes[pace_driver.EXIT_OK] + codes[pace_driver.EXIT_STOP] >= 1, codes  # some reached the potential
