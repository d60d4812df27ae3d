"""An inpainting model trained for the task: its network, its training masks, `inpaint` with any sampler, the CLI."""

import functools
import json
import os
import zipfile

import keras
import numpy as np
import pytest
from conftest import tiny_images
from conftest import tiny_model
from keras import ops
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import build_unet
from ddpm_keras import samplers
from ddpm_keras.cli import main
from ddpm_keras.inference import masked
from ddpm_keras.nn.inpainting import inpainting_network
from ddpm_keras.nn.inpainting import load_unconditional_weights
from ddpm_keras.nn.unet import network_is_inpainting
from ddpm_keras.nn.unet import network_num_classes
from ddpm_keras.training.masks import MASK_KINDS
from ddpm_keras.training.masks import check_mask_rates
from ddpm_keras.training.masks import random_masks

UNET = {"widths": [8, 16], "has_attention": [False, True], "num_res_blocks": 1, "first_conv_channels": 8}


def tiny_inpainting_model(img_size=8, seed=0, **options):
    network = build_unet(img_size, 3, inpainting=True, **UNET)
    model = DiffusionModel(network, GaussianDiffusion(timesteps=20, beta_end=0.2), ema=0.9, seed=seed, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def random_inputs(batch=4, img_size=8, seed=0):
    rng = np.random.default_rng(seed)
    x_t = rng.standard_normal((batch, img_size, img_size, 3)).astype("float32")
    t = rng.integers(0, 20, batch).astype("int32")
    mask = (rng.uniform(size=(batch, img_size, img_size, 1)) > 0.5).astype("float32")
    masked = rng.uniform(-1, 1, (batch, img_size, img_size, 3)).astype("float32") * mask
    return x_t, t, masked, mask


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# -------------------------------------------------------------------- the network


@pytest.mark.parametrize("num_classes", [None, pytest.param(3, marks=pytest.mark.slow)])
def test_the_zero_initialised_start_predicts_exactly_as_the_unconditional_network(num_classes):
    network = build_unet(8, 3, num_classes=num_classes, **UNET)
    rng = np.random.default_rng(1)
    for weight in network.weights:  # every weight away from its (partly zero) initialisation
        weight.assign(rng.normal(0.0, 0.2, weight.shape).astype("float32"))
    inpainter = inpainting_network(network)
    assert network_is_inpainting(inpainter) and not network_is_inpainting(network)
    assert network_num_classes(inpainter) == num_classes
    assert [t.name for t in inpainter.inputs][:4] == ["images", "timesteps", "masked_image", "mask"]
    labels = [] if num_classes is None else [np.array([0, 2, 3, 1], "int32")]
    x_t, t, masked, mask = random_inputs()
    expected = to_numpy(network([x_t, t, *labels]))
    # Zero weights on the new channels add exact zeros, but the 7-channel convolution may sum in another order
    # than the 3-channel one (CPUs without AVX-512 do): equal to float32 rounding, 1e-6 of outputs of about 1.
    same = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
    same(to_numpy(inpainter([x_t, t, masked, mask, *labels])), expected)
    # The same through the model and its EMA network, and into a network built with inpainting=True.
    model = DiffusionModel(network, GaussianDiffusion(timesteps=20), seed=0).to_inpainting()
    same(to_numpy(model.ema_network([x_t, t, masked, mask, *labels])), expected)
    built = build_unet(8, 3, num_classes=num_classes, inpainting=True, **UNET)
    load_unconditional_weights(built, network)
    same(to_numpy(built([x_t, t, masked, mask, *labels])), expected)
    # The mask's channels are read once trained: a kernel on them changes the prediction.
    kernel = inpainter.get_layer("inpainting_inputs").output
    assert kernel.shape[-1] == 7
    first_conv = inpainter.weights[[tuple(w.shape) for w in inpainter.weights].index((3, 3, 7, 8))]
    first_conv.assign(np.ones(first_conv.shape, "float32"))
    assert not np.allclose(to_numpy(inpainter([x_t, t, masked, mask, *labels])), expected)


def test_weights_of_another_network_are_a_one_line_error():
    inpainter = build_unet(8, 3, inpainting=True, **UNET)
    for other, message in [
        (build_unet(16, 3, **UNET), r"images of other shapes: \(16, 16, 3\) to copy into \(8, 8, 3\)"),
        (build_unet(8, 3, **{**UNET, "widths": [8, 24]}), r"The networks differ \(other widths"),
        (build_unet(8, 3, **{**UNET, "num_res_blocks": 2}), r"The networks differ \(other widths"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            load_unconditional_weights(inpainter, other)
        assert "\n" not in str(error.value)


# -------------------------------------------------------------------- training


def test_fit_trains_on_masks_drawn_per_image_from_the_seed():
    model = tiny_inpainting_model()
    images = tiny_images(8, img_size=8)
    history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    inputs, target, _ = model.training_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(5))
    again, _, _ = model.training_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(5))
    other, _, _ = model.training_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(6))
    assert len(inputs) == 4 and tuple(inputs[3].shape) == (8, 8, 8, 1)
    mask = to_numpy(inputs[3])
    np.testing.assert_array_equal(mask, to_numpy(again[3]))
    assert not np.array_equal(mask, to_numpy(other[3]))
    np.testing.assert_array_equal(to_numpy(inputs[2]), images * mask)  # the known pixels, zeros elsewhere
    assert len({m.tobytes() for m in mask}) > 4  # one mask per image


