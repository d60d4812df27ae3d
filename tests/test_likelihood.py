"""The variational bound in bits per dimension, against independent float64 computations.

The key check is on data whose law is known: each pixel an 8-bit discretized
N(MU, S^2), and the exact noise predictor of the continuous Gaussian,
eps*(x_t, t) = (x_t - sqrt(ab_t) MU) sqrt(1 - ab_t) / (ab_t S^2 + 1 - ab_t).
With it the predicted x_0 is affine in x_0 and the noise, so for t > 0 the
expected KL over the noise is a closed form (a quadratic in x_0), and the
t = 0 decoder term is a one-dimensional Gaussian integral over the noise,
taken here by Gauss-Hermite quadrature (exact to float64 precision for this
smooth integrand, so the reference carries no Monte Carlo error). The
package's terms, from one draw of noise per image, must match within 5
standard errors of their own per-image spread (a false alarm rate of about
1e-6 per check).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_images
from conftest import tiny_model
from keras import ops
from scipy import stats

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras.diffusion import likelihood

MU, S = 0.1, 0.3
T, BETA_END = 20, 0.2
LN2 = math.log(2.0)
HALF_BIN = 1.0 / 255.0


# ------------------------------------------------------------------ float64 references


def log_bin_probability(x, mean, std):
    """log P(bin of x) under N(mean, std^2) for 8-bit data in [-1, 1], in float64 (scipy)."""
    x, mean, std = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (x, mean, std)))
    upper, lower = (x + HALF_BIN - mean) / std, (x - HALF_BIN - mean) / std
    # log(Phi(b) - Phi(a)) on the side of the mean where both are lower tails.
    flip = x > mean
    a, b = np.where(flip, -upper, lower), np.where(flip, -lower, upper)
    log_b = stats.norm.logcdf(b)
    interior = log_b + np.log1p(-np.exp(stats.norm.logcdf(a) - log_b))
    return np.where(
        x < -1.0 + HALF_BIN, stats.norm.logcdf(upper), np.where(x > 1.0 - HALF_BIN, stats.norm.logsf(lower), interior)
    )


def schedule(timesteps=T, beta_end=BETA_END):
    """Ho et al.'s quantities in float64, written out: betas, alphas_cumprod, posterior variance, coef1."""
    betas = np.linspace(1e-4, beta_end, timesteps)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    return betas, ab, betas * (1.0 - ab_prev) / (1.0 - ab), betas * np.sqrt(ab_prev) / (1.0 - ab)


def exact_eps_gain(a):
    """eps*(x_t) = k (x_t - sqrt(a) MU): the gain k at alphas_cumprod a."""
    return math.sqrt(1.0 - a) / (a * S**2 + 1.0 - a)


def reference_terms(x_0, model_variance="fixedsmall", timesteps=T, quadrature_nodes=80):
    """E over the noise of each term, per image, in bits/dim: `(T, B)` for the exact predictor, no clipping.

    With x_t = sqrt(a) x_0 + sqrt(1 - a) eps, the predicted x_0 is
    g x_0 + g sqrt((1 - a) / a) eps + sqrt(1 - a) k MU (g = 1 - sqrt(1 - a) k), so
    x_0 - x0_hat = sqrt(1 - a) k (x_0 - MU) - g sqrt((1 - a) / a) eps = D, and the
    posterior means differ by c1 D: E[D^2] = (1 - a) k^2 (x_0 - MU)^2 + g^2 (1 - a) / a.
    """
    betas, ab, post_var, coef1 = schedule(timesteps)
    x_0 = np.asarray(x_0, np.float64)
    terms = np.zeros((timesteps, len(x_0)))
    for t in range(1, timesteps):
        a, k = ab[t], exact_eps_gain(ab[t])
        g = 1.0 - math.sqrt(1.0 - a) * k
        expected_d2 = (1.0 - a) * k**2 * (x_0 - MU) ** 2 + g**2 * (1.0 - a) / a
        model_var = post_var[t] if model_variance == "fixedsmall" else betas[t]
        # KL(N(m1, v1) || N(m2, v2)) = log(sqrt(v2 / v1)) + (v1 + (m1 - m2)^2) / (2 v2) - 1/2.
        mean_d2 = coef1[t] ** 2 * expected_d2
        kl = 0.5 * math.log(model_var / post_var[t]) + (post_var[t] + mean_d2) / (2 * model_var) - 0.5
        terms[t] = kl.reshape(len(x_0), -1).mean(axis=1) / LN2
    # t = 0: the decoder's variance is posterior_variance[1] (Ho et al.'s convention).
    terms[0] = reference_decoder(x_0, ab[0], post_var[1], quadrature_nodes)
    return terms


