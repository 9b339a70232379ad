"""One way to compute error figures: meV/atom and meV/Å, RMSE and MAE, from per-atom energy and force errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk

from autopipec_fw.training.errors import error_figures, prediction_errors


def test_error_figures_by_hand() -> None:
    fig = error_figures([0.003, -0.004], [np.array([[0.01, 0.0, 0.0]]), np.array([[0.0, -0.02, 0.0]])])
    assert fig["energy_rmse"] == pytest.approx(np.sqrt((9 + 16) / 2))
    assert fig["energy_mae"] == pytest.approx(3.5)
    assert fig["force_rmse"] == pytest.approx(np.sqrt((100 + 400) / 6))
    assert fig["force_mae"] == pytest.approx(30 / 6)


def test_prediction_errors_are_per_atom() -> None:
    a2, a4 = bulk("Cu", cubic=False) * (2, 1, 1), bulk("Cu", cubic=True)
    df = pd.DataFrame({
        "ase_atoms": [a2, a4], "energy_corrected": [-1.0, -2.0], "energy_pred": [-0.99, -2.04],
        "forces": [np.zeros((2, 3)), np.zeros((4, 3))], "forces_pred": [np.zeros((2, 3)), np.zeros((4, 3))],
    })
    out = prediction_errors(df)
    assert out is not None and out["n_atoms"] == 6 and out["n_structures"] == 2
    assert out["energy_rmse"] == pytest.approx(np.sqrt((5.0**2 + 10.0**2) / 2))  # 10/2 and 40/4 meV/atom
    assert out["force_rmse"] == 0.0
    assert prediction_errors(df.iloc[:0]) is None
