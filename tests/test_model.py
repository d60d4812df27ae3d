import warnings

import keras
import numpy as np
import pytest
from conftest import tiny_images
from conftest import tiny_model
from conftest import tiny_unet
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import build_unet


@pytest.fixture(scope="module")
def trained():
    """A tiny model fitted for a few epochs on a fixed tiny dataset (shared: tracing is slow)."""
    keras.utils.set_random_seed(0)
    model = tiny_model(timesteps=20, ema=0.9, seed=0)
    history = model.fit(tiny_images(64), batch_size=16, epochs=6, verbose=0, shuffle=False)
    return model, history.history["loss"]


def test_loss_falls_and_is_reported(trained):
    _, losses = trained
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[0] > 0.5  # the noise has unit variance; an untrained UNet predicts ~0
    assert losses[-1] < 0.8 * losses[0]


def test_generate_images_shape_range_and_determinism(trained):
    model, _ = trained
    a = model.generate_images(num_images=3, seed=7)
    b = model.generate_images(num_images=3, seed=7)
    c = model.generate_images(num_images=3, seed=8)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_one_fit_step_is_traced_once_and_updates_the_ema_exactly(monkeypatch):
    # The optimizer's variables exist before the first trace; made inside it, TensorFlow would trace the step again.
    traces = []
    train_step = DiffusionModel.train_step
    monkeypatch.setattr(DiffusionModel, "train_step", lambda self, data: traces.append(1) or train_step(self, data))
    model = tiny_model(ema=0.75)
    # Start the shadow away from the network so the update is visible.
    for e in model.ema_network.weights:
        e.assign(ops.ones_like(e) * 0.5)
    before = [ops.convert_to_numpy(e) for e in model.ema_network.weights]
    model.fit(tiny_images(8), batch_size=8, epochs=1, verbose=0)
    assert model.optimizer.built and int(model.optimizer.iterations) == 1
    if keras.backend.backend() == "tensorflow":  # a tf.function's traces
        assert len(traces) == 1
    for w, e, old in zip(model.network.weights, model.ema_network.weights, before):
        expected = 0.75 * old + 0.25 * ops.convert_to_numpy(w)
        np.testing.assert_allclose(ops.convert_to_numpy(e), expected, rtol=1e-6, atol=1e-7)


def test_ema_network_is_frozen_and_not_optimized():
    model = tiny_model()
    assert model.ema_network.trainable_variables == []
    assert len(model.trainable_variables) == len(model.network.trainable_variables)


def test_validation_loss_uses_fixed_noise_and_the_compiled_loss():
    model = DiffusionModel(tiny_unet(), GaussianDiffusion(timesteps=20, beta_end=0.2), seed=5)
    model.compile(optimizer="adam", loss="mean_absolute_error")
    images = tiny_images(8)
    first = model.evaluate(images, batch_size=8, verbose=0)
    second = model.evaluate(images, batch_size=8, verbose=0)
    assert first == second
    # The same draws by hand: the evaluation generator starts from the model's seed.
    x_t, t, noise = model.noisy_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(5))
    pred = model.network([x_t, t])
    expected = float(np.mean(np.abs(ops.convert_to_numpy(noise) - ops.convert_to_numpy(pred))))
    assert first == pytest.approx(expected, rel=1e-5)


def test_keras_round_trip_keeps_optimizer_ema_and_samples(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "model.keras"
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert isinstance(loaded, DiffusionModel)
    assert loaded.diffusion.get_config() == model.diffusion.get_config()
    assert loaded.ema == model.ema
    for a, b in zip(model.ema_network.weights, loaded.ema_network.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert len(loaded.trainable_variables) == len(model.network.trainable_variables)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    np.testing.assert_array_equal(
        loaded.generate_images(num_images=2, seed=3), model.generate_images(num_images=2, seed=3)
    )


def test_default_sampling_is_what_generate_images_runs_and_is_saved(trained, tmp_path):
    model, _ = trained
    ddim4 = model.generate_images(num_images=2, seed=3, sampler="ddim", num_steps=4)
    ddim8 = model.generate_images(num_images=2, seed=3, sampler="ddim", num_steps=8)
    assert np.abs(ddim4 - ddim8).mean() > 1e-3  # the comparisons below can tell the step counts apart
    sampling = DiffusionModel.from_config({**model.get_config(), "default_sampling": {"sampler": "ddim", "num_steps": 4}})
    sampling.ema_network.set_weights(model.ema_network.get_weights())
    np.testing.assert_array_equal(sampling.generate_images(num_images=2, seed=3), ddim4)
    np.testing.assert_array_equal(sampling.generate_images(num_images=2, seed=3, num_steps=8), ddim8)
    sampling.save(tmp_path / "student.keras")
    loaded = keras.saving.load_model(tmp_path / "student.keras")
    assert loaded.default_sampling == {"sampler": "ddim", "num_steps": 4}
    np.testing.assert_array_equal(loaded.generate_images(num_images=2, seed=3), ddim4)
    assert model.default_sampling is None  # without one, the chain over every timestep, as before
    np.testing.assert_array_equal(
        model.generate_images(num_images=2, seed=3), model.generate_images(num_images=2, seed=3, sampler="ddpm")
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"default_sampling": {"sampler": "ddim", "num_step": 4}}, ValueError, "num_step"),
        ({"default_sampling": "ddim"}, ValueError, "default_sampling='ddim'"),
        ({"ema": 1.5}, ValueError, "ema=1.5"),
        ({"diffusion": "linear"}, TypeError, "diffusion"),
        ({"ema_network": "other"}, ValueError, "same weights"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    args = {"network": tiny_unet(), "diffusion": GaussianDiffusion(timesteps=10)}
    if kwargs.get("ema_network") == "other":
        kwargs = {"ema_network": tiny_unet(img_channels=1)}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DiffusionModel(**args)


def test_generate_images_rejects_a_bad_count():
    with pytest.raises(ValueError, match="num_images=0"):
        tiny_model().generate_images(num_images=0)


def test_from_preset_builds_the_preset_with_each_override_in_its_place():
    from ddpm_keras.presets import get_preset
    from ddpm_keras.presets import model_options

    keras.utils.set_random_seed(0)
    model = DiffusionModel.from_preset("tiny", img_size=16, widths=[8, 16], has_attention=[False, True],
                                       first_conv_channels=8, timesteps=50, prediction_type="v", seed=3,
                                       learning_rate=5e-4)
    config = get_preset("tiny")
    config["unet"].update(img_size=16, widths=[8, 16], has_attention=[False, True], first_conv_channels=8)
    config["diffusion"]["timesteps"] = 50
    config["training"]["prediction_type"] = "v"
    keras.utils.set_random_seed(0)
    by_hand = DiffusionModel(build_unet(**config["unet"]), GaussianDiffusion(**config["diffusion"]),
                             **model_options(config), seed=3)
    for ours, theirs in zip(model.network.get_weights(), by_hand.network.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert (model.image_shape, model.diffusion.num_timesteps, model.prediction_type, model.seed) == (
        (16, 16, 3), 50, "v", 3)
    assert (model.ema, model.loss_weighting) == (0.995, None)  # the preset's, where not overridden
    assert np.isclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 5e-4)
    with pytest.raises(ValueError, match="Unknown option 'widht' for a preset's model. Expected one of"):
        DiffusionModel.from_preset("tiny", widht=3)
    with pytest.raises(ValueError, match="Unknown preset: 'tinny'"):
        DiffusionModel.from_preset("tinny")
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0. Received: learning_rate=0"):
        DiffusionModel.from_preset("tiny", learning_rate=0)
