"""Production: the validation gate, then manifest + report + zip into dist/."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class ValidateTask(FiretaskBase):
    """Params: campaign_dir. A failed gate fizzles this Firework with the failing thresholds named; the
    package Firework after it then never runs."""

    required_params = ["campaign_dir"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import GateFailed, validate

        figures = validate(layout_of(self))
        if not figures["passed"]:
            raise GateFailed("validation failed: " + "; ".join(figures["failures"]))
        return FWAction(stored_data=figures)


@explicit_serialize
class PackageTask(FiretaskBase):
    """Params: campaign_dir."""

    required_params = ["campaign_dir"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import package

        return FWAction(stored_data=package(layout_of(self)))
