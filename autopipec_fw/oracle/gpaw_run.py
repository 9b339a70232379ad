"""Run one GPAW single point in a calculation folder: ``python -m autopipec_fw.oracle.gpaw_run <folder>``.

Reads `input.extxyz` and `oracle_parameters.json`, runs GPAW (its log in `gpaw.txt`), writes energy, forces and
(fully periodic cells) stress to `gpaw_result.extxyz`. An unconverged SCF prints the `SCF_NOT_CONVERGED` mark to
stderr and exits 3 (GPAW's own log does not say it); any other failure exits 1 with the traceback. This is what
`GpawJob` runs under custodian; with MPI, start it as ``mpirun -np N python -m autopipec_fw.oracle.gpaw_run``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

EXIT_SCF = 3


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m autopipec_fw.oracle.gpaw_run <calculation folder>", file=sys.stderr)
        return 2
    folder = Path(args[0])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from gpaw import GPAW, KohnShamConvergenceError

    from autopipec_fw.oracle.jobs import (
        GPAW_RESULT,
        GPAW_SCF_MARK,
        GPAW_TXT,
        read_input,
        read_parameters,
        write_result,
    )

    atoms = read_input(folder)
    params = read_parameters(folder)
    try:
        atoms.calc = GPAW(txt=str(folder / GPAW_TXT), **params)
        atoms.get_forces()
        write_result(folder / GPAW_RESULT, atoms)
    except KohnShamConvergenceError:
        print(f"{GPAW_SCF_MARK}: GPAW's SCF did not converge in maxiter = {params.get('maxiter', 'default')} "
              "iterations (KohnShamConvergenceError)", file=sys.stderr)
        return EXIT_SCF
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
