"""The keras.io checkpoint converter against its oracle: the example's network written with tf_keras (Keras 2).

Every weight of the reference is random (several start at ~0, which would hide a
mapping error), saved with tf_keras's `save_weights` in the TensorFlow format,
imported, and the two networks must give the same noise prediction.
"""

import os
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

pytest.importorskip("tf_keras", reason="tf_keras (Keras 2) is the oracle of the converter: pip install tf-keras")

import keras_io_reference as reference  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddpm_keras import AttentionBlock  # noqa: E402
from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import build_unet  # noqa: E402
from ddpm_keras import convert  # noqa: E402
from ddpm_keras.cli import main  # noqa: E402
from ddpm_keras.convert import CheckpointMismatchError  # noqa: E402
from ddpm_keras.convert import CheckpointUnavailableError  # noqa: E402
from ddpm_keras.convert import convert_keras_io_checkpoint  # noqa: E402
from ddpm_keras.convert import load_keras_io_checkpoint  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402

SMALL = {"img_size": 16, "img_channels": 3, "widths": [8, 16, 32], "has_attention": [False, True, True],
         "num_res_blocks": 2, "norm_groups": 8, "first_conv_channels": 8}
# The least network with every kind of layer (attention too), for the tests of everything but the mapping.
MICRO = {"img_size": 8, "img_channels": 3, "widths": [8, 16], "has_attention": [False, True],
         "num_res_blocks": 1, "norm_groups": 8, "first_conv_channels": 8}
# Outputs of the randomised networks are of order 1-5: 1e-5 of that scale (float32 round-off is ~1e-6).
TOLERANCE = 1e-5


def inputs(img_size, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, img_size, img_size, 3)).astype("float32")
    return images, rng.integers(0, 1000, size=batch)


def save_reference(folder, unet=SMALL, seed=0, name="diffusion_model_checkpoint"):
    """A randomised tf_keras network saved as `folder/name`; returns the prefix and its outputs on `inputs`."""
    network = reference.build_model(**unet)
    reference.randomize(network, seed)
    prefix = os.path.join(folder, name)
    network.save_weights(prefix)
    images, timesteps = inputs(unet["img_size"])
    return prefix, network([images, timesteps.astype("int64")]).numpy()


def predict(network, img_size):
    images, timesteps = inputs(img_size)
    return ops.convert_to_numpy(network([images, timesteps.astype("int32")]))


def assert_same_outputs(got, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE * scale)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_reference(str(tmp_path_factory.mktemp("small")))


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    return save_reference(str(tmp_path_factory.mktemp("micro")), unet=MICRO)


def test_imported_network_gives_tf_keras_outputs(small_checkpoint):
    prefix, expected = small_checkpoint
    model = load_keras_io_checkpoint(prefix, preset="tiny", unet=SMALL)
    assert isinstance(model, DiffusionModel) and isinstance(model.optimizer, keras.optimizers.Adam)
    assert_same_outputs(predict(model.network, 16), expected)
    assert_same_outputs(predict(model.ema_network, 16), expected)
    assert model.ema_network is not model.network


def test_the_oracle_tells_the_attention_residuals_apart(small_checkpoint):
    # Loaded into the paper's attention (residual = the block's input), the same weights compute something else.
    prefix, expected = small_checkpoint
    network = load_keras_io_checkpoint(prefix, preset="tiny", unet=SMALL).network
    paper = build_unet(**SMALL, attention_residual="input")
    paper.set_weights(network.get_weights())
    assert np.abs(predict(paper, 16) - expected).max() > 100 * TOLERANCE * np.abs(expected).max()


def test_flowers64_checkpoint_gives_tf_keras_outputs(tmp_path):
    unet = get_preset("flowers64")["unet"]
    network = reference.build_model(**unet)
    assert network.count_params() == 63_200_387
    reference.randomize(network, seed=3)
    network.save_weights(str(tmp_path / "ckpt"))
    images, timesteps = inputs(64, batch=1)
    expected = network([images, timesteps.astype("int64")]).numpy()
    del network
    model = load_keras_io_checkpoint(str(tmp_path / "ckpt"))
    assert model.ema_network.count_params() == 63_200_387
    got = ops.convert_to_numpy(model.ema_network([images, timesteps.astype("int32")]))
    assert_same_outputs(got, expected)


def test_whole_model_checkpoint_fills_network_and_ema_each_from_its_own(tmp_path):
    network, ema_network = reference.build_model(**MICRO), reference.build_model(**MICRO)
    reference.randomize(network, seed=4)
    reference.randomize(ema_network, seed=5)
    whole = reference.DiffusionModel(network, ema_network)
    whole.compile(optimizer=reference.keras.optimizers.Adam(2e-4), loss="mse")
    # Optimizer state in the checkpoint too, as after the example's training.
    whole.optimizer.apply_gradients([(tf.ones_like(w), w) for w in network.trainable_weights])
    whole.save_weights(str(tmp_path / "ckpt"))
    images, timesteps = inputs(8)
    expected = {name: getattr(whole, name)([images, timesteps.astype("int64")]).numpy()
                for name in ("network", "ema_network")}

    model = load_keras_io_checkpoint(str(tmp_path / "ckpt"), preset="tiny", unet=MICRO)
    assert_same_outputs(predict(model.network, 8), expected["network"])
    assert_same_outputs(predict(model.ema_network, 8), expected["ema_network"])
    assert np.abs(expected["network"] - expected["ema_network"]).max() > 0.1


