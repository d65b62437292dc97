"""Must-show 2: replay the study's sweep from its own fitted laws and recover them.

The runs follow the study's Table 1b design for WMT14 En-De: model sizes 1B-8B (16B held out),
pretraining checkpoints 84B-283B tokens (209B held out), D_f per method. Losses come from the
study's Table 4 parameters (copied below from REFERENCE.md's `table4_fitted_params.csv`) times
seeded log-normal noise of 0.03 %. The fit is the study's Eq. 2 procedure: model-size and
pretraining sweeps jointly with beta and E shared, then A and alpha refitted per factor.

Why 0.03 % noise: the critical-size exponent gamma = (alpha2 - alpha1) / (beta1 - beta2) divides
by beta differences as small as 0.03 (prompt vs LoRA), so gamma to +-0.1 needs alpha to ~0.003.
With 0.1 % noise the fitted prompt-vs-LoRA gamma ranged 1.04-1.82 over seeds; with 0.03 % the
worst errors over seeds 0-5 were alpha 0.0025, beta 0.0004, E 0.0024, and the tolerances below are
twice those.
"""

import numpy as np
import pytest

from ftscale.laws import JointScalingLaw, ScalingLaw, closed_form, crossings

# Table 4, En-De: method -> (A, alpha, E, beta) for model size, and (A, alpha) for pretraining data.
TABLE4_MODEL = {
    "fmt": (1.2e5, 0.52, 0.75, 0.15),
    "prompt": (3.9e3, 0.40, 0.62, 0.051),
    "lora": (2.1e3, 0.36, 0.62, 0.081),
}
TABLE4_PRETRAIN = {"fmt": (6.3e2, 0.21), "prompt": (2.7e2, 0.21), "lora": (1.4e2, 0.18)}
# Table 5, En-De model size: gamma of the critical-size power law.
TABLE5_GAMMA = {("fmt", "prompt"): -1.2, ("fmt", "lora"): -2.4, ("prompt", "lora"): 1.5}

MODEL_SIZES = [1e9, 2e9, 4e9, 8e9]  # 16B held out
PRETRAIN_TOKENS = [84e9, 126e9, 167e9, 283e9]  # 209B held out
D_F = {
    "fmt": [1e5, 5e5, *np.arange(1e6, 4.01e6, 5e5)],  # 100K, 500K, 1M..4M (4.5M held out)
    "prompt": [8e3, *np.arange(1e4, 9.01e4, 1e4)],  # 8K, 10K..90K (100K held out)
}
D_F["lora"] = D_F["prompt"]
NOISE = 3e-4
TOL = {"alpha": 0.005, "beta": 0.001, "E": 0.005}


def sweep(rng, a, alpha, e, beta, xs, d_f):
    sizes = np.array([(x, d) for x in xs for d in d_f])
    clean = a / (sizes[:, 0] ** alpha * sizes[:, 1] ** beta) + e
    return sizes, clean * np.exp(rng.normal(0.0, NOISE, len(clean)))


@pytest.fixture(scope="module")
def replay():
    rng = np.random.default_rng(0)
    fits = {}
    for method, (a, alpha, e, beta) in TABLE4_MODEL.items():
        a_p, alpha_p = TABLE4_PRETRAIN[method]
        groups = {
            "model_size": sweep(rng, a, alpha, e, beta, MODEL_SIZES, D_F[method]),
            "pretrain_tokens": sweep(rng, a_p, alpha_p, e, beta, PRETRAIN_TOKENS, D_F[method]),
        }
        fits[method] = JointScalingLaw("multiplicative", shared=("beta", "E")).fit(groups)
    return fits


@pytest.mark.parametrize("method", sorted(TABLE4_MODEL))
def test_model_size_law_recovered(replay, method):
    _, alpha, e, beta = TABLE4_MODEL[method]
    params = replay[method].laws_["model_size"].params_
    assert params["alpha"] == pytest.approx(alpha, abs=TOL["alpha"])
    assert params["beta"] == pytest.approx(beta, abs=TOL["beta"])
    assert params["E"] == pytest.approx(e, abs=TOL["E"])


