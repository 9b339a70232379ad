"""Starting structures: the aKMC configuration of a campaign and the small initial training set.

`build_structure` makes the configuration eOn starts from (adatom on a slab, vacancy in bulk, or a file);
bottom slab layers are frozen with `FixAtoms`. `initial_training_structures` makes the unlabelled starting
set (strained and rattled bulk, vacancies, rattled copies of the campaign's structure). Everything is seeded,
so the same campaign gives the same structures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bcc100, bcc110, bcc111, bulk, fcc100, fcc110, fcc111
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states

from autopipec_fw.config import Campaign, StructureSettings

log = logging.getLogger(__name__)

_SLABS = {
    ("fcc", "100"): fcc100,
    ("fcc", "111"): fcc111,
    ("fcc", "110"): fcc110,
    ("bcc", "100"): bcc100,
    ("bcc", "110"): bcc110,
    ("bcc", "111"): bcc111,
}


class StructureError(ValueError):
    """A structure that cannot be built or read; the message names the file or setting."""


def lattice_constant(element: str, lattice: str, a: float | None = None) -> float:
    """`a` if given, else ASE's reference lattice constant of `element` (must be of the asked lattice)."""
    if a is not None:
        return float(a)
    z = atomic_numbers.get(element)
    if z is None:
        raise StructureError(f"structure.element: unknown chemical symbol {element!r}")
    ref = reference_states[z] or {}
    if ref.get("symmetry") != lattice or "a" not in ref:
        raise StructureError(
            f"structure.a: ASE has no {lattice} lattice constant for {element} "
            f"(its reference state is {ref.get('symmetry')!r}); set 'a' in the campaign"
        )
    return float(ref["a"])


def _slab(s: StructureSettings, size: Sequence[int] | None = None) -> Atoms:
    a = lattice_constant(s.element, s.lattice, s.a)
    nx, ny, nl = size or s.size
    maker = _SLABS[(s.lattice, s.surface)]
    slab = maker(s.element, size=(nx, ny, nl), a=a, vacuum=s.vacuum, orthogonal=True, periodic=True)
    return slab


def adatom_height(s: StructureSettings) -> float:
    """A reasonable height of an adatom in the hollow site (Å): about half the lattice constant."""
    return 0.5 * lattice_constant(s.element, s.lattice, s.a)


def _fix_bottom(atoms: Atoms, n_layers_total: int, fixed_layers: int) -> None:
    """Freeze the bottom `fixed_layers` layers (ASE slab tags: 1 = top layer, n = bottom; adatoms tag 0)."""
    if fixed_layers <= 0:
        return
    if fixed_layers >= n_layers_total:
        raise StructureError(
            f"structure.fixed_layers: {fixed_layers} would freeze every one of the {n_layers_total} layers"
        )
    tags = atoms.get_tags()
    mask = tags > n_layers_total - fixed_layers
    atoms.set_constraint(FixAtoms(mask=mask))


def adatom_on_slab(s: StructureSettings, site: str = "hollow", size: Sequence[int] | None = None) -> Atoms:
    """Slab with one adatom of the host element on `site` (ASE site names of the facet); bottom layers fixed."""
    slab = _slab(s, size)
    nl = (size or s.size)[2]
    try:
        add_adsorbate(slab, s.element, adatom_height(s), site)
    except (KeyError, TypeError) as e:
        sites = list(slab.info.get("adsorbate_info", {}).get("sites", {}))
        raise StructureError(
            f"unknown adsorption site {site!r} for {s.lattice}({s.surface}); known: {sites}"
        ) from e
    _fix_bottom(slab, nl, s.fixed_layers)
    return slab


def read_structure_file(path: Path) -> Atoms:
    """Read one structure with ASE; a clear error names the file when it cannot be read."""
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"structure.file: {path} does not exist or is not a file")
    try:
        atoms = read(path)
    except Exception as e:  # ASE raises many kinds for a bad file
        raise StructureError(
            f"structure.file: ASE cannot read {path} as a structure ({type(e).__name__}: {e})"
        ) from None
    if isinstance(atoms, list):  # pragma: no cover - read() without index returns one frame
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise StructureError(f"structure.file: {path} holds no atoms")
    return atoms


DEFAULT_FIXED_FAR_ATOMS = 8