@pytest.mark.parametrize("compiled_loss", [None, "mse"])
def test_the_hole_loss_is_the_squared_error_on_the_pixels_to_fill(compiled_loss):
    """`inpainting_loss="hole"`: per image, its timestep weight times its squared errors on the pixels to fill over
    its number of values, averaged over the batch (Palette's); `"all"`: every pixel. The model's own loss and a
    compiled Keras loss alike."""
    images = ops.convert_to_tensor(tiny_images(8, img_size=8))
    for region in ("all", "hole"):
        model = tiny_inpainting_model(loss_weighting="min_snr", prediction_type="v", inpainting_loss=region)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=compiled_loss)
        inputs, target, weights = model.training_batch(images, keras.random.SeedGenerator(3))
        prediction = model.network(inputs)
        loss = float(model.compute_loss(y=target, y_pred=prediction, sample_weight=weights))
        known = to_numpy(inputs[3]).astype(np.float64)
        assert 0.3 < known.mean() < 0.9  # known and unknown pixels in the batch
        squared = (to_numpy(target).astype(np.float64) - to_numpy(prediction)) ** 2
        counted = 1.0 - known if region == "hole" else np.ones_like(known)
        per_image = (counted * squared).sum(axis=(1, 2, 3)) / squared[0].size
        expected = np.mean(to_numpy(model.timestep_weights(inputs[1])) * per_image)
        assert loss == pytest.approx(expected, rel=1e-5), region


def test_the_inpainting_loss_is_an_option_saved_with_the_model(tmp_path):
    """Inpainting models count every pixel unless told; `"hole"` is saved with the model, and a file saved before the
    option (no `inpainting_loss` in its config) loads with the loss it trained with, on every pixel."""
    unconditional = tiny_model(img_size=8)
    assert unconditional.to_inpainting().inpainting_loss == "all"
    model = unconditional.to_inpainting(inpainting_loss="hole")
    with pytest.raises(ValueError, match=r"^inpainting_loss must be one of \('all', 'hole'\).*Received: "
                       r"inpainting_loss='holes'$"):
        unconditional.to_inpainting(inpainting_loss="holes")
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(new)
    assert keras.saving.load_model(new).inpainting_loss == "hole"
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["inpainting_loss"]
                data = json.dumps(config).encode()
            target.writestr(item, data)
    assert keras.saving.load_model(old).inpainting_loss == "all"


