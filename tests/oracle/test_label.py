"""Oracle stage: EMT labels (fast), GPAW and Quantum ESPRESSO on a 4-atom Cu cell (slow), SCF corrections."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from autopipec_fw.config import OracleSettings, StructureSettings
from autopipec_fw.oracle.calculators import OracleConfigError, effective_parameters
from autopipec_fw.oracle.kpoints import kpoint_grid
from autopipec_fw.oracle.label import OracleError, label_structures, oracle_hash, reference_energies_for
from autopipec_fw.structures import build_structure, bulk_training_structures
from autopipec_fw.training.dataset import TrainingSet, structure_hash


def cu4():
    at = bulk("Cu", "fcc", a=3.6, cubic=True)
    at.rattle(0.05, seed=1)
    return at


def test_emt_labels_and_second_labelling_adds_nothing(tmp_path):
    structures = bulk_training_structures("Cu", n_strained=2, n_rattled=2, n_vacancy=1, seed=3)
    settings = OracleSettings()
    labelled = label_structures(structures, settings, tmp_path / "calc", source="initial")
    assert len(labelled) == len(structures)
    for src, lab in zip(structures, labelled, strict=True):
        ref = src.copy()
        ref.calc = EMT()
        # the code runs on the folder's input.extxyz (positions to 1e-8 Å): labels agree to ~1e-8
        assert lab.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        assert np.allclose(lab.get_forces(), ref.get_forces(), atol=1e-6)
        assert lab.get_stress().shape == (6,)
        h = structure_hash(src)
        assert lab.info["structure_hash"] == h and lab.info["oracle_hash"] == oracle_hash(settings)
        assert lab.info["source"] == "initial"
        folder = tmp_path / "calc" / h
        assert {"input.extxyz", "result.extxyz", "oracle.json", "custodian.json"} <= {
            p.name for p in folder.iterdir()
        }
        meta = json.loads((folder / "oracle.json").read_text())
        assert meta["calculator"] == "emt" and meta["kpoints"] is None and meta["scf_corrections"] == 0
        (run,) = json.loads((folder / "custodian.json").read_text())
        assert run["job"]["@class"] == "EmtJob" and run["corrections"] == []

    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    assert ts.add(labelled, "initial", oracle_hash(settings), reference_energies_for(settings, ["Cu"])) == 5
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "calc").glob("*/result.extxyz")}
    again = label_structures(structures, settings, tmp_path / "calc", source="initial")
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "calc").glob("*/result.extxyz")
    } == stamps  # not rerun
    assert ts.add(again, "initial", oracle_hash(settings)) == 0
    assert len(ts) == 5


def test_forces_on_fixed_atoms_are_the_raw_ones(tmp_path):
    slab = build_structure(StructureSettings())
    slab.rattle(0.05, seed=2)
    (lab,) = label_structures([slab], OracleSettings(), tmp_path)
    fixed = slab.constraints[0].index
    assert np.abs(lab.get_forces()[fixed]).max() > 1e-3  # FixAtoms did not zero them


def test_unknown_parameters_are_refused_before_running(tmp_path):
    with pytest.raises(OracleConfigError, match=r"unknown parameter\(s\) \['cutoff_radius'\].*'emt'"):
        label_structures([cu4()], OracleSettings(parameters={"cutoff_radius": 3}), tmp_path)
    with pytest.raises(
        OracleConfigError, match=r"input_data.electrons: unknown pw.x keyword\(s\) \['mixing_betta'\]"
    ):
        effective_parameters(
            OracleSettings(
                calculator="espresso", parameters={"input_data": {"electrons": {"mixing_betta": 0.3}}}
            )
        )
    with pytest.raises(OracleConfigError, match="unknown pw.x namelist"):
        effective_parameters(
            OracleSettings(calculator="espresso", parameters={"input_data": {"electronz": {}}})
        )
    assert not any(tmp_path.iterdir())  # nothing ran


def test_oracle_hash_covers_defaults_and_parameters():
    emt = OracleSettings()
    assert oracle_hash(emt) == emt.settings_hash()
    qe = OracleSettings(calculator="espresso")
    qe_hi = OracleSettings(calculator="espresso", parameters={"input_data": {"system": {"ecutwfc": 40}}})
    assert len({oracle_hash(emt), oracle_hash(qe), oracle_hash(qe_hi)}) == 3
    assert effective_parameters(qe_hi)["input_data"]["system"]["ecutrho"] == 240.0  # defaults kept


def al2():
    """2-atom Al cell (fcc primitive x 2 along c), rattled: the tiny DFT test system."""
    at = bulk("Al", "fcc", a=4.05) * (1, 1, 2)
    at.rattle(0.05, seed=1)
    return at


# tiny, fast DFT settings (~1 s per single point here); what is tested is the oracle stage, not the physics
GPAW_TINY = {"mode": {"name": "pw", "ecut": 200.0}}
QE_TINY = {"input_data": {"system": {"ecutwfc": 15.0, "ecutrho": 120.0}}}
DENSITY = 1.2  # k-points per 1/Å: a 4x4x2 grid for al2()


def _check_dft_label(tmp_path, settings, raw_files):
    at = al2()
    (lab,) = label_structures([at], settings, tmp_path)
    f = lab.get_forces()
    assert f.shape == (2, 3) and np.all(np.isfinite(f))
    assert np.abs(f).max() > 1e-3  # the rattle gives real forces
    assert np.allclose(f.sum(axis=0), 0.0, atol=0.05)  # momentum conservation of a periodic cell
    assert lab.get_stress().shape == (6,)
    folder = tmp_path / structure_hash(at)
    names = {p.name for p in folder.iterdir()}
    assert set(raw_files) | {"custodian.json", "oracle.json", "oracle_parameters.json"} <= names, names
    meta = json.loads((folder / "oracle.json").read_text())
    expect = kpoint_grid(at, DENSITY).grid
    assert meta["kpoints"]["grid"] == list(expect) and meta["kpoint_density"] == DENSITY
    assert meta["scf_corrections"] == 0
    (run,) = json.loads((folder / "custodian.json").read_text())
    assert run["corrections"] == [] and run["validator"] is None
    # a second call reuses the finished folder and gives the same numbers
    (again,) = label_structures([at], settings, tmp_path)
    assert again.get_potential_energy() == lab.get_potential_energy()
    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    assert ts.add([lab], "test", oracle_hash(settings)) == 1
    return lab, meta


@pytest.mark.slow
def test_gpaw_labels_a_2_atom_al_cell(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    settings = OracleSettings(calculator="gpaw", parameters=GPAW_TINY, kpoint_density=DENSITY)
    lab, meta = _check_dft_label(tmp_path, settings, ["gpaw.txt", "gpaw_result.extxyz"])
    assert lab.info["oracle"] == "gpaw"
    assert meta["parameters"]["kpts"] == {"size": list(kpoint_grid(al2(), DENSITY).grid), "gamma": True}
    # GPAW's own log shows the grid it used
    txt = (tmp_path / structure_hash(al2()) / "gpaw.txt").read_text()
    n1, n2, n3 = kpoint_grid(al2(), DENSITY).grid
    assert f"Monkhorst-Pack size: [{n1}, {n2}, {n3}]" in txt
    # the label's energy is GPAW's free energy (the one the forces belong to), not its zero-width extrapolation
    free = float(re.search(r"Free energy:\s+(\S+)", txt).group(1))
    extrapolated = float(re.search(r"Extrapolated:\s+(\S+)", txt).group(1))
    assert abs(lab.get_potential_energy() - free) < 2e-6
    assert abs(free - extrapolated) > 1e-3  # GPAW's default smearing: the two differ here
    # a 1-atom cell gets its own, denser grid from the same density; one oracle hash, one training set
    one = bulk("Al", "fcc", a=4.05)
    (lab1,) = label_structures([one], settings, tmp_path)
    meta1 = json.loads((tmp_path / structure_hash(one) / "oracle.json").read_text())
    assert meta1["kpoints"]["grid"] == list(kpoint_grid(one, DENSITY).grid) != meta["kpoints"]["grid"]
    assert meta1["oracle_hash"] == meta["oracle_hash"] == oracle_hash(settings)
    assert TrainingSet(tmp_path / "data.pckl.gzip").add([lab1], "test", oracle_hash(settings)) == 1


@pytest.mark.slow
def test_a_crashed_gpaw_run_is_reported_and_labels_nothing(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    settings = OracleSettings(calculator="gpaw", parameters={**GPAW_TINY, "xc": "NO-SUCH-XC"}, kpoint_density=DENSITY)
    folder = tmp_path / structure_hash(al2())
    with pytest.raises(OracleError, match=rf"{folder}: gpaw single point failed \(exit code 1, Validation failed"):
        label_structures([al2()], settings, tmp_path)
    run, corr = _corrections(folder)
    assert corr == [] and run["validator"]["@class"] == "SinglePointValidator"
    assert "NO-SUCH-XC" in (folder / "gpaw.err").read_text()  # the traceback is kept
    assert not (folder / "result.extxyz").exists()


@pytest.mark.slow
def test_espresso_labels_a_2_atom_al_cell(tmp_path):
    if shutil.which("pw.x") is None:
        pytest.fail("pw.x not found: Quantum ESPRESSO comes with scripts/setup.sh --tests")
    settings = OracleSettings(calculator="espresso", parameters=QE_TINY, kpoint_density=DENSITY)
    lab, meta = _check_dft_label(tmp_path, settings, ["espresso.pwi", "espresso.pwo"])
    assert meta["parameters"]["pseudopotentials"] == {"Al": "Al.pz-vbc.UPF"}
    assert lab.info["oracle"] == "espresso"
    pwi = (tmp_path / structure_hash(al2()) / "espresso.pwi").read_text()
    n1, n2, n3 = kpoint_grid(al2(), DENSITY).grid
    assert f"{n1} {n2} {n3}  0 0 0" in pwi


def _corrections(folder):
    (run,) = json.loads((folder / "custodian.json").read_text())
    return run, [c for c in run["corrections"]]


@pytest.mark.slow
def test_gpaw_scf_failure_is_corrected_by_custodian_and_the_label_accepted(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    # 4 SCF iterations cannot converge: the first attempt fails; custodian doubles maxiter until it does
    settings = OracleSettings(
        calculator="gpaw", parameters={**GPAW_TINY, "maxiter": 4}, kpoint_density=DENSITY, max_scf_corrections=3
    )
    (lab,) = label_structures([al2()], settings, tmp_path)
    folder = tmp_path / structure_hash(al2())
    run, corr = _corrections(folder)
    assert 1 <= len(corr) <= 3 and all(c["errors"] == ["scf_unconverged"] for c in corr)
    assert corr[0]["handler"]["@class"] == "GpawScfHandler"
    sets = [a["action"]["_set"] for a in corr[0]["actions"]]
    assert {"maxiter": 8} in sets and sets[1]["mixer"]["beta"] == pytest.approx(0.025)
    # the failed attempt's own GPAW log is kept, the label is the converged one
    assert (folder / "gpaw.attempt0.txt").exists() and (folder / "result.extxyz").exists()
    used = json.loads((folder / "oracle.json").read_text())
    assert used["scf_corrections"] == len(corr) and used["parameters"]["maxiter"] == 4 * 2 ** len(corr)
    ref = label_structures([al2()], OracleSettings(calculator="gpaw", parameters=GPAW_TINY, kpoint_density=DENSITY),
                           tmp_path / "ref")[0]
    assert lab.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-3)


@pytest.mark.slow
def test_gpaw_scf_failure_past_max_corrections_fails_the_stage_naming_the_folder(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    settings = OracleSettings(
        calculator="gpaw", parameters={**GPAW_TINY, "maxiter": 1}, kpoint_density=DENSITY, max_scf_corrections=1
    )
    folder = tmp_path / structure_hash(al2())
    with pytest.raises(OracleError, match=rf"{folder}: SCF did not converge after 1 correction.*custodian.json"):
        label_structures([al2()], settings, tmp_path)
    run, corr = _corrections(folder)
    assert len(corr) == 1 and run["max_errors_per_handler"] is True
    assert {"maxiter": 2} in [a["action"]["_set"] for a in corr[0]["actions"]]
    assert (folder / "gpaw.attempt0.txt").exists() and (folder / "gpaw.txt").exists()
    assert not (folder / "result.extxyz").exists()  # never enters the training set


@pytest.mark.slow
def test_espresso_scf_failure_is_corrected_then_reported(tmp_path):
    if shutil.which("pw.x") is None:
        pytest.fail("pw.x not found: Quantum ESPRESSO comes with scripts/setup.sh --tests")
    settings = OracleSettings(
        calculator="espresso",
        parameters={"input_data": {**QE_TINY["input_data"], "electrons": {"electron_maxstep": 2}}},
        kpoint_density=DENSITY,
        max_scf_corrections=1,
    )
    folder = tmp_path / structure_hash(al2())
    with pytest.raises(OracleError, match=rf"{folder}: SCF did not converge after 1 correction.*custodian.json"):
        label_structures([al2()], settings, tmp_path)
    run, corr = _corrections(folder)
    assert len(corr) == 1 and corr[0]["handler"]["@class"] == "EspressoScfHandler"
    sets = {k: v for a in corr[0]["actions"] for k, v in a["action"]["_set"].items()}
    assert sets == {"input_data->electrons->electron_maxstep": 4, "input_data->electrons->mixing_beta": 0.35}
    # both attempts' raw output kept, no result written
    assert (folder / "espresso.attempt0.pwo").exists() and (folder / "espresso.pwo").exists()
    assert "electron_maxstep = 4" in (folder / "espresso.pwi").read_text()
    assert not (folder / "result.extxyz").exists()

    # with more corrections the same failure is repaired and the label accepted
    settings.max_scf_corrections = 4
    (lab,) = label_structures([al2()], settings, tmp_path / "again")
    _, corr = _corrections(tmp_path / "again" / structure_hash(al2()))
    assert len(corr) >= 1 and np.isfinite(lab.get_potential_energy())


def test_folder_of_other_oracle_settings_is_not_reused(tmp_path):
    at = cu4()
    label_structures([at], OracleSettings(), tmp_path)
    other = OracleSettings(parameters={"asap_cutoff": True})
    with pytest.raises(OracleError, match="holds a result of oracle settings .* never mix"):
        label_structures([at], other, tmp_path)


def test_unfinished_attempt_is_set_aside_not_overwritten(tmp_path):
    at = cu4()
    folder = tmp_path / structure_hash(at)
    folder.mkdir()
    (folder / "gpaw.txt").write_text("output of a run that was killed\n")
    (lab,) = label_structures([at], OracleSettings(), tmp_path)
    assert (folder / "failed_run_0" / "gpaw.txt").read_text() == "output of a run that was killed\n"
    assert (folder / "result.extxyz").exists() and np.isfinite(lab.get_potential_energy())


def test_bad_structures_are_refused(tmp_path):
    from ase import Atoms

    with pytest.raises(OracleError, match=r"structures \[1\]: not structures to label"):
        label_structures([cu4(), Atoms()], OracleSettings(), tmp_path)
    with pytest.raises(OracleError, match="emt single point failed"):
        label_structures(
            [Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[8, 8, 8], pbc=True)],
            OracleSettings(),
            tmp_path,
        )
