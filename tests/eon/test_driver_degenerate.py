"""Degenerate structures: refused by the real driver in milliseconds with its one-line error (exit 2), never a
traceback, never a huge allocation; the checks themselves against an independent neighbour search."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms

from autopipec_fw.eon.extpot import evaluator as ev
from autopipec_fw.eon.extpot import pace_driver
from autopipec_fw.eon.extpot.evaluator import DriverError, LoadedPotential, check_structure, closest_pair

from .conftest import adatom_slab, eon_input_text, read_output, reference, run, write_input

OUT = pace_driver.OUTPUT_NAME


def _box(a, b, c) -> str:
    return f"{a}\t0\t0\n0\t{b}\t0\n0\t0\t{c}\n"


def _grid_slab(thick: float, m: int, step: float = 1.5) -> str:
    """m x m atoms on a square grid in a box ``thick`` Å thin: physical distances, a pathological neighbour list."""
    rows = [f"29\t{thick / 2}\t{step * i}\t{step * j}" for i in range(m) for j in range(m)]
    return _box(thick, step * m, step * m) + "\n".join(rows) + "\n"


DEGENERATE = {
    # the cases of issue 15, then one per rule
    "cubic-0.01": (_box(0.01, 0.01, 0.01) + "29\t0\t0\t0\n", "0.01 Å thick along box vector 1"),
    "flat-7.6x7.6x0.001": (_box(7.6, 7.6, 0.001) + "29\t0\t0\t0\n29\t3.8\t3.8\t0\n", "box vector 3"),
    "same-place": (_box(7.6, 7.6, 7.6) + "29\t1\t1\t1\n29\t1\t1\t1\n", "atoms 1 and 2 are 0 Å apart"),
    "Z-1e21": (_box(7.6, 7.6, 7.6) + "1000000000000000000000\t1\t1\t1\n", "outside 1-118"),
    "coordinate-1e300": (
        _box(7.6, 7.6, 7.6) + "29\t1e300\t1\t1\n29\t3\t3\t3\n",
        "box lengths outside the box",
    ),
    "image-too-close": (
        _box(7.6, 7.6, 7.6) + "29\t0.05\t1\t1\n29\t7.5\t1\t1\n",
        "0.15 Å apart (periodic images included)",
    ),
    "dense": (
        _box(1.0, 1.0, 1.0) + "29\t0\t0\t0\n29\t0.5\t0.5\t0\n29\t0.5\t0\t0.5\n29\t0\t0.5\t0.5\n",
        "Å^3 per atom",
    ),
    "huge-box": (_box(1e7, 7.6, 7.6) + "29\t1\t1\t1\n", "above 100000 Å"),
    "Z-negative": (_box(7.6, 7.6, 7.6) + "-29\t1\t1\t1\n", "outside 1-118"),
    # physical distances, but pyace's neighbour list would take minutes (~1.3e6 atoms with images)
    "thin-slab-3600": (_grid_slab(0.25, 60), "periodic images within the cutoff"),
}


@pytest.mark.parametrize("mode", ["daemon", "fallback"])
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_refused_fast(tmp_path, daemon, mode, case):
    text, needle = DEGENERATE[case]
    wd = write_input(tmp_path / "extpot_1_0", text)
    wrapper = daemon.wrapper if mode == "daemon" else daemon.fallback_wrapper
    t0 = time.perf_counter()
    r = run([str(wrapper)], wd)
    elapsed = time.perf_counter() - t0
    assert r.returncode == pace_driver.EXIT_INPUT, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pace_driver: "), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert not (wd / OUT).exists()
    assert not (daemon.run_dir / "pace_candidates").exists() or not any(
        (daemon.run_dir / "pace_candidates").iterdir()
    )  # a refused structure is never a candidate
    # a whole driver process: the daemon answers in milliseconds, the fallback pays Python + numpy imports only
    assert elapsed < (2.0 if mode == "daemon" else 5.0), elapsed


def test_refused_on_stdin_too(tmp_path, daemon):
    text, needle = DEGENERATE["cubic-0.01"]
    r = run([str(daemon.wrapper)], tmp_path, stdin=text)
    assert r.returncode == pace_driver.EXIT_INPUT and needle in r.stderr and r.stdout == ""
    assert r.stderr.startswith("pace_driver: standard input: ")


def test_physical_structures_pass(tmp_path, daemon):
    """The floors are far from real structures: the demo slab, a compressed and a stretched cell, 0.9 Å pairs."""
    from ase.build import bulk

    cases = [adatom_slab(0.05, seed=1), bulk("Cu", "fcc", a=3.0, cubic=True).repeat(2)]
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    a.positions[1] = a.positions[0] + [0.9, 0, 0]
    cases.append(a)
    cases.append(Atoms("Cu", positions=[[0, 0, 0]], cell=[2.2, 2.2, 2.2], pbc=True))
    for i, atoms in enumerate(cases):
        wd = write_input(tmp_path / f"c{i}", atoms)
        r = run([str(daemon.wrapper), "--gamma-max", "1e12"], wd)
        assert r.returncode == 0, (i, r.stderr)
        assert (wd / OUT).exists()


def test_equivalent_boxes_give_the_same_answer(tmp_path, daemon, cu_surface_potential):
    """Boxes pyace refuses as they are (left-handed: "Extreme shape of unit cell"; strongly skewed: "inv3x3:
    Matrix inversion is wrong") are the same lattice as a reduced box: the driver answers as for the plain one."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=3)
    e_ref, f_ref, _ = reference(cu_surface_potential, atoms)
    a, b, c = atoms.cell.array
    boxes = {
        "left-handed": np.array([a, b, -c]),
        "all-negative": -atoms.cell.array,
        "skewed": np.array([a + 7 * b - 40 * c, b + 3 * c, c]),
    }
    for name, box in boxes.items():
        other = Atoms(atoms.numbers, positions=atoms.positions, cell=box, pbc=True)
        wd = write_input(tmp_path / name, other)
        r = run([str(daemon.wrapper), "--gamma-max", "1e12"], wd)
        assert r.returncode == 0, (name, r.stderr)
        e, f = read_output(wd)
        assert abs(e - e_ref) <= 1e-6, name
        np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6, err_msg=name)