@pytest.mark.parametrize("form", ["zip", "directory", "index_file", "url"])
def test_a_zip_a_directory_an_index_file_or_a_url_imports(form, micro_checkpoint, tmp_path, monkeypatch):
    prefix, expected = micro_checkpoint
    folder = os.path.dirname(prefix)
    # As the published checkpoints.zip: checkpoints/diffusion_model_checkpoint.{index,data-*}.
    archive = str(tmp_path / "checkpoints.zip")
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in os.listdir(folder):
            zipped.write(os.path.join(folder, name), f"checkpoints/{name}")
    source = {"zip": archive, "directory": folder, "index_file": prefix + ".index",
              "url": "https://example.com/releases/checkpoints.zip"}[form]
    downloads = []
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(convert, "probe_host", lambda url: None)
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: downloads.append(args) or archive)
    model = load_keras_io_checkpoint(source, preset="tiny", unet=MICRO)
    assert_same_outputs(predict(model.ema_network, 8), expected)
    assert len(downloads) == (form == "url")


def test_checkpoint_of_another_configuration_is_one_error_naming_variables_and_shapes(small_checkpoint):
    prefix, _ = small_checkpoint
    with pytest.raises(CheckpointMismatchError) as error:
        load_keras_io_checkpoint(prefix, preset="tiny")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert "preset 'tiny' (img_size=32, widths=[16, 32, 64]" in message
    # The first conv: 8 channels in the checkpoint, 16 in the tiny UNet.
    assert "layer_with_weights-1/kernel (checkpoint [3, 3, 3, 8], network [3, 3, 3, 16])" in message
    assert "extra variables: layer_with_weights-" in message and "--preset" in message


@pytest.mark.parametrize(
    "source, unet, error, message",
    [
        ("missing/prefix", None, FileNotFoundError, "No TensorFlow checkpoint at missing/prefix"),
        ("missing.zip", None, FileNotFoundError, "No zip file at missing.zip"),
        ("https://example.com/ckpt.index", None, ValueError, "must name a .zip file"),
        (".", None, ValueError, "exactly one TensorFlow checkpoint"),
        ("x", {"widths": [64, 128, 512, 512]}, ValueError, "widths=\\[64, 128, 512, 512\\]"),
        ("x", {"img_channels": 1}, ValueError, "img_channels=1"),
    ],
)
def test_bad_sources_and_configurations_are_one_line_errors(source, unet, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        load_keras_io_checkpoint(source, unet=unet)


def test_an_unreachable_url_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(convert, "probe_host", lambda url: "example.com: Name or service not known")
    with pytest.raises(CheckpointUnavailableError, match="Could not download https://example.com/c.zip "
                       "\\(example.com: Name or service not known\\)"):
        load_keras_io_checkpoint("https://example.com/c.zip")


def test_keras_file_round_trip_keeps_outputs_and_attention_residual(micro_checkpoint, tmp_path):
    prefix, expected = micro_checkpoint
    path = convert_keras_io_checkpoint(prefix, str(tmp_path / "model.keras"), preset="tiny", unet=MICRO)
    keras.backend.clear_session()
    model = keras.saving.load_model(path)
    for network in (model.network, model.ema_network):
        assert_same_outputs(predict(network, 8), expected)
    blocks = [layer for layer in model.ema_network.layers if isinstance(layer, AttentionBlock)]
    assert len(blocks) == 4 and all(block.residual == "normalized" for block in blocks)


def test_cli_imports_a_tiny_checkpoint_that_sample_reads(tmp_path, capsys):
    prefix, _ = save_reference(str(tmp_path), unet=get_preset("tiny")["unet"])
    out = str(tmp_path / "model.keras")
    assert main(["import-keras-io", prefix, "--out", out, "--preset", "tiny"]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    png = str(tmp_path / "x.png")
    assert main(["sample", "--checkpoint", out, "--out", png, "--num-images", "2", "--sampler", "ddim",
                 "--steps", "2"]) == 0
    assert os.path.getsize(png) > 0


def test_cli_mismatch_is_a_one_line_error(micro_checkpoint, tmp_path, capsys):
    prefix, _ = micro_checkpoint
    assert main(["import-keras-io", prefix, "--out", str(tmp_path / "m.keras"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ddpm-keras: error: The checkpoint") and "--preset" in err
    assert not os.path.exists(tmp_path / "m.keras")