def reference_decoder(x_0, a, variance, quadrature_nodes=80):
    """E over the noise of -log p(x_0 | x_1), per image in bits/dim: x_1 at alphas_cumprod a, decoder
    N(x0_hat, variance) (at t = 0, coef1 = 1 and coef2 = 0), by Gauss-Hermite quadrature."""
    k = exact_eps_gain(a)
    g = 1.0 - math.sqrt(1.0 - a) * k
    nodes, weights = np.polynomial.hermite_e.hermegauss(quadrature_nodes)
    weights = weights / math.sqrt(2.0 * math.pi)
    levels = np.unique(x_0)
    x0_hat = g * levels[:, None] + g * math.sqrt((1.0 - a) / a) * nodes[None] + math.sqrt(1.0 - a) * k * MU
    nll = -(log_bin_probability(levels[:, None], x0_hat, math.sqrt(variance)) * weights).sum(axis=1)
    return nll[np.searchsorted(levels, x_0)].reshape(len(x_0), -1).mean(axis=1) / LN2


def reference_prior(x_0, timesteps=T):
    """KL(N(sqrt(ab) x_0, 1 - ab) || N(0, 1)) = 0.5 (ab x_0^2 - ab - log(1 - ab)) per image, in bits/dim."""
    ab = schedule(timesteps)[1][-1]
    x_0 = np.asarray(x_0, np.float64)
    return (0.5 * (ab * x_0**2 - ab - math.log(1.0 - ab))).reshape(len(x_0), -1).mean(axis=1) / LN2


def level_probabilities():
    """The 256 bin probabilities of 8-bit discretized N(MU, S^2) on [-1, 1], outer bins open."""
    edges = np.concatenate([[-np.inf], -1.0 + HALF_BIN + np.arange(255) * 2 * HALF_BIN, [np.inf]])
    return np.diff(stats.norm.cdf(edges, MU, S))


def gaussian_8bit_images(n, size=8, channels=3, seed=0):
    """n images of independent pixels N(MU, S^2), quantised to the 256 levels of [-1, 1] and clipped."""
    x = np.random.default_rng(seed).normal(MU, S, (n, size, size, channels))
    return (np.clip(np.round((x + 1.0) * 127.5), 0, 255) / 127.5 - 1.0).astype("float32")


# ------------------------------------------------------------------ the exact predictor


def exact_eps_fn(alphas_cumprod):
    """eps*(x_t, t) in keras.ops, for a float64 table of alphas_cumprod."""
    a_table = ops.convert_to_tensor(np.asarray(alphas_cumprod, "float32"))

    def eps_fn(x, t):
        a = ops.reshape(ops.take(a_table, t), (-1, 1, 1, 1))
        return (x - ops.sqrt(a) * MU) * ops.sqrt(1.0 - a) / (a * S**2 + 1.0 - a)

    return eps_fn


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactGaussianEps(keras.layers.Layer):
    """eps*(x_t, t) for Gaussian data N(MU, S^2), given the alphas_cumprod."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)

    def call(self, inputs):
        x, t = inputs
        return exact_eps_fn(self.alphas_cumprod)(x, t)

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def exact_model(size=8, channels=3):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END)
    images = keras.Input((size, size, channels))
    t = keras.Input((), dtype="int32")
    eps = ExactGaussianEps(diffusion.terms_float64["alphas_cumprod"])([images, t])
    return DiffusionModel(keras.Model([images, t], eps), diffusion)


def seeded_noise_fn(seed):
    generator = keras.random.SeedGenerator(seed)
    return lambda shape, step: keras.random.normal(shape, seed=generator)


def assert_within_standard_errors(samples, expected, z=5.0, rtol=1e-5):
    """mean(samples) == expected within z standard errors of the samples (plus float32 rounding)."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    assert abs(samples.mean() - expected) <= z * se + rtol * abs(expected), (samples.mean(), expected, se)


