"""Fit stage: the cached EMT Cu fit reaches its accuracy; an upfit learns the candidates; generations are kept."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from autopipec_fw.config import FitSettings, OracleSettings, StructureSettings
from autopipec_fw.oracle.label import label_structures, oracle_hash
from autopipec_fw.structures import surface_training_structures
from autopipec_fw.training.dataset import TrainingSet
from autopipec_fw.training.fit import (
    FitError,
    Generation,
    fit_generation,
    latest_generation,
    pacemaker_input,
    tool_env,
)
from autopipec_fw.training.select import max_gamma, select_structures
from tests.fixtures.potentials import FIT


def test_fit_on_emt_cu_reaches_test_force_rmse(cu_bulk_potential):
    gen = cu_bulk_potential.generation
    m = gen.metrics
    assert 30 <= m["n_structures"] <= 45
    assert m["test"]["n_structures"] >= 3
    assert m["test_force_rmse"] <= 50.0, m  # meV/Å
    assert m["test_energy_rmse"] <= 10.0, m  # meV/atom
    # the metric is what the potential really does on the held-out structures
    from pyace import PyACECalculator

    test = pd.read_pickle(gen.dir / "test_data_info.pckl.gzip", compression="gzip")
    calc = PyACECalculator(str(gen.yace))
    diffs = []
    for at, f in zip(test["ase_atoms"], test["forces"], strict=True):
        a = at.copy()
        a.calc = calc
        diffs.append(a.get_forces() - np.asarray(f))
    rmse = 1000 * np.sqrt(np.mean(np.concatenate(diffs) ** 2))
    assert rmse == pytest.approx(m["test_force_rmse"], rel=0.02)
    for f in (gen.yaml, gen.yace, gen.asi, gen.dir / "input.yaml", gen.dir / "training_data.pckl.gzip"):
        assert f.is_file() and f.stat().st_size > 0
    assert gen.dir.name == "gen_000"
    assert Generation.load(gen.dir) == gen
    assert Generation.from_dict(json.loads(json.dumps(gen.to_dict()))) == gen
    assert latest_generation(gen.dir.parent) == gen


def test_pacemaker_input_from_settings():
    s = FitSettings(
        cutoff=4.5, number_of_functions=12, max_iterations=77, upfit_iterations=33, kappa=0.4, seed=3
    )
    first = pacemaker_input(s, ["Cu", "Ag"], "data.pckl.gzip", 40, upfit=False)
    assert first["potential"]["elements"] == ["Ag", "Cu"]
    assert first["potential"]["bonds"]["ALL"]["rcut"] == 4.5
    assert first["potential"]["functions"]["number_of_functions_per_element"] == 12
    assert first["fit"]["maxiter"] == 77 and first["fit"]["loss"]["kappa"] == 0.4 and first["seed"] == 3
    assert first["data"] == {"filename": "data.pckl.gzip", "test_size": 0.1}
    assert pacemaker_input(s, ["Cu"], "d", 40, upfit=True)["fit"]["maxiter"] == 33
    assert "test_size" not in pacemaker_input(s, ["Cu"], "d", 5, upfit=False)["data"]  # too small to split
    env = tool_env(FitSettings(tf_threads=1).tf_threads)
    assert env["TF_NUM_INTRAOP_THREADS"] == env["TF_NUM_INTEROP_THREADS"] == env["OMP_NUM_THREADS"] == "1"


def test_fit_bad_input(tmp_path, cu_bulk_potential):
    with pytest.raises(FitError, match=r"missing\.pckl\.gzip: training set does not exist"):
        fit_generation(tmp_path / "missing.pckl.gzip", FIT, ["Cu"], tmp_path / "gens")
    with pytest.raises(FitError, match=r"holds element\(s\) \['Cu'\] not in the fit's elements \['Ag'\]"):
        fit_generation(cu_bulk_potential.training, FIT, ["Ag"], tmp_path / "gens")
    gone = Generation.from_dict({**cu_bulk_potential.generation.to_dict(), "yaml": str(tmp_path / "x.yaml")})
    with pytest.raises(FitError, match=r"x\.yaml: previous generation's potential is missing"):
        fit_generation(cu_bulk_potential.training, FIT, ["Cu"], tmp_path / "gens", previous=gone)
    # nothing half-made is left behind as a generation
    assert latest_generation(tmp_path / "gens") is None
    assert not list((tmp_path / "gens").glob("gen_*"))


def test_failed_pacemaker_run_is_reported_and_kept_aside(tmp_path, cu_bulk_potential):
    broken = tmp_path / "broken.yaml"
    broken.write_text("elements: [Cu\nthis is not a potential: [\n")
    prev = Generation.from_dict({**cu_bulk_potential.generation.to_dict(), "yaml": str(broken)})
    with pytest.raises(FitError, match=r"pacemaker exited with code \d+; see .*pacemaker\.out"):
        fit_generation(cu_bulk_potential.training, FIT, ["Cu"], tmp_path / "gens", previous=prev)
    assert latest_generation(tmp_path / "gens") is None
    (kept,) = (tmp_path / "gens" / "failed").iterdir()
    assert kept.name == "gen_000-0" and (kept / "pacemaker.out").exists() and (kept / "input.yaml").exists()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upfit_brings_candidate_gamma_below_threshold(cu_bulk_potential, tmp_path):
    threshold = 5.0
    # work on copies: the cached fixture stays untouched
    root = tmp_path / "generations"
    shutil.copytree(cu_bulk_potential.generation.dir, root / "gen_000")
    gen0 = latest_generation(root)
    assert gen0 is not None and gen0.index == 0
    before = {p.name: _digest(p) for p in gen0.dir.iterdir() if p.is_file()}
    data = tmp_path / "training.pckl.gzip"
    shutil.copyfile(cu_bulk_potential.training, data)

    # candidates of a "stop": an adatom on Cu(100) that the bulk-only potential does not know
    cands = surface_training_structures(StructureSettings(), n=8, rattle_stdev=0.08, seed=31)
    g_before = max_gamma(cands, gen0)
    assert g_before.min() > threshold
    selected = select_structures(cands, gen0, k=3)
    assert 1 <= len(selected) <= 3
    oracle = OracleSettings()
    labelled = label_structures(selected, oracle, tmp_path / "oracle", source="akmc-stop-1")
    assert TrainingSet(data).add(labelled, "akmc-stop-1", oracle_hash(oracle)) == len(selected)

    gen1 = fit_generation(data, FIT, ["Cu"], root, previous=gen0)
    assert gen1.index == 1 and gen1.dir == root / "gen_001"
    assert gen1.metrics["previous"] == 0
    ws = gen1.metrics["quality_check"]  # judged on the data both saw: gen_000's 34 structures
    assert ws["shared_structures"] == 34 and ws["first"] == "warm" and ws["kept"] in ("warm", "fresh")
    assert gen1.metrics["upfit"] is (ws["kept"] == "warm")
    assert gen1.metrics["n_structures"] == 34 + len(selected)
    if ws["kept"] == "warm":
        inp = yaml.safe_load((gen1.dir / "input.yaml").read_text())
        assert inp["fit"]["maxiter"] == FIT.upfit_iterations
        assert (gen1.dir / "previous_potential.yaml").read_text() == gen0.yaml.read_text()
        assert "-p" in (gen1.dir / "pacemaker.out").read_text().splitlines()[0]

    g_after = max_gamma(selected, gen1)
    assert g_after.max() < threshold, g_after
    assert max_gamma(cands, gen1).max() < g_before.max()  # the whole stop got better known
    # the previous generation is untouched, and the new one did not overwrite anything
    assert {p.name: _digest(p) for p in gen0.dir.iterdir() if p.is_file()} == before
    assert latest_generation(root) == gen1
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["gen_000", "gen_001"]


def _pred_frame(hashes: list[str], e_err: float, f_err: float) -> pd.DataFrame:
    """Predictions with a known error: every structure 2 atoms, energy off by e_err eV/atom, forces by f_err."""
    rows = []
    for h in hashes:
        f = np.zeros((2, 3))
        rows.append({"structure_hash": h, "NUMBER_OF_ATOMS": 2, "energy_corrected": -1.0,
                     "energy_pred": -1.0 + 2 * e_err, "forces": f, "forces_pred": f + f_err})
    return pd.DataFrame(rows)


def test_warm_start_judged_on_the_data_both_saw(tmp_path):
    from autopipec_fw.training.fit import Generation, _quality_check, _shared_errors

    prev, new = tmp_path / "gen_000", tmp_path / "work"
    prev.mkdir()
    new.mkdir()
    _pred_frame(["a", "b"], 0.001, 0.010).to_pickle(prev / "train_pred.pckl.gzip", compression="gzip")
    # the new fit: as good on a and b, much worse on the new structure c (which must not count)
    pd.concat([_pred_frame(["a", "b"], 0.001, 0.010), _pred_frame(["c"], 0.1, 1.0)]).to_pickle(
        new / "train_pred.pckl.gzip", compression="gzip")
    g = Generation(index=0, dir=prev, yaml=prev / "p.yaml", yace=prev / "p.yace", asi=prev / "p.asi")
    assert _shared_errors(new, {"a", "b"})["force_rmse"] == pytest.approx(10.0)
    ok = _quality_check(new, g, FitSettings())
    assert ok["worse"] is False and ok["shared_structures"] == 2
    assert ok["energy_rmse"] == pytest.approx(1.0) and ok["previous_force_rmse"] == pytest.approx(10.0)
    # worse on a and b by more than 1.25 x + 3 meV/Å: a fresh fit must be tried
    pd.concat([_pred_frame(["a", "b"], 0.001, 0.020), _pred_frame(["c"], 0.0, 0.0)]).to_pickle(
        new / "train_pred.pckl.gzip", compression="gzip")
    assert _quality_check(new, g, FitSettings())["worse"] is True
    assert _quality_check(new, g, FitSettings(warm_start_tolerance=2.0))["worse"] is False


@pytest.mark.parametrize("warm_start", [True, False])
def test_a_worse_fit_is_tried_the_other_way_and_the_better_kept(cu_bulk_potential, tmp_path, monkeypatch,
                                                                warm_start):
    """When the first fit (warm start or fresh) is judged worse than the previous generation on its data, the other
    kind runs in its place and the better of the two (energy + force RMSE relative to the previous generation's)
    is the generation; the other's files stay in the folder for inspection."""
    import autopipec_fw.training.fit as fit_mod

    root = tmp_path / "generations"
    shutil.copytree(cu_bulk_potential.generation.dir, root / "gen_000")
    gen0 = latest_generation(root)
    data = tmp_path / "training.pckl.gzip"
    shutil.copyfile(cu_bulk_potential.training, data)
    real = fit_mod._quality_check
    monkeypatch.setattr(fit_mod, "_quality_check", lambda *a: {**real(*a), "worse": True})
    gen1 = fit_generation(data, FIT, ["Cu"], root, previous=gen0, warm_start=warm_start)
    ws = gen1.metrics["quality_check"]
    first, second = ("warm", "fresh") if warm_start else ("fresh", "warm")
    assert ws["worse"] is True and ws["first"] == first and ws["second"] == second
    assert np.isfinite(ws["second_force_rmse"]) and np.isfinite(ws["force_rmse"])

    def score(e, f):  # relative to gen_000 on its own data: lower is better
        return e / ws["previous_energy_rmse"] + f / ws["previous_force_rmse"]

    s1, s2 = score(ws["energy_rmse"], ws["force_rmse"]), score(ws["second_energy_rmse"], ws["second_force_rmse"])
    better = second if s2 <= s1 else first
    assert ws["kept"] == better
    other = gen1.dir / f"{first if better == second else second}_fit"
    assert (other / "potential.yaml").is_file() and (gen1.dir / "potential.asi").is_file()
    assert gen1.metrics["upfit"] is (better == "warm")
    kept = fit_mod._shared_errors(gen1.dir, fit_mod._prediction_hashes(gen0.dir))
    assert score(kept["energy_rmse"], kept["force_rmse"]) == pytest.approx(min(s1, s2))


def test_a_fit_asked_for_generation_n_makes_n_or_fails(cu_bulk_potential, tmp_path):
    """Two workers racing for one generation: the one that finds gen_001 already taken fails, fitting nothing."""
    from autopipec_fw.training.fit import FitError

    root = tmp_path / "generations"
    shutil.copytree(cu_bulk_potential.generation.dir, root / "gen_000")
    shutil.copytree(cu_bulk_potential.generation.dir, root / "gen_001")  # the other worker's gen_001
    data = tmp_path / "training.pckl.gzip"
    shutil.copyfile(cu_bulk_potential.training, data)
    with pytest.raises(FitError, match="asked to fit gen_001 but the next free generation is gen_002"):
        fit_generation(data, FIT, ["Cu"], root, previous=latest_generation(root), index=1)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("gen_")) == ["gen_000", "gen_001"]
