"""Fit: pacemaker fit (generation 0) or upfit (generation N from N-1) on the whole training set."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class FitTask(FiretaskBase):
    """Params: campaign_dir, generation (int); optional always_refit (a teaching round: what the gate failed on
    is refitted, never only verified)."""

    required_params = ["campaign_dir", "generation"]
    optional_params = ["always_refit"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import fit

        return FWAction(stored_data=fit(layout_of(self), int(self["generation"]),
                                       always_refit=bool(self.get("always_refit", False))))
