"""Class-conditional sampling and classifier-free guidance, against the exact predictors of Gaussian classes.

Class k is N(mu_k, s^2) per pixel and the null label predicts N(mu_u, s^2). With one variance the guided
noise prediction eps_u + g (eps_k - eps_u) is exactly the predictor of N(mu_u + g (mu_k - mu_u), s^2), so
every sampler must produce those moments (s = 1 + w: g = 1 is the class itself, g = 0 the null label's).
"""

import numpy as np
import pytest
from conftest import tiny_model
from gaussian_exact import CLASS_MEANS
from gaussian_exact import UNCONDITIONAL_MEAN
from gaussian_exact import S
from gaussian_exact import make_class_model
from keras import ops

from ddpm_keras import samplers

STEPS = {"ddpm": 50, "pc": 25, "ddim": 50}  # The solvers take 20.
# Consistency sampling of a diffusion model (not a consistency function) under-disperses at any step count:
# its x_0 is the posterior mean, re-noised; std 0.113 for 20 steps here in closed form (0.13 for all 100).
SPREAD = {"consistency": 0.113}


@pytest.fixture(scope="module")
def model():
    return make_class_model()


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_draws_the_requested_class_and_the_guided_mixture(model, sampler):
    # For an exact predictor every sampler is an affine map of its noise plus B * mean, B ~ 1: the same
    # seed gives samples of the class, of the null label and of any guidance scale that differ by a
    # constant, B times the difference of their means (closed form above). Their common spread is the
    # chain's own (a few steps under-disperse a little).
    options = {"sampler": sampler, "num_steps": STEPS.get(sampler, 20), "seed": 0, "verbose": 0}
    own = model.generate_images(labels=[1] * 128, **options)
    assert own.mean() == pytest.approx(CLASS_MEANS[1], abs=0.02)
    assert own.std() == pytest.approx(SPREAD.get(sampler, S), rel=0.25)
    for labels, scale, mean in [
        ([0] * 128, 1.0, CLASS_MEANS[0]),
        (None, 1.0, UNCONDITIONAL_MEAN),
        ([1] * 128, 3.0, UNCONDITIONAL_MEAN + 3.0 * (CLASS_MEANS[1] - UNCONDITIONAL_MEAN)),
        ([1] * 128, 0.0, UNCONDITIONAL_MEAN),
    ]:
        other = model.generate_images(128, labels=labels, guidance_scale=scale, **options)
        shift = other - own
        assert shift.std() < 1e-4, (sampler, labels and labels[0], scale)
        assert shift.mean() == pytest.approx(mean - CLASS_MEANS[1], rel=0.03, abs=1e-4), (sampler, scale)


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0, 5.0])
def test_guided_moments_follow_the_closed_form_for_each_scale(model, scale):
    images = model.generate_images(
        labels="mean-0.3", num_images=256, seed=2, sampler="dpmpp_2m", num_steps=20, guidance_scale=scale, verbose=0
    )
    expected = UNCONDITIONAL_MEAN + scale * (CLASS_MEANS[0] - UNCONDITIONAL_MEAN)
    assert images.mean() == pytest.approx(expected, abs=0.02)
    assert images.std() == pytest.approx(S, rel=0.25)


def test_no_labels_samples_the_null_label_and_chunks_keep_their_labels(model):
    unconditional = model.generate_images(256, seed=3, sampler="dpmpp_2m", num_steps=20, verbose=0)
    assert unconditional.mean() == pytest.approx(UNCONDITIONAL_MEAN, abs=0.02)
    labels = [0, 1, 2, 1, 0, 2, 1]
    images = model.generate_images(labels=labels, seed=4, sampler="ddim", num_steps=20, batch_size=3, verbose=0)
    per_image = images.mean(axis=(1, 2, 3))
    nearest = np.abs(per_image[:, None] - np.asarray(CLASS_MEANS)[None]).argmin(axis=1)
    np.testing.assert_array_equal(nearest, labels)


