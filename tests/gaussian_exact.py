"""Gaussian data with its exact predictors: the closed forms the solver tests compare with.

For x_0 ~ N(mu, s^2) per pixel every noise level (alpha = sqrt(ab), sigma = sqrt(1 - ab))
has the exact denoiser x0*(x) = mu + alpha s^2 (x - alpha mu) / v, v = alpha^2 s^2 + sigma^2,
and the probability-flow ODE keeps the standardised value (x - alpha mu) / sqrt(v).
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import samplers

MU, S = 0.1, 0.2
T = 100


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactPredictor(keras.layers.Layer):
    """The exact epsilon, v or x0 prediction for Gaussian data N(mu, s^2), given the alphas_cumprod."""

    def __init__(self, alphas_cumprod, prediction_type="epsilon", **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod, self.prediction_type = list(alphas_cumprod), prediction_type

    def alpha_bar(self, t):
        """`alpha_bar` at the network's timesteps `t`, shaped `(batch, 1, 1, 1)`."""
        return ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None, None]

    def call(self, inputs):
        x, t = inputs
        ab = self.alpha_bar(t)
        x_start = MU + ops.sqrt(ab) * S**2 * (x - ops.sqrt(ab) * MU) / (ab * S**2 + 1.0 - ab)
        eps = (x - ops.sqrt(ab) * MU) * ops.sqrt(1.0 - ab) / (ab * S**2 + 1.0 - ab)
        if self.prediction_type == "x0":
            return x_start
        if self.prediction_type == "v":
            return ops.sqrt(ab) * eps - ops.sqrt(1.0 - ab) * x_start
        return eps

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod, "prediction_type": self.prediction_type}


def make_model(prediction_type="epsilon", zero_terminal_snr=False, clip=10.0, img_size=4):
    """A model over T = 100 steps (beta_end 0.2) of img_size x img_size x 1 images whose network is exact."""
    diffusion = GaussianDiffusion(
        timesteps=T, beta_end=0.2, clip_min=-clip, clip_max=clip, rescale_zero_terminal_snr=zero_terminal_snr
    )
    images, t = keras.Input((img_size, img_size, 1)), keras.Input((), dtype="int32")
    output = ExactPredictor(diffusion.terms_float64["alphas_cumprod"], prediction_type)([images, t])
    return DiffusionModel(keras.Model([images, t], output), diffusion, prediction_type=prediction_type), diffusion


def exact_x0(x, ab):
    return MU + np.sqrt(ab) * S**2 * (x - np.sqrt(ab) * MU) / (ab * S**2 + 1.0 - ab)


def exact_flow(x, ab_from, ab_to):
    """The probability-flow ODE from level ab_from to ab_to: the standardised value is kept."""
    v_from, v_to = ab_from * S**2 + 1 - ab_from, ab_to * S**2 + 1 - ab_to
    return np.sqrt(ab_to) * MU + np.sqrt(v_to / v_from) * (x - np.sqrt(ab_from) * MU)


def levels(log_snr):
    """(alpha, sigma) of logSNR values lambda = log(alpha / sigma)."""
    log_snr = np.asarray(log_snr, np.float64)
    return np.sqrt(1 / (1 + np.exp(-2 * log_snr))), np.sqrt(1 / (1 + np.exp(2 * log_snr)))


def trailing_kept(diffusion, num_steps):
    """alphas_cumprod of the kept timesteps of trailing spacing, ascending."""
    return diffusion.terms_float64["alphas_cumprod"][samplers.spaced_timesteps(diffusion.num_timesteps, num_steps)]


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class Affine(keras.layers.Layer):
    """`a * x + b` with `a` and `b` one number per image, `(batch, 1)`."""

    def call(self, inputs):
        x, a, b = inputs
        return x * a[:, :, None, None] + b[:, :, None, None]


def affine_student(shape=(4, 4, 1), timesteps=T):
    """An x_0 network `a[t] x + b[t]`: it can be the one-step map of two DDIM steps of a Gaussian, exactly."""
    x, t = keras.Input(shape), keras.Input((), dtype="int32")
    a = keras.layers.Embedding(timesteps, 1, embeddings_initializer="zeros")(t)
    b = keras.layers.Embedding(timesteps, 1, embeddings_initializer="zeros")(t)
    return keras.Model([x, t], Affine()([x, a, b]))


# ------------------------------------------------------------ Gaussian classes

CLASS_MEANS = (-0.3, 0.4, 0.1)  # Class k: N(CLASS_MEANS[k], S^2) per pixel.
UNCONDITIONAL_MEAN = 0.05  # What the null label predicts: N(UNCONDITIONAL_MEAN, S^2).


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactClassPredictor(keras.layers.Layer):
    """The exact epsilon for Gaussian data N(mu, s^2) whose mean `mu (batch, 1)` is an input."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)

    def call(self, inputs):
        x, t, mu = inputs
        ab = ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None, None]
        mu = ops.reshape(mu, (-1, 1, 1, 1))
        return (x - ops.sqrt(ab) * mu) * ops.sqrt(1.0 - ab) / (ab * S**2 + 1.0 - ab)

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def make_class_model(img_size=4, clip=10.0):
    """A conditional model over T = 100 steps whose network is exact for each class and for the null label.

    The network's `class_embedding` holds each class's mean (and the null
    label's, last), so `num_classes` is `len(CLASS_MEANS)`.
    """
    diffusion = GaussianDiffusion(timesteps=T, beta_end=0.2, clip_min=-clip, clip_max=clip)
    images, t = keras.Input((img_size, img_size, 1)), keras.Input((), dtype="int32")
    labels = keras.Input((), dtype="int32")
    means = np.asarray(CLASS_MEANS + (UNCONDITIONAL_MEAN,), np.float32)[:, None]
    mu = keras.layers.Embedding(
        len(means), 1, embeddings_initializer=keras.initializers.Constant(means), name="class_embedding"
    )(labels)
    output = ExactClassPredictor(diffusion.terms_float64["alphas_cumprod"])([images, t, mu])
    names = [f"mean{m:+.1f}" for m in CLASS_MEANS]
    return DiffusionModel(keras.Model([images, t, labels], output), diffusion, class_names=names)
