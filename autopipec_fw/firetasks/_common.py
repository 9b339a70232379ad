"""What every Firetask of ours shares: finding its campaign folder."""

from __future__ import annotations

from autopipec_fw.campaign import CampaignLayout, expand_path


def layout_of(task) -> CampaignLayout:  # task: a FiretaskBase with a campaign_dir parameter
    return CampaignLayout(expand_path(task["campaign_dir"]))