# ------------------------------------------------------------------ the elementwise terms


def test_normal_kl_matches_float64():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(0, 2, (2, 100))
    lv1, lv2 = rng.uniform(-8, 3, (2, 100))
    got = ops.convert_to_numpy(likelihood.normal_kl(*(v.astype("float32") for v in (m1, lv1, m2, lv2))))
    s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
    expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert float(likelihood.normal_kl(0.3, -1.0, 0.3, -1.0)) == 0.0


def test_discretized_log_likelihood_matches_scipy_far_into_the_tails():
    rng = np.random.default_rng(0)
    levels = np.arange(256) / 127.5 - 1.0
    x = np.concatenate([levels, rng.choice(levels, 2000)])
    log_scales = rng.uniform(math.log(1e-3), math.log(2.0), x.shape)
    # Means up to 9 standard deviations from the data on either side, where a bin's mass is a
    # difference of two CDF values within 1e-7 of each other (0 or 1) in float32.
    means = x + np.exp(log_scales) * rng.uniform(-9.0, 9.0, x.shape)
    got = ops.convert_to_numpy(
        likelihood.discretized_gaussian_log_likelihood(*(v.astype("float32") for v in (x, means, log_scales)))
    )
    expected = log_bin_probability(x, means, np.exp(log_scales))
    above_floor = expected > math.log(1e-11)
    assert above_floor.sum() > 1500
    # float32 inputs: x - mean is rounded to ~1e-7 relative, up to ~1e-4 of log p in the far tails.
    np.testing.assert_allclose(got[above_floor], expected[above_floor], rtol=2e-4, atol=2e-4)
    assert np.all(got[~above_floor] <= math.log(1e-11) + 1e-3) and np.all(got >= math.log(1e-12) - 1e-4)


@pytest.mark.parametrize("mean, std", [(0.1, 0.3), (-0.95, 0.02), (0.999, 0.5), (0.3, 1e-3), (5.0, 1.0)])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, std):
    levels = (np.arange(256) / 127.5 - 1.0).astype("float32")
    log_p = likelihood.discretized_gaussian_log_likelihood(levels, np.float32(mean), np.float32(math.log(std)))
    probabilities = np.exp(ops.convert_to_numpy(log_p).astype(np.float64))
    # Bins below the 1e-12 floor add at most 256e-12.
    assert probabilities.sum() == pytest.approx(1.0, abs=2e-5)
    np.testing.assert_allclose(probabilities, np.exp(log_bin_probability(levels, mean, std)), atol=2e-6)


def test_prior_term_is_its_closed_form():
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END)
    images = tiny_images(4, img_size=8)
    got = ops.convert_to_numpy(likelihood.prior_bpd(diffusion, images))
    np.testing.assert_allclose(got, reference_prior(images), rtol=1e-5)
    assert got.shape == (4,) and np.all(got > 0)


# ------------------------------------------------------------------ the bound of the exact predictor


