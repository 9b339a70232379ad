"""Campaign folder rules that need no fit: preparation, the unphysical-candidate filter."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.build import bulk

from autopipec_fw.campaign import prepare_campaign
from autopipec_fw.config import Campaign, ConfigError
from autopipec_fw.gamma import is_physical


def test_close_contacts_are_unphysical() -> None:
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    assert is_physical(a, 0.65)
    squeezed = a.copy()
    squeezed.positions[1] = squeezed.positions[0] + [1.0, 0.3, 0.0]  # 1.04 Å apart (Cu-Cu is 2.55)
    assert not is_physical(squeezed, 0.65)
    assert is_physical(squeezed, 0.0)  # the filter can be switched off


def test_prepare_is_idempotent_and_refuses_other_settings(tmp_path: Path) -> None:
    c = Campaign(name="p1", package={"dist_dir": tmp_path / "dist"})
    layout = prepare_campaign(c, tmp_path / "c")
    text = layout.config.read_text()
    assert prepare_campaign(c, tmp_path / "c").config.read_text() == text
    with pytest.raises(ConfigError, match="other settings"):
        prepare_campaign(Campaign(name="p1", akmc={"kmc_steps": 9}, package={"dist_dir": tmp_path / "dist"}),
                         tmp_path / "c")
    assert layout.campaign().package.dist_dir == tmp_path / "dist"
