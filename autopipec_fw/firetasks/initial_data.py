"""Initial data: build the starting structures, then detour into parallel oracle Fireworks."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class InitialDataTask(FiretaskBase):
    """Params: campaign_dir (absolute, ~ and $VARS allowed); campaign (optional dict of settings: the folder is
    prepared from it when the workflow was added with `lpad add` rather than `mlip-auto submit`)."""

    required_params = ["campaign_dir"]
    optional_params = ["campaign"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw import campaign as stages
        from autopipec_fw.config import campaign_from_dict
        from autopipec_fw.workflows import oracle_fireworks

        layout = layout_of(self)
        if self.get("campaign") is not None:
            stages.prepare_campaign(campaign_from_dict(self["campaign"], "InitialDataTask.campaign"), layout.root)
        figures = stages.initial_structures(layout)
        campaign = layout.campaign()
        detours = oracle_fireworks(campaign, self["campaign_dir"], "initial.extxyz", figures["n_structures"],
                                   source="initial")
        return FWAction(stored_data=figures, detours=detours)