def _kind(mask):
    """The kind a mask `(H, W)` (1 known) looks like: all, half, box or stroke."""
    unknown = mask == 0
    height, width = mask.shape
    if unknown.all():
        return "all"
    halves = [np.arange(height)[:, None] < height // 2, np.arange(height)[:, None] >= height // 2,
              np.arange(width)[None, :] < width // 2, np.arange(width)[None, :] >= width // 2]
    if any(np.array_equal(unknown, np.broadcast_to(half, mask.shape)) for half in halves):
        return "half"
    rows, cols = np.nonzero(unknown)
    if unknown[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all():
        return "box"
    return "stroke"


def test_each_mask_kind_draws_what_it_says_at_its_rate():
    size, n = 16, 2000
    for kind in MASK_KINDS:
        masks = to_numpy(random_masks(64, size, size, {kind: 1.0}, 0))[..., 0]
        assert set(np.unique(masks)) <= {0.0, 1.0}
        kinds = [_kind(m) for m in masks]
        if kind == "box":
            assert kinds == ["box"] * 64
            sides = [(np.ptp(np.nonzero(m == 0)[0]) + 1, np.ptp(np.nonzero(m == 0)[1]) + 1) for m in masks]
            assert min(min(s) for s in sides) >= 0.25 * size - 1 and max(max(s) for s in sides) <= 0.75 * size + 1
        elif kind == "stroke":
            holes = (masks == 0).mean(axis=(1, 2))
            assert holes.min() > 0.0 and holes.max() < 0.7 and kinds.count("stroke") > 48
        else:
            assert kinds == [kind] * 64
    rates = {"box": 0.3, "half": 0.2, "stroke": 0.4, "all": 0.1}
    masks = to_numpy(random_masks(n, size, size, rates, keras.random.SeedGenerator(1)))[..., 0]
    found = [_kind(m) for m in masks]
    for kind, rate in rates.items():
        # Binomial spread over 2,000 masks: at most 0.011; a stroke may look like a box now and then.
        assert found.count(kind) / n == pytest.approx(rate, abs=0.04), kind
    assert found.count("all") / n == pytest.approx(0.1, abs=0.025)


@pytest.mark.parametrize(
    "rates, message",
    [
        ({"box": 0.5, "half": 0.4}, r"mask_rates must sum to 1\. Received: .* summing to 0\.9"),
        ({"circle": 1.0}, r"Unknown mask kind 'circle'"),
        ({"box": 1.5, "all": -0.5}, r"Each mask rate must be a number in \[0, 1\]\. Received: box=1\.5"),
        ([0.5, 0.5], r"mask_rates must be a dict from mask kinds"),
    ],
)
def test_bad_mask_rates_are_one_line_errors(rates, message):
    with pytest.raises(ValueError, match=message):
        check_mask_rates(rates)


# -------------------------------------------------------------------- inpainting and generation


@pytest.fixture(scope="module")
def inpainter():
    keras.utils.set_random_seed(7)
    network = build_unet(8, 3, inpainting=True, **UNET)
    rng = np.random.default_rng(2)
    for weight in network.weights:
        weight.assign(rng.normal(0.0, 0.1, weight.shape).astype("float32"))
    return DiffusionModel(network, GaussianDiffusion(timesteps=20, beta_end=0.2), seed=0)


def test_inpaint_feeds_the_mask_and_generation_the_all_zero_mask(inpainter):
    images = tiny_images(2, img_size=8)
    mask = np.ones((8, 8), "float32")
    mask[:, 4:] = 0.0
    options = {"seed": 3, "sampler": "ddim", "num_steps": 3, "verbose": 0}
    filled = inpainter.inpaint(images, mask, **options)
    # Nothing known: the network's free generation from the same seed.
    free = inpainter.inpaint(images, np.zeros((8, 8)), **options)
    generated = inpainter.generate_images(2, seed=3, sampler="ddim", num_steps=3, verbose=0)
    np.testing.assert_allclose(free, generated, atol=1e-5)
    assert np.abs(filled - free)[:, mask == 0].mean() > 1e-3
    # The call of the model without a mask is the free one too, and so is its score.
    x_t, t, _, _ = random_inputs(2)
    zeros = np.zeros_like(x_t)
    free_output = to_numpy(inpainter.ema_network([x_t, t, zeros, zeros[..., :1]]))
    np.testing.assert_allclose(to_numpy(inpainter([x_t, t])), free_output, atol=1e-6)
    sigma = np.sqrt(1.0 - inpainter.diffusion.terms_float64["alphas_cumprod"][t]).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(to_numpy(inpainter.score(x_t, t)), -free_output / sigma, rtol=1e-4, atol=1e-5)


def test_inpaint_takes_the_samplers_own_options(inpainter):
    """`corrector_steps` of "pc" reaches the chain: with nothing known, the free generation with the same option."""
    images = tiny_images(2, img_size=8)
    options = {"seed": 3, "sampler": "pc", "num_steps": 3, "verbose": 0}
    free = inpainter.inpaint(images, np.zeros((8, 8)), corrector_steps=2, **options)
    np.testing.assert_allclose(free, inpainter.generate_images(2, corrector_steps=2, **options), atol=1e-5)
    assert np.abs(free - inpainter.generate_images(2, corrector_steps=1, **options)).max() > 1e-3


def test_a_conditional_inpainting_model_guides_with_the_mask_in_both_passes():
    network = build_unet(8, 3, num_classes=3, inpainting=True, **UNET)
    rng = np.random.default_rng(3)
    for weight in network.weights:
        weight.assign(rng.normal(0.0, 0.1, weight.shape).astype("float32"))
    model = DiffusionModel(network, GaussianDiffusion(timesteps=20, beta_end=0.2), seed=0)
    assert model.inpainting and model.num_classes == 3
    images = tiny_images(2, img_size=8)
    mask = np.ones((8, 8), "float32")
    mask[4:, :] = 0.0
    options = {"seed": 0, "sampler": "ddim", "num_steps": 3, "verbose": 0, "labels": [0, 2]}
    guided = model.inpaint(images, mask, guidance_scale=3.0, **options)  # the batch doubled: the mask repeated
    plain = model.inpaint(images, mask, **options)
    np.testing.assert_array_equal(guided[:, mask == 1], images[:, mask == 1])
    assert not np.array_equal(guided, plain)  # the guidance changed the filling


def test_a_mask_of_the_wrong_shape_is_a_one_line_error(inpainter):
    images = tiny_images(2, img_size=8)
    shape_error = r"mask must broadcast to the images' shape \(2, 8, 8, 3\).*Received: mask\.shape=\(4, 4\)$"
    with pytest.raises(ValueError, match=shape_error):
        inpainter.inpaint(images, np.ones((4, 4)), verbose=0)
    per_channel = np.ones((8, 8, 3), "float32")
    per_channel[:4, :, 0] = 0.0
    with pytest.raises(ValueError, match=r"one mask per pixel.*shape \(H, W\), \(H, W, 1\) or \(N, H, W, 1\)"):
        inpainter.inpaint(images, per_channel, verbose=0)
    with pytest.raises(ValueError, match=r"this inpainting model takes the mask as an input.*resample=3"):
        inpainter.inpaint(images, np.ones((8, 8)), resample=3, verbose=0)
    model = tiny_model(img_size=8)  # not an inpainting model: the replacement method's samplers
    with pytest.raises(ValueError, match=r"Unknown sampler\. Received: sampler='unipc'"):
        model.inpaint(images, np.ones((8, 8)), sampler="unipc", verbose=0)


# -------------------------------------------------------------------- exactly, on Gaussian data

# 2x2x1 images, x_0 ~ N(MEAN, COVARIANCE) over the 4 pixels (row-major), neighbours strongly correlated.
MEAN = np.array([0.1, -0.1, 0.2, 0.0])
COVARIANCE = 0.09 * np.array([
    [1.0, 0.7, 0.6, 0.4],
    [0.7, 1.0, 0.4, 0.6],
    [0.6, 0.4, 1.0, 0.7],
    [0.4, 0.6, 0.7, 1.0],
])


class ExactMaskedPredictor(keras.layers.Layer):
    """The exact noise given `(x_t, t)` and the known pixels, for `x_0 ~ N(MEAN, COVARIANCE)`.

    Given the known pixels `y` (mask 1), `x_0` is Gaussian with mean `m` (`y`
    where known, `mu_U + S_UK S_KK^-1 (y - mu_K)` elsewhere) and covariance
    `C` (the conditional `S_UU - S_UK S_KK^-1 S_KU`, zero on the known
    pixels), so `x_t ~ N(a m, a^2 C + s^2 I)` and
    `E[eps | x_t] = s (a^2 C + s^2 I)^-1 (x_t - a m)`. With the precision
    `P = S^-1`, `D_U = diag(1 - mask)`, `D_K = diag(mask)`:
    `Q = inv(D_U P D_U + D_K)`, `C = D_U Q D_U`,
    `m = D_K y + D_U (mu - Q D_U P D_K (y - mu))`.
    """

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)

    def call(self, inputs):
        x, t, masked, mask = inputs
        batch = ops.shape(x)[0]
        ab = ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None]
        x, y, known = (ops.reshape(v, (batch, 4, 1)) for v in (x, masked, mask))
        mu = ops.convert_to_tensor(MEAN.reshape(1, 4, 1), "float32")
        precision = ops.convert_to_tensor(np.linalg.inv(COVARIANCE)[None], "float32")
        eye = ops.eye(4, dtype="float32")[None]
        d_k, d_u = eye * ops.transpose(known, (0, 2, 1)), eye * ops.transpose(1.0 - known, (0, 2, 1))
        q = ops.inv(ops.matmul(ops.matmul(d_u, precision), d_u) + d_k)
        c = ops.matmul(ops.matmul(d_u, q), d_u)
        m = known * y + (1.0 - known) * (mu - ops.matmul(q, ops.matmul(ops.matmul(d_u, precision), known * (y - mu))))
        a, s = ops.sqrt(ab), ops.sqrt(1.0 - ab)
        eps = s * ops.matmul(ops.inv(a * a * c + s * s * eye), x - a * m)
        return ops.reshape(eps, (batch, 2, 2, 1))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def exact_inpainting_model():
    diffusion = GaussianDiffusion(timesteps=1000, clip_min=-10.0, clip_max=10.0)
    images, t = keras.Input((2, 2, 1), name="images"), keras.Input((), dtype="int32", name="timesteps")
    masked, mask = keras.Input((2, 2, 1), name="masked_image"), keras.Input((2, 2, 1), name="mask")
    output = ExactMaskedPredictor(diffusion.terms_float64["alphas_cumprod"])([images, t, masked, mask])
    return DiffusionModel(keras.Model([images, t, masked, mask], output), diffusion)


