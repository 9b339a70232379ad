"""Reading eOn's run folder: processtable, procdata geometries, dynamics.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from autopipec_fw.production.eon_results import (
    EonResultsError,
    read_con,
    read_kmc_trajectory,
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
    traj = read_kmc_trajectory(eon_run_dir)
    assert [t["step"] for t in traj] == [0, 1]
    assert [(t["reactant"], t["product"]) for t in traj] == [(0, 1), (1, 0)]
    times = np.array([t["time"] for t in traj])
    assert np.all(np.diff(times) > 0) and times[0] == pytest.approx(traj[0]["step_time"])
    assert read_kmc_trajectory(eon_run_dir / "states") == []  # no dynamics.txt: no step yet


def test_bad_processtable_names_file_and_line(eon_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    table = run / "states" / "0" / "processtable"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], lines[1], "12 9.0 abc 1 8.6 1e12 0.4 1.0 1"]) + "\n")
    with pytest.raises(EonResultsError, match=r"processtable:3: non-numeric"):
        read_processes(run)
    table.write_text(lines[0] + "\n1 2 3\n")
    with pytest.raises(EonResultsError, match=r"processtable:2: expected 9 columns"):
        read_processes(run)
    with pytest.raises(EonResultsError, match="no eOn states folder"):
        read_processes(tmp_path / "nowhere")


def test_missing_procdata_is_skipped(eon_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    victim = read_processes(run)[0]
    victim.saddle.unlink()
    left = read_processes(run)
    assert len(left) == 2 and all(p.process != victim.process or p.state != victim.state for p in left)
