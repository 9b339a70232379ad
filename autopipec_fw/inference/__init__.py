"""Inference stage: the eOn ext_pot driver (``pace_driver.py``), its persistent evaluator, and the gamma stop
semantics shared with the in-process eOn client.

Names are imported lazily so that ``import autopipec_fw.inference`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StopPolicy": "extrapolation",
    "read_candidates": "extrapolation",
    "read_stop_file": "extrapolation",
    "start_evaluator": "evaluator",
    "stop_evaluator": "evaluator",
    "evaluator_stats": "evaluator",
    "EvaluatorHandle": "evaluator",
    "EvaluatorError": "evaluator",
    "driver_path": "evaluator",
    "driver_environment": "evaluator",
    "write_driver_wrapper": "evaluator",
    "read_calls_file": "evaluator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
