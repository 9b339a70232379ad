"""Fit: pacemaker fit (generation 0) or upfit (generation N from N-1) on the whole training set."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class FitTask(FiretaskBase):
    """Params: campaign_dir, generation (int)."""

    required_params = ["campaign_dir", "generation"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import fit

        return FWAction(stored_data=fit(layout_of(self), int(self["generation"])))
