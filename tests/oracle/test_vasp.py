"""VASP through custodian: inputs and the custodian setup are produced (VASP itself cannot run here)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import read

from autopipec_fw.config import OracleSettings
from autopipec_fw.oracle.calculators import OracleConfigError
from autopipec_fw.oracle.label import OracleError, label_structures
from autopipec_fw.oracle.vasp import HANDLERS, prepare_vasp, run_vasp


def cu3ag():
    at = bulk("Cu", "fcc", a=3.7, cubic=True)
    at.numbers[1] = 47  # Ag, so that POSCAR sorting matters
    at.rattle(0.02, seed=4)
    return at


def test_inputs_and_custodian_spec(tmp_path):
    settings = OracleSettings(
        calculator="vasp",
        parameters={"encut": 450, "kpts": [3, 3, 3], "setups": {"Cu": "Cu_pv"}},
        command="mpirun -np 4 vasp_std",
        max_scf_corrections=3,
    )
    at = cu3ag()
    files = prepare_vasp(at, settings, tmp_path)
    incar = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=", 1) for line in files["INCAR"].read_text().splitlines())
    )
    assert incar["NSW"] == "0" and incar["IBRION"] == "-1" and incar["ENCUT"] == "450"
    assert incar["GGA"] == "PE" and incar["NELM"] == "100" and incar["LWAVE"] == ".FALSE."
    assert "SETUPS" not in incar and "KPTS" not in incar
    assert files["KPOINTS"].read_text().splitlines()[2:4] == ["Gamma", "3 3 3"]
    poscar = read(files["POSCAR"], format="vasp")
    assert poscar.get_chemical_symbols() == ["Ag", "Cu", "Cu", "Cu"]
    assert np.allclose(poscar.cell[:], at.cell[:])
    assert files["POTCAR.spec"].read_text().split() == ["Ag", "Cu_pv"]
    spec = yaml.safe_load(files["custodian.yaml"].read_text())
    job = spec["jobs"][0]
    assert job["jb"] == "custodian.vasp.jobs.VaspJob"
    assert job["params"]["vasp_cmd"] == ["mpirun", "-np", "4", "vasp_std"]
    assert [h["hdlr"] for h in spec["handlers"]] == HANDLERS
    assert "custodian.vasp.handlers.UnconvergedErrorHandler" in HANDLERS
    assert spec["validators"] == [{"vldr": "custodian.vasp.validators.VasprunXMLValidator"}]
    assert spec["custodian_params"]["max_errors"] == 3


def test_custodian_builds_the_job_from_the_spec(tmp_path):
    pytest.importorskip("pymatgen", reason="custodian.vasp imports pymatgen (not in the pinned stack yet)")
    from custodian import Custodian

    files = prepare_vasp(cu3ag(), OracleSettings(calculator="vasp"), tmp_path)
    spec = yaml.safe_load(files["custodian.yaml"].read_text())
    cust = Custodian.from_spec(spec)
    assert type(cust.jobs[0]).__name__ == "VaspJob"
    assert [type(h).__name__ for h in cust.handlers] == [h.rsplit(".", 1)[1] for h in HANDLERS]


def test_run_without_potcars_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    with pytest.raises(OracleError, match="no POTCAR: set VASP_PP_PATH"):
        run_vasp(cu3ag(), OracleSettings(calculator="vasp"), tmp_path)
    with pytest.raises(OracleError, match="VASP_PP_PATH"):
        label_structures([cu3ag()], OracleSettings(calculator="vasp"), tmp_path / "calc")
    # the inputs stay in the calculation folder for a look
    (folder,) = [p for p in (tmp_path / "calc").iterdir() if p.is_dir()]
    assert (folder / "INCAR").exists() and not (folder / "result.extxyz").exists()


def test_bad_vasp_parameters(tmp_path):
    with pytest.raises(OracleConfigError, match=r"unknown parameter\(s\) \['encutt'\]"):
        prepare_vasp(cu3ag(), OracleSettings(calculator="vasp", parameters={"encutt": 400}), tmp_path)
    with pytest.raises(OracleConfigError, match="kpts: expected three positive integers"):
        prepare_vasp(cu3ag(), OracleSettings(calculator="vasp", parameters={"kpts": [2, 2]}), tmp_path)
