"""Must-show 3: held-out error picks the law that generated the data, in both directions."""

import numpy as np
import pytest

from ftscale.laws import fit_table

MODEL_SIZES = np.array([1e8, 2e8, 4e8, 8e8, 1.6e9])
D_F = np.geomspace(1e3, 1e5, 8)


def table(form: str, seed: int = 0) -> dict[str, np.ndarray]:
    x, d = (a.ravel() for a in np.meshgrid(MODEL_SIZES, D_F, indexing="ij"))
    if form == "multiplicative":
        loss = 2e3 / (x**0.35 * d**0.2) + 1.5
    else:
        loss = 4e2 / x**0.35 + 30.0 / d**0.4 + 1.5
    loss *= np.exp(np.random.default_rng(seed).normal(0.0, 2e-3, loss.size))
    return {"params": x, "examples": d, "loss": loss}


@pytest.mark.parametrize(
    "truth, rival", [("multiplicative", "additive"), ("additive", "multiplicative")]
)
def test_generating_law_wins_on_held_out_largest_model(truth, rival):
    results = fit_table(
        table(truth),
        y="loss",
        d="examples",
        x="params",
        forms=[truth, rival],
        holdout="max:params",
    )
    by_form = {r.form: r for r in results}
    assert by_form[truth].n_heldout == len(D_F)
    assert by_form[truth].delta_h < by_form[rival].delta_h
    # The true law's held-out error is at the noise level (0.2 % of a loss near 2).
    assert by_form[truth].delta_h < 0.01
