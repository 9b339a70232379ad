"""report.html: one self-contained file; empty series degrade to notes."""

from __future__ import annotations

import base64
import re

from autopipec_fw.config import Campaign
from autopipec_fw.eon.io import read_dynamics
from autopipec_fw.production.manifest import ProductionManifest
from autopipec_fw.production.report import learning_curve_series, write_report


def _images(html: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(b) for alt, b in re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)}


def test_full_report_is_self_contained(surface_validation, eon_run_dir, cu_bulk_potential, tmp_path) -> None:
    m = ProductionManifest.from_campaign(Campaign(), surface_validation, training_set_size=34)
    gens = [cu_bulk_potential.generation.to_dict(), {"index": 1, "metrics": {"train_energy_rmse": 1.0, "test_force_rmse": 9.0}}]
    stops = [{"iteration": 0, "max_gamma": 31.0}, 8.5]
    row = surface_validation.barriers[0]
    pd = eon_run_dir / "states" / str(row.state) / "procdata"
    pictures = {"start": eon_run_dir / "states" / "0" / "reactant.con",
                "process": {"name": row.name, **{k: pd / f"{k}_{row.process}.con"
                                                  for k in ("reactant", "saddle", "product")}}}
    traj = [{**r, "segment": 1, "generation": "/c/generations/gen_000/potential.yaml"}
            for r in read_dynamics(eon_run_dir)]
    path = write_report(tmp_path / "report.html", m, surface_validation, gens, stops, traj, pictures=pictures)
    html = path.read_text()
    imgs = _images(html)
    assert set(imgs) == {"learning curve", "parity plots", "max gamma per stop", "KMC trajectory",
                         "starting structure (aKMC)", "adatom hop: initial, saddle, final"}
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in imgs.values())
    # nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:)', html)
    # the barrier table shows learned and oracle barriers of the checked process
    assert f"{row.learned_barrier:.3f}" in html and f"{row.oracle_barrier:.3f}" in html
    # processes named and counted by symmetry, as the gate counts them; each figure names its generation
    assert "<td>adatom hop</td><td>3</td><td>0, 1</td>" in html
    assert 'class="processes"' in html and "KMC steps 0-1: segment 1, rates from gen_000" in html
    assert f"Parity on the held-out set (generation {m.generation})" in html
    assert "Validation gate: FAILED" in html and "max_barrier_error" in html
    assert m.name in html and m.oracle.settings_hash in html


def test_empty_series_give_notes(tmp_path) -> None:
    m = {"name": "x", "version": "0.1.0", "limits": {"gamma_threshold": 5.0}}
    html = write_report(tmp_path / "r.html", m).read_text()
    assert _images(html) == {}
    for note in ("no learning curve", "no parity plot", "no gamma plot", "no trajectory plot", "no barrier table"):
        assert note in html
    assert "No validation result was given" in html


def test_learning_curve_reads_generation_dicts(cu_bulk_potential) -> None:
    g = cu_bulk_potential.generation.to_dict()
    series = learning_curve_series([g, {"generation": 3, "train_force_rmse": 5.0, "note": "text"}])
    assert series["train_force_rmse"] == [(0, g["metrics"]["train_force_rmse"]), (3, 5.0)]
    assert "note" not in series
