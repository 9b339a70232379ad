"""The active-learning loop labelled by real DFT, through the real Fireworks on the embedded LaunchPad.

GPAW: initial labels -> fit -> aKMC stop -> DFT labels -> refit -> aKMC resumes -> validation gate (DFT single
points on held-out structures and along the learned barrier path) -> package. Every oracle folder holds GPAW's own
log and custodian.json, and the labels are in the training set (reference energies fitted on the first batch).
Quantum ESPRESSO: the same campaign until its first DFT labels after an aKMC stop are in the training set.
A tiny system (an Al adatom on a 2x2 Al(100) slab of 2 layers, 9 atoms), low cut-offs and a low k-point density:
what is tested is the loop, not the physics.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from autopipec_fw.campaign import CampaignLayout, stage_records
from autopipec_fw.config import Campaign
from autopipec_fw.launchpad.files import ensure_initialized
from autopipec_fw.oracle.kpoints import kpoint_grid
from autopipec_fw.oracle.label import oracle_hash
from autopipec_fw.runner import LocalRunner, campaign_status, submit
from autopipec_fw.training.dataset import TrainingSet
from tests.fixtures.launchpad import EmbeddedDB

GPAW_TINY = {"mode": {"name": "pw", "ecut": 150.0}}
QE_TINY = {"input_data": {"system": {"ecutwfc": 15.0, "ecutrho": 120.0}}}
DENSITY = 0.8  # k-points per 1/Å: Γ only for the slab, 2x2x2 for the 4-atom bulk cell


def tiny_dft_campaign(tmp_path: Path, calculator: str, parameters: dict, name: str) -> Campaign:
    """A small initial set (bulk cells and 6 adatom slabs: the first aKMC run stops on extrapolation in the
    saddle regions, yet later runs find processes for the gate), up to 3 stop-refit cycles (akmc.max_iterations
    4), a gate with loose thresholds (what is tested is that it runs on DFT)."""
    return Campaign(
        name=name,
        workdir=tmp_path / "campaign",
        elements=["Al"],
        structure={"kind": "adatom_on_slab", "element": "Al", "size": (2, 2, 2), "vacuum": 4.0, "fixed_layers": 1},
        oracle={"calculator": calculator, "parameters": parameters, "kpoint_density": DENSITY, "batch_size": 3},
        initial_data={"n_strained": 4, "n_rattled": 3, "n_vacancy": 1, "n_surface": 6, "bulk_size": (1, 1, 1)},
        fit={"number_of_functions": 12, "max_iterations": 60},
        gamma={"threshold": 5.0, "select_lower": 2.0, "max_selected": 3, "collect_searches": 2},
        akmc={"kmc_steps": 1, "max_iterations": 4, "num_clients": 2, "searches_per_round": 2},
        validation={"n_holdout": 2, "max_energy_rmse": 1000.0, "max_force_rmse": 10000.0,
                    "max_barrier_error": 10000.0, "max_barriers": 1, "teach_rounds": 0},
        package={"name": name, "dist_dir": tmp_path / "dist"},
    )


def _oracle_folders(root: Path) -> list[Path]:
    """Every single-point folder under `root` (one per structure: it holds input.extxyz)."""
    return sorted(p.parent for p in root.rglob("input.extxyz") if "failed_run_" not in str(p))


def _check_folder(folder: Path, raw: str, mark: str) -> dict:
    """A finished single point: the code's own output (with `mark` in it), custodian.json, the label, and the
    k-point grid of this structure recorded in oracle.json."""
    names = {p.name for p in folder.iterdir()}
    assert {raw, "custodian.json", "oracle.json", "result.extxyz"} <= names, (folder, names)
    assert mark in (folder / raw).read_text(errors="replace"), folder / raw
    runs = json.loads((folder / "custodian.json").read_text())
    assert runs and runs[-1]["job"]["@class"] in ("GpawJob", "EspressoJob")
    meta = json.loads((folder / "oracle.json").read_text())
    from ase.io import read

    at = read(folder / "input.extxyz")
    assert meta["kpoints"]["grid"] == list(kpoint_grid(at, DENSITY).grid) and meta["kpoint_density"] == DENSITY
    return meta


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_gpaw_loop_through_fireworks(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    pytest.importorskip("gpaw", reason="GPAW comes with scripts/setup.sh --tests")
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    campaign = tiny_dft_campaign(tmp_path, "gpaw", GPAW_TINY, "tiny-gpaw")
    layout, fw_id, added = submit(campaign, lp)
    assert added
    runner = LocalRunner(lp, embedded_db.launchpad_file, layout, fw_id, workers=2, poll=0.5)
    final = runner.run()
    st = campaign_status(lp, fw_id)
    assert final == "COMPLETED", st.errors

    rec = stage_records(layout)
    assert rec["akmc_000"]["status"] == "stopped" and rec["akmc_000"]["n_selected"] >= 1
    assert rec["akmc_000"]["max_gamma"] > campaign.gamma.threshold
    assert "fit_001" in rec and "akmc_001" in rec  # refit on the DFT labels, then aKMC resumed
    assert rec["fit_001"]["training_set_size"] > rec["fit_000"]["training_set_size"]
    assert rec["akmc_001"]["generation"] == 1
    iter_batches = [r for k, r in rec.items() if k.startswith("oracle_iter_000")]
    assert iter_batches and all(r["calculator"] == "gpaw" for r in iter_batches)

    # every oracle folder (training labels, held-out set, barrier path) is a GPAW run under custodian
    train = _oracle_folders(layout.oracle)
    val = _oracle_folders(layout.validation)
    ts = TrainingSet(layout.dataset)
    assert len(train) == len(ts) == max(r["training_set_size"] for k, r in rec.items() if k.startswith("fit_"))
    for folder in train + val:
        _check_folder(folder, "gpaw.txt", "Monkhorst-Pack size")

    # the labels entered the training set: one DFT oracle hash, reference energies fitted (not EMT's zeros)
    df = ts.frame()
    assert set(df["structure_hash"]) == {f.name for f in train}
    assert (df["source"] == "iter_000").sum() == rec["akmc_000"]["n_selected"]
    assert set(df["oracle_hash"]) == {oracle_hash(campaign.oracle)} == {ts.oracle_hash}
    refs = ts.reference_energies
    assert refs is not None and refs["Al"] != 0.0

    # the gate ran on DFT: held-out single points, and the barrier by single points along the learned path
    v = rec["validate"]
    assert v["n_holdout"] == 2 and v["passed"] is True
    assert len(val) >= 2
    assert v.get("barriers")  # the gate needs a process: the loop found some
    for row in v["barriers"]:
        assert row["method"] == "path"
    zips = list((tmp_path / "dist").glob("tiny-gpaw-1.0.0.zip"))
    assert len(zips) == 1 and st.package == str(zips[0])
    with zipfile.ZipFile(zips[0]) as z:
        meta = json.loads(z.read("tiny-gpaw-1.0.0/metadata.json"))
    assert json.dumps(meta).count("gpaw") >= 1  # the manifest names the oracle


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_espresso_loop_until_the_first_dft_labels(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    from autopipec_fw.oracle.calculators import OracleConfigError, check_oracle

    campaign = tiny_dft_campaign(tmp_path, "espresso", QE_TINY, "tiny-qe")
    try:
        check_oracle(campaign.oracle, campaign.elements)
    except OracleConfigError as e:
        pytest.skip(f"Quantum ESPRESSO comes with scripts/setup.sh --tests ({e})")
    lp = embedded_db.launchpad()
    ensure_initialized(lp)
    layout, fw_id, added = submit(campaign, lp)
    assert added
    runner = LocalRunner(lp, embedded_db.launchpad_file, layout, fw_id, workers=2, poll=0.5)
    deadline = time.monotonic() + 1500
    state = ""
    try:
        while time.monotonic() < deadline:
            state = runner.step()
            rec = stage_records(CampaignLayout(layout.root))
            if any(k.startswith("oracle_iter_000") for k in rec):
                break
            assert state not in ("FIZZLED", "DEFUSED"), campaign_status(lp, fw_id).errors
            time.sleep(0.5)
    finally:
        runner.stop_workers()
    rec = stage_records(layout)
    assert rec["akmc_000"]["status"] == "stopped" and rec["akmc_000"]["n_selected"] >= 1, (state, sorted(rec))
    batches = [r for k, r in rec.items() if k.startswith("oracle_iter_000")]
    assert batches and all(r["calculator"] == "espresso" for r in batches)

    folders = _oracle_folders(layout.oracle)
    assert len(folders) == rec["fit_000"]["training_set_size"] + sum(r["labelled"] for r in batches)
    for folder in folders:
        _check_folder(folder, "espresso.pwo", "convergence has been achieved")
        assert (folder / "espresso.pwi").is_file()
    df = TrainingSet(layout.dataset).frame()
    assert set(df["structure_hash"]) <= {f.name for f in folders}
    assert (df["source"] == "iter_000").sum() == sum(r["added"] for r in batches) >= 1
    assert set(df["oracle_hash"]) == {oracle_hash(campaign.oracle)}
