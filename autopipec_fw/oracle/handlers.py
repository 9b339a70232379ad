"""custodian handlers of the DFT single points: SCF non-convergence of GPAW and of Quantum ESPRESSO.

Each correction is data: custodian ``_set`` actions on `oracle_parameters.json` (applied with custodian's own
`Modder`), logged by custodian in ``custodian.json``: twice the SCF iterations and half the mixing. The failed
attempt's output is kept beside the new one (``gpaw.attempt<n>.txt``, ``espresso.attempt<n>.pwo``, ...).
``max_corrections`` (``oracle.max_scf_corrections``) corrections are applied at most; the next unconverged SCF
raises custodian's `MaxCorrectionsPerHandlerError` (``raise_on_max``), which the oracle stage reports naming
the folder. VASP uses custodian's own VASP handlers (oracle/vasp.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from custodian.ansible.interpreter import Modder
from custodian.custodian import ErrorHandler

from autopipec_fw.oracle.jobs import (
    GPAW_ERR,
    GPAW_SCF_MARK,
    GPAW_TXT,
    PARAMS_FILE,
    PW_ERR,
    PW_INPUT,
    PW_OUTPUT,
    PW_SCF_MARK,
    read_parameters,
    write_parameters,
)

log = logging.getLogger(__name__)

GPAW_DEFAULT_MAXITER = 333  # GPAW's own default
GPAW_DEFAULT_BETA = 0.05  # GPAW's default density-mixing weight for a periodic metal cell
PW_DEFAULT_MAXSTEP = 100
PW_DEFAULT_BETA = 0.7


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def keep_attempt(folder: Path, names: list[str]) -> int:
    """Rename the named outputs of the attempt that just failed to ``<stem>.attempt<n><suffix>``; returns n."""
    folder = Path(folder)
    stem0 = Path(names[0])
    n = 0
    while (folder / f"{stem0.stem}.attempt{n}{stem0.suffix}").exists():
        n += 1
    for name in names:
        f = folder / name
        if f.exists():
            f.rename(folder / f"{f.stem}.attempt{n}{f.suffix}")
    return n


class _ScfHandler(ErrorHandler):
    """SCF non-convergence: more iterations, gentler mixing, at most `max_corrections` times."""

    is_monitor = False
    raise_on_max = True
    outputs: list[str] = []

    def __init__(self, max_corrections: int = 2) -> None:
        self.max_corrections = int(max_corrections)
        self.max_num_corrections = self.max_corrections

    def _actions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def correct(self, directory: str = "./") -> dict[str, Any]:
        folder = Path(directory)
        params = read_parameters(folder)
        actions = self._actions(params)
        modder = Modder()
        for a in actions:
            modder.modify(a["action"], params)
        write_parameters(folder, params)
        n = keep_attempt(folder, self.outputs)
        log.warning("%s: SCF unconverged (attempt %d); corrections %s", folder, n, actions)
        return {"errors": ["scf_unconverged"], "actions": actions}


class GpawScfHandler(_ScfHandler):
    """GPAW's SCF did not converge (KohnShamConvergenceError, marked by the runner in gpaw.err):
    maxiter x 2, density mixing beta / 2."""

    outputs = [GPAW_TXT, GPAW_ERR]

    def check(self, directory: str = "./") -> bool:
        return GPAW_SCF_MARK in _text(Path(directory) / GPAW_ERR)

    def _actions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        maxiter = int(params.get("maxiter", GPAW_DEFAULT_MAXITER))
        mixer = dict(params.get("mixer") or {})
        beta = float(mixer.get("beta", GPAW_DEFAULT_BETA))
        new_mixer = {"beta": round(beta / 2, 6), "nmaxold": int(mixer.get("nmaxold", 5)),
                     "weight": float(mixer.get("weight", 50.0))}
        return [
            {"dict": PARAMS_FILE, "action": {"_set": {"maxiter": 2 * maxiter}}},
            {"dict": PARAMS_FILE, "action": {"_set": {"mixer": new_mixer}}},
        ]


class EspressoScfHandler(_ScfHandler):
    """pw.x printed 'convergence NOT achieved': electron_maxstep x 2, mixing_beta / 2."""

    outputs = [PW_OUTPUT, PW_INPUT, PW_ERR]

    def check(self, directory: str = "./") -> bool:
        return PW_SCF_MARK in _text(Path(directory) / PW_OUTPUT)

    def _actions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        el = (params.get("input_data") or {}).get("electrons") or {}
        steps = int(el.get("electron_maxstep", PW_DEFAULT_MAXSTEP))
        beta = float(el.get("mixing_beta", PW_DEFAULT_BETA))
        return [
            {"dict": PARAMS_FILE, "action": {"_set": {"input_data->electrons->electron_maxstep": 2 * steps}}},
            {"dict": PARAMS_FILE, "action": {"_set": {"input_data->electrons->mixing_beta": round(beta / 2, 6)}}},
        ]


def scf_handlers(calculator: str, max_corrections: int) -> list[ErrorHandler]:
    if calculator == "gpaw":
        return [GpawScfHandler(max_corrections)]
    if calculator == "espresso":
        return [EspressoScfHandler(max_corrections)]
    return []
