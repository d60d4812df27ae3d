"""Two Gaussian classes with equal priors: the exact noise predictor of their mixture and the exact noisy classifier.

Class k is N(m_k, s^2 I) over the D pixels. At a level with a = sqrt(ab),
sigma = sqrt(1 - ab) and v = a^2 s^2 + sigma^2, x_t | k ~ N(a m_k, v I), so

    log p(k | x_t) = softmax_k(-|x_t - a m_k|^2 / (2 v))
    eps*(x_t) = sigma sum_k w_k (x_t - a m_k) / v,   w_k = p(k | x_t)

and the score of the class, grad log p_t(x | y) = -(x - a m_y) / v, is
the mixture's score plus grad log p(y | x_t): classifier guidance at
scale 1 with these two networks samples N(m_y, s^2 I) exactly.
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import NoisyClassifier

MEANS = (-0.3, 0.4)
S = 0.2
T = 100


def _level(alphas_cumprod, t):
    ab = ops.take(ops.convert_to_tensor(alphas_cumprod, "float32"), ops.cast(t, "int32"))[:, None, None, None]
    return ops.sqrt(ab), ops.sqrt(1.0 - ab), ab * S**2 + 1.0 - ab


def _log_likelihoods(x, a, v, means=MEANS):
    """`-|x - a m_k|^2 / (2 v)` for each class: `(batch, K)`."""
    return ops.stack([-ops.sum(ops.square(x - a * m) / (2.0 * v), axis=(1, 2, 3)) for m in means], axis=-1)


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class MixturePredictor(keras.layers.Layer):
    """The exact epsilon, v or x0 prediction of the mixture of classes of `means` (one class: N(m, s^2 I))."""

    def __init__(self, alphas_cumprod, prediction_type="epsilon", means=MEANS, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod, self.prediction_type, self.means = list(alphas_cumprod), prediction_type, list(means)

    def call(self, inputs):
        x, t = inputs
        a, sigma, v = _level(self.alphas_cumprod, t)
        if len(self.means) == 1:
            eps = sigma * (x - a * self.means[0]) / v
        else:
            w = ops.softmax(_log_likelihoods(x, a, v, self.means), axis=-1)
            eps = sigma * sum(w[:, k, None, None, None] * (x - a * m) for k, m in enumerate(self.means)) / v
        x_start = (x - sigma * eps) / a
        if self.prediction_type == "x0":
            return x_start
        if self.prediction_type == "v":
            return a * eps - sigma * x_start
        return eps

    def get_config(self):
        return {
            **super().get_config(), "alphas_cumprod": self.alphas_cumprod, "prediction_type": self.prediction_type,
            "means": self.means,
        }


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactClassifier(keras.layers.Layer):
    """The logits of `p(k | x_t, t)` of the two classes (equal priors)."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)

    def call(self, inputs):
        x, t = inputs
        a, _, v = _level(self.alphas_cumprod, t)
        return _log_likelihoods(x, a, v)

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def make_models(prediction_type="epsilon", img_size=4, means=MEANS):
    """`(model, classifier)`: a DiffusionModel whose network is the mixture's and its exact NoisyClassifier.

    With one of `MEANS` as `means`, the model is that class's alone (its classifier is still the two classes').
    """
    diffusion = GaussianDiffusion(timesteps=T, beta_end=0.2, clip_min=-10.0, clip_max=10.0)
    alphas_cumprod = diffusion.terms_float64["alphas_cumprod"]
    images, t = keras.Input((img_size, img_size, 1)), keras.Input((), dtype="int32")
    network = keras.Model([images, t], MixturePredictor(alphas_cumprod, prediction_type, means)([images, t]))
    images, t = keras.Input((img_size, img_size, 1)), keras.Input((), dtype="int32")
    classifier = keras.Model([images, t], ExactClassifier(alphas_cumprod)([images, t]))
    model = DiffusionModel(network, diffusion, prediction_type=prediction_type)
    return model, NoisyClassifier(classifier, diffusion, class_names=["low", "high"])


def closed_form_guided_eps(x, ab, label, scale):
    """`eps*(x) - scale sqrt(1 - ab) grad_x log p(label | x)` in float64, `x` `(batch, H, W, 1)`, `ab` `(batch,)`."""
    a, sigma = np.sqrt(ab)[:, None, None, None], np.sqrt(1.0 - ab)[:, None, None, None]
    v = a**2 * S**2 + sigma**2
    logits = np.stack([-np.sum((x - a * m) ** 2 / (2 * v), axis=(1, 2, 3)) for m in MEANS], axis=-1)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    mixture = sum(w[:, k, None, None, None] * (x - a * m) for k, m in enumerate(MEANS)) / v
    gradient = -(x - a * MEANS[label]) / v + mixture
    return sigma * mixture - scale * sigma * gradient


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ConditionalMixturePredictor(keras.layers.Layer):
    """The exact epsilon of class k for label k, and of the mixture for the null label `len(MEANS)`."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)
        self.classes = [MixturePredictor(alphas_cumprod, means=[m]) for m in MEANS]
        self.mixture = MixturePredictor(alphas_cumprod)

    def call(self, inputs):
        x, t, labels, _ = inputs  # the class embedding only marks the network as conditional
        output = self.mixture([x, t])
        for k, predictor in enumerate(self.classes):
            output = ops.where(ops.reshape(labels == k, (-1, 1, 1, 1)), predictor([x, t]), output)
        return output

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def make_conditional_model(img_size=4):
    """A class-conditional DiffusionModel whose network is exact for each class and, for the null label, the mixture."""
    model, _ = make_models(img_size=img_size)
    images = keras.Input((img_size, img_size, 1))
    t, labels = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    # The embedding's rows (the classes and the null label) tell DiffusionModel the number of classes.
    embedded = keras.layers.Embedding(len(MEANS) + 1, 1, name="class_embedding")(labels)
    alphas_cumprod = model.diffusion.terms_float64["alphas_cumprod"]
    output = ConditionalMixturePredictor(alphas_cumprod)([images, t, labels, embedded])
    return DiffusionModel(keras.Model([images, t, labels], output), model.diffusion)
