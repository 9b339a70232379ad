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
        prepare_campaign(Campaign(name="p1", akmc={"temperature": 500}, package={"dist_dir": tmp_path / "dist"}),
                         tmp_path / "c")
    assert layout.campaign().package.dist_dir == tmp_path / "dist"


def test_no_refit_when_the_training_set_did_not_grow(tmp_path: Path, cu_bulk_potential) -> None:
    """The fit stage asked for generation N on the data generation N-1 was fitted on: no pacemaker run, gen N is
    N-1's potential (so aKMC resumes its segment in place)."""
    import shutil

    from autopipec_fw.campaign import fit
    from autopipec_fw.training.fit import latest_generation

    layout = prepare_campaign(Campaign(name="nogrow", package={"dist_dir": tmp_path / "dist"}), tmp_path / "c")
    layout.dataset.parent.mkdir(parents=True)
    shutil.copyfile(cu_bulk_potential.training, layout.dataset)
    layout.generations.mkdir()
    shutil.copytree(cu_bulk_potential.generation.dir, layout.generations / "gen_000")
    figures = fit(layout, 1)
    gen = latest_generation(layout.generations)
    assert gen is not None and gen.index == 1 and figures["generation"] == 1
    assert gen.metrics["reused_from"] == 0 and figures["seconds"] < 10
    assert gen.yaml.read_bytes() == (layout.generations / "gen_000" / "potential.yaml").read_bytes()
