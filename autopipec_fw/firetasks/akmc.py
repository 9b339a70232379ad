"""aKMC: run or resume eOn; on an extrapolation stop, detour into oracle -> upfit -> resumed aKMC."""

from __future__ import annotations

from fireworks import FiretaskBase, FWAction, explicit_serialize

from autopipec_fw.firetasks._common import layout_of


@explicit_serialize
class AkmcTask(FiretaskBase):
    """Params: campaign_dir, iteration (int: how many stops came before this run)."""

    required_params = ["campaign_dir", "iteration"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from autopipec_fw.campaign import akmc
        from autopipec_fw.workflows import loop_detour

        layout = layout_of(self)
        figures = akmc(layout, int(self["iteration"]))
        if figures["status"] == "stopped" and "loop_end" not in figures:
            detour = loop_detour(layout.campaign(), self["campaign_dir"], int(self["iteration"]),
                                 figures["selected_file"], figures["n_selected"], figures.get("generation"))
            return FWAction(stored_data=figures, detours=detour)
        return FWAction(stored_data=figures, update_spec={"loop_end": figures.get("loop_end")})
