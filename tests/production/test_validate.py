"""The validation gate on real potentials, the real oracle stage (EMT) and a real-format aKMC folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autopipec_fw.production.validate import GateFailedError, ValidationResult


def test_bulk_potential_passes_on_bulk(bulk_validation: ValidationResult, bulk_campaign) -> None:
    r = bulk_validation
    assert r.passed, r.message()
    assert r.n_holdout == bulk_campaign.validation.n_holdout
    # the figures are those of the stored parity data
    de = 1000 * (np.array(r.parity["energy_pred"]) - np.array(r.parity["energy_ref"]))
    df = 1000 * (np.array(r.parity["force_pred"]) - np.array(r.parity["force_ref"]))
    assert r.energy_rmse == pytest.approx(np.sqrt(np.mean(de**2)))
    assert r.force_rmse == pytest.approx(np.sqrt(np.mean(df**2)))
    assert len(df) == 3 * r.n_holdout_atoms
    assert 0 < r.energy_rmse <= bulk_campaign.validation.max_energy_rmse
    assert r.holdout_max_gamma is not None and r.holdout_max_gamma < 5
    assert r.barriers == [] and any("barriers not checked" in n for n in r.notes)
    cov = r.coverage
    assert cov["elements"] == ["Cu"] and cov["n_structures"] > 0
    lo, hi = cov["linear_strain_range"]
    assert -0.1 < lo < 0 < hi < 0.1  # strained bulk cells on both sides of the ideal crystal
    assert 2.0 < cov["min_interatomic_distance"] < 2.55  # rattled fcc Cu (nearest neighbour 2.55 Å)


def test_gate_fails_outside_domain_and_says_why(surface_validation: ValidationResult, eon_run_dir) -> None:
    r = surface_validation
    # one distinct process (the adatom hop); the oracle's CI-NEB reproduces the EMT barrier of the fixture
    assert len(r.barriers) == 1
    row = r.barriers[0]
    assert row.method == "neb" and row.converged
    # the +x and +y hops of state 0 and the hop back from state 1: one process by symmetry, named and counted
    assert (row.name, row.multiplicity, row.states) == ("adatom hop", 3, [0, 1])
    assert len(r.processes) == 1 and r.processes[0]["multiplicity"] == 3
    assert row.oracle_barrier == pytest.approx(row.eon_barrier, abs=0.005)
    # a bulk-only potential gets the surface hop badly wrong: the gate fails and names the threshold
    assert not r.passed
    assert row.error_meV > r.thresholds["max_barrier_error"]
    assert any("validation.max_barrier_error" in f for f in r.failures)
    assert "validation failed" in r.message() and "max_barrier_error = 50 meV" in r.message()
    with pytest.raises(GateFailedError, match="max_barrier_error"):
        r.raise_if_failed()
    # the result is kept next to the oracle's folders and reads back equal
    assert r.workdir is not None
    saved = ValidationResult.read(Path(r.workdir) / "validation.json")
    assert saved.metrics() == r.metrics() and saved.barriers == r.barriers
    assert any((Path(r.workdir) / "holdout").iterdir())  # the oracle stage's folders, one per structure


def test_result_round_trip(bulk_validation: ValidationResult, tmp_path) -> None:
    p = bulk_validation.write(tmp_path / "v.json")
    back = ValidationResult.read(p)
    assert back.to_dict() == json.loads(p.read_text())
    assert back.metrics() == bulk_validation.metrics()
    # a caller's extra figures (generation, seconds) do not break reading it back
    extra = ValidationResult.from_dict(bulk_validation.to_dict() | {"generation": 3, "seconds": 1.0})
    assert extra.to_dict() == bulk_validation.to_dict()


def test_path_method_labels_the_learned_path(eon_run_dir, tmp_path) -> None:
    """method 'path' (for DFT oracles): oracle single points through the oracle stage on the learned CI-NEB
    path. With EMT standing in for the learned potential the path is EMT's own, so the oracle's barrier along
    it must equal the EMT barrier eOn recorded."""
    from ase.calculators.emt import EMT

    from autopipec_fw.config import OracleSettings
    from autopipec_fw.eon.io import read_processes
    from autopipec_fw.production.validate import default_labeller, distinct_processes, process_barriers

    proc = distinct_processes(read_processes(eon_run_dir), 1)[0]
    row = process_barriers(
        proc, EMT, None, OracleSettings(), tmp_path / "barriers", default_labeller, "path", n_images=3
    )
    assert row.method == "path" and row.converged
    assert row.learned_barrier == pytest.approx(proc.barrier, abs=0.005)
    assert row.oracle_barrier == pytest.approx(row.learned_barrier, abs=1e-6)
    folders = [p for p in (tmp_path / "barriers").iterdir() if p.is_dir()]
    assert len(folders) == 5  # one oracle folder per image (3 + 2 endpoints)
    assert row.path_file and Path(row.path_file).is_file()  # the learned path a failed gate teaches from


def test_missing_potential_and_neb_for_dft_are_clear_errors(bulk_campaign, tmp_path) -> None:
    from autopipec_fw.production.validate import ValidationError, validate_potential

    with pytest.raises(ValidationError, match=r"the \.yace file .*nothing\.yace does not exist"):
        validate_potential({"yace": str(tmp_path / "nothing.yace")}, bulk_campaign, tmp_path, [])
    (tmp_path / "p.yace").write_text("x")
    dft = bulk_campaign.model_copy(update={"oracle": bulk_campaign.oracle.model_copy(update={"calculator": "gpaw"})})
    with pytest.raises(ValidationError, match="barrier_method 'neb' needs an in-process oracle"):
        validate_potential({"yace": str(tmp_path / "p.yace")}, dft, tmp_path, [], barrier_method="neb")


def test_process_that_does_not_exist_for_the_oracle_fails(cu_bulk_potential, eon_run_dir, tmp_path) -> None:
    """A 'process' whose product relaxes back into its reactant is no process: the gate says so."""
    import shutil

    import numpy as np

    from autopipec_fw.config import Campaign
    from autopipec_fw.eon.io import con_text, read_con, read_processes
    from autopipec_fw.production.validate import validate_potential

    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    for p in read_processes(run):
        # the 'product': the mover 0.7 Å from the reactant towards the saddle (a net displacement, so a
        # transition by the geometry), which relaxes back into the reactant
        reactant, saddle = read_con(p.reactant), read_con(p.saddle)
        d = saddle.positions - reactant.positions
        i = int(np.argmax(np.linalg.norm(d, axis=1)))
        product = reactant.copy()
        product.positions[i] += 0.7 * d[i] / np.linalg.norm(d[i])
        p.product.write_text(con_text(product))
    c = Campaign(validation={"n_holdout": 0, "max_barriers": 1})
    r = validate_potential(cu_bulk_potential.generation, c, tmp_path / "v", [run])
    assert not r.passed and r.excluded_processes == []
    assert any("oracle: product relaxes into the reactant" in f for f in r.failures), r.failures
    assert "no held-out errors" in " ".join(r.notes)


def test_a_process_that_moves_no_atom_is_left_out_of_the_gate(cu_bulk_potential, eon_run_dir, tmp_path) -> None:
    """A 'process' whose product is its reactant (eOn took a shallow kink for a new state, barrier ~0) is no
    kinetics: left out of the barrier check and of the rate window (where its zero barrier would make every real
    process of the state look too slow to matter), listed with the reason; the real processes are gated."""
    import shutil

    from autopipec_fw.config import Campaign
    from autopipec_fw.eon.io import PROCESSTABLE_COLUMNS, read_processes, read_processtable
    from autopipec_fw.production.validate import validate_potential

    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    procs = read_processes(run, with_geometry=True)
    flicker = procs[0]
    shutil.copyfile(flicker.reactant, flicker.product)
    table = flicker.reactant.parent.parent / "processtable"
    lines = table.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    cols = PROCESSTABLE_COLUMNS
    for k, line in enumerate(rows):
        f = line.split()
        if int(f[0]) == flicker.process:
            f[cols.index("barrier")] = "0.00005"
            f[cols.index("saddle_energy")] = f"{flicker.reactant_energy + 0.00005:.6f}"
            rows[k] = "    ".join(f)
    table.write_text("\n".join([header, *rows]) + "\n")
    assert any(r["barrier"] == 0.00005 for r in read_processtable(table))
    c = Campaign(validation={"n_holdout": 0, "max_barriers": 2})
    r = validate_potential(cu_bulk_potential.generation, c, tmp_path / "v", [run])
    assert [g["states"] for g in r.excluded_processes] == [[flicker.state]], r.excluded_processes
    assert "no atom moves more than 0.5" in r.excluded_processes[0]["reason"]
    assert r.barriers and all(b.process != flicker.process or b.state != flicker.state for b in r.barriers)
    assert not any("relaxes into the reactant" in f for f in r.failures), r.failures
    assert any("left out of the barrier check" in n for n in r.notes), r.notes
    assert r.metrics()["n_excluded_processes"] == 1

    # every process a non-transition: nothing to gate, and the failure says so
    for p in procs:
        shutil.copyfile(p.reactant, p.product)
    r2 = validate_potential(cu_bulk_potential.generation, c, tmp_path / "v2", [run])
    assert not r2.passed and r2.barriers == []
    assert any("moves no atom more than 0.5" in f for f in r2.failures), r2.failures


def test_a_gate_that_found_no_process_fails_and_says_why(cu_bulk_potential, eon_run_dir, tmp_path) -> None:
    """An aKMC folder whose tables hold no process: gating it would pass on nothing, so the gate fails."""
    import shutil

    from autopipec_fw.config import Campaign
    from autopipec_fw.production.validate import validate_potential

    run = tmp_path / "run"
    shutil.copytree(eon_run_dir, run)
    for table in (run / "states").glob("*/processtable"):
        table.write_text(table.read_text().splitlines()[0] + "\n")  # header only
    r = validate_potential(cu_bulk_potential.generation, Campaign(validation={"n_holdout": 0}), tmp_path / "v", [run])
    assert not r.passed and r.barriers == []
    assert any("no process to check barriers against" in f and str(run) in f for f in r.failures), r.failures
    # with no run folder at all, the same
    r2 = validate_potential(cu_bulk_potential.generation, Campaign(validation={"n_holdout": 0}), tmp_path / "v2", [])
    assert not r2.passed and any("no eOn run folder was given" in f for f in r2.failures)


def test_a_failed_gate_teaches_what_failed(tmp_path) -> None:
    """The structures a failed gate labels: the learned path's images near a failing saddle first, then the
    held-out structures at least half-way to a threshold, worst first; nothing when nothing failed that way."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    from autopipec_fw.production.validate import BarrierRow, _write_structures, teaching_structures

    def labelled(a: float, e: float):
        at = bulk("Cu", "fcc", a=a)
        at.calc = SinglePointCalculator(at, energy=e, forces=np.zeros((1, 3)))
        return at

    path = _write_structures(tmp_path / "path.extxyz", [labelled(3.6 + 0.01 * i, e)
                                                       for i, e in enumerate([0.0, 0.2, 0.5, 0.3, 0.0])])
    held = _write_structures(tmp_path / "held.extxyz", [labelled(3.5 + 0.02 * i, 0.0) for i in range(4)])
    th = {"max_energy_rmse": 10.0, "max_force_rmse": 100.0, "max_barrier_error": 50.0}
    bad = BarrierRow("r", 0, 1, 0.4, 0.48, 0.40, "neb", True, path_file=str(path))
    good = BarrierRow("r", 0, 2, 0.4, 0.41, 0.40, "neb", True, path_file=str(path))
    errors = [{"index": 0, "energy_error": 1.0, "force_rmse": 10.0},   # 0.1 of a threshold: not taught
              {"index": 1, "energy_error": -12.0, "force_rmse": 10.0},  # 1.2
              {"index": 2, "energy_error": 2.0, "force_rmse": 70.0},    # 0.7
              {"index": 3, "energy_error": 4.0, "force_rmse": 20.0}]    # 0.4: not taught
    r = ValidationResult(passed=False, thresholds=th, barriers=[good, bad], holdout_errors=errors,
                         holdout_file=str(held))
    got = teaching_structures(r, 10)
    assert [g.info["teach"] for g in got] == [
        "barrier state 0 process 1", "barrier state 0 process 1", "barrier state 0 process 1",
        "held-out structure 1 (energy error -12.0 meV/atom)", "held-out structure 2 (energy error 2.0 meV/atom)"]
    assert got[0].cell[0][1] == pytest.approx(bulk("Cu", "fcc", a=3.62).cell[0][1])  # the highest image first
    assert all(g.calc is None for g in got)  # the oracle labels them afresh
    assert len(teaching_structures(r, 2)) == 2
    calm = ValidationResult(passed=False, thresholds=th, barriers=[good], holdout_errors=errors[:1],
                            holdout_file=str(held))
    assert teaching_structures(calm, 10) == []
