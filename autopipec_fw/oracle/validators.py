"""custodian validator of a single point: is the output a usable label?

`SinglePointValidator` fails (custodian raises `ValidationError`, no result is written, nothing enters the
training set) unless the code's output can be read back with an energy, finite forces of every atom and, for
pw.x, a converged SCF. A crashed run (no output, a traceback) and an unconverged one that exited 0 both fail here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from custodian.custodian import Validator

from autopipec_fw.oracle.jobs import read_results

log = logging.getLogger(__name__)


class SinglePointValidator(Validator):
    def __init__(self, calculator: str) -> None:
        self.calculator = calculator

    def check(self, directory: str = "./") -> bool:
        try:
            read_results(self.calculator, Path(directory))
        except Exception as e:
            log.error("%s: no usable %s result (%s: %s)", directory, self.calculator, type(e).__name__, e)
            return True
        return False
