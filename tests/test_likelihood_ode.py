"""The likelihood of the probability-flow ODE, and the score, against closed forms for Gaussian data.

For data N(MU, S^2) per pixel the exact predictor at every noise level is
known (`gaussian_exact`), and so is the probability-flow ODE's map: it keeps
the standardised value `(x - alpha MU) / sqrt(v)`, `v = alpha^2 S^2 + sigma^2`.
The ODE's negative log-likelihood with the prior N(0, I) is then a closed
form (`ode_reference`), which differs from the data's own Gaussian NLL only
by the prior's mismatch (the true `p_1` is N(alpha_1 MU, v_1): about 5e-4
nats per dimension here). The exactness tests use a predictor whose
timestep input is float and which reads `alpha_bar` at the continuous
timestep with the package's own interpolation, so that the predictor is
the exact one of the continuous process the ODE integrates.
"""

import math

import keras
import numpy as np
import pytest
from gaussian_exact import MU
from gaussian_exact import ExactPredictor
from gaussian_exact import S
from gaussian_exact import T
from gaussian_exact import make_class_model
from gaussian_exact import make_model
from gaussian_exact import UNCONDITIONAL_MEAN
from keras import ops
from scipy import stats

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras.diffusion import ode

LN2 = math.log(2.0)


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ContinuousExactPredictor(ExactPredictor):
    """The exact epsilon, v or x0 of Gaussian data N(MU, S^2) at a float timestep of the continuous process."""

    def alpha_bar(self, t):
        return ode.continuous_alphas_cumprod(np.asarray(self.alphas_cumprod), t)[:, None, None, None]


def continuous_model(prediction_type="epsilon", size=2, clip=10.0):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=0.2, clip_min=-clip, clip_max=clip)
    images, t = keras.Input((size, size, 1)), keras.Input((), dtype="float32")
    output = ContinuousExactPredictor(diffusion.terms_float64["alphas_cumprod"], prediction_type)([images, t])
    return DiffusionModel(keras.Model([images, t], output), diffusion, prediction_type=prediction_type)


def ode_reference(x, alphas_cumprod, eps=1e-5, mean=MU):
    """Per image, in bits/dim: the exact ODE NLL with the prior N(0, I), and the data's own Gaussian NLL (float64)."""
    x = np.asarray(x, np.float64)
    knots = np.log(np.concatenate([[1.0], alphas_cumprod]))
    ab_eps = math.exp(np.interp(eps, np.arange(T + 1) / T, knots))
    ab_end = alphas_cumprod[-1]
    v_eps, v_end = ab_eps * S**2 + 1 - ab_eps, ab_end * S**2 + 1 - ab_end
    x_end = math.sqrt(ab_end) * mean + math.sqrt(v_end / v_eps) * (x - math.sqrt(ab_eps) * mean)
    dims = x[0].size
    prior = (0.5 * x_end**2 + 0.5 * math.log(2 * math.pi)).reshape(len(x), -1).sum(axis=1)
    ode_nll = prior - 0.5 * dims * math.log(v_end / v_eps)
    data_nll = -stats.norm.logpdf(x, mean, S).reshape(len(x), -1).sum(axis=1)
    return ode_nll / (dims * LN2), data_nll / (dims * LN2)


def gaussian_data(n=16, size=2, seed=0):
    return np.random.default_rng(seed).normal(MU, S, (n, size, size, 1)).astype("float32")


def ode_terms(model, x, **kwargs):
    options = {"dequantize": False, "exact_trace": True, "verbose": 0, "return_terms": True}
    return model.bits_per_dim(x, method="ode", **{**options, **kwargs})


# ------------------------------------------------------------------ the continuous process


def test_continuous_alphas_cumprod_interpolates_log_alpha_bar_and_inverts():
    table = GaussianDiffusion(timesteps=T, beta_end=0.2).terms_float64["alphas_cumprod"]
    timesteps = np.array([-1.0, -0.5, 0.0, 3.0, 3.25, 98.5, 99.0], "float32")
    got = ops.convert_to_numpy(ode.continuous_alphas_cumprod(table, timesteps))
    log_table = np.log(np.concatenate([[1.0], table]))
    np.testing.assert_allclose(got, np.exp(np.interp(timesteps + 1, np.arange(T + 1), log_table)), rtol=1e-6)
    np.testing.assert_allclose(got[[0, 2, 3, 6]], [1.0, table[0], table[3], table[99]], rtol=1e-5)
    for timestep in timesteps[1:]:
        ab = float(ops.convert_to_numpy(ode.continuous_alphas_cumprod(table, np.float32(timestep))))
        log_snr = 0.5 * math.log(ab / (1 - ab))
        back = float(ops.convert_to_numpy(ode.timestep_of_log_snr(table, log_snr)))
        assert back == pytest.approx(timestep, abs=2e-3)
    # Song et al.'s time t = (timestep + 1) / T: t = 1 is the last step, t = 0.5 step 49.
    assert ode.log_snr_at(table, 1.0) == pytest.approx(0.5 * math.log(table[-1] / (1 - table[-1])), rel=1e-12)
    assert ode.log_snr_at(table, 0.5) == pytest.approx(0.5 * math.log(table[49] / (1 - table[49])), rel=1e-12)


