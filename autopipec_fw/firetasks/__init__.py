"""Thin Firetasks: read the parameters, call the stage function (autopipec_fw.campaign), return an FWAction.

The graph changes they ask for (detours of the active-learning loop) are built in autopipec_fw.workflows.
Heavy imports (pyace, TensorFlow, eOn) happen inside `run_task`, so resolving a task name stays cheap.
"""

from autopipec_fw.firetasks.akmc import AkmcTask
from autopipec_fw.firetasks.fit import FitTask
from autopipec_fw.firetasks.initial_data import InitialDataTask
from autopipec_fw.firetasks.oracle import OracleTask
from autopipec_fw.firetasks.production import PackageTask, ValidateTask

__all__ = ["AkmcTask", "FitTask", "InitialDataTask", "OracleTask", "PackageTask", "ValidateTask"]
