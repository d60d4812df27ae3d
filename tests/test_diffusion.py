"""GaussianDiffusion against an independent float64 computation of the paper's formulas."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras import GaussianDiffusion
from ddpm_keras.diffusion import TERM_NAMES

T = 50


def reference_terms(betas):
    """Ho et al. 2020's quantities, one timestep at a time in Python floats."""
    ref = {name: [] for name in TERM_NAMES}
    alpha_bar = 1.0
    for beta in betas:
        alpha_bar_prev = alpha_bar
        alpha_bar *= 1.0 - beta
        var = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        values = {
            "betas": beta,
            "alphas_cumprod": alpha_bar,
            "alphas_cumprod_prev": alpha_bar_prev,
            "sqrt_alphas_cumprod": math.sqrt(alpha_bar),
            "sqrt_one_minus_alphas_cumprod": math.sqrt(1.0 - alpha_bar),
            "log_one_minus_alphas_cumprod": math.log(1.0 - alpha_bar),
            "sqrt_recip_alphas_cumprod": 1.0 / math.sqrt(alpha_bar),
            "sqrt_recipm1_alphas_cumprod": math.sqrt(1.0 / alpha_bar - 1.0),
            "posterior_variance": var,
            # Filled in below: at t = 0 it needs the variance of t = 1.
            "posterior_log_variance_clipped": math.log(var) if var > 0.0 else None,
            "posterior_mean_coef1": beta * math.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            "posterior_mean_coef2": (1.0 - alpha_bar_prev) * math.sqrt(1.0 - beta) / (1.0 - alpha_bar),
        }
        for name, value in values.items():
            ref[name].append(value)
    # Ho et al.'s (and improved-diffusion's) convention: the posterior variance is 0 at t = 0,
    # and the log-variance there is the one of t = 1, the scale of the decoder p(x_0 | x_1) in
    # the likelihood bound (a clip at 1e-20 would make it a std of 1e-10). Sampling adds no
    # noise at t = 0, so it is unaffected.
    log_var = ref["posterior_log_variance_clipped"]
    log_var[0] = log_var[1] if len(betas) > 1 else math.log(betas[0])
    return {name: np.array(v) for name, v in ref.items()}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_every_term_matches_float64_reference(schedule):
    diffusion = GaussianDiffusion(timesteps=T, beta_schedule=schedule, beta_end=0.2)
    ref = reference_terms(diffusion.terms_float64["betas"])
    for name in TERM_NAMES:
        value = ops.convert_to_numpy(getattr(diffusion, name))
        assert value.dtype == np.float32, name
        np.testing.assert_allclose(diffusion.terms_float64[name], ref[name], rtol=1e-10, atol=1e-300, err_msg=name)
        np.testing.assert_allclose(value, ref[name].astype(np.float32), rtol=2e-6, atol=1e-30, err_msg=name)


def test_posterior_at_t0_returns_the_clean_image():
    d = GaussianDiffusion(timesteps=T)
    assert float(d.posterior_mean_coef1[0]) == pytest.approx(1.0)
    assert float(d.posterior_mean_coef2[0]) == 0.0
    assert float(d.posterior_variance[0]) == 0.0


def test_posterior_log_variance_at_t0_is_the_one_of_t1():
    d = GaussianDiffusion(timesteps=T)
    log_var = d.terms_float64["posterior_log_variance_clipped"]
    assert log_var[0] == log_var[1] == math.log(d.terms_float64["posterior_variance"][1])
    # One step (a schedule respaced to 1 step) has no t = 1: the variance of q(x_1 | x_0), beta_0.
    one = GaussianDiffusion.from_betas([0.3])
    np.testing.assert_allclose(one.terms_float64["posterior_log_variance_clipped"], [math.log(0.3)], rtol=1e-12)
    assert np.isfinite(ops.convert_to_numpy(one.posterior_log_variance_clipped)).all()


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal((6, 4, 4, 3)).astype(np.float32)
    t = np.array([0, 1, 7, 20, 48, 49], dtype=np.int32)
    return x, noise, t


def ab(d, t):
    return d.terms_float64["alphas_cumprod"][t][:, None, None, None]


def test_q_sample_and_q_mean_variance(batch):
    x, noise, t = batch
    d = GaussianDiffusion(timesteps=T, beta_end=0.2)
    a = ab(d, t)
    expected = np.sqrt(a) * x + np.sqrt(1 - a) * noise
    np.testing.assert_allclose(ops.convert_to_numpy(d.q_sample(x, t, noise)), expected, rtol=1e-5, atol=1e-6)
    mean, var, log_var = (ops.convert_to_numpy(v) for v in d.q_mean_variance(x, t))
    np.testing.assert_allclose(mean, np.sqrt(a) * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.ravel(), (1 - a).ravel(), rtol=1e-5)
    np.testing.assert_allclose(log_var.ravel(), np.log(1 - a).ravel(), rtol=1e-5)