def test_solvers_integrate_a_linear_ode_both_ways_and_rk45_marks_an_unfinished_run():
    def flow(t, state):
        return (-state[0] * (1.0 + t),)  # y(t) = y(0) exp(-t - t^2 / 2)

    state = (ops.convert_to_tensor(np.array([1.0, -2.0], "float32")),)
    (y,), nfe = ode.rk4(flow, state, 0.0, 1.0, 16)
    np.testing.assert_allclose(ops.convert_to_numpy(y), [math.exp(-1.5), -2 * math.exp(-1.5)], rtol=1e-5)
    assert nfe == 64
    (y,), nfe, accepted, rejected = ode.rk45(flow, state, 1.0, 0.0, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(ops.convert_to_numpy(y), [math.exp(1.5), -2 * math.exp(1.5)], rtol=1e-6)
    assert int(nfe) == 1 + 6 * (int(accepted) + int(rejected)) and int(accepted) > 5
    (y,), *_ = ode.rk45(flow, state, 0.0, 1.0, rtol=1e-7, atol=1e-7, max_steps=3)
    assert np.isnan(ops.convert_to_numpy(y)).all()


# ------------------------------------------------------------------ the NLL of Gaussian data


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_exact_trace_nll_is_the_closed_form_gaussian_nll(prediction_type):
    model = continuous_model(prediction_type)
    x = gaussian_data()
    reference, data_nll = ode_reference(x, model.diffusion.terms_float64["alphas_cumprod"])
    result = ode_terms(model, x, rtol=1e-7, atol=1e-7)
    assert result["num_probes"] == 4 and result["exact_trace"] and result["dequantization_bpd"] == 0.0
    np.testing.assert_allclose(result["image_bpd"], reference, atol=2e-5)
    # The data's own NLL, up to the prior N(0, I)'s mismatch with p_1.
    np.testing.assert_allclose(result["image_bpd"], data_nll, atol=2e-3)
    assert result["bpd"] == pytest.approx(result["prior_bpd"] + result["divergence_bpd"], abs=1e-12)


def test_hutchinson_estimates_are_unbiased_within_their_standard_error():
    model = continuous_model()
    x = gaussian_data(64, seed=1)
    options = {"exact_trace": False, "solver": "rk4", "num_steps": 8}
    exact = ode_terms(model, x, solver="rk4", num_steps=8)["image_bpd"]
    # The exact predictor's Jacobian is diagonal: v^T J v = trace J for every Rademacher v.
    rademacher = ode_terms(model, x, probe="rademacher", **options)
    np.testing.assert_allclose(rademacher["image_bpd"], exact, atol=2e-6)
    for num_probes in (1, 4):
        gaussian = ode_terms(model, x, probe="gaussian", num_probes=num_probes, seed=3, **options)
        errors = gaussian["image_bpd"] - exact
        se = errors.std(ddof=1) / math.sqrt(len(errors))
        assert abs(errors.mean()) < 5 * se and errors.std() > 0.01 / math.sqrt(num_probes)
        assert gaussian["num_probes"] == num_probes and gaussian["probe"] == "gaussian"


def test_rk4_error_falls_at_its_fourth_order():
    model = continuous_model()
    x = gaussian_data(8)
    reference, _ = ode_reference(x, model.diffusion.terms_float64["alphas_cumprod"])
    errors = []
    for num_steps in (6, 12, 24):
        result = ode_terms(model, x, solver="rk4", num_steps=num_steps)
        assert result["nfe"] == 4 * num_steps
        errors.append(np.abs(result["image_bpd"] - reference).mean())
    # Halving the step divides the error by 2^4 = 16.
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 11) & (ratios < 23)), (errors, ratios)


