"""k-points by density (one rule for every DFT oracle), the oracle hash, and check_oracle (fast: no DFT runs)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from autopipec_fw.config import OracleSettings, StructureSettings
from autopipec_fw.oracle.calculators import OracleConfigError, check_oracle, structure_parameters
from autopipec_fw.oracle.kpoints import VACUUM_GAP, kpoint_grid, largest_gap, vacuum_axes
from autopipec_fw.oracle.label import oracle_hash
from autopipec_fw.structures import build_structure


def test_grid_follows_the_density_so_cells_of_any_size_get_the_same_sampling():
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    big = cell * (2, 2, 2)
    for d in (1.0, 2.0, 3.5):
        g = kpoint_grid(cell, d).grid
        assert g == (math.ceil(2 * math.pi / 3.6 * d),) * 3
        # the doubled cell needs half the k-points per direction for the same density (to rounding)
        gb = kpoint_grid(big, d).grid
        assert all(abs(2 * b - a) <= 1 for a, b in zip(g, gb, strict=True))
        # spacing achieved (Å⁻¹ between k-points) is at most 1/d, VASP's KSPACING
        rec = 2 * np.pi * np.linalg.norm(big.cell.reciprocal(), axis=1)
        assert np.all(rec / np.array(gb) <= 1 / d + 1e-12)


def test_slab_vacuum_and_non_periodic_directions_get_one_kpoint():
    slab = build_structure(StructureSettings())  # the demo's Cu adatom on Cu(100), 10 Å vacuum, pbc all True
    assert slab.pbc.all()
    assert largest_gap(slab, 2) > VACUUM_GAP > max(largest_gap(slab, 0), largest_gap(slab, 1))
    g = kpoint_grid(slab, 2.0)
    assert g.vacuum_axes == [2] and g.grid[2] == 1 and g.grid[0] == g.grid[1] > 1
    # a thin vacuum is no vacuum: the same slab squeezed to a 3 Å gap gets k-points along z again
    squeezed = slab.copy()
    top = squeezed.positions[:, 2].max() - squeezed.positions[:, 2].min()
    squeezed.cell[2, 2] = top + 3.0
    assert vacuum_axes(squeezed) == [] and kpoint_grid(squeezed, 2.0).grid[2] > 1
    wire = bulk("Cu", "fcc", a=3.6, cubic=True)
    wire.pbc = (True, False, False)
    g = kpoint_grid(wire, 2.0)
    assert g.grid[1:] == (1, 1) and g.grid[0] > 1 and g.nonperiodic_axes == [1, 2]
    molecule = Atoms("Cu2", positions=[[5, 5, 5], [5, 5, 7.3]], cell=[12, 12, 12], pbc=True)
    assert kpoint_grid(molecule, 2.0).grid == (1, 1, 1)


def test_each_code_gets_the_grid_in_its_own_form():
    at = bulk("Al", "fcc", a=4.05)
    n = list(kpoint_grid(at, 2.0).grid)
    p, grid = structure_parameters(OracleSettings(calculator="gpaw"), at)
    assert p["kpts"] == {"size": n, "gamma": True} and grid.grid == tuple(n)
    p, _ = structure_parameters(OracleSettings(calculator="espresso"), at)
    assert p["kpts"] == n and p["koffset"] == [0, 0, 0]
    p, _ = structure_parameters(OracleSettings(calculator="vasp"), at)
    assert p["kpts"] == n and p["gamma"] is True
    p, grid = structure_parameters(OracleSettings(calculator="emt"), at)
    assert "kpts" not in p and grid is None
    fixed = OracleSettings(calculator="gpaw", kpoint_density=None, parameters={"kpts": {"size": [3, 3, 3]}})
    p, grid = structure_parameters(fixed, at)
    assert p["kpts"] == {"size": [3, 3, 3]} and grid is None
    with pytest.raises(OracleConfigError, match="kpts and oracle.kpoint_density .* both given"):
        structure_parameters(OracleSettings(calculator="gpaw", parameters={"kpts": [2, 2, 2]}), at)


def test_hash_covers_the_density_not_the_grid():
    a = OracleSettings(calculator="gpaw", kpoint_density=2.0)
    assert oracle_hash(a) != oracle_hash(OracleSettings(calculator="gpaw", kpoint_density=3.0))
    assert oracle_hash(a) == oracle_hash(OracleSettings(calculator="gpaw", kpoint_density=2.0))
    # EMT has no k-points: its hash (and so every EMT training set's) is unchanged by the field
    assert oracle_hash(OracleSettings(kpoint_density=5.0)) == oracle_hash(OracleSettings())
    # the hash is a property of the settings, the grid of each structure is not in it
    small, big = bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    assert structure_parameters(a, small)[0]["kpts"] != structure_parameters(a, big)[0]["kpts"]


def test_missing_codes_are_named_with_how_to_install_them(tmp_path):
    with pytest.raises(OracleConfigError, match=r"'pw-nowhere.x' \(the espresso executable\) not found on PATH.*"
                       r"apt-get install quantum-espresso"):
        check_oracle(OracleSettings(calculator="espresso", command="pw-nowhere.x"))
    with pytest.raises(OracleConfigError, match=r"'python-nowhere' \(the Python that runs GPAW\) not found.*pip "
                       r"install gpaw"):
        check_oracle(OracleSettings(calculator="gpaw", command="python-nowhere -u"))
    with pytest.raises(OracleConfigError, match=r"pseudo_dir: .*nothing does not exist"):
        check_oracle(OracleSettings(calculator="espresso", parameters={"pseudo_dir": str(tmp_path / "nothing")}))
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp" / "Cu.pz-d-rrkjus.UPF").write_text("stand-in\n")
    with pytest.raises(OracleConfigError, match=r"no pseudopotential for Al in"):
        check_oracle(OracleSettings(calculator="espresso", parameters={"pseudo_dir": str(tmp_path / "pp")}),
                     ["Cu", "Al"])
    assert check_oracle(OracleSettings()) == {"calculator": "emt"}


def test_check_oracle_finds_the_installed_codes():
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    found = check_oracle(OracleSettings(calculator="gpaw"), ["Al", "Cu"])
    assert found["executable"] and found["setups"]
    with pytest.raises(OracleConfigError, match=r"no PAW setups for \['Og'\]"):
        check_oracle(OracleSettings(calculator="gpaw"), ["Al", "Og"])
    found = check_oracle(OracleSettings(calculator="espresso"), ["Al"])
    assert found["executable"].endswith("pw.x") and found["pseudopotentials"] == "Al: Al.pz-vbc.UPF"


def test_config_check_names_a_missing_dft_code(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("oracle:\n  calculator: espresso\n  command: pw-nowhere.x\n")
    r = subprocess.run([sys.executable, "-m", "autopipec_fw.cli", "config", "check", "--config", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'pw-nowhere.x'" in r.stderr and "quantum-espresso" in r.stderr
