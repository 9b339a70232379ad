"""Reading eOn's run folder: processtable, procdata geometries, dynamics.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from autopipec_fw.eon.io import (
    EonFormatError,
    read_con,
    read_dynamics,
    read_processes,
    run_temperature,
)
from autopipec_fw.production.validate import distinct_processes


def test_processes_and_geometries(eon_run_dir: Path) -> None:
    procs = read_processes(eon_run_dir)
    assert [(p.state, p.product_state) for p in procs] == [(0, 1), (0, -1), (1, 0)]
    assert run_temperature(eon_run_dir) == 300.0
    for p in procs:
        # the table's barrier is the saddle's EMT energy above the reactant's, from the geometries on disk
        r, s = read_con(p.reactant), read_con(p.saddle)
        assert all(r.pbc) and len(r.constraints) == 1  # fixed bottom layer comes back as FixAtoms
        r.calc, s.calc = EMT(), EMT()
        assert s.get_potential_energy() - r.get_potential_energy() == pytest.approx(p.barrier, abs=2e-5)
        assert p.reactant_energy == pytest.approx(r.get_potential_energy(), abs=1e-6)
    # the +x and +y hops of state 0 and the hop back from state 1 are the same process by symmetry
    assert len(distinct_processes(procs, 10)) == 1
    assert distinct_processes(procs, 0) == []


def test_kmc_trajectory(eon_run_dir: Path) -> None:
    traj = read_dynamics(eon_run_dir)
    assert [t["step"] for t in traj] == [0, 1]
    assert [(t["reactant"], t["product"]) for t in traj] == [(0, 1), (1, 0)]
    times = np.array([t["time"] for t in traj])
    assert np.all(np.diff(times) > 0) and times[0] == pytest.approx(traj[0]["step_time"])
    assert read_dynamics(eon_run_dir / "states") == []  # no dynamics.txt: no step yet


def test_bad_processtable_names_file_and_line(eon_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    table = run / "states" / "0" / "processtable"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], lines[1], "12 9.0 abc 1 8.6 1e12 0.4 1.0 1"]) + "\n")
    with pytest.raises(EonFormatError, match=r"processtable:3: non-numeric"):
        read_processes(run)
    table.write_text(lines[0] + "\n1 2 3\n")
    with pytest.raises(EonFormatError, match=r"processtable:2: expected 9 columns"):
        read_processes(run)
    with pytest.raises(EonFormatError, match="no eOn run folder"):
        read_processes(tmp_path / "nowhere")


def test_missing_procdata_is_skipped(eon_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    victim = read_processes(run)[0]
    victim.saddle.unlink()
    assert len(read_processes(run)) == 3  # the table still lists it
    left = read_processes(run, with_geometry=True)
    assert len(left) == 2 and all(p.process != victim.process or p.state != victim.state for p in left)


def test_relevant_processes_by_rate() -> None:
    """Only processes fast enough to matter in their state are gated: at 300 K and a fraction 1e-3 the window
    above the state's lowest barrier is kT ln 1000 = 0.179 eV."""
    from autopipec_fw.eon.io import ProcessRecord
    from autopipec_fw.production.validate import relevant_processes

    def proc(state: int, n: int, barrier: float) -> ProcessRecord:
        p = Path("x")
        return ProcessRecord(p, state, n, barrier, barrier, 0.0, 0.0, 1e12, 1.0, -1, 0, p, p, p)

    procs = [proc(0, 1, 0.42), proc(0, 2, 0.55), proc(0, 3, 0.86), proc(1, 4, 0.70), proc(1, 5, 0.95)]
    kept = [p.process for p in relevant_processes(procs, 300.0, 1e-3)]
    assert kept == [1, 2, 4]  # 0.86 is 0.44 eV above state 0's lowest, 0.95 is 0.25 eV above state 1's
    assert [p.process for p in relevant_processes(procs, 600.0, 1e-3)] == [1, 2, 4, 5]  # 0.357 eV window
    assert len(relevant_processes(procs, 300.0, 0.0)) == 5
