"""k-point grids by density: one rule for every DFT oracle.

`oracle.kpoint_density` d is in k-points per Å⁻¹ of reciprocal-lattice length, ASE's convention
(`kpts={"density": d}`, `ase.calculators.calculator.kptdensity2monkhorstpack`): along cell vector i,
n_i = max(1, ceil(2π |b_i| d)) with b the reciprocal cell without the 2π (|b_i| = 1 / the spacing of the
lattice planes normal to it). That is the grid of VASP's KSPACING = 1/d Å⁻¹. Grids are Γ-centred.
Directions get one k-point when they are not periodic (`pbc` False) or when the atoms leave a vacuum gap along
them: the largest gap between the atoms' positions projected on the plane normal (periodic images included)
above `VACUUM_GAP` Å, e.g. the vacuum of a slab.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import kptdensity2monkhorstpack

VACUUM_GAP = 5.0  # Å: a wider empty gap along a cell vector is vacuum (one k-point there)


@dataclass(frozen=True)
class KpointGrid:
    """The grid one structure gets (recorded in its oracle.json)."""

    grid: tuple[int, int, int]
    density: float | None
    gamma_centred: bool = True
    vacuum_axes: list[int] = field(default_factory=list)
    nonperiodic_axes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d


def largest_gap(atoms: Atoms, axis: int) -> float:
    """Widest empty slab (Å, measured normal to the lattice planes) between the atoms along cell vector `axis`,
    periodic images included."""
    recip = atoms.cell.reciprocal()[axis]
    spacing = 1.0 / float(np.linalg.norm(recip))
    s = np.sort(np.mod(atoms.get_scaled_positions(wrap=False)[:, axis], 1.0))
    if len(s) == 0:
        return spacing
    gaps = np.diff(np.concatenate([s, [s[0] + 1.0]]))
    return float(gaps.max()) * spacing


def vacuum_axes(atoms: Atoms, gap: float = VACUUM_GAP) -> list[int]:
    """Periodic cell vectors along which the atoms leave an empty gap wider than `gap` Å."""
    return [i for i in range(3) if atoms.pbc[i] and largest_gap(atoms, i) > gap]


def kpoint_grid(atoms: Atoms, density: float, gap: float = VACUUM_GAP) -> KpointGrid:
    """The Γ-centred grid of `density` (k-points per Å⁻¹) for `atoms`, one k-point along vacuum and
    non-periodic directions."""
    if not density > 0:
        raise ValueError(f"oracle.kpoint_density: expected a positive number, got {density!r}")
    if atoms.cell.rank < 3:
        raise ValueError("a k-point grid needs a cell with three non-zero vectors (structure without a cell)")
    n = [int(k) for k in kptdensity2monkhorstpack(atoms, kptdensity=density, even=False)]
    vac = vacuum_axes(atoms, gap)
    nonper = [i for i in range(3) if not atoms.pbc[i]]
    for i in vac + nonper:
        n[i] = 1
    return KpointGrid(grid=(n[0], n[1], n[2]), density=float(density), vacuum_axes=vac, nonperiodic_axes=nonper)
