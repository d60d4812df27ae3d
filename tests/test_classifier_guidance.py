"""Classifier guidance against closed forms: two Gaussian classes, their mixture's exact predictor and exact classifier.

With exact networks, guidance at scale 1 turns the mixture's score into the
class's (`gaussian_mixture`), so every sampler must draw N(m_y, s^2); the
guided output itself is checked pointwise against the closed form for each
prediction type and scale.
"""

import keras
import numpy as np
import pytest
from gaussian_mixture import MEANS
from gaussian_mixture import S
from gaussian_mixture import closed_form_guided_eps
from gaussian_mixture import make_models
from keras import ops

from ddpm_keras import GaussianDiffusion
from ddpm_keras import NoisyClassifier
from ddpm_keras import build_classifier
from ddpm_keras import samplers


def _as_eps(output, x, ab, prediction_type):
    a, sigma = np.sqrt(ab)[:, None, None, None], np.sqrt(1.0 - ab)[:, None, None, None]
    if prediction_type == "v":
        return a * output + sigma * x
    if prediction_type == "x0":
        return (x - a * output) / sigma
    return output


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_guided_prediction_is_the_closed_form(prediction_type):
    model, classifier = make_models(prediction_type)
    alphas_cumprod = model.diffusion.terms_float64["alphas_cumprod"]
    rng = np.random.default_rng(0)
    t = np.array([0, 5, 30, 60, 99, 99], np.int32)
    x = rng.normal(0.0, 1.0, (6, 4, 4, 1)).astype(np.float32) * 0.5
    labels = np.array([0, 1, 1, 0, 1, 0], np.int32)
    for scale in (0.0, 1.0, 3.0):
        fn = samplers.classifier_guided_model_fn(
            lambda x, t: model.ema_network([x, t]), lambda x, t: classifier.network([x, t]),
            ops.convert_to_tensor(labels), scale, alphas_cumprod, prediction_type,
        )
        output = ops.convert_to_numpy(fn(ops.convert_to_tensor(x), ops.convert_to_tensor(t))).astype(np.float64)
        eps = _as_eps(output, x.astype(np.float64), alphas_cumprod[t], prediction_type)
        expected = np.concatenate([
            closed_form_guided_eps(x[i : i + 1].astype(np.float64), alphas_cumprod[t[i : i + 1]], labels[i], scale)
            for i in range(len(x))
        ])
        np.testing.assert_allclose(eps, expected, atol=2e-4, rtol=2e-3, err_msg=f"scale={scale}")


@pytest.mark.parametrize("sampler, num_steps", [
    ("ddpm", None), ("ddim", 50), ("pc", 50), ("dpmpp_2m", 20), ("dpmpp_3m", 20), ("dpmpp_2m_sde", 20),
    ("unipc", 20),
])
def test_every_sampler_draws_the_class_at_scale_one(sampler, num_steps):
    # At scale 1 the guided noise is exactly the class's: from the same noise, each sampler must give the
    # samples of the model of class 1 alone (moments included), not the mixture's (mean 0.05, std 0.39).
    model, classifier = make_models()
    options = dict(seed=1, sampler=sampler, num_steps=num_steps, verbose=0, segment_steps=None)
    guided = model.generate_images(64, labels="high", classifier=classifier, **options)
    alone = make_models(means=MEANS[1:])[0].generate_images(64, **options)
    np.testing.assert_allclose(guided, alone, atol=2e-3)
    assert abs(guided.mean() - MEANS[1]) < 0.03 and abs(guided.std() - alone.std()) < 1e-3


