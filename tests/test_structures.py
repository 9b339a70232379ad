"""Starting structures and the initial training set."""

from __future__ import annotations

import numpy as np
import pytest
from ase.constraints import FixAtoms

from autopipec_fw.config import Campaign, InitialDataSettings, StructureSettings
from autopipec_fw.structures import (
    StructureError,
    adatom_on_slab,
    build_structure,
    initial_training_structures,
    surface_training_structures,
)
from autopipec_fw.training.dataset import structure_hash


def test_demo_adatom_on_cu100():
    s = StructureSettings()
    at = build_structure(s)
    assert len(at) == 3 * 3 * 3 + 1
    assert set(at.get_chemical_symbols()) == {"Cu"}
    # the adatom is the highest atom and sits above the top layer by about a/2
    z = at.positions[:, 2]
    assert np.argmax(z) == len(at) - 1
    top_layer = np.sort(z)[-2]
    assert 1.5 < z[-1] - top_layer < 2.2
    fixed = [c for c in at.constraints if isinstance(c, FixAtoms)]
    assert len(fixed) == 1
    idx = fixed[0].index
    assert len(idx) == 9  # one bottom layer of 3x3
    assert np.allclose(z[idx], z.min())
    # no two atoms closer than 2.2 Å
    d = at.get_all_distances(mic=True)
    assert d[np.triu_indices(len(at), 1)].min() > 2.2


def test_fixed_layers_and_vacancy():
    at = build_structure(StructureSettings(fixed_layers=2, size=(2, 2, 4)))
    assert len(at.constraints[0].index) == 8
    with pytest.raises(StructureError, match="fixed_layers"):
        build_structure(StructureSettings(fixed_layers=4, size=(2, 2, 4)))
    vac = build_structure(StructureSettings(kind="vacancy_in_bulk", size=(2, 2, 2)))
    assert len(vac) == 31
    # the 8 atoms farthest from the vacancy are fixed (eOn's dimer must not follow a translation of the cell)
    from ase.geometry import find_mic

    fixed = sorted(vac.constraints[0].index)
    _, dist = find_mic(vac.positions - np.array(vac.info["defect_site"]), vac.cell, True)
    assert len(fixed) == 8 and min(dist[fixed]) >= max(np.delete(dist, fixed)) - 1e-9
    assert not build_structure(StructureSettings(kind="vacancy_in_bulk", fixed_far_atoms=0)).constraints
    with pytest.raises(StructureError, match="fixed_far_atoms"):
        build_structure(StructureSettings(kind="vacancy_in_bulk", size=(1, 1, 1), fixed_far_atoms=3))


def test_bridge_site_and_unknown_site():
    s = StructureSettings()
    hollow, bridge = build_structure(s), adatom_on_slab(s, site="bridge")
    assert not np.allclose(hollow.positions[-1, :2], bridge.positions[-1, :2])
    with pytest.raises(StructureError, match="adsorption site"):
        adatom_on_slab(s, site="nowhere")


def test_missing_lattice_constant_is_a_clear_error():
    with pytest.raises(StructureError, match="structure.a"):
        build_structure(StructureSettings(element="Cu", lattice="bcc"))


def test_structure_file(tmp_path):
    from ase.build import bulk
    from ase.io import write

    f = tmp_path / "start.xyz"
    write(f, bulk("Cu", cubic=True))
    at = build_structure(StructureSettings(kind="file", file=f))
    assert len(at) == 4
    bad = tmp_path / "broken.xyz"
    bad.write_text("this is\nnot a structure\n")
    with pytest.raises(StructureError, match=r"structure\.file: ASE cannot read .*broken\.xyz"):
        build_structure(StructureSettings(kind="file", file=bad))
    with pytest.raises(StructureError, match="does not exist"):
        build_structure(StructureSettings(kind="file", file=tmp_path / "missing.cif"))


def test_initial_training_set_is_seeded_and_complete():
    c = Campaign(initial_data=InitialDataSettings(n_strained=3, n_rattled=4, n_vacancy=2, n_surface=5))
    a = initial_training_structures(c)
    b = initial_training_structures(c)
    assert len(a) == 3 + 4 + 2 + 5
    assert [structure_hash(x) for x in a] == [structure_hash(x) for x in b]
    assert len({structure_hash(x) for x in a}) == len(a)
    gens = [x.info["generator"] for x in a]
    assert gens.count("surface") == 5 and gens.count("bulk") == 9
    assert any(len(x) == 31 for x in a)  # a vacancy in the 2x2x2 cell
    other = initial_training_structures(
        c.model_copy(update={"initial_data": c.initial_data.model_copy(update={"seed": 1})})
    )
    assert structure_hash(other[0]) != structure_hash(a[0])


def test_surface_set_moves_the_adatom_between_sites():
    s = StructureSettings()
    out = surface_training_structures(s, n=12, rattle_stdev=0.0)
    hollow = build_structure(s).positions[-1]
    with_adatom = [x for x in out if len(x) == 28]
    shifts = [np.linalg.norm(x.positions[-1, :2] - hollow[:2]) for x in with_adatom]
    assert max(shifts) > 0.3  # some away from the hollow towards bridge/top
    assert any(len(x) == 27 for x in out)  # the bare slab too


def test_vacancy_hop_structures_move_one_neighbour_into_the_vacancy() -> None:
    import numpy as np

    from autopipec_fw.config import StructureSettings
    from autopipec_fw.structures import build_structure, vacancy_hop_structures

    base = build_structure(StructureSettings(kind="vacancy_in_bulk", element="Al", lattice="fcc", size=(2, 2, 2)))
    nn = 4.05 / np.sqrt(2)  # Al nearest-neighbour distance
    out = vacancy_hop_structures(base, 8, 0.0, np.random.default_rng(0))
    assert len(out) == 8
    for k, at in enumerate(out):
        moved = np.flatnonzero(np.linalg.norm(at.positions - base.positions, axis=1) > 1e-9)
        if k % 4 == 3:
            assert moved.size == 0  # a plain (here: zero) rattle
            continue
        assert moved.size == 1
        j = int(moved[0])
        before = at.copy()
        before.positions = base.positions
        d0 = np.linalg.norm(_to_site(before, j))
        d1 = np.linalg.norm(_to_site(at, j))
        assert abs(d0 - nn) < 0.05  # it was a nearest neighbour of the empty site
        assert 0.1 * nn - 0.05 < d0 - d1 and d1 < 0.95 * nn  # part of the way in, never onto the site


def _to_site(at, j):
    from ase.geometry import find_mic

    return find_mic(at.positions[j], at.cell, at.pbc)[0]
