"""Everything about a campaign that can be checked without running a calculation.

`mlip-auto config check`, `submit` and `run-loop` (first thing) call `check_campaign`: the starting structure is
built or read and must be sane, the oracle's parameters must be ones its calculator knows and finite, the DFT
code must be installed (`check_oracle`), and the package metadata was already checked when the file was loaded
(SPDX license, BibTeX, finite numbers: `autopipec_fw.config`). Every problem is one line
``<campaign file>: <field>: <what was expected>``; all of them are reported at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autopipec_fw.config import Campaign, ConfigError

# a starting structure below these is not a physical configuration (the eOn driver refuses 0.2 Å; a campaign's
# own starting point must be far saner)
MIN_DISTANCE = 0.5  # Å between two atoms, periodic images included
MIN_CELL_HEIGHT = 0.5  # Å: thickness of the box across each pair of its vectors
MIN_VOLUME_PER_ATOM = 1.0  # Å^3 (the densest solids have 2-6)
MAX_COORDINATE = 1e5  # Å


def structure_problems(atoms: Any, where: str, elements: list[str]) -> list[str]:
    """Why ``atoms`` cannot start a campaign (empty list: it can). ``where``: the field and file to name."""
    n = len(atoms)
    if n == 0:
        return [f"{where}: holds no atoms; expected at least one"]
    pos = np.asarray(atoms.positions, dtype=float)
    bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
    if bad.size:
        return [f"{where}: atom {int(bad[0]) + 1} has a non-finite coordinate {pos[bad[0]].tolist()}; "
                "expected finite positions in Å"]
    far = np.flatnonzero(np.abs(pos).max(axis=1) > MAX_COORDINATE)
    if far.size:
        return [f"{where}: atom {int(far[0]) + 1} is at {pos[far[0]].tolist()}, beyond {MAX_COORDINATE:g} Å; "
                "expected positions in Å"]
    out = []
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
    if unknown:
        out.append(f"{where}: holds element(s) {unknown} that are not in elements {elements}")
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.isfinite(cell).all():
        return [*out, f"{where}: the cell is not finite ({cell.tolist()})"]
    volume = abs(float(np.linalg.det(cell)))
    if volume == 0.0 or not atoms.pbc.any():
        return [*out, f"{where}: no periodic cell (cell {cell.tolist()}, pbc {atoms.pbc.tolist()}); eOn needs a "
                      "box: expected three non-zero cell vectors (e.g. extxyz with Lattice=\"...\", vacuum "
                      "along non-periodic directions)"]
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    heights = volume / areas
    if heights.min() < MIN_CELL_HEIGHT:
        return [*out, f"{where}: the cell is {heights.min():.3g} Å thick across vectors "
                      f"{sorted({0, 1, 2} - {int(np.argmin(heights))})}; expected at least {MIN_CELL_HEIGHT:g} Å "
                      "(a degenerate cell)"]
    if volume / n < MIN_VOLUME_PER_ATOM:
        return [*out, f"{where}: {volume / n:.3g} Å^3 per atom ({n} atoms in {volume:.3g} Å^3); expected at least "
                      f"{MIN_VOLUME_PER_ATOM:g} Å^3 per atom"]
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        out.append(f"{where}: atoms {int(i[k]) + 1} and {int(j[k]) + 1} are {d[k]:.3g} Å apart (periodic images "
                   f"included); expected at least {MIN_DISTANCE:g} Å")
    return out


def _non_finite(value: Any, name: str) -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{name}.{k}")]
    if isinstance(value, list | tuple):
        return [p for k, v in enumerate(value) for p in _non_finite(v, f"{name}[{k}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{name}: {value!r} is not a finite number"]
    return []


def check_campaign(campaign: Campaign, source: str) -> dict[str, str]:
    """Raise ConfigError listing every problem (one line each); return what was found about the oracle."""
    from autopipec_fw.oracle.calculators import OracleConfigError, check_oracle, effective_parameters
    from autopipec_fw.structures import StructureError, build_structure

    problems: list[str] = []
    s = campaign.structure
    where = f"structure.file: {s.file}" if s.kind == "file" else f"structure ({s.kind})"
    try:
        atoms = build_structure(s)
    except (StructureError, ValueError, KeyError) as e:
        problems.append(str(e) if str(e).startswith("structure") else f"{where}: {e}")
    else:
        problems += structure_problems(atoms, where, list(campaign.elements))
    problems += _non_finite(campaign.oracle.parameters, "oracle.parameters")
    found: dict[str, str] = {}
    try:
        effective_parameters(campaign.oracle)
        found = check_oracle(campaign.oracle, campaign.elements)
    except OracleConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return found
