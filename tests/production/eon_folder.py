"""A minimal aKMC run folder in eOn 3.6.0's real on-disk format, built from structures we compute.

The system: a Cu adatom on a 3x3x3 Cu(100) slab (bottom layer fixed), EMT. The reactant is the relaxed
adatom in a hollow site; each process is a hop to a neighbouring hollow, saddle and product from an EMT
CI-NEB. Format written (see autopipec_fw/production/eon_results.py for the reader and eOn's
akmcstate.py/state.py/fileio.py for the writer we mimic):

    config.ini                 [Main] job = akmc, temperature = ...
    dynamics.txt               2 header lines, then per KMC step: step reactant process product step_time
                               total_time barrier rate energy
    states/<n>/reactant.con    the state's minimum
    states/<n>/info            [MetaData] reactant energy = ..., previous state = ...
    states/<n>/processtable    header + "proc# saddle_energy prefactor product product_energy
                               product_prefactor barrier rate repeats" (eOn's %7d %16.5f %11.5e ... format)
    states/<n>/procdata/{reactant,saddle,product}_<id>.con   (ids are content hashes in eOn 3.6)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import write
from ase.mep import NEB
from ase.optimize import FIRE

PROCESSTABLE_HEADER = "%7s %16s %11s %9s %16s %17s %8s %12s %7s\n" % (  # noqa: UP031 (eOn's own format)
    "proc #", "saddle energy", "prefactor", "product", "product energy", "product prefactor", "barrier", "rate",
    "repeats",
)
PROCESSTABLE_LINE = "%7d %16.5f %11.5e %9d %16.5f %17.5e %8.5f %12.5e %7d\n"
KB = 8.617333262e-5


def adatom_slab() -> Atoms:
    slab = fcc100("Cu", size=(3, 3, 3), vacuum=6.0, periodic=True)
    add_adsorbate(slab, "Cu", 1.8, "hollow")
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 3))
    return slab


def _relaxed(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    FIRE(atoms, logfile=None).run(fmax=0.02, steps=500)
    return atoms


def hop(reactant: Atoms, shift: np.ndarray, n_images: int = 3) -> tuple[Atoms, Atoms]:
    """(saddle, product) of the adatom hop by `shift` (Å), EMT CI-NEB."""
    product = reactant.copy()
    product.positions[-1] += shift
    product = _relaxed(product)
    images = [reactant.copy()] + [reactant.copy() for _ in range(n_images)] + [product.copy()]
    NEB(images, method="improvedtangent").interpolate(mic=True)
    for im in images:
        im.calc = EMT()
    FIRE(NEB(images, climb=True, method="improvedtangent"), logfile=None).run(fmax=0.02, steps=500)
    saddle = max(images[1:-1], key=lambda a: a.get_potential_energy())
    s = saddle.copy()
    s.calc = None
    return s, product


def _energy(atoms: Atoms) -> float:
    a = atoms.copy()
    a.calc = EMT()
    return float(a.get_potential_energy())


def build_eon_run(run_dir: Path, temperature: float = 300.0) -> dict:
    """Write the folder; returns {"processes": [(state, id, barrier), ...], "reactant_energy": E0}."""
    run_dir = Path(run_dir)
    reactant = _relaxed(adatom_slab())
    a_nn = reactant.cell[0, 0] / 3  # nearest-neighbour hollow-to-hollow distance on Cu(100)
    e0 = _energy(reactant)
    (run_dir / "states").mkdir(parents=True)
    (run_dir / "config.ini").write_text(f"[Main]\njob = akmc\ntemperature = {temperature}\n\n[Paths]\n")
    procs = []
    # state 0: two symmetry-equivalent hops (+x, +y); state 1: one hop back (-x)
    plan = {0: [np.array([a_nn, 0, 0]), np.array([0, a_nn, 0])], 1: [np.array([-a_nn, 0, 0])]}
    state_reactant = {0: reactant}
    dyn_lines = []
    time = 0.0
    for state, shifts in plan.items():
        sd = run_dir / "states" / str(state)
        (sd / "procdata").mkdir(parents=True)
        r = state_reactant[state]
        er = _energy(r)
        write(sd / "reactant.con", r, format="eon")
        (sd / "info").write_text(f"[MetaData]\nreactant energy = {er:.10f}\nprevious state = {state - 1}\n")
        table = PROCESSTABLE_HEADER
        for k, shift in enumerate(shifts):
            pid = 7_046_029_254_386_353_131 // (state + k + 1)  # eOn 3.6 ids are xxh64 content hashes
            saddle, product = hop(r, shift)
            es, ep = _energy(saddle), _energy(product)
            barrier = es - er
            rate = 1e12 * math.exp(-barrier / (KB * temperature))
            # state 0 --(first hop)--> state 1 --(hop back)--> state 0: two KMC steps
            nxt = {(0, 0): 1, (1, 0): 0}.get((state, k), -1)
            table += PROCESSTABLE_LINE % (pid, es, 1e12, nxt, ep, 1e12, barrier, rate, 1)
            for name, at in (("reactant", r), ("saddle", saddle), ("product", product)):
                write(sd / "procdata" / f"{name}_{pid}.con", at, format="eon")
            procs.append((state, pid, barrier))
            if nxt >= 0:
                state_reactant.setdefault(nxt, product)
                dt = 1.0 / rate
                time += dt
                dyn_lines.append((len(dyn_lines), state, pid, nxt, dt, time, barrier, rate, er))
        (sd / "processtable").write_text(table)
    header = "%12s  %12s  %12s  %12s  %12s  %12s  %12s  %12s  %12s\n" % (  # noqa: UP031
        "step-number", "reactant-id", "process-id", "product-id", "step-time", "total-time", "barrier", "rate",
        "energy",
    )
    body = "".join("%12d  %12d  %12d  %12d  %12e  %12e  %12f  %12e  %12f\n" % ln for ln in dyn_lines)  # noqa: UP031
    (run_dir / "dynamics.txt").write_text(header + "-" * len(header) + "\n" + body)
    return {"processes": procs, "reactant_energy": e0}