def test_rk45_meets_its_tolerance_and_counts_its_function_evaluations():
    model = continuous_model()
    x = gaussian_data(8)
    reference, _ = ode_reference(x, model.diffusion.terms_float64["alphas_cumprod"])
    errors, nfes = [], []
    for tolerance in (1e-3, 1e-6):
        result = ode_terms(model, x, rtol=tolerance, atol=tolerance)
        errors.append(np.abs(result["image_bpd"] - reference).max())
        nfes.append(result["nfe"])
        # One evaluation at the start, then six per step tried (first same as last).
        assert result["nfe"] % 6 == 1 and result["nfe_per_chunk"] == [result["nfe"]]
        # The global error, in nats per dimension, within a small multiple of the local tolerance.
        assert errors[-1] * LN2 < 20 * tolerance, (tolerance, errors)
    assert nfes[0] < nfes[1] and errors[1] < errors[0] / 100


# ------------------------------------------------------------------ 8-bit data


def test_dequantised_bits_per_dim_is_the_8bit_cross_entropy_and_below_the_bound():
    # 8-bit N(MU, S^2) pixels, dequantised to y = -1 + (k + u) / 128: the ODE's NLL of y is the
    # closed form of `ode_reference`, quadratic in y, so its mean over u is its value at the bin's
    # centre plus the uniform's variance w^2 / 12 carried to the end, and bits/dim add log2(128) = 7.
    model = continuous_model(size=4, clip=1.0)
    rng = np.random.default_rng(2)
    x = (np.clip(np.round((rng.normal(MU, S, (128, 4, 4, 1)) + 1) * 127.5), 0, 255) / 127.5 - 1).astype("float32")
    result = model.bits_per_dim(x, method="ode", seed=1, return_terms=True, verbose=0)
    assert result["dequantization_bpd"] == 7.0 and result["method"] == "ode" and result["probe"] == "rademacher"
    centre, width = -1 + (np.round((x.astype(np.float64) + 1) * 127.5) + 0.5) / 128, 1 / 128
    alphas_cumprod = model.diffusion.terms_float64["alphas_cumprod"]
    at_centre, _ = ode_reference(centre, alphas_cumprod)
    ab_end = alphas_cumprod[-1]
    stretch = (ab_end * S**2 + 1 - ab_end) / S**2  # (dx(1) / dy)^2; p_eps is N(MU, S^2) to 1e-7 here
    expected = at_centre + 0.5 * stretch * width**2 / 12 / LN2 + 7
    errors = result["image_bpd"] - expected
    # Within 5 standard errors of the uniform noise's spread (a bin of 2/255 would be 0.005 bits off).
    assert abs(errors.mean()) < 5 * errors.std(ddof=1) / math.sqrt(len(errors)), errors
    bound = model.bits_per_dim(x, verbose=0)
    assert result["bpd"] < bound


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_score_is_the_gaussian_closed_form(prediction_type):
    model, diffusion = make_model(prediction_type)
    rng = np.random.default_rng(0)
    x_t = rng.normal(0.0, 1.0, (6, 4, 4, 1)).astype("float32")
    t = np.array([0, 1, 10, 50, 98, 99])
    ab = diffusion.terms_float64["alphas_cumprod"][t][:, None, None, None]
    expected = -(x_t - np.sqrt(ab) * MU) / (ab * S**2 + 1.0 - ab)
    # x0: the noise (x_t - sqrt(ab) x_0) / sqrt(1 - ab) multiplies float32 rounding by 100 at t = 0.
    tolerance = 2e-3 if prediction_type == "x0" else 2e-4
    np.testing.assert_allclose(ops.convert_to_numpy(model.score(x_t, t)), expected, rtol=tolerance, atol=tolerance)
    # One timestep for every image.
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.score(x_t, 10)), -(x_t - np.sqrt(ab[2]) * MU) / (ab[2] * S**2 + 1 - ab[2]), rtol=2e-4
    )


def test_score_of_a_conditional_model_is_its_class_score_or_the_null_label():
    model = make_class_model()
    x_t = np.random.default_rng(0).normal(0.0, 1.0, (2, 4, 4, 1)).astype("float32")
    ab = model.diffusion.terms_float64["alphas_cumprod"][20]
    for labels, mean in ((None, UNCONDITIONAL_MEAN), (1, 0.4), ("mean-0.3", -0.3)):
        expected = -(x_t - np.sqrt(ab) * mean) / (ab * S**2 + 1.0 - ab)
        np.testing.assert_allclose(ops.convert_to_numpy(model.score(x_t, 20, labels=labels)), expected, rtol=2e-4)