@pytest.mark.parametrize("sampler, num_steps", [pytest.param("ddpm", 1000, marks=pytest.mark.slow), ("dpmpp_2m", 100)])
def test_inpaint_with_the_exact_conditional_predictor_has_the_conditional_moments(sampler, num_steps):
    model = exact_inpainting_model()
    known = np.array([True, False, False, True])  # the diagonal pixels known, the other two filled in
    y = np.array([0.6, 0.0, 0.0, 0.5])  # the known values; the unknown ones are ignored
    gain = COVARIANCE[~known][:, known] @ np.linalg.inv(COVARIANCE[known][:, known])
    mean = MEAN[~known] + gain @ (y[known] - MEAN[known])
    covariance = COVARIANCE[~known][:, ~known] - gain @ COVARIANCE[known][:, ~known]
    n = 4000
    images = np.broadcast_to(y.reshape(1, 2, 2, 1), (n, 2, 2, 1)).astype("float32")
    mask = known.reshape(2, 2).astype("float32")
    filled = model.inpaint(images, mask, seed=0, sampler=sampler, num_steps=num_steps, verbose=0)
    samples = filled.reshape(n, 4)[:, ~known].astype(np.float64)
    np.testing.assert_array_equal(filled.reshape(n, 4)[:, known], images.reshape(n, 4)[:, known])
    # The standard error of each mean is sqrt(0.035 / 4000) = 0.003; the means move 0.25 from MEAN's.
    np.testing.assert_allclose(samples.mean(axis=0), mean, atol=0.015)
    assert np.abs(mean - MEAN[~known]).min() > 0.15
    # A variance's relative standard error over 4,000 samples is 2.2%; the unconditional variance is 2.6x.
    np.testing.assert_allclose(np.cov(samples.T), covariance, rtol=0.12, atol=0.002)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_the_network_outputs_predict_the_known_pixels_exactly_and_leave_the_rest(prediction_type):
    diffusion = GaussianDiffusion(timesteps=1000)
    rng = np.random.default_rng(0)
    x_t, _, masked_images, mask = random_inputs(batch=6)
    t = np.array([0, 10, 200, 500, 900, 999], "int32")
    output = rng.standard_normal(x_t.shape).astype("float32")  # a network that knows nothing
    projected = masked.known_pixels_projected(output, x_t, t, masked_images, mask, diffusion, prediction_type)
    x_0, noise = (to_numpy(v) for v in diffusion.split_prediction(projected, ops.convert_to_tensor(x_t), t,
                                                                  prediction_type))
    known = np.broadcast_to(mask > 0.5, x_t.shape)
    np.testing.assert_allclose(x_0[known], masked_images[known], atol=2e-4)
    ab = to_numpy(diffusion.alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    implied = (x_t - np.sqrt(ab) * masked_images) / np.sqrt(1.0 - ab)  # the noise x_t implies given them
    np.testing.assert_allclose(noise[known], np.broadcast_to(implied, x_t.shape)[known], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(to_numpy(projected)[~known], output[~known])


def test_the_exact_conditional_predictor_is_its_own_projection():
    model = exact_inpainting_model()
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((16, 2, 2, 1)).astype("float32")
    t = rng.integers(0, 1000, 16).astype("int32")
    mask = (rng.uniform(size=(16, 2, 2, 1)) > 0.5).astype("float32")
    masked_images = rng.uniform(-0.5, 0.5, x_t.shape).astype("float32") * mask
    output = to_numpy(model.network([x_t, t, masked_images, mask]))
    projected = masked.known_pixels_projected(output, x_t, t, masked_images, mask, model.diffusion, "epsilon")
    np.testing.assert_allclose(to_numpy(projected), output, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def exact_model():
    return exact_inpainting_model()


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_inpaint_keeps_the_known_region_exactly_with_every_sampler(exact_model, sampler):
    # The conditional means of the two unknown pixels are 0.36 and 0.66 (unconditional: -0.1 and 0.2); their
    # spread over 256 samples is 0.012, a few steps under-disperse a little but keep the mean.
    known = np.array([True, False, False, True])
    rng = np.random.default_rng(0)
    images = np.broadcast_to(np.float32([0.6, 0.0, 0.0, 0.5]).reshape(1, 2, 2, 1), (256, 2, 2, 1)).copy()
    images[:, 0, 1] = rng.normal(size=(256, 1))  # unknown pixels: ignored
    mask = known.reshape(2, 2, 1).astype("float32")
    steps = {"ddpm": 100, "pc": 100}.get(sampler, 20)
    filled = exact_model.inpaint(images, mask, seed=1, sampler=sampler, num_steps=steps, verbose=0)
    np.testing.assert_array_equal(filled.reshape(256, 4)[:, known], images.reshape(256, 4)[:, known])
    np.testing.assert_allclose(filled.reshape(256, 4)[:, ~known].mean(axis=0), [0.364, 0.664], atol=0.05)


# -------------------------------------------------------------------- saving, the CLI


def test_an_inpainting_model_saves_and_loads_with_its_mask_rates(tmp_path):
    rates = {"box": 0.5, "stroke": 0.4, "all": 0.1}
    unconditional = tiny_model(img_size=8)
    with pytest.raises(ValueError, match=r"Unknown option 'emma': expected one of \["):
        unconditional.to_inpainting(emma=0.5)
    model = unconditional.to_inpainting(mask_rates=rates, ema=0.5)  # any option changed for the fine-tuning
    assert model.inpainting and model.mask_rates == check_mask_rates(rates)
    assert (model.ema, model.seed, model.diffusion.get_config()) == (0.5, 0, unconditional.diffusion.get_config())
    path = str(tmp_path / "inpainter.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.inpainting and loaded.mask_rates == {"box": 0.5, "half": 0.0, "stroke": 0.4, "all": 0.1}
    assert loaded.ema == 0.5
    assert loaded.get_config()["mask_rates"] == model.get_config()["mask_rates"]
    x_t, t, masked, mask = random_inputs(2)
    np.testing.assert_array_equal(
        to_numpy(loaded.ema_network([x_t, t, masked, mask])), to_numpy(model.ema_network([x_t, t, masked, mask]))
    )


FAST = ["--dataset", "synthetic", "--steps-per-epoch", "2", "--batch-size", "4", "--plot-every", "0"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A model of the tiny preset at 16 px, saved untrained into a run directory (no run.json)."""
    folder = tmp_path_factory.mktemp("source")
    DiffusionModel.from_preset("tiny", img_size=16, seed=0, compile=False).save(str(folder / "model.keras"))
    return str(folder)


@pytest.mark.slow
def test_train_inpainting_init_from_a_run_then_inpaint_with_any_sampler(source_run, tmp_path):
    out = str(tmp_path / "inpainting")
    argv = ["train", "--preset", "tiny", "--img-size", "16", *FAST, "--epochs", "1", "--inpainting",
            "--init-from", source_run, "--mask-rates", "box=0.6", "stroke=0.3", "all=0.1", "--inpainting-loss", "hole",
            "--out", out]
    assert main(argv) == 0
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.inpainting and model.mask_rates == {"box": 0.6, "half": 0.0, "stroke": 0.3, "all": 0.1}
    assert model.inpainting_loss == "hole"
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    assert record["model"]["inpainting"] is True and record["model"]["mask_rates"]["box"] == 0.6
    assert record["model"]["inpainting_loss"] == "hole"
    assert record["init_from"] == source_run
    from PIL import Image

    image, mask_path = str(tmp_path / "image.png"), str(tmp_path / "mask.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(image)
    hole = np.full((16, 16), 255, np.uint8)
    hole[4:12, 4:12] = 0
    Image.fromarray(hole).save(mask_path)
    assert main(["inpaint", "--checkpoint", out, "--image", image, "--mask", mask_path, "--num-images", "1",
                 "--sampler", "dpmpp_2m", "--steps", "3", "--out", str(tmp_path / "filled.png")]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--img-size", "32"], "holds a different network than this run's: The networks take images of other shapes"),
        (["--img-size", "16", "--no-inpainting"], ""),
        (["--img-size", "16", "--mask-rates", "box=0.5"], "mask_rates must sum to 1"),
    ],
)
def test_bad_inpainting_runs_are_one_line_errors(source_run, extra, message, tmp_path, capsys):
    inpainting = ["--inpainting"] if "--no-inpainting" not in extra else []
    extra = [e for e in extra if e != "--no-inpainting"]
    argv = ["train", "--preset", "tiny", *FAST, *inpainting, "--init-from", source_run, *extra,
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ddpm-keras: error:")
    assert (message or "--init-from starts an inpainting model from a trained one: add --inpainting") in err


def test_the_inpainting_flags_need_an_inpainting_run(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", *FAST, "--mask-rates", "all=1", "--out", str(tmp_path / "r")]) == 2
    assert "--mask-rates applies to inpainting runs: add --inpainting." in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", *FAST, "--inpainting-loss", "hole", "--out", str(tmp_path / "r")]) == 2
    assert "--inpainting-loss applies to inpainting runs: add --inpainting." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--mask-rates", "circle=1"])
    assert "expected KIND=P with KIND one of box, half, stroke, all, got 'circle=1'" in capsys.readouterr().err


# -------------------------------------------------------------------- other backends

BACKEND = """
from ddpm_keras import DiffusionModel, GaussianDiffusion, build_unet
from ddpm_keras.nn.inpainting import inpainting_network
network = build_unet(8, 3, [8, 16], [False, True], num_res_blocks=1, first_conv_channels=8)
rng = np.random.default_rng(1)
for w in network.weights:
    w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
t = np.array([3, 9], "int32")
mask = (rng.uniform(size=(2, 8, 8, 1)) > 0.5).astype("float32")
start = float(np.abs(to_numpy(inpainting_network(network)([x, t, x * mask, mask])) - to_numpy(network([x, t]))).max())
model = DiffusionModel(network, GaussianDiffusion(timesteps=20, beta_end=0.2), seed=0)
model = model.to_inpainting(inpainting_loss="hole")  # the loss of a weight per pixel, on this backend
model.compile(optimizer=keras.optimizers.Adam(1e-3))
images = tiny_images(8, img_size=8)
losses = model.fit(images, batch_size=4, epochs=2, verbose=0).history["loss"]
masks = [to_numpy(model.random_masks(images, seed=keras.random.SeedGenerator(s))) for s in (0, 0, 1)]
hole = np.ones((8, 8)); hole[2:6, 2:6] = 0
filled = model.inpaint(images[:2], hole, seed=0, sampler="dpmpp_2m", num_steps=3, verbose=0)
emit(start=start, losses=losses, same=bool((masks[0] == masks[1]).all()), other=bool((masks[0] != masks[2]).any()),
     known=float(np.abs(filled - images[:2])[:, hole == 1].max()), finite=bool(np.isfinite(filled).all()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_inpainting_model_trains_and_inpaints_on_other_backends(backend):
    skip_unless_installed(backend)
    result = run_snippet(BACKEND, backend)
    assert result["start"] < 1e-6  # float32 rounding: the zero-initialised channels sum in another order
    assert np.isfinite(result["losses"]).all()
    assert result["same"] and result["other"]
    assert result["known"] == 0.0 and result["finite"]


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a SavedModel needs TensorFlow")
def test_the_exported_generator_of_an_inpainting_model_generates_freely(inpainter, tmp_path):
    import tensorflow as tf

    from ddpm_keras.visualize import to_uint8

    path = inpainter.export_generator(str(tmp_path / "generator"), sampler="ddim", num_steps=3)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(seed=tf.constant(4, tf.int64), num_images=tf.constant(2, tf.int32))["images"].numpy()
    expected = inpainter.generate_images(2, seed=4, sampler="ddim", num_steps=3, verbose=0)
    # The fixture's large random weights make the network chaotic: float round-off moves a few levels.
    difference = np.abs(served.astype(int) - to_uint8(expected).astype(int))
    assert served.shape == (2, 8, 8, 3) and difference.max() <= 4 and difference.mean() < 0.5
