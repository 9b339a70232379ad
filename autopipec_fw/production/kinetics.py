"""The processes aKMC found, counted by symmetry and named: what the gate checks and the report shows.

eOn lists a process per state and per direction: the demo's adatom hop appears four times in state 0 and again in
every later state. Two processes are **one process by symmetry** when their saddle configurations map onto each
other by a symmetry of the crystal (rotation, reflection, lattice translation, permutation of like atoms: pymatgen's
`StructureMatcher`) and their barriers agree within a tolerance. Each group gets a name from what moves between
reactant and product (``adatom hop``, ``vacancy hop``, ``exchange (2 atoms)``, ...) and a multiplicity (how many
of eOn's processes it stands for).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from autopipec_fw.eon.io import ProcessRecord, read_con

log = logging.getLogger(__name__)

BARRIER_TOL = 0.05  # eV: equivalent processes of different generations may differ by this much
MOVED = 0.5  # Å: an atom moving more than this between reactant and product takes part in the process


@dataclass
class ProcessGroup:
    """Processes equivalent by symmetry; ``representative`` is the lowest-barrier one of the first run given."""

    representative: ProcessRecord
    members: list[ProcessRecord] = field(default_factory=list)
    name: str = ""
    moved_atoms: int = 0
    hop_length: float | None = None  # Å, largest displacement reactant -> product

    @property
    def multiplicity(self) -> int:
        return len(self.members)

    @property
    def states(self) -> list[int]:
        return sorted({m.state for m in self.members})

    def to_dict(self) -> dict[str, Any]:
        r = self.representative
        return {
            "name": self.name, "multiplicity": self.multiplicity, "states": self.states,
            "barrier": r.barrier, "state": r.state, "process": r.process, "run": str(r.run_dir),
            "moved_atoms": self.moved_atoms, "hop_length": self.hop_length,
        }


def displacements(reactant: Atoms, product: Atoms) -> np.ndarray:
    """Per-atom displacement (Å, minimum image) from `reactant` to `product` (same cell)."""
    from ase.geometry import find_mic

    d, _ = find_mic(product.positions - reactant.positions, reactant.cell, reactant.pbc)
    return np.linalg.norm(d, axis=1)


def _is_adatom(atoms: Atoms, index: int) -> bool:
    """The atom sits on top of a slab: the highest of the structure and clearly above the next one."""
    z = atoms.positions[:, 2]
    order = np.argsort(-z)
    return int(order[0]) == index and (len(z) < 2 or z[order[0]] - z[order[1]] > 0.8)


def name_process(reactant: Atoms, product: Atoms, structure_kind: str | None = None) -> tuple[str, int, float]:
    """(name, atoms moved, largest displacement Å) of the process from ``reactant`` to ``product``."""
    disp = displacements(reactant, product)
    movers = np.flatnonzero(disp > MOVED)
    hop = float(disp.max()) if len(disp) else 0.0
    n = len(movers)
    if n == 0:
        return "no net displacement", 0, hop
    if n == 1:
        i = int(movers[0])
        if structure_kind == "vacancy_in_bulk":
            return "vacancy hop", 1, hop
        if structure_kind == "adatom_on_slab" and _is_adatom(reactant, i):
            return "adatom hop", 1, hop
        return "single-atom hop", 1, hop
    if n == 2 and structure_kind == "adatom_on_slab" and any(_is_adatom(reactant, int(i)) for i in movers):
        return "adatom exchange (2 atoms)", 2, hop
    return f"concerted move ({n} atoms)", n, hop


def net_displacement(process: ProcessRecord) -> float | None:
    """Largest displacement of any atom (Å, minimum image) between the process's reactant and product; None
    without geometry files."""
    if not process.has_geometry:
        return None
    disp = displacements(read_con(process.reactant), read_con(process.product))
    return float(disp.max()) if len(disp) else 0.0


def split_transitions(processes: Sequence[ProcessRecord]) -> tuple[list[ProcessRecord], list[ProcessRecord]]:
    """(transitions, non-transitions): a process whose product moves no atom more than `MOVED` Å from its
    reactant connects two points of one basin (a shallow kink of the potential that eOn's loose minimisation
    took for a new state, often with a barrier of a few meV), not two distinct minima. Such a process is no
    kinetics to gate: left in, its near-zero barrier would also make every real process of the state look too
    slow to matter. Processes without geometry count as transitions (nothing to judge them by)."""
    moves: list[ProcessRecord] = []
    stays: list[ProcessRecord] = []
    for p in processes:
        d = net_displacement(p)
        (stays if d is not None and d <= MOVED else moves).append(p)
    return moves, stays


def _matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    # a tight match: equivalent saddles differ by numerical noise only (eOn converges them to 0.01 eV/Å)
    return StructureMatcher(ltol=0.05, stol=0.1, angle_tol=2, primitive_cell=False, scale=False,
                            attempt_supercell=False, allow_subset=False)


def _structure(atoms: Atoms) -> Any:
    from pymatgen.io.ase import AseAtomsAdaptor

    a = atoms.copy()
    a.set_constraint()
    return AseAtomsAdaptor.get_structure(a)


def group_processes(
    processes: Sequence[ProcessRecord], structure_kind: str | None = None, barrier_tol: float = BARRIER_TOL
) -> list[ProcessGroup]:
    """Group processes equivalent by symmetry (saddles equivalent under the crystal's symmetry, barriers within
    ``barrier_tol`` eV), lowest barrier first. Processes without geometry files are left out. The earlier a
    process comes in ``processes`` the more it is preferred as its group's representative (pass the latest
    segment's processes first)."""
    matcher = _matcher()
    run_rank: dict[str, int] = {}
    for p in processes:
        run_rank.setdefault(str(p.run_dir), len(run_rank))
    usable = [p for p in processes if p.has_geometry]
    groups: list[ProcessGroup] = []
    saddles: list[Any] = []
    for p in sorted(usable, key=lambda p: (p.barrier, run_rank[str(p.run_dir)], p.state, p.process)):
        s = _structure(read_con(p.saddle))
        hit = None
        for g, gs in zip(groups, saddles, strict=True):
            if abs(g.representative.barrier - p.barrier) <= barrier_tol and len(gs) == len(s) \
                    and matcher.fit(gs, s):
                hit = g
                break
        if hit is None:
            name, n, hop = name_process(read_con(p.reactant), read_con(p.product), structure_kind)
            hit = ProcessGroup(p, [], name, n, hop)
            groups.append(hit)
            saddles.append(s)
        hit.members.append(p)
    for g in groups:  # the representative: the lowest barrier of the most preferred run
        g.representative = min(g.members, key=lambda m: (run_rank[str(m.run_dir)], m.barrier))
    groups.sort(key=lambda g: g.representative.barrier)
    _number_names(groups)
    return groups


def _number_names(groups: list[ProcessGroup]) -> None:
    """Two different groups with the same name (two distinct adatom hops) get numbered: "adatom hop 2"."""
    seen: dict[str, int] = {}
    for g in groups:
        seen[g.name] = seen.get(g.name, 0) + 1
        if seen[g.name] > 1:
            g.name = f"{g.name} {seen[g.name]}"
