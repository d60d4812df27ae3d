"""The samplers' arithmetic, checked without training: an exact noise predictor.

For data x_0 ~ N(mu, s^2) per pixel, the optimal noise prediction is
eps*(x_t, t) = (x_t - sqrt(ab_t) mu) sqrt(1 - ab_t) / (ab_t s^2 + 1 - ab_t).
With it every reverse step is affine in x_t plus Gaussian noise, so the
distribution a sampler must produce follows exactly from a float64 recursion
on (mean, variance); the samples must match it within their standard error.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion

MU, S = 0.1, 0.2


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactNoisePredictor(keras.layers.Layer):
    """eps*(x_t, t) for Gaussian data N(mu, s^2), given the alphas_cumprod."""

    def __init__(self, mu, s, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.mu, self.s, self.alphas_cumprod = mu, s, list(alphas_cumprod)

    def call(self, inputs):
        x, t = inputs
        a = ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None, None]
        return (x - ops.sqrt(a) * self.mu) * ops.sqrt(1.0 - a) / (a * self.s**2 + 1.0 - a)

    def get_config(self):
        return {**super().get_config(), "mu": self.mu, "s": self.s, "alphas_cumprod": self.alphas_cumprod}


def exact_predictor_network(diffusion, img_size=4):
    images = keras.Input((img_size, img_size, 1))
    t = keras.Input((), dtype="int32")
    eps = ExactNoisePredictor(MU, S, diffusion.terms_float64["alphas_cumprod"])([images, t])
    return keras.Model([images, t], eps)


def ddpm_reference_moments(diffusion):
    """Mean and variance of x_0 after the full ancestral chain from N(0, 1), in float64."""
    terms = diffusion.terms_float64
    mean, var = 0.0, 1.0
    for t in reversed(range(diffusion.num_timesteps)):
        a = terms["alphas_cumprod"][t]
        k = math.sqrt(1 - a) / (a * S**2 + 1 - a)
        # x0_hat = alpha * x_t + beta;  x_{t-1} = c1 x0_hat + c2 x_t + sigma z
        alpha = (1 - math.sqrt(1 - a) * k) / math.sqrt(a)
        beta = math.sqrt(1 - a) * k * MU
        c1, c2 = terms["posterior_mean_coef1"][t], terms["posterior_mean_coef2"][t]
        noise_var = terms["posterior_variance"][t] if t > 0 else 0.0
        mean = (c1 * alpha + c2) * mean + c1 * beta
        var = (c1 * alpha + c2) ** 2 * var + noise_var
    return mean, var


def assert_matches_moments(samples, mean, var):
    n = samples.size
    assert samples.mean() == pytest.approx(mean, abs=4.5 * math.sqrt(var / n))
    assert samples.var() == pytest.approx(var, abs=4.5 * var * math.sqrt(2.0 / n))


def test_ddpm_chain_samples_the_exact_distribution():
    diffusion = GaussianDiffusion(timesteps=100, beta_end=0.2)
    model = DiffusionModel(exact_predictor_network(diffusion), diffusion)
    samples = model.generate_images(num_images=512, seed=0)
    mean, var = ddpm_reference_moments(diffusion)
    # The chain lands near the data (its fixed variance, beta tilde, under-disperses a little)...
    assert mean == pytest.approx(MU, abs=0.01) and math.sqrt(var) == pytest.approx(S, rel=0.15)
    # ...and the compiled sampler reproduces the chain's exact moments.
    assert_matches_moments(samples, mean, var)