def test_predict_start_from_noise_inverts_q_sample(batch):
    x, noise, t = batch
    d = GaussianDiffusion(timesteps=T, beta_end=0.2)
    x_t = d.q_sample(x, t, noise)
    np.testing.assert_allclose(ops.convert_to_numpy(d.predict_start_from_noise(x_t, t, noise)), x, atol=2e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(d.predict_noise_from_start(x_t, t, x)), noise, atol=2e-3)


def test_q_posterior_is_the_gaussian_product(batch):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision-weighted mean."""
    x, noise, t = batch
    t = t[t > 0]
    x, noise = x[: len(t)], noise[: len(t)]
    d = GaussianDiffusion(timesteps=T, beta_end=0.2)
    x_t = ops.convert_to_numpy(d.q_sample(x, t, noise))
    beta = d.terms_float64["betas"][t][:, None, None, None]
    a_prev = d.terms_float64["alphas_cumprod"][t - 1][:, None, None, None]
    # Product of N(x_{t-1}; x_t / sqrt(1 - beta), beta / (1 - beta)) and N(x_{t-1}; sqrt(a_prev) x_0, 1 - a_prev).
    prec = (1 - beta) / beta + 1 / (1 - a_prev)
    mean = (x_t * np.sqrt(1 - beta) / beta + np.sqrt(a_prev) * x / (1 - a_prev)) / prec
    got_mean, got_var, got_log_var = (ops.convert_to_numpy(v) for v in d.q_posterior(x, x_t, t))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_var.ravel(), (1 / prec).ravel(), rtol=1e-4)
    np.testing.assert_allclose(got_log_var.ravel(), np.log(1 / prec).ravel(), rtol=1e-4)


@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_uses_the_clipped_prediction(batch, clip):
    x, noise, t = batch
    d = GaussianDiffusion(timesteps=T, beta_end=0.2)
    x_t = ops.convert_to_numpy(d.q_sample(x, t, noise))
    pred_noise = noise * 1.7  # a wrong prediction, so x_0 leaves [-1, 1]
    a = ab(d, t)
    x0 = (x_t - np.sqrt(1 - a) * pred_noise) / np.sqrt(a)
    assert np.abs(x0).max() > 1.0
    if clip:
        x0 = np.clip(x0, -1, 1)
    c1 = d.terms_float64["posterior_mean_coef1"][t][:, None, None, None]
    c2 = d.terms_float64["posterior_mean_coef2"][t][:, None, None, None]
    mean, var, _ = d.p_mean_variance(pred_noise, x_t, t, clip_denoised=clip)
    np.testing.assert_allclose(ops.convert_to_numpy(mean), c1 * x0 + c2 * x_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(var).ravel(), d.terms_float64["posterior_variance"][t], rtol=1e-5, atol=1e-30
    )


def test_p_sample_draws_from_the_posterior_and_adds_no_noise_at_t0():
    d = GaussianDiffusion(timesteps=T, beta_end=0.2)
    n = 20000
    x_t = np.full((n, 1, 1, 1), 0.3, np.float32)
    pred = np.full((n, 1, 1, 1), -0.5, np.float32)
    for step in (0, 25):
        t = np.full((n,), step, np.int32)
        mean, var, _ = (ops.convert_to_numpy(v) for v in d.p_mean_variance(pred, x_t, t))
        samples = ops.convert_to_numpy(d.p_sample(pred, x_t, t, seed=keras.random.SeedGenerator(1)))
        if step == 0:
            np.testing.assert_array_equal(samples, mean)
        else:
            std = math.sqrt(var[0, 0, 0, 0])
            assert samples.mean() == pytest.approx(mean[0, 0, 0, 0], abs=5 * std / math.sqrt(n))
            assert samples.std() == pytest.approx(std, rel=0.03)


def test_config_round_trip():
    d = GaussianDiffusion(timesteps=30, beta_schedule="cosine", clip_min=-2.0, clip_max=2.0)
    d2 = GaussianDiffusion.from_config(d.get_config())
    assert d2.get_config() == d.get_config()
    np.testing.assert_array_equal(ops.convert_to_numpy(d2.betas), ops.convert_to_numpy(d.betas))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta_schedule": "quadratic"}, "quadratic"),
        ({"timesteps": -3}, "timesteps=-3"),
        ({"timesteps": 2.5}, "timesteps=2.5"),
        ({"beta_start": 0.0}, "beta_start=0.0"),
        ({"clip_min": 1.0, "clip_max": -1.0}, "clip_min=1.0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianDiffusion(**kwargs)
