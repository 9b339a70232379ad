"""Kinetics from one potential: after a retrain, every rate the KMC can draw from is the current generation's.

A campaign's aKMC is a sequence of eOn run folders ("segments", `CampaignAkmc`), one per potential. These tests
run real eOn (server + our client) with EMT as "generation 0" and the fitted ACE surface potential as
"generation 1", i.e. a retrain that changes the barriers by more than the 5 meV the check allows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase.calculators.emt import EMT

from autopipec_fw.config import GammaSettings
from autopipec_fw.eon.akmc import CampaignAkmc, EonRunOptions
from autopipec_fw.eon.io import read_con, read_dynamics, read_processes
from tests.fixtures.eon import processes_in, quick_akmc

GAMMA = GammaSettings(threshold=50.0, select_lower=40.0, max_selected=4)  # no stop: this is about the tables
EMT_GEN = EonRunOptions(client_potential="emt")


def _ace(pot):
    from pyace import PyACECalculator

    return PyACECalculator(str(pot.yaml))


def _table_mismatch_meV(run_dir: Path, calc) -> list[float]:
    """|saddle - reactant with ``calc`` - the table's barrier| of every process of every state, in meV."""
    out = []
    for p in read_processes(run_dir, with_geometry=True):
        s, r = read_con(p.saddle), read_con(p.reactant)
        s.calc, r.calc = calc, calc
        e_s = s.get_potential_energy()
        e_r = r.get_potential_energy()
        out.append(1000 * abs((e_s - e_r) - p.barrier))
    return out


@pytest.mark.slow
def test_after_a_retrain_every_process_is_the_current_generations(tmp_path, demo_atoms, cu_surface_potential):
    root = tmp_path / "akmc"
    runs = CampaignAkmc(root)
    first = runs.run(demo_atoms, cu_surface_potential.yaml, cu_surface_potential.asi, quick_akmc(kmc_steps=1),
                     GAMMA, options=EMT_GEN)
    assert first.status == "completed" and first.kmc_steps == 1
    seg1 = runs.current()
    assert seg1 is not None and seg1.index == 1
    # the two generations really differ here: generation 0's tables do not hold for generation 1
    stale = _table_mismatch_meV(seg1.path, _ace(cu_surface_potential))
    assert stale and max(stale) > 5.0, stale

    # "retrain": the next call has another potential, so a new segment starts where the first one is
    second = runs.run(None, cu_surface_potential.yaml, cu_surface_potential.asi, quick_akmc(kmc_steps=2), GAMMA)
    assert second.status == "completed" and second.kmc_steps == 2
    segs = runs.segments()
    assert [s.index for s in segs] == [1, 2]
    seg2 = segs[1]
    assert seg2.kmc_steps_before == 1 and seg2.started_from["segment"] == 1
    # it starts from the configuration the first segment ended in
    end_state = read_dynamics(seg1.path)[-1]["product"]
    assert seg2.started_from["state"] == end_state
    start = read_con(Path(seg2.started_from["file"]))
    assert abs(start.positions - read_con(seg2.path / "pos.con").positions).max() < 1e-6

    # every process the second segment's KMC could draw from was computed by generation 1 (within 5 meV)
    current = _table_mismatch_meV(seg2.path, _ace(cu_surface_potential))
    assert current and max(current) < 5.0, current
    # and generation 0's segment is still generation 0's (EMT reproduces its own tables)
    assert max(_table_mismatch_meV(seg1.path, EMT())) < 5.0

    # the campaign report: global steps and times, each step and process naming its generation
    rep = json.loads((root / "report.json").read_text())
    traj = rep["trajectory"]
    assert [t["step"] for t in traj] == [0, 1] and [t["segment"] for t in traj] == [1, 2]
    assert traj[0]["generation"].endswith("#emt") and traj[1]["generation"] == str(cu_surface_potential.yaml)
    assert traj[1]["time"] > traj[0]["time"] > 0
    assert rep["kmc_steps"] == 2 and rep["simulated_time"] == pytest.approx(traj[1]["time"])
    assert {p["generation"] for p in rep["processes"] if p["segment"] == 2} == {str(cu_surface_potential.yaml)}
    assert [s["kmc_steps"] for s in rep["segments"]] == [1, 1]
    assert processes_in(root) == []

    # the same generation again resumes the segment in place (no third segment); done steps are not rerun
    again = runs.run(None, cu_surface_potential.yaml, cu_surface_potential.asi, quick_akmc(kmc_steps=2), GAMMA)
    assert again.status == "completed" and again.kmc_steps == 2 and len(runs.segments()) == 2


def test_a_crash_between_segments_resumes(tmp_path, demo_atoms, monkeypatch):
    """segments.json names a new segment whose folder was never set up (killed right after): the next call
    sets it up from the recorded starting configuration instead of failing."""
    from autopipec_fw.eon import akmc as akmc_mod

    root = tmp_path / "akmc"
    seg1 = root / "runs" / "0001"
    (seg1 / "states" / "0").mkdir(parents=True)
    from ase.io import write

    write(seg1 / "pos.con", demo_atoms, format="eon")
    write(seg1 / "states" / "0" / "reactant.con", demo_atoms, format="eon")
    runs = CampaignAkmc(root)
    runs._save([akmc_mod.Segment(1, str(seg1), "gen0.yaml")])
    seen = {}

    def fake_run(self, atoms=None):
        seen["atoms"] = atoms
        seen["dir"] = self.run_dir
        return akmc_mod.EonWrapper.summary(self.run_dir, "completed")

    monkeypatch.setattr(akmc_mod.EonWrapper, "run", fake_run)
    monkeypatch.setattr(akmc_mod.EonWrapper, "summary", staticmethod(
        lambda run_dir, status, message="": akmc_mod.AkmcResult(status, 0, 0.0, 0, 0, 0, [], [], None,
                                                                Path(run_dir))))
    runs.run(None, Path("gen1.yaml"), Path("gen1.asi"), quick_akmc(kmc_steps=2), GAMMA)
    assert seen["dir"] == root / "runs" / "0002" and seen["atoms"] is not None  # set up from state 0 of seg 1
    # killed before eOn wrote anything: the same call again sets the same folder up again, no third segment
    runs.run(None, Path("gen1.yaml"), Path("gen1.asi"), quick_akmc(kmc_steps=2), GAMMA)
    assert [s.index for s in runs.segments()] == [1, 2] and seen["atoms"] is not None
