"""No refit where the oracle verified the potential (fit.refit_tolerance): the check and the rebuilt active set."""

from __future__ import annotations

import pandas as pd

from autopipec_fw.config import FitSettings
from autopipec_fw.training.fit import Generation, derive_generation, verify_new_labels


def test_verified_labels_keep_the_potential_and_extend_its_active_set(cu_bulk_potential, tmp_path) -> None:
    gen = cu_bulk_potential.generation
    frame = pd.read_pickle(cu_bulk_potential.training, compression="gzip")
    new = frame.iloc[:4].copy()
    ok = verify_new_labels(gen, new, 1.5)
    assert ok["verified"] and ok["energy_rmse"] <= ok["limit_energy_rmse"], ok
    # labels the potential gets wrong (energies 20 meV/atom off) are not verified: they are refitted
    off = new.copy()
    off["energy_corrected"] = off["energy_corrected"] + 0.02 * off["ase_atoms"].map(len)
    bad = verify_new_labels(gen, off, 1.5)
    assert not bad["verified"] and bad["energy_rmse"] > 15, bad
    assert not verify_new_labels(gen, new, 0)["verified"]  # 0: always refit

    root = tmp_path / "generations"
    root.mkdir()
    out = derive_generation(gen, root / "gen_001", frame, FitSettings(), ok)
    assert out.asi.is_file() and out.yace.read_bytes() == gen.yace.read_bytes()
    assert out.metrics["reused_from"] == gen.index and out.metrics["active_set_extended"]
    assert Generation.load(root / "gen_001").metrics["verification"]["verified"]