@pytest.mark.parametrize("model_variance", ["fixedsmall", "fixedlarge"])
def test_bound_of_the_exact_predictor_matches_its_float64_value(model_variance):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END)
    images = gaussian_8bit_images(64)
    eps_fn = exact_eps_fn(diffusion.terms_float64["alphas_cumprod"])
    terms = ops.convert_to_numpy(
        likelihood.vb_terms_loop(
            eps_fn, seeded_noise_fn(0), diffusion, images, np.arange(T),
            clip_denoised=False, model_variance=model_variance,
        )
    )
    assert terms.shape == (T, 64) and terms.dtype == np.float32 and np.isfinite(terms).all()
    reference = reference_terms(images, model_variance)
    for t in range(T):
        assert_within_standard_errors(terms[t] - reference[t], 0.0, rtol=0.0)
    prior = ops.convert_to_numpy(likelihood.prior_bpd(diffusion, images))
    bound = prior + terms.sum(axis=0)
    assert_within_standard_errors(bound - reference_prior(images) - reference.sum(axis=0), 0.0, rtol=0.0)
    # Cross-entropy >= entropy: the bound is at least the data's entropy (7.30 bits) on average.
    p = level_probabilities()
    entropy = -np.sum(p * np.log2(p))
    se = bound.std(ddof=1) / math.sqrt(len(bound))
    assert bound.mean() >= entropy - 5 * se
    if model_variance == "fixedlarge":
        # beta_t over-covers the true reverse step's spread: 0.11 bits above the entropy.
        assert bound.mean() - entropy < 0.3
    else:
        # beta~_t under-covers it, worst at t = 1 after the jump from beta_0 = 1e-4 to
        # beta_1 = 0.011 (beta~_1 = 1e-4): 69 of the 74 bits (Ho et al. 2020, Table 2;
        # the reason Nichol & Dhariwal 2021 learn the variance).
        assert reference[1].mean() > 0.9 * (bound.mean() - entropy)


def test_one_step_diffusion_decodes_with_the_variance_of_its_one_step():
    # A schedule respaced to one step has no posterior_variance[1]: the decoder takes beta_0.
    diffusion = GaussianDiffusion.from_betas([0.3])
    images = gaussian_8bit_images(64)
    eps_fn = exact_eps_fn(diffusion.terms_float64["alphas_cumprod"])
    terms = ops.convert_to_numpy(
        likelihood.vb_terms_loop(eps_fn, seeded_noise_fn(0), diffusion, images, [0], clip_denoised=False)
    )
    assert terms.shape == (1, 64) and np.isfinite(terms).all()
    assert_within_standard_errors(terms[0] - reference_decoder(images, 0.7, 0.3), 0.0, rtol=0.0)


# ------------------------------------------------------------------ DiffusionModel.bits_per_dim


def test_bits_per_dim_of_the_exact_predictor_and_its_stratified_estimate():
    # fixedlarge: its terms vary less with t than fixedsmall's (see above), so 150 draws of
    # the stratified estimate pin its mean to 3% (one standard error), and drawing always the
    # lowest t of each stratum would be 13 standard errors off.
    model = exact_model()
    images = gaussian_8bit_images(32, seed=1)
    options = {"clip_denoised": False, "model_variance": "fixedlarge", "verbose": 0}
    reference = reference_prior(images).mean() + reference_terms(images, "fixedlarge").sum(axis=0).mean()
    # Chunks of 24: the second holds 8 images and 16 rows of padding, which must not count.
    # (8 seeds: a t distribution with 7 degrees of freedom, 0.2% beyond 5 standard errors.)
    exact = [model.bits_per_dim(images, seed=s, batch_size=24, **options) for s in range(8)]
    assert_within_standard_errors(exact, reference)
    # An unbiased estimate from 10 of the 20 timesteps: its mean over seeds is the bound.
    estimates = [model.bits_per_dim(images, num_steps=10, seed=s, **options) for s in range(150)]
    assert_within_standard_errors(estimates, reference)
    terms = model.bits_per_dim(images, num_steps=4, seed=3, return_terms=True, **options)
    np.testing.assert_array_equal(terms["weights"], [1, 2, 4, 13])  # [1, 3), [3, 7), [7, 20): geometric
    t = terms["timesteps"]
    assert t[0] == 0 and 1 <= t[1] < 3 <= t[2] < 7 <= t[3] < 20
    assert terms["bpd"] == pytest.approx(terms["prior_bpd"] + np.sum(terms["weights"] * terms["terms_bpd"]), rel=1e-12)


