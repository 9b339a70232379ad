"""StopPolicy / read_candidates: the stop semantics shared by the driver and the in-process eOn client."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from ase.build import bulk

from autopipec_fw.gamma import StopPolicy, read_candidates, read_stop_file


def _cell(seed: int = 0):
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    a.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    return a, rng.normal(size=(len(a), 3)), float(rng.normal())


def test_below_select_records_nothing(tmp_path):
    p = StopPolicy(5.0, 2.0, tmp_path / "STOP", tmp_path / "cand")
    a, f, e = _cell()
    assert p.record(a, np.full(len(a), 1.5), e, f) is False
    assert not (tmp_path / "STOP").exists()
    assert read_candidates(tmp_path / "cand") == []


def test_select_band_records_candidate_without_stop(tmp_path):
    p = StopPolicy(5.0, 2.0, tmp_path / "STOP", tmp_path / "cand")
    a, f, e = _cell()
    g = np.linspace(0.1, 3.0, len(a))
    assert p.record(a, g, e, f) is False
    assert not (tmp_path / "STOP").exists()
    (c,) = read_candidates(tmp_path / "cand")
    assert c.info["reason"] == "select"
    assert c.info["max_gamma"] == pytest.approx(3.0)
    np.testing.assert_allclose(c.arrays["gamma"], g)
    np.testing.assert_allclose(c.get_forces(), f)
    assert c.get_potential_energy() == pytest.approx(e)


def test_without_select_lower_band_is_ignored(tmp_path):
    p = StopPolicy(5.0, None, tmp_path / "STOP", tmp_path / "cand")
    a, f, e = _cell()
    assert p.record(a, np.full(len(a), 4.9), e, f) is False
    assert read_candidates(tmp_path / "cand") == []


def test_stop_writes_candidate_and_stop_line(tmp_path):
    p = StopPolicy(5.0, 2.0, tmp_path / "sub" / "STOP", tmp_path / "cand")
    a, f, e = _cell(1)
    g = np.full(len(a), 0.5)
    g[2] = 7.25
    assert p.record(a, g, e, f) is True
    (c,) = read_candidates(tmp_path / "cand", reason="stop")
    np.testing.assert_allclose(c.positions, a.positions, atol=1e-8)
    np.testing.assert_allclose(c.cell, a.cell, atol=1e-8)
    assert list(c.numbers) == list(a.numbers)
    np.testing.assert_allclose(c.arrays["gamma"], g)
    assert c.info["max_gamma"] == pytest.approx(7.25)
    assert c.info["gamma_threshold"] == 5.0
    (line,) = read_stop_file(tmp_path / "sub" / "STOP")
    assert line["max_gamma"] == pytest.approx(7.25)
    assert line["threshold"] == 5.0
    assert line["candidate"] == c.info["candidate_file"]


def test_same_structure_twice_one_file_two_stop_lines(tmp_path):
    p = StopPolicy(5.0, None, tmp_path / "STOP", tmp_path / "cand")
    a, f, e = _cell(2)
    g = np.full(len(a), 9.0)
    assert p.record(a, g, e, f) and p.record(a, g, e, f)
    assert len(read_candidates(tmp_path / "cand")) == 1
    assert len(read_stop_file(tmp_path / "STOP")) == 2
    assert not [x for x in (tmp_path / "cand").iterdir() if x.name.startswith(".tmp")]


def test_nan_gamma_stops(tmp_path):
    p = StopPolicy(5.0, None, tmp_path / "STOP", tmp_path / "cand")
    a, f, e = _cell()
    g = np.zeros(len(a))
    g[0] = math.nan
    assert p.record(a, g, e, f) is True
    assert read_stop_file(tmp_path / "STOP")[0]["max_gamma"] is None


def test_max_selected_caps_select_but_not_stop(tmp_path):
    p = StopPolicy(5.0, 1.0, tmp_path / "STOP", tmp_path / "cand", max_selected=2)
    for s in range(4):
        a, f, e = _cell(s)
        p.record(a, np.full(len(a), 3.0), e, f)
    a, f, e = _cell(10)
    assert p.record(a, np.full(len(a), 6.0), e, f)
    assert len(read_candidates(tmp_path / "cand", reason="select")) == 2
    assert len(read_candidates(tmp_path / "cand", reason="stop")) == 1


def test_concurrent_records(tmp_path):
    p = StopPolicy(5.0, 1.0, tmp_path / "STOP", tmp_path / "cand")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            a, f, e = _cell(seed)
            p.record(a, np.full(len(a), 6.0 if seed % 2 else 3.0), e, f)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(read_candidates(tmp_path / "cand")) == 8
    assert len(read_stop_file(tmp_path / "STOP")) == 4


@pytest.mark.parametrize(
    "kwargs",
    [dict(threshold=0.0), dict(threshold=math.nan), dict(threshold=5.0, select_lower=5.0)],
)
def test_bad_settings_rejected(kwargs):
    with pytest.raises(ValueError):
        StopPolicy(**kwargs)


def test_wrong_gamma_length_rejected(tmp_path):
    a, f, e = _cell()
    with pytest.raises(ValueError, match="gamma_per_atom"):
        StopPolicy(5.0).record(a, np.zeros(len(a) + 1), e, f)


def test_unphysical_structures_neither_stop_nor_record(tmp_path):
    """Two atoms pushed into each other (a search in the repulsive core): above the threshold but no stop, no
    candidate, counted; the same policy still stops for a physical structure."""
    p = StopPolicy(5.0, 2.0, tmp_path / "STOP", tmp_path / "cand", min_distance_factor=0.65)
    a, f, e = _cell(2)
    squeezed = a.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.8, 0.0, 0.0]  # Cu-Cu 0.8 Å (covalent sum 2.64 Å)
    assert p.record(squeezed, np.full(len(a), 400.0), e, f) is False
    assert p.record(squeezed, np.full(len(a), 3.0), e, f) is False
    assert p.skipped_unphysical == 2
    assert not (tmp_path / "STOP").exists() and read_candidates(tmp_path / "cand") == []
    assert p.record(a, np.full(len(a), 400.0), e, f) is True
    assert len(read_stop_file(tmp_path / "STOP")) == 1