def test_decode_interpolate_and_inpaint_take_labels(model):
    noise = np.random.default_rng(5).standard_normal((4, 4, 4, 1)).astype("float32")
    decoded = model.decode(noise, num_steps=20, labels=1, guidance_scale=2.0)
    generated = model.generate_images(
        initial_noise=noise, sampler="ddim", num_steps=20, labels=[1] * 4, guidance_scale=2.0, verbose=0
    )
    np.testing.assert_allclose(decoded, generated, atol=1e-6)
    expected = UNCONDITIONAL_MEAN + 2.0 * (CLASS_MEANS[1] - UNCONDITIONAL_MEAN)
    assert decoded.mean() == pytest.approx(expected, abs=0.1)

    path = model.interpolate(6, seed=6, num_steps=20, labels="mean+0.4")
    assert path.mean() == pytest.approx(CLASS_MEANS[1], abs=0.08)

    images = np.full((8, 4, 4, 1), 5.0, np.float32)
    mask = np.zeros((4, 4))
    mask[:, :2] = 1.0  # The left half is known (and far from every class); the right half is drawn.
    filled = model.inpaint(images, mask, seed=7, sampler="ddim", num_steps=20, labels=0)
    assert np.all(filled[:, :, :2] == 5.0)
    # The exact predictor ignores the known half's values (pixels are independent): the drawn half is class 0.
    assert filled[:, :, 2:].mean() == pytest.approx(CLASS_MEANS[0], abs=0.06)