def fix_far_from(atoms: Atoms, site: Sequence[float], n: int) -> list[int]:
    """Hold the ``n`` atoms farthest (minimum image) from ``site`` fixed (FixAtoms); returns their indices."""
    from ase.geometry import find_mic

    if n <= 0:
        return []
    if n >= len(atoms):
        raise StructureError(f"structure.fixed_far_atoms: {n} would fix all {len(atoms)} atoms")
    _, dist = find_mic(atoms.positions - np.asarray(site, dtype=float), atoms.cell, atoms.pbc)
    far = sorted(int(i) for i in np.argsort(-dist, kind="stable")[:n])
    atoms.set_constraint(FixAtoms(indices=far))
    return far


def build_structure(s: StructureSettings) -> Atoms:
    """The aKMC starting configuration described by `s`."""
    if s.kind == "adatom_on_slab":
        return adatom_on_slab(s)
    if s.kind == "vacancy_in_bulk":
        a = lattice_constant(s.element, s.lattice, s.a)
        atoms = bulk(s.element, s.lattice, a=a, cubic=True).repeat(tuple(s.size))
        site = atoms.positions[0].copy()
        del atoms[0]
        atoms.info["defect_site"] = site.tolist()
        fix_far_from(atoms, site, DEFAULT_FIXED_FAR_ATOMS if s.fixed_far_atoms is None else s.fixed_far_atoms)
        return atoms
    assert s.file is not None  # guaranteed by StructureSettings
    return read_structure_file(s.file)


# ----------------------------------------------------------------------------------------------------------
# training structures
# ----------------------------------------------------------------------------------------------------------


def strained(atoms: Atoms, max_strain: float, rng: np.random.Generator) -> Atoms:
    """A copy under a random symmetric strain with components in [-max_strain, max_strain]."""
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return out


def rattled(atoms: Atoms, stdev: float, rng: np.random.Generator, movable_only: bool = True) -> Atoms:
    """A copy with Gaussian displacements (Å); atoms fixed by FixAtoms stay put when `movable_only`."""
    out = atoms.copy()
    disp = rng.normal(0.0, stdev, size=(len(out), 3))
    if movable_only:
        for c in out.constraints:
            if isinstance(c, FixAtoms):
                disp[c.index] = 0.0
    out.positions = out.positions + disp
    return out


def bulk_training_structures(
    element: str,
    lattice: str = "fcc",
    a: float | None = None,
    *,
    n_strained: int = 10,
    max_strain: float = 0.04,
    n_rattled: int = 10,
    rattle_stdev: float = 0.06,
    n_vacancy: int = 4,
    bulk_size: Sequence[int] = (2, 2, 2),
    seed: int = 42,
) -> list[Atoms]:
    """Strained, rattled and vacancy-containing bulk cells (unlabelled).

    Cell sizes vary between the conventional cell and `bulk_size` repetitions so that small fits stay cheap.
    """
    rng = np.random.default_rng(seed)
    a0 = lattice_constant(element, lattice, a)
    unit = bulk(element, lattice, a=a0, cubic=True)
    reps = [(1, 1, 1), (2, 1, 1), (2, 2, 1), tuple(bulk_size)]
    out: list[Atoms] = []
    for i in range(n_strained):
        cell = unit.repeat(reps[i % 2])  # small cells: strain is a global property
        out.append(rattled(strained(cell, max_strain, rng), 0.01, rng))
    for i in range(n_rattled):
        cell = unit.repeat(reps[1 + i % 3])
        out.append(rattled(strained(cell, 0.01, rng), rattle_stdev, rng))
    for _ in range(n_vacancy):
        cell = unit.repeat(tuple(bulk_size))
        del cell[int(rng.integers(len(cell)))]
        out.append(rattled(cell, rattle_stdev, rng))
    for i, at in enumerate(out):
        at.info["generator"] = "bulk"
        at.info["generator_index"] = i
    return out


