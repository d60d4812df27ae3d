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
        spread = np.sqrt(expected * (1 - expected) / 2000)
        assert abs(measured - expected) < 3.5 * spread + 1e-3, (t, measured, expected)


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


def _colour_classes(n, seed=0):
    """8-px images of one colour each (class 0 red, 1 green, 2 blue), of random brightness, and their classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    colours = np.full((3, 3), -0.6, np.float32) + 1.4 * np.eye(3, dtype=np.float32)
    brightness = rng.uniform(0.6, 1.0, (n, 1, 1, 1))
    images = colours[labels][:, None, None, :] * brightness + 0.05 * rng.normal(size=(n, 8, 8, 3))
    return images.astype("float32"), labels


@pytest.mark.slow
def test_a_trained_classifier_guides_a_trained_unconditional_model_to_the_class():
    # The class of a sample is read off its colour (its strongest channel), independently of the classifier.
    from ddpm_keras import DiffusionModel
    from ddpm_keras import build_unet

    images, labels = _colour_classes(512)
    diffusion = GaussianDiffusion(timesteps=100, beta_end=0.2)
    model = DiffusionModel(
        build_unet(8, 3, [16, 32], [False, False], num_res_blocks=1, first_conv_channels=16), diffusion, ema=0.99,
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(images, batch_size=32, epochs=12, verbose=0)
    network = build_classifier(8, 3, 3, [16, 32], [False, False], num_res_blocks=1)
    classifier = NoisyClassifier(network, diffusion, seed=0)
    classifier.compile(optimizer=keras.optimizers.Adam(2e-3))
    classifier.fit(images, labels, batch_size=32, epochs=8, verbose=0)

    def blue_fraction(scale):
        x = model.generate_images(
            60, seed=1, sampler="ddim", num_steps=20, labels=2, classifier=classifier, classifier_scale=scale, verbose=0
        )
        return np.mean(np.argmax(x.mean(axis=(1, 2)), -1) == 2)

    assert 0.15 < blue_fraction(0.0) < 0.55  # chance: the model draws the three colours alike
    assert blue_fraction(10.0) >= 0.9


GUIDED_ON_BACKEND = """
import sys
sys.path.insert(0, "tests")
from gaussian_mixture import MEANS, make_models
from ddpm_keras import GaussianDiffusion, NoisyClassifier, build_classifier
results = {}
for sampler, steps in (("ddpm", None), ("dpmpp_2m_sde", 20)):
    model, classifier = make_models()
    options = dict(seed=1, sampler=sampler, num_steps=steps, verbose=0)
    guided = model.generate_images(16, labels=1, classifier=classifier, **options)
    alone = make_models(means=MEANS[1:])[0].generate_images(16, **options)
    results[sampler] = float(np.abs(guided - alone).max())
rng = np.random.default_rng(0)
labels = rng.integers(0, 2, 32)
images = (np.asarray(MEANS)[labels][:, None, None, None] + 0.2 * rng.normal(size=(32, 8, 8, 3))).astype("float32")
network = build_classifier(8, 3, 2, [8, 16], [False, True], num_res_blocks=1)
clf = NoisyClassifier(network, GaussianDiffusion(timesteps=20), seed=0)
clf.compile(optimizer=keras.optimizers.Adam(3e-3))
losses = clf.fit(images, labels, batch_size=16, epochs=3, verbose=0).history["loss"]
import tempfile
path = os.path.join(tempfile.mkdtemp(), "clf.keras")
clf.save(path)
loaded = keras.saving.load_model(path)
t = np.array([0, 5, 10, 19], "int32")
same = float(np.abs(to_numpy(loaded.network([images[:4], t])) - to_numpy(clf.network([images[:4], t]))).max())
emit(max_difference=results, losses=losses, same=same)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_classifier_guidance_and_training_on_other_backends(backend):
    from subprocess_json import run_snippet
    from subprocess_json import skip_unless_installed

    skip_unless_installed(backend)
    result = run_snippet(GUIDED_ON_BACKEND, backend)
    assert max(result["max_difference"].values()) < 2e-3, result
    assert np.isfinite(result["losses"]).all() and result["same"] < 1e-5


CLASSIFIER_MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ddpm_keras import GaussianDiffusion, NoisyClassifier, build_classifier
from ddpm_keras.utils.distribute import get_strategy

strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
with strategy.scope():
    clf = NoisyClassifier(build_classifier(16, 3, 2, [8, 16], [False, True], num_res_blocks=1),
                          GaussianDiffusion(timesteps=20), seed=0)
    clf.compile(optimizer=keras.optimizers.Adam(3e-3))
images, labels = tiny_images(16), np.arange(16) % 2
losses = clf.fit(images, labels, batch_size=8, epochs=2, verbose=0).history["loss"]
spread = max(float(np.abs(v.value.values[0].numpy() - v.value.values[1].numpy()).max()) for v in clf.network.weights)
# Each replica draws its own timesteps from the one mirrored seed generator.
@tf.function
def draw():
    def replica_fn():
        from ddpm_keras.training.steps import replica_seed
        return keras.random.randint((64,), 0, 20, seed=replica_seed(clf.seed_generator))
    return strategy.run(replica_fn)
draws = [d.numpy() for d in strategy.experimental_local_results(draw())]
emit(losses=losses, spread=spread, replicas=strategy.num_replicas_in_sync,
     differ=float(np.mean(draws[0] != draws[1])))
"""


@pytest.mark.slow
def test_noisy_classifier_trains_under_a_mirrored_strategy():
    from subprocess_json import run_snippet

    result = run_snippet(CLASSIFIER_MIRRORED)
    assert result["replicas"] == 2 and np.isfinite(result["losses"]).all()
    assert result["spread"] == 0.0  # one update, the same on both copies
    assert result["differ"] > 0.5  # and the replicas' noise is not the same draw


def test_classifier_guidance_composes_with_classifier_free_guidance():
    # The conditional network is exact per class and, for the null label, the mixture: classifier-free guidance at
    # scale 0 is the mixture, and the classifier at scale 1 turns it into the class, as on the unconditional model.
    from gaussian_mixture import make_conditional_model

    conditional, (_, classifier) = make_conditional_model(), make_models()
    options = dict(seed=2, sampler="ddim", num_steps=30, verbose=0)
    alone = make_models(means=MEANS[:1])[0].generate_images(32, **options)
    composed = conditional.generate_images(32, labels=0, guidance_scale=0.0, classifier=classifier, **options)
    np.testing.assert_allclose(composed, alone, atol=2e-3)
    mixture = conditional.generate_images(32, labels=0, guidance_scale=0.0, **options)
    assert np.abs(mixture - alone).max() > 0.1
    # Classifier-free guidance at 1 is already the class; a classifier scale of 0 leaves it so.
    conditional_only = conditional.generate_images(32, labels=0, classifier=classifier, classifier_scale=0.0, **options)
    np.testing.assert_allclose(conditional_only, alone, atol=2e-3)
