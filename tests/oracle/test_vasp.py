"""VASP through custodian: pymatgen writes the inputs, read back here with pymatgen; the custodian setup is built
(VASP itself cannot run here). POTCARs come from a folder of stand-in POTCARs made by the test (header fields
only, as pymatgen's own tests use fake POTCARs), pointed at by PMG_VASP_PSP_DIR."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import yaml
from ase.build import bulk, fcc100
from pymatgen.core import SETTINGS
from pymatgen.io.vasp.inputs import Incar, Kpoints, Poscar, Potcar

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.calculators import OracleConfigError, check_oracle
from autopipec_fw.oracle.kpoints import kpoint_grid
from autopipec_fw.oracle.label import OracleError, label_structures
from autopipec_fw.oracle.vasp import HANDLERS, prepare_vasp, run_vasp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen: "POTCAR data ... not known"


def cu3ag():
    at = bulk("Cu", "fcc", a=3.7, cubic=True)
    at.numbers[1] = 47  # Ag, so that POSCAR sorting matters
    at.rattle(0.02, seed=4)
    return at


def _stand_in_potcar(title: str, zval: float) -> str:
    return (
        f"  {title}\n {zval:.10f}\n parameters from PSCTR are:\n   VRHFIN =X: test\n   LEXCH  = PE\n"
        f"   TITEL  = {title}\n   POMASS =   63.546; ZVAL   =   {zval:.3f}    mass and valenz\n"
        "   ENMAX  =  295.000; ENMIN  =  221.000 eV\n END of PSCTR-controll parameters\n"
        " stand-in for tests, not a pseudopotential\n  1.0 0.5 0.25\n End of Dataset\n"
    )


@pytest.fixture
def psp_dir(tmp_path, monkeypatch):
    d = tmp_path / "psp"
    (d / "POT_GGA_PAW_PBE").mkdir(parents=True)
    for sym, z in (("Cu", 11), ("Cu_pv", 17), ("Ag", 11)):
        (d / "POT_GGA_PAW_PBE" / f"POTCAR.{sym}").write_text(_stand_in_potcar(f"PAW_PBE {sym} 01Jan2000", z))
    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", str(d))
    return d


@pytest.fixture
def no_psp_dir(monkeypatch):
    monkeypatch.delitem(SETTINGS, "PMG_VASP_PSP_DIR", raising=False)
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)


@pytest.fixture
def fake_vasp(tmp_path, monkeypatch):
    """A `vasp_std` on PATH that exits 1 at once (what is tested is what happens around VASP)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vasp_std"
    exe.write_text("#!/bin/sh\necho 'not VASP' >&2\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_pymatgen_writes_the_inputs_and_reads_them_back(tmp_path, psp_dir):
    settings = OracleSettings(
        calculator="vasp",
        parameters={"encut": 450, "setups": {"Cu": "Cu_pv"}},
        kpoint_density=3.0,
        command="mpirun -np 4 vasp_std",
        max_scf_corrections=3,
    )
    at = cu3ag()
    files, params, grid = prepare_vasp(at, settings, tmp_path / "run")
    incar = Incar.from_file(files["INCAR"])
    assert incar["NSW"] == 0 and incar["IBRION"] == -1 and incar["ENCUT"] == 450
    assert incar["GGA"] == "Pe" or incar["GGA"].upper() == "PE"
    assert incar["NELM"] == 100 and incar["LWAVE"] is False
    assert not {"SETUPS", "KPTS", "GAMMA", "XC"} & set(incar)
    kp = Kpoints.from_file(files["KPOINTS"])
    assert kp.style == Kpoints.supported_modes.Gamma
    assert tuple(kp.kpts[0]) == kpoint_grid(at, 3.0).grid == grid.grid
    poscar = Poscar.from_file(files["POSCAR"])
    assert [str(s) for s in poscar.structure.species] == ["Ag", "Cu", "Cu", "Cu"]
    assert np.allclose(poscar.structure.lattice.matrix, at.cell[:])
    potcar = Potcar.from_file(files["POTCAR"])
    assert potcar.symbols == ["Ag", "Cu_pv"] and [p.zval for p in potcar] == [11.0, 17.0]
    assert files["POTCAR.spec"].read_text().split() == ["Ag", "Cu_pv"]
    assert params["kpts"] == list(grid.grid)
    spec = yaml.safe_load(files["custodian.yaml"].read_text())
    job = spec["jobs"][0]
    assert job["jb"] == "custodian.vasp.jobs.VaspJob"
    assert job["params"]["vasp_cmd"] == ["mpirun", "-np", "4", "vasp_std"]
    assert [h["hdlr"] for h in spec["handlers"]] == HANDLERS
    assert "custodian.vasp.handlers.UnconvergedErrorHandler" in HANDLERS
    assert spec["validators"] == [{"vldr": "custodian.vasp.validators.VasprunXMLValidator"}]
    assert spec["custodian_params"]["max_errors"] == 4  # 3 corrected reruns after the first failure


def test_slab_gets_one_kpoint_along_its_vacuum(tmp_path, psp_dir):
    slab = fcc100("Cu", (2, 2, 3), vacuum=6.0, a=3.6)
    slab.pbc = True
    files, _, grid = prepare_vasp(slab, OracleSettings(calculator="vasp"), tmp_path)
    assert grid.vacuum_axes == [2]
    n = tuple(Kpoints.from_file(files["KPOINTS"]).kpts[0])
    assert n[2] == 1 and n[0] == n[1] > 1


def test_custodian_builds_the_job_from_the_spec(tmp_path, psp_dir):
    from custodian import Custodian

    files, _, _ = prepare_vasp(cu3ag(), OracleSettings(calculator="vasp"), tmp_path)
    cust = Custodian.from_spec(yaml.safe_load(files["custodian.yaml"].read_text()))
    assert type(cust.jobs[0]).__name__ == "VaspJob"
    assert [type(h).__name__ for h in cust.handlers] == [h.rsplit(".", 1)[1] for h in HANDLERS]


def test_without_pmg_vasp_psp_dir_a_clear_error(tmp_path, no_psp_dir, fake_vasp):
    with pytest.raises(OracleConfigError, match="PMG_VASP_PSP_DIR is not set"):
        run_vasp(cu3ag(), OracleSettings(calculator="vasp"), tmp_path)
    with pytest.raises(OracleConfigError, match="PMG_VASP_PSP_DIR is not set"):
        label_structures([cu3ag()], OracleSettings(calculator="vasp"), tmp_path / "calc")
    assert not (tmp_path / "calc").exists() or not any((tmp_path / "calc").iterdir())  # refused before running
    # the inputs pymatgen could write stay in the folder for a look
    assert (tmp_path / "INCAR").exists() and not (tmp_path / "POTCAR").exists()


def test_a_crashed_vasp_run_is_reported_and_labels_nothing(tmp_path, psp_dir, fake_vasp):
    with pytest.raises(OracleError, match=r"VASP failed under custodian.*no label written"):
        label_structures([cu3ag()], OracleSettings(calculator="vasp", max_scf_corrections=0), tmp_path / "calc")
    (folder,) = [p for p in (tmp_path / "calc").iterdir() if p.is_dir()]
    assert (folder / "custodian.json").exists() and not (folder / "result.extxyz").exists()


def test_missing_vasp_executable_is_named(monkeypatch, psp_dir, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OracleConfigError, match=r"'vasp_std' \(the vasp executable\) not found on PATH.*vasp.at"):
        check_oracle(OracleSettings(calculator="vasp"))


def test_bad_vasp_parameters(tmp_path, psp_dir):
    with pytest.raises(OracleConfigError, match=r"unknown parameter\(s\) \['encutt'\]"):
        prepare_vasp(cu3ag(), OracleSettings(calculator="vasp", parameters={"encutt": 400}), tmp_path)
    with pytest.raises(OracleConfigError, match="kpts and oracle.kpoint_density .* both given"):
        prepare_vasp(cu3ag(), OracleSettings(calculator="vasp", parameters={"kpts": [2, 2, 2]}), tmp_path)
    fixed = OracleSettings(calculator="vasp", parameters={"kpts": [2, 2]}, kpoint_density=None)
    with pytest.raises(OracleConfigError, match="kpts: expected three positive integers"):
        prepare_vasp(cu3ag(), fixed, tmp_path)
    with pytest.raises(OracleConfigError, match="potcar_functional: 'PBE_99' is not"):
        prepare_vasp(cu3ag(), OracleSettings(calculator="vasp", parameters={"potcar_functional": "PBE_99"}), tmp_path)
