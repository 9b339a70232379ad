"""Oracle stage: EMT labels (fast), GPAW and Quantum ESPRESSO on a 4-atom Cu cell (slow), SCF corrections."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from autopipec_fw.config import OracleSettings, StructureSettings
from autopipec_fw.oracle.calculators import OracleConfigError, effective_parameters
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


def _check_dft_label(tmp_path, settings, raw_files):
    at = cu4()
    (lab,) = label_structures([at], settings, tmp_path)
    f = lab.get_forces()
    assert f.shape == (4, 3) and np.all(np.isfinite(f))
    assert np.abs(f).max() > 1e-3  # the rattle gives real forces
    assert np.allclose(f.sum(axis=0), 0.0, atol=0.05)  # momentum conservation of a periodic cell
    assert lab.get_stress().shape == (6,)
    folder = tmp_path / structure_hash(at)
    names = {p.name for p in folder.iterdir()}
    assert set(raw_files) <= names, names
    # a second call reuses the finished folder and gives the same numbers
    (again,) = label_structures([at], settings, tmp_path)
    assert again.get_potential_energy() == lab.get_potential_energy()
    ts = TrainingSet(tmp_path / "data.pckl.gzip")
    assert ts.add([lab], "test", oracle_hash(settings)) == 1
    return lab


@pytest.mark.slow
def test_gpaw_labels_a_4_atom_cu_cell(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    lab = _check_dft_label(tmp_path, OracleSettings(calculator="gpaw"), ["gpaw.txt"])
    assert lab.info["oracle"] == "gpaw"


@pytest.mark.slow
def test_espresso_labels_a_4_atom_cu_cell(tmp_path):
    if shutil.which("pw.x") is None:
        pytest.fail("pw.x not found: Quantum ESPRESSO comes with scripts/setup.sh --tests")
    lab = _check_dft_label(tmp_path, OracleSettings(calculator="espresso"), ["espresso.pwi", "espresso.pwo"])
    meta = json.loads(next(tmp_path.glob("*/oracle.json")).read_text())
    assert meta["parameters"]["pseudopotentials"] == {"Cu": "Cu.pz-d-rrkjus.UPF"}
    assert lab.info["oracle"] == "espresso"


@pytest.mark.slow
def test_espresso_scf_failure_is_corrected_then_reported(tmp_path):
    if shutil.which("pw.x") is None:
        pytest.fail("pw.x not found: Quantum ESPRESSO comes with scripts/setup.sh --tests")
    settings = OracleSettings(
        calculator="espresso",
        parameters={"input_data": {"electrons": {"electron_maxstep": 2}}},
        max_scf_corrections=1,
    )
    with pytest.raises(OracleError, match=r"SCF did not converge after 1 correction.*corrections.json"):
        label_structures([cu4()], settings, tmp_path)
    folder = tmp_path / structure_hash(cu4())
    log = json.loads((folder / "corrections.json").read_text())
    assert log[0]["errors"] == ["scf_unconverged"]
    sets = {k: v for a in log[0]["actions"] for k, v in a["action"]["_set"].items()}
    assert sets == {"electron_maxstep": 4, "mixing_beta": 0.35}
    # both attempts' raw output kept, no result written
    assert (folder / "espresso.attempt0.pwo").exists() and (folder / "espresso.attempt1.pwo").exists()
    assert "electron_maxstep = 4" in (folder / "espresso.attempt1.pwi").read_text()
    assert not (folder / "result.extxyz").exists()


@pytest.mark.slow
def test_gpaw_scf_failure_gets_more_iterations_and_recovers(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    # Γ-point only keeps this cheap: what is tested is the correction loop, not the physics
    settings = OracleSettings(
        calculator="gpaw",
        parameters={"maxiter": 5, "kpts": {"size": [1, 1, 1], "gamma": True}},
        max_scf_corrections=3,
    )
    (lab,) = label_structures([cu4()], settings, tmp_path)
    folder = tmp_path / structure_hash(cu4())
    log = json.loads((folder / "corrections.json").read_text())
    assert 1 <= len(log) <= 3 and all(e["errors"] == ["scf_unconverged"] for e in log)
    assert (folder / "gpaw.attempt0.txt").exists() and (folder / "result.extxyz").exists()
    assert np.isfinite(lab.get_potential_energy())


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