def test_stratified_timesteps_cover_every_stratum_uniformly():
    draws = np.array([likelihood.stratified_timesteps(20, 4, seed=s)[0] for s in range(2000)])
    for column, (low, high) in zip(draws.T[1:], [(1, 3), (3, 7), (7, 20)]):
        counts = np.bincount(column - low, minlength=high - low)
        assert len(counts) == high - low and counts.min() > 0.7 * counts.mean()
    timesteps, weights = likelihood.stratified_timesteps(20)
    np.testing.assert_array_equal(timesteps, np.arange(20))
    np.testing.assert_array_equal(weights, np.ones(20))
    np.testing.assert_array_equal(likelihood.stratified_timesteps(20, 20, seed=5)[0], np.arange(20))
    # Geometric strata: single timesteps first, at least one timestep each, covering [1, T).
    for num_timesteps, num_strata in [(1000, 49), (1000, 999), (20, 2), (5, 4)]:
        edges = likelihood.geometric_edges(num_timesteps, num_strata)
        assert edges[0] == 1 and edges[-1] == num_timesteps and len(edges) == num_strata + 1
        assert np.all(np.diff(edges) >= 1)
    np.testing.assert_array_equal(likelihood.geometric_edges(1000, 49)[:12], np.arange(1, 13))


def test_bits_per_dim_of_a_unet_on_arrays_and_datasets():
    model = tiny_model(timesteps=10)
    # Move the EMA network off its near-zero head, so the prediction depends on the input.
    rng = np.random.default_rng(0)
    for weight in model.ema_network.weights:
        weight.assign(ops.convert_to_numpy(weight) + rng.normal(0.0, 0.02, weight.shape).astype("float32"))
    images = tiny_images(12)
    result = model.bits_per_dim(images, batch_size=8, return_terms=True, verbose=0)
    assert result["num_images"] == 12 and np.isfinite(result["bpd"]) and result["bpd"] > 0
    np.testing.assert_array_equal(result["timesteps"], np.arange(10))
    # The terms add up to the bound.
    weighted = result["prior_bpd"] + np.sum(result["weights"] * result["terms_bpd"])
    assert result["bpd"] == pytest.approx(weighted, rel=1e-12)
    assert result["decoder_bpd"] == result["terms_bpd"][0]
    # The same images in the same order give the same number, however they are batched.
    for data in (
        tf.data.Dataset.from_tensor_slices((images, np.zeros(12))).batch(5),
        tf.data.Dataset.from_tensor_slices(images),
        [images[:3], images[3:]],
    ):
        assert model.bits_per_dim(data, batch_size=8, verbose=0) == result["bpd"]
    assert model.bits_per_dim(tf.data.Dataset.from_tensor_slices(images).batch(12), verbose=0) == model.bits_per_dim(
        images, verbose=0
    )
    assert model.bits_per_dim(images, batch_size=8, seed=1, verbose=0) != result["bpd"]


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (np.zeros((2, 8, 8, 1)), {}, r"data must have shape .*Received: data.shape=\(2, 8, 8, 1\)"),
        (None, {"num_steps": 1}, r"num_steps must be None .*\[2, 20\].*Received: num_steps=1"),
        (None, {"num_steps": 21}, "Received: num_steps=21"),
        (None, {"num_steps": 2.5}, "Received: num_steps=2.5"),
        (None, {"model_variance": "learned"}, r"Received: model_variance='learned'. Expected one of"),
        (None, {"batch_size": 0}, "Received: batch_size=0"),
        ("empty", {}, "data must hold at least one image. Received: an empty"),
        (42, {}, "data must be images .*Received: data of type int"),
        (np.full((1, 8, 8, 3), np.nan), {}, "data must be finite"),
    ],
)
def test_bits_per_dim_rejects_bad_input(data, kwargs, match):
    model = exact_model()
    if data is None:
        data = gaussian_8bit_images(2)
    elif isinstance(data, str):
        data = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 3), "float32")).batch(4)
    with pytest.raises(ValueError, match=match):
        model.bits_per_dim(data, verbose=0, **kwargs)