def test_guided_model_fn_is_one_batched_call_with_the_null_label():
    calls = []

    def model_fn(x, t, labels):
        calls.append((tuple(x.shape), ops.convert_to_numpy(labels).tolist()))
        # An output that depends on the label: label * x.
        return x * ops.cast(ops.reshape(labels, (-1, 1, 1, 1)), x.dtype)

    x = ops.convert_to_tensor(np.random.default_rng(0).standard_normal((2, 3, 3, 1)).astype("float32"))
    t = ops.convert_to_tensor([5, 5], "int32")
    labels = ops.convert_to_tensor([1, 2], "int32")

    plain = samplers.guided_model_fn(model_fn, labels, null_label=4)(x, t)
    assert calls == [((2, 3, 3, 1), [1, 2])]
    np.testing.assert_allclose(ops.convert_to_numpy(plain), ops.convert_to_numpy(x) * np.reshape([1, 2], (2, 1, 1, 1)))

    calls.clear()
    guided = samplers.guided_model_fn(model_fn, labels, null_label=4, guidance_scale=3.0)(x, t)
    assert calls == [((4, 3, 3, 1), [1, 2, 4, 4])]
    x_np = ops.convert_to_numpy(x)
    cond, uncond = x_np * np.reshape([1, 2], (2, 1, 1, 1)), 4 * x_np
    expected = uncond + 3.0 * (cond - uncond)
    np.testing.assert_allclose(ops.convert_to_numpy(guided), expected, rtol=1e-6)

    rescaled = samplers.guided_model_fn(model_fn, labels, null_label=4, guidance_scale=3.0, guidance_rescale=0.7)(x, t)
    ratio = cond.std(axis=(1, 2, 3), keepdims=True) / expected.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(rescaled), 0.7 * expected * ratio + 0.3 * expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": [0, 3]}, r"Each label must be a class in \[0, 3\) or a class name. Received: 3"),
        ({"labels": ["mean-0.3", "daisy"]}, r"Unknown class name 'daisy'. Known: 'mean-0.3'"),
        ({"labels": [0, 1, 2], "num_images": 2}, r"labels must be one class or one per image \(2\). Received: 3"),
        ({"labels": 0, "num_images": 2, "guidance_scale": -1.0}, r"guidance_scale must be a finite number >= 0\. Received: guidance_scale=-1.0"),
        ({"labels": 0, "num_images": 2, "guidance_rescale": 1.5}, r"guidance_rescale must be a number in \[0, 1\]\. Received"),
        ({"num_images": 2, "guidance_scale": 2.0}, r"Guidance needs labels to guide towards"),
        ({"labels": [True, 0]}, r"Received: True"),
    ],
)
def test_bad_labels_and_guidance_are_one_line_errors(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate_images(sampler="ddim", num_steps=2, verbose=0, **kwargs)


def test_an_unconditional_model_refuses_labels_and_guidance():
    model = tiny_model(timesteps=10)
    with pytest.raises(ValueError, match=r"This model is unconditional .* Received: labels=\[1, 2\]"):
        model.generate_images(2, labels=[1, 2], sampler="ddim", num_steps=2)
    with pytest.raises(ValueError, match=r"needs a class-conditional model.*guidance_scale=3.0"):
        model.generate_images(2, guidance_scale=3.0, sampler="ddim", num_steps=2)


GUIDED_DECODE = """
from gaussian_exact import make_class_model
model = make_class_model()
noise = np.random.default_rng(8).standard_normal((6, 4, 4, 1)).astype("float32")
emit(images=model.decode(noise, num_steps=8, sampler="dpmpp_2m", labels=[0, 1, 2, 0, 1, 2], guidance_scale=2.5,
                         guidance_rescale=0.5).tolist())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_guidance_gives_tensorflows_images_on_other_backends(model, backend):
    from subprocess_json import run_snippet
    from subprocess_json import skip_unless_installed

    skip_unless_installed(backend)
    noise = np.random.default_rng(8).standard_normal((6, 4, 4, 1)).astype("float32")
    expected = model.decode(
        noise, num_steps=8, sampler="dpmpp_2m", labels=[0, 1, 2, 0, 1, 2], guidance_scale=2.5, guidance_rescale=0.5
    )
    np.testing.assert_allclose(run_snippet(GUIDED_DECODE, backend)["images"], expected, atol=1e-5)


def test_sample_plotter_draws_one_row_per_class(model, tmp_path):
    from PIL import Image

    from ddpm_keras.training.callbacks import SamplePlotter
    from ddpm_keras.training.callbacks import class_rows

    assert class_rows(model, 10) == ([0, 0, 0, 1, 1, 1, 2, 2, 2], 3)
    assert class_rows(model, 4, classes=["mean+0.1", 0]) == ([2, 2, 0, 0], 2)
    plotter = SamplePlotter(tmp_path, num_images=10, sampling={"sampler": "ddim", "num_steps": 10}, scale=1, show=False)
    plotter.set_model(model)
    plotter.on_epoch_end(0)
    grid = np.asarray(Image.open(plotter.last_path), np.float32)
    assert grid.shape[:2] == (3 * (4 + 2) + 2, 3 * (4 + 2) + 2)  # 3 rows (classes) of 3 images of 4 px.
    rows = [grid[2 + 6 * r : 6 + 6 * r, 2:-2].mean() for r in range(3)]
    # Brighter rows for larger class means: -0.3 < 0.1 < 0.4.
    assert rows[0] < rows[2] < rows[1]


@pytest.mark.slow
def test_a_tiny_conditional_model_trained_for_a_minute_draws_the_requested_classes():
    import keras

    from ddpm_keras import DiffusionModel
    from ddpm_keras import GaussianDiffusion
    from ddpm_keras import build_unet
    from ddpm_keras.data import SYNTHETIC_CLASS_NAMES
    from ddpm_keras.data import synthetic_class_of
    from ddpm_keras.data import synthetic_flowers

    # Three synthetic classes (red, yellow and blue flowers) at 8 px: a minute of training on 2 cores.
    network = build_unet(8, 3, [16, 32], [False, True], num_res_blocks=1, first_conv_channels=16, num_classes=3)
    model = DiffusionModel(
        network, GaussianDiffusion(timesteps=200), prediction_type="v", loss_weighting="min_snr", ema=0.99,
        ema_warmup=True, seed=0, class_names=list(SYNTHETIC_CLASS_NAMES[:3]),
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    labels = np.arange(512) % 3
    model.fit(synthetic_flowers(512, 8, seed=0, labels=labels), labels, batch_size=32, epochs=16, verbose=0)

    requested = np.arange(150) % 3
    options = {"labels": requested, "seed": 1, "sampler": "dpmpp_2m_sde", "num_steps": 20,
               "timestep_spacing": "karras", "verbose": 0}
    drawn = synthetic_class_of(model.generate_images(guidance_scale=2.0, **options))
    for k in range(3):
        assert np.mean(drawn[requested == k] == k) >= 0.9, (SYNTHETIC_CLASS_NAMES[k], np.bincount(drawn + 1))
    # The unconditional model (s = 0) knows no class: about a third of its flowers match the request.
    unconditional = synthetic_class_of(model.generate_images(guidance_scale=0.0, **options))
    assert np.mean(unconditional == requested) < 0.6