def test_guidance_composes_with_decode_inpaint_and_interpolate():
    model, classifier = make_models()
    latents = np.random.default_rng(2).normal(size=(32, 4, 4, 1)).astype(np.float32)
    decoded = model.decode(latents, num_steps=30, labels=0, classifier=classifier)
    assert abs(decoded.mean() - MEANS[0]) < 0.04, decoded.mean()
    path = model.interpolate(4, seed=0, num_steps=30, labels="low", classifier=classifier)
    assert abs(path.mean() - MEANS[0]) < 0.08, path.mean()
    # Inpainting: the known half is kept; the unknown half follows the class of the known pixels' guide.
    images = np.full((32, 4, 4, 1), MEANS[1], np.float32)
    mask = np.zeros((4, 4)); mask[:2] = 1
    filled = model.inpaint(images, mask, seed=0, labels=1, classifier=classifier, verbose=0)
    np.testing.assert_array_equal(filled[:, :2], images[:, :2])
    assert abs(filled[:, 2:].mean() - MEANS[1]) < 0.04


def test_accuracy_by_noise_level_matches_the_closed_form():
    # Two classes N(m_k, s^2 I) over D pixels with equal priors: the exact classifier is right with
    # probability Phi(a |m_1 - m_0| sqrt(D) / (2 sqrt(v))).
    from scipy.stats import norm

    _, classifier = make_models()
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    images = (np.asarray(MEANS)[labels][:, None, None, None] + S * rng.normal(size=(2000, 4, 4, 1))).astype("float32")
    accuracy = classifier.accuracy_by_noise_level(images, labels, timesteps=[0, 40, 70, 99], seed=4)
    ab = classifier.diffusion.terms_float64["alphas_cumprod"]
    for t, measured in accuracy.items():
        a, v = np.sqrt(ab[t]), ab[t] * S**2 + 1 - ab[t]
        expected = norm.cdf(a * (MEANS[1] - MEANS[0]) * 4.0 / (2.0 * np.sqrt(v)))
        assert abs(measured - expected) < 3.5 * np.sqrt(expected * (1 - expected) / 2000) + 1e-3, (t, measured, expected)


def test_noisy_classifier_trains_saves_and_loads(tmp_path):
    diffusion = GaussianDiffusion(timesteps=20)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    colours = np.eye(3, dtype=np.float32) * 1.6 - 0.8
    images = (colours[labels][:, None, None, :] + 0.1 * rng.normal(size=(96, 8, 8, 3))).astype("float32")
    network = build_classifier(8, 3, 3, [8, 16], [False, True], num_res_blocks=1)
    classifier = NoisyClassifier(network, diffusion, seed=0)
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = classifier.fit(images, labels, batch_size=32, epochs=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    # Clean images are told apart; at t = T - 1 nearly nothing is left to see.
    accuracy = classifier.accuracy_by_noise_level(images, labels, timesteps=[0, 19])
    assert accuracy[0] > 0.9, accuracy
    path = tmp_path / "clf.keras"
    classifier.save(path)
    loaded = keras.saving.load_model(path)
    x, t = images[:4], np.array([0, 3, 7, 19], np.int32)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.network([x, t])), ops.convert_to_numpy(classifier.network([x, t])), atol=1e-6
    )
    assert loaded.evaluate(images, labels, verbose=0) == classifier.evaluate(images, labels, verbose=0)


def test_bad_input_is_one_line():
    model, classifier = make_models()
    with pytest.raises(ValueError, match="classifier_scale must be"):
        model.generate_images(2, labels=0, classifier=classifier, classifier_scale=-1.0)
    with pytest.raises(ValueError, match="needs labels"):
        model.generate_images(2, classifier=classifier)
    with pytest.raises(ValueError, match="classifier_scale needs a classifier"):
        model.generate_images(2, classifier_scale=2.0)
    with pytest.raises(ValueError, match="Unknown class name 'medium'"):
        model.generate_images(2, labels="medium", classifier=classifier)
    other, _ = make_models(img_size=8)
    with pytest.raises(ValueError, match=r"takes images of shape \(4, 4, 1\)"):
        other.generate_images(2, labels=0, classifier=classifier)
    shorter = NoisyClassifier(classifier.network, GaussianDiffusion(timesteps=50))
    with pytest.raises(ValueError, match="another diffusion"):
        model.generate_images(2, labels=0, classifier=shorter)
    with pytest.raises(ValueError, match="NoisyClassifier"):
        model.generate_images(2, labels=0, classifier=model)
