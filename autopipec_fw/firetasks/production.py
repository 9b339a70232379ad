"""Production: the validation gate, then manifest + report + zip into dist/."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class ValidateTask(FiretaskBase):
    """Params: campaign_dir, round (optional int, 0: the first validation). A failed gate with teaching rounds
    left detours into oracle -> refit -> validate (round + 1) before the package; a failed gate without them
    fizzles this Firework with the failing thresholds and what to change named, and nothing is packaged."""

    required_params = ["campaign_dir"]
    optional_params = ["round"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import GateFailed, validate
        from autopipec_fw.workflows import teach_detour

        layout = layout_of(self)
        rnd = int(self.get("round", 0))
        figures = validate(layout, rnd)
        small = {k: v for k, v in figures.items() if k not in ("barriers", "processes", "holdout_errors",
                                                               "coverage")}
        if figures["passed"]:
            return FWAction(stored_data=small)
        if figures.get("teach_file"):
            detour = teach_detour(layout.campaign(), self["campaign_dir"], rnd, figures["teach_file"],
                                  figures["n_teach"], figures["generation"] + 1)
            return FWAction(stored_data=small, detours=detour)
        raise GateFailed("validation failed: " + "; ".join(figures["failures"])
                         + (f". What to change: {figures['advice']}" if figures.get("advice") else ""))


@explicit_serialize
class PackageTask(FiretaskBase):
    """Params: campaign_dir."""

    required_params = ["campaign_dir"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import package

        return FWAction(stored_data=package(layout_of(self)))