def test_a_conditional_model_is_measured_with_the_null_label():
    # Integer timesteps: the nearest one to each continuous time, so only approximately exact.
    model = make_class_model(img_size=2)
    x = np.random.default_rng(3).normal(UNCONDITIONAL_MEAN, S, (16, 2, 2, 1)).astype("float32")
    _, data_nll = ode_reference(x, model.diffusion.terms_float64["alphas_cumprod"], mean=UNCONDITIONAL_MEAN)
    result = ode_terms(model, x, solver="rk4", num_steps=40)
    np.testing.assert_allclose(result["image_bpd"], data_nll, atol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "exact"}, r"Unknown method: 'exact'. Expected one of \('vlb', 'ode'\)"),
        ({"method": "ode", "num_steps": 10}, "num_steps is RK4's; RK45 chooses its steps. Received: num_steps=10"),
        ({"method": "ode", "solver": "euler"}, r"Unknown solver: 'euler'"),
        ({"method": "ode", "probe": "sphere"}, r"Unknown probe: 'sphere'"),
        ({"method": "ode", "rtol": 0.0}, "Received: rtol=0.0"),
        ({"method": "ode", "eps": 1.0}, "Received: eps=1.0"),
        ({"method": "ode", "num_probes": 0}, "Received: num_probes=0"),
        ({"method": "ode", "model_variance": "fixedlarge"}, "options of the bound"),
        ({"solver": "rk4"}, "solver: options of method='ode'. Received: them with method='vlb'"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, match):
    model = continuous_model()
    with pytest.raises(ValueError, match=match):
        model.bits_per_dim(gaussian_data(2), verbose=0, **kwargs)


def test_zero_terminal_snr_and_bad_timesteps_are_one_line_errors():
    model, _ = make_model("v", zero_terminal_snr=True)
    with pytest.raises(ValueError, match=r"needs alphas_cumprod\[T - 1\] > 0"):
        model.bits_per_dim(np.zeros((1, 4, 4, 1), "float32"), method="ode", verbose=0)
    for t in (100, -1, 2.5, [1, 2]):
        with pytest.raises(ValueError, match=r"t must be one integer timestep in \[0, 100\) or one per image \(3\)"):
            model.score(np.zeros((3, 4, 4, 1), "float32"), t)


# ------------------------------------------------------------------ other backends, a trained model


EXACT_SNIPPET = """
from gaussian_exact import MU, S, make_model
from test_likelihood_ode import continuous_model, gaussian_data, ode_reference
model = continuous_model("v")
x = gaussian_data()
reference, _ = ode_reference(x, model.diffusion.terms_float64["alphas_cumprod"])
result = model.bits_per_dim(x, method="ode", exact_trace=True, dequantize=False, rtol=1e-7, atol=1e-7,
                            return_terms=True, verbose=0)
v_model, diffusion = make_model("v", img_size=2)
ab = diffusion.terms_float64["alphas_cumprod"][10]
score_error = np.abs(to_numpy(v_model.score(x, 10)) - (-(x - np.sqrt(ab) * MU) / (ab * S**2 + 1 - ab))).max()
emit(error=float(np.abs(result["image_bpd"] - reference).max()), nfe=result["nfe"], score_error=float(score_error))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_exact_trace_nll_is_the_closed_form_on_other_backends(backend):
    from subprocess_json import run_snippet
    from subprocess_json import skip_unless_installed

    skip_unless_installed(backend)
    result = run_snippet(EXACT_SNIPPET, backend)
    assert result["error"] < 2e-5 and result["nfe"] % 6 == 1 and result["score_error"] < 1e-3


@pytest.mark.slow
def test_the_ode_likelihood_of_a_trained_model_is_below_its_bound():
    from conftest import tiny_model

    # A tiny UNet trained briefly on 8-bit N(MU, S^2) pixels (16x16x3): the ODE's bits/dim (dequantised,
    # its Hutchinson estimate with 4 probes) is below the bound of the same network (all T = 20 steps).
    rng = np.random.default_rng(0)
    data = (np.clip(np.round((rng.normal(MU, S, (256, 16, 16, 3)) + 1) * 127.5), 0, 255) / 127.5 - 1).astype("float32")
    model = tiny_model(timesteps=20, ema=0.9, seed=0)
    model.fit(data, batch_size=32, epochs=6, verbose=0)
    held_out = data[:16]  # the ODE's cost grows with the images: 85 s for 32, 46 s for 16 on a 2-core CPU
    bound = model.bits_per_dim(held_out, verbose=0, return_terms=True)
    ode_result = model.bits_per_dim(held_out, method="ode", num_probes=4, verbose=0, return_terms=True)
    errors = ode_result["image_bpd"]
    assert ode_result["bpd"] < bound["bpd"] + 5 * errors.std(ddof=1) / math.sqrt(len(errors))
    assert ode_result["bpd"] > 7.0  # at least (about) the 7.30 bits of the data's entropy
