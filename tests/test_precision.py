"""Mixed precision and XLA: finite losses, float32 EMA and samples, loss scaling under float16."""

import keras
import numpy as np
import pytest
from conftest import tiny_images
from conftest import tiny_model
from keras import ops

from ddpm_keras.utils.distribute import set_precision


@pytest.fixture
def precision():
    """Sets a global dtype policy for one test, then restores float32."""
    yield set_precision
    keras.mixed_precision.set_global_policy("float32")


def _fit_one_step_from_shifted_ema(model):
    for e in model.ema_network.weights:
        e.assign(np.full(e.shape, 0.5, "float32"))
    before_ema = [ops.convert_to_numpy(e) for e in model.ema_network.weights]
    before = [ops.convert_to_numpy(w) for w in model.network.weights]
    loss = model.fit(tiny_images(8), batch_size=8, epochs=1, verbose=0).history["loss"][0]
    ema_error = max(
        float(np.abs(ops.convert_to_numpy(e) - (model.ema * old + (1 - model.ema) * ops.convert_to_numpy(w))).max())
        for w, e, old in zip(model.network.weights, model.ema_network.weights, before_ema)
    )
    change = max(float(np.abs(ops.convert_to_numpy(w) - b).max()) for w, b in zip(model.network.weights, before))
    return loss, ema_error, change


@pytest.mark.slow
def test_mixed_bfloat16_trains_with_float32_ema_and_samples(precision):
    precision("mixed_bfloat16")
    model = tiny_model(timesteps=10, ema=0.75)
    assert model.dtype_policy.name == "mixed_bfloat16"
    x = ops.convert_to_tensor(tiny_images(2))
    first_conv = next(layer for layer in model.network.layers if isinstance(layer, keras.layers.Conv2D))
    assert ops.convert_to_numpy(first_conv(x)).dtype.name == "bfloat16"
    loss, ema_error, change = _fit_one_step_from_shifted_ema(model)
    assert np.isfinite(loss) and 0.7 < loss < 1.5
    assert {w.dtype for w in model.ema_network.weights} == {"float32"}
    assert ema_error < 1e-6 and change > 0
    images = model.generate_images(num_images=2, seed=0)
    assert images.dtype == np.float32 and np.isfinite(images).all() and images.std() > 0.05


def test_mixed_float16_scales_the_loss_and_unscales_the_gradients(precision):
    precision("mixed_float16")
    model = tiny_model(timesteps=10, ema=0.75)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    scale = float(ops.convert_to_numpy(model.optimizer.scale_loss(ops.ones(()))))
    assert scale > 1000.0
    loss, ema_error, change = _fit_one_step_from_shifted_ema(model)
    assert np.isfinite(loss) and 0.7 < loss < 1.5
    assert int(model.optimizer.iterations) == 1
    # SGD(1e-3) moves a weight by lr * gradient: small unless the
    # gradients kept the loss scale (> 1000x), and nonzero unless the step
    # was skipped as non-finite.
    assert 0.0 < change < 0.05
    assert ema_error < 1e-6
    assert {w.dtype for w in model.ema_network.weights} == {"float32"}


@pytest.mark.slow
def test_jit_compiled_training_keeps_the_ema_exact():
    model = tiny_model(timesteps=10, ema=0.75)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model.jit_compile
    loss, ema_error, change = _fit_one_step_from_shifted_ema(model)
    assert np.isfinite(loss) and 0.7 < loss < 1.5
    assert ema_error < 1e-6 and change > 0


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="Unknown precision: 'float16'.*mixed_bfloat16"):
        set_precision("float16")


# ------------------------------------------------------------ reduced-precision sampling


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.01), ("float16", 0.002)])
def test_reduced_precision_sampling_runs_the_ema_weights_in_16_bits(dtype, tolerance):
    model = tiny_model(timesteps=20)
    num_weights = len(model.weights)
    rng = np.random.default_rng(0)
    for weight in model.ema_network.weights:
        weight.assign(weight.numpy() + rng.normal(0.0, 0.05, weight.shape).astype("float32"))
    x = ops.convert_to_tensor(tiny_images(2))
    network = model.inference_network(dtype)
    first_conv = next(layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D))
    assert ops.convert_to_numpy(first_conv(x)).dtype.name == dtype
    assert {v.dtype for v in network.weights} == {"float32"}

    options = {"num_images": 4, "seed": 0, "sampler": "ddim", "num_steps": 5, "verbose": 0}
    full = model.generate_images(**options)
    reduced = model.generate_images(dtype=dtype, **options)
    assert reduced.dtype == np.float32
    difference = np.abs(reduced - full).mean()
    # 16-bit rounding moves the samples a little (an ignored dtype would move them not at all) while the
    # copy runs the EMA weights (its own initial weights would give other images altogether).
    assert 0.0 < difference < tolerance * np.abs(full).mean()

    # The copy follows the EMA weights as they change, and is no part of the model's weights.
    for weight in model.ema_network.weights:
        weight.assign(weight.numpy() * 0.9)
    full = model.generate_images(**options)
    assert 0.0 < np.abs(model.generate_images(dtype=dtype, **options) - full).mean() < tolerance * np.abs(full).mean()
    assert len(model.weights) == num_weights


def test_unknown_sampling_dtype_is_one_line():
    model = tiny_model(timesteps=20)
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16', 'float16'\).*Received: dtype='half'"):
        model.generate_images(2, dtype="half")