def _random_cell(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    cell = np.diag(rng.uniform(2.0, 9.0, 3)) + rng.uniform(-3.0, 3.0, (3, 3)) * (1 - np.eye(3))
    return cell, rng.random((n, 3)) * 1.2 - 0.1


_SHIFTS = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T


def _brute_closest(pos: np.ndarray, cell: np.ndarray) -> tuple[float, set[int]]:
    """Every pair, every image within two box lengths (enough for fractional coordinates in [-0.1, 1.1] and
    distances below the box's thickness). ASE's own neighbour list is no reference here: on these skewed boxes
    it allocates gigabytes."""
    images = _SHIFTS @ cell
    best, pair = np.inf, set()
    for i in range(len(pos)):
        d = np.linalg.norm(pos[None, :, :] + images[:, None, :] - pos[i], axis=2)  # (shifts, atoms)
        d[:, i] = np.inf
        k = np.unravel_index(np.argmin(d), d.shape)
        if d[k] < best:
            best, pair = float(d[k]), {i, int(k[1])}
    return best, pair


@pytest.mark.parametrize("n,trials", [(1, 4), (2, 6), (7, 6), (40, 6), (700, 2)])  # 700: the k-d tree branch
def test_closest_pair_matches_brute_force(n, trials):
    rng = np.random.default_rng(n)
    for trial in range(trials):
        cell, frac = _random_cell(rng, n)
        pos = frac @ cell
        if trial % 2 and n > 1:  # one close pair across a face
            pos[-1] = pos[0] - cell[0] * 0.999 + rng.normal(0, 0.05, 3)
        vol = abs(np.linalg.det(cell))
        heights = vol / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        cutoff = min(0.3, 0.99 * heights.min())
        want, pair = _brute_closest(pos, cell) if n > 1 else (np.inf, set())
        f = np.linalg.solve(cell.T, pos.T).T
        got, a, b = closest_pair(f - np.floor(f), cell, heights, cutoff)
        if want < cutoff:
            assert got == pytest.approx(want, abs=1e-9), (n, trial)
            assert {a, b} == pair
        else:
            assert got == np.inf and (a, b) == (-1, -1)


def test_check_structure_order_and_limits():
    cell = np.diag([7.6, 7.6, 7.6])
    ok = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    check_structure(np.array([29, 29]), ok, cell)
    far = ok.copy()
    far[1, 2] = 7.6 * (ev.MAX_CELLS_AWAY + 1.5)
    with pytest.raises(DriverError, match="line 5: atom 2 is 1e"):
        check_structure(np.array([29, 29]), far, cell)
    far[1, 2] = 7.6 * (ev.MAX_CELLS_AWAY - 1)  # still within the limit: accepted (eOn's unwrapped atoms)
    check_structure(np.array([29, 29]), far, cell)
    close = ok.copy()
    close[1] = close[0] + [0, 0, ev.MIN_DISTANCE * 0.99]
    with pytest.raises(DriverError) as e:
        check_structure(np.array([29, 29]), close, cell)
    assert e.value.code == pace_driver.EXIT_INPUT
    close[1] = close[0] + [0, 0, ev.MIN_DISTANCE * 1.01]
    check_structure(np.array([29, 29]), close, cell)


def test_neighbour_list_bounds_before_pyace():
    """check_size: the image count and the pair estimate, for a potential with an 8 Å cutoff (no pyace)."""
    pot = SimpleNamespace(cutoff=8.0)
    thick = np.diag([30.0, 30.0, 30.0])
    LoadedPotential.check_size(pot, 1000, thick)  # 27 images of 1000 atoms, ~2,100 pairs per atom
    with pytest.raises(DriverError, match="periodic images within the cutoff 8"):
        LoadedPotential.check_size(pot, 10_000, thick)  # 270,000 atoms with images
    dense = np.diag([20.0, 20.0, 20.0])  # 8,000 atoms at 1 Å^3 each: 216,000 with images, 1.7e7 pairs
    with pytest.raises(DriverError, match="neighbour pairs"):
        LoadedPotential.check_size(pot, 8000, dense)
    assert ev.MAX_NEIGHBOUR_PAIRS * 70 < 1 << 30  # what the bound allows pyace to allocate stays below 1 GiB


def test_large_input_file_is_refused_before_reading(tmp_path, daemon):
    wd = tmp_path / "extpot_1_0"
    wd.mkdir()
    with open(wd / pace_driver.INPUT_NAME, "wb") as fh:
        fh.write(eon_input_text(adatom_slab()).encode())
        fh.truncate(pace_driver.P.MAX_INPUT_BYTES + 10)  # sparse: no disk used
    r = run([str(daemon.wrapper)], wd)
    assert r.returncode == pace_driver.EXIT_INPUT and "more than 64 MiB" in r.stderr
