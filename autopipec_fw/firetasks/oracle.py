"""Oracle: single points for a batch of structures, added to the training set."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class OracleTask(FiretaskBase):
    """Params: campaign_dir, structures_file (in the campaign's structures/), indices (list of int), source."""

    required_params = ["campaign_dir", "structures_file", "indices"]
    optional_params = ["source"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import label_batch

        figures = label_batch(layout_of(self), self["structures_file"], list(self["indices"]),
                              self.get("source", "oracle"))
        return FWAction(stored_data=figures)