def surface_training_structures(
    s: StructureSettings,
    n: int = 6,
    rattle_stdev: float = 0.06,
    seed: int = 42,
    size: Sequence[int] | None = None,
) -> list[Atoms]:
    """Rattled copies of the campaign's structure, and for the built-in kinds points along the hops aKMC will
    search: for an adatom slab displaced adatom positions (hollow, bridge, on top and points between, at varied
    heights) and the bare slab; for a vacancy in bulk a neighbour of the vacancy part of the way into it.
    """
    rng = np.random.default_rng(seed + 1)
    base = build_structure(s) if size is None else adatom_on_slab(s, size=size)
    out: list[Atoms] = []
    if s.kind == "vacancy_in_bulk":
        out = vacancy_hop_structures(base, n, rattle_stdev, rng)
    elif s.kind != "adatom_on_slab":
        for _ in range(n):
            out.append(rattled(base, rattle_stdev, rng, movable_only=False))
    else:
        bare = base[:-1]
        bare.set_constraint()
        hollow = base.positions[-1].copy()
        ads = base.info.get("adsorbate_info", {})
        sites = ads.get("sites", {})
        cell = np.asarray(ads.get("cell", base.cell[:2, :2]))
        h = adatom_height(s)
        # bridge/top positions relative to the hollow, in the plane
        targets = [hollow]
        for name in ("bridge", "ontop"):
            if name in sites:
                offset = np.dot(np.subtract(sites[name], sites.get("hollow", sites[name])), cell)
                targets.append(hollow + np.array([offset[0], offset[1], 0.0]))
        for i in range(n):
            kind = i % 4
            if kind == 3:
                at = rattled(bare, rattle_stdev, rng, movable_only=False)
            else:
                at = base.copy()
                at.set_constraint()
                if kind == 1 and len(targets) > 1:  # somewhere on the hollow-bridge-(top) path
                    t = targets[1 + int(rng.integers(len(targets) - 1))]
                    frac = rng.uniform(0.2, 1.0)
                    at.positions[-1] = hollow + frac * (t - hollow)
                    at.positions[-1, 2] += rng.uniform(0.0, 0.25 * h)
                elif kind == 2:
                    at.positions[-1, 2] += rng.uniform(-0.1, 0.3) * h
                at = rattled(at, rattle_stdev, rng, movable_only=False)
            out.append(at)
    for i, at in enumerate(out):
        at.set_constraint()
        at.info.pop("adsorbate_info", None)  # a dict of arrays: extxyz cannot keep it
        at.info["generator"] = "surface"
        at.info["generator_index"] = i
    return out


def vacancy_hop_structures(
    base: Atoms, n: int, rattle_stdev: float, rng: np.random.Generator, site: Sequence[float] = (0.0, 0.0, 0.0)
) -> list[Atoms]:
    """``n`` structures around vacancy hops in ``base`` (the vacancy at ``site``): three in four move one nearest
    neighbour of the vacancy a random fraction (0.1-0.9) of the way into it, off the straight line by up to
    0.3 Å, the rest are plain rattles; all rattled by ``rattle_stdev``."""
    from ase.geometry import find_mic

    d, dist = find_mic(base.positions - np.asarray(site, dtype=float), base.cell, base.pbc)
    shell = np.flatnonzero(dist < dist.min() * 1.1)  # the nearest neighbours of the empty site
    out: list[Atoms] = []
    for i in range(n):
        at = base.copy()
        at.set_constraint()
        if i % 4 != 3 and len(shell):
            j = int(rng.choice(shell))
            hop = -d[j]  # from atom j to the empty site
            lateral = rng.normal(0.0, 1.0, 3)
            lateral -= lateral @ hop / (hop @ hop) * hop
            lateral *= rng.uniform(0.0, 0.3) / max(np.linalg.norm(lateral), 1e-12)
            at.positions[j] += rng.uniform(0.1, 0.9) * hop + lateral
        out.append(rattled(at, rattle_stdev, rng, movable_only=False))
    return out


def initial_training_structures(c: Campaign) -> list[Atoms]:
    """The unlabelled starting set of a campaign (bulk strains, rattles, vacancies, and its own surface)."""
    d = c.initial_data
    s = c.structure
    out: list[Atoms] = []
    if s.kind != "file":
        out += bulk_training_structures(
            s.element,
            s.lattice,
            s.a,
            n_strained=d.n_strained,
            max_strain=d.max_strain,
            n_rattled=d.n_rattled,
            rattle_stdev=d.rattle_stdev,
            n_vacancy=d.n_vacancy,
            bulk_size=d.bulk_size,
            seed=d.seed,
        )
    out += surface_training_structures(s, n=d.n_surface, rattle_stdev=d.rattle_stdev, seed=d.seed)
    unknown = sorted({sym for at in out for sym in at.get_chemical_symbols()} - set(c.elements))
    if unknown:
        raise StructureError(
            f"structure: holds element(s) {unknown} that are not in campaign elements {c.elements}"
        )
    log.info("initial training set: %d structures (%d atoms)", len(out), sum(len(a) for a in out))
    return out