@pytest.mark.parametrize("method", sorted(TABLE4_MODEL))
def test_pretraining_law_recovered_with_shared_beta_and_e(replay, method):
    joint = replay[method]
    law = joint.laws_["pretrain_tokens"]
    assert law.params_["alpha"] == pytest.approx(TABLE4_PRETRAIN[method][1], abs=TOL["alpha"])
    assert law.params_["beta"] == joint.shared_["beta"]  # held fixed in the refit
    assert law.params_["E"] == joint.shared_["E"]


def test_findings_model_size_beats_pretraining_and_fmt_most_data_hungry(replay):
    for method in TABLE4_MODEL:
        laws = replay[method].laws_
        assert laws["model_size"].params_["alpha"] > laws["pretrain_tokens"].params_["alpha"]
    beta = {m: replay[m].shared_["beta"] for m in TABLE4_MODEL}
    assert beta["fmt"] > beta["lora"] > beta["prompt"]


def _gamma(replay, first, second):
    return closed_form(
        replay[first].laws_["model_size"], replay[second].laws_["model_size"], check_e=False
    )[1]


@pytest.mark.parametrize("pair", [("fmt", "prompt"), ("fmt", "lora")])
def test_table5_gamma_from_fitted_values(replay, pair):
    assert _gamma(replay, *pair) == pytest.approx(TABLE5_GAMMA[pair], abs=0.1)


def test_prompt_vs_lora_gamma_matches_table4_and_table5_within_rounding(replay):
    """Table 4's rounded values imply gamma = (0.36 - 0.40) / (0.051 - 0.081) = 1.33, not Table
    5's 1.5: with a beta difference of 0.03, Table 4's two-digit rounding moves gamma anywhere in
    about [0.97, 1.72]. The fit recovers the generating 1.33; 1.5 lies inside the rounding range."""
    implied = (0.36 - 0.40) / (0.051 - 0.081)
    assert _gamma(replay, "prompt", "lora") == pytest.approx(implied, abs=0.1)
    d_alpha = np.array([0.04 - 0.01, 0.04 + 0.01])  # alpha_P - alpha_L, each rounded to +-0.005
    d_beta = np.array([0.030 - 0.001, 0.030 + 0.001])  # beta_L - beta_P, each rounded to +-0.0005
    low, high = d_alpha.min() / d_beta.max(), d_alpha.max() / d_beta.min()
    assert low < TABLE5_GAMMA[("prompt", "lora")] < high


def test_numeric_crossings_agree_with_closed_form_when_e_matches(replay):
    # The generating prompt and LoRA laws share E = 0.62: the closed form is exact for them.
    prompt, lora = (
        ScalingLaw.from_params(
            "multiplicative", dict(zip(("A", "alpha", "E", "beta"), p, strict=True))
        )
        for p in (TABLE4_MODEL["prompt"], TABLE4_MODEL["lora"])
    )
    h, gamma = closed_form(prompt, lora)
    # And fitted laws refitted with one E, as the study does for methods with equal E.
    fitted_e = replay["prompt"].shared_["E"]
    refits = [
        ScalingLaw("multiplicative", fixed={"E": fitted_e}).fit(
            *sweep(np.random.default_rng(1), *TABLE4_MODEL[m], MODEL_SIZES, D_F[m])
        )
        for m in ("prompt", "lora")
    ]
    h_fit, gamma_fit = closed_form(*refits)
    for x in (1e9, 4e9, 16e9):
        (numeric,) = crossings(prompt, lora, x, d_range=(1e-30, 1e30))
        assert numeric == pytest.approx(h * x**gamma, rel=1e-8)
        (numeric_fit,) = crossings(*refits, x, d_range=(1e-30, 1e30))
        assert numeric_fit == pytest.approx(h_fit * x**gamma_fit, rel=1e-8)
