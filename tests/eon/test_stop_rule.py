"""One stop rule for every route: the in-process client, pace_driver.py and its evaluator all apply the
`StopPolicy` built from the campaign's `GammaSettings`, unphysical structures included."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.build import bulk

from autopipec_fw.config import EonSettings, GammaSettings
from autopipec_fw.eon.akmc import EonWrapper
from autopipec_fw.eon.client.search import ClientSettings
from autopipec_fw.eon.extpot.evaluator import PotentialCache, answer, resolve_options
from autopipec_fw.eon.state import CLIENT_SETTINGS, DRIVER_WRAPPER
from autopipec_fw.gamma import StopPolicy, read_stop_file
from tests.eon.conftest import write_input
from tests.fixtures.eon import quick_akmc

GAMMA = GammaSettings(threshold=4.0, select_lower=1.5, max_selected=3, min_distance_factor=0.6)


def _wrapper_options(path: Path) -> dict[str, str]:
    text = path.read_text()
    args = eval(text[text.index("main(") + 5 : text.index(" + sys.argv")])  # noqa: S307 - our own generated file
    return dict(zip(args[::2], args[1::2], strict=True))


@pytest.mark.parametrize("mode", ["inprocess", "ext_pot"])
def test_every_route_gets_the_same_rule(tmp_path, demo_atoms, mode):
    akmc = quick_akmc(eon=EonSettings(potential_mode=mode))
    yaml, asi = tmp_path / "p.yaml", tmp_path / "p.asi"
    yaml.write_text("x")
    asi.write_text("x")
    w = EonWrapper(tmp_path / "run", yaml, asi, akmc, GAMMA)
    w.setup(demo_atoms)
    expected = StopPolicy.from_settings(GAMMA, stop_file=w.stop_file, candidates_dir=w.candidates_dir)
    if mode == "inprocess":
        s = ClientSettings.read(w.run_dir / CLIENT_SETTINGS)
        assert StopPolicy(**s.policy) == expected
    else:
        opts = _wrapper_options(w.run_dir / DRIVER_WRAPPER)
        assert float(opts["--gamma-max"]) == GAMMA.threshold
        assert float(opts["--gamma-select"]) == GAMMA.select_lower
        assert int(opts["--max-selected"]) == GAMMA.max_candidates  # the pool cap; K labels are chosen from it
        assert float(opts["--min-distance-factor"]) == GAMMA.min_distance_factor
        assert opts["--stop-file"] == str(w.stop_file) and opts["--candidates-dir"] == str(w.candidates_dir)
        # the options the driver resolves are the same policy
        raw = {k[2:]: v for k, v in opts.items()}
        assert resolve_options(raw, w.run_dir / "jobs" / "x").policy() == expected


def test_the_driver_does_not_stop_on_unphysical_structures(tmp_path, cu_bulk_potential):
    """Two atoms 0.9 Å apart: gamma is far above any threshold, but such a structure is never labelled, so with
    the campaign's min_distance_factor the driver answers (exit 0) and records nothing; without it, it stops."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]
    common = {"potential": str(cu_bulk_potential.yaml), "active-set": str(cu_bulk_potential.asi),
              "gamma-max": "4", "run-dir": str(tmp_path / "run")}
    cache = PotentialCache()
    call = write_input(tmp_path / "run" / "jobs" / "1", atoms)
    r = answer(call, {**common, "min-distance-factor": "0.6"}, cache)
    assert r.code == 0 and r.max_gamma > 4, r.message
    assert read_stop_file(tmp_path / "run" / "pace_stop") == []
    r = answer(call, common, cache)
    assert r.code == 100 and len(read_stop_file(tmp_path / "run" / "pace_stop")) == 1
