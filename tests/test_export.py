"""The exported generator: a SavedModel that TensorFlow alone loads and that gives `generate_images`'s images."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_model

from ddpm_keras.cli import main
from ddpm_keras.inference.export import METADATA_FILE
from ddpm_keras.visualize import to_uint8

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a SavedModel needs TensorFlow")

# Loads SavedModels in an interpreter where importing Keras (or ddpm_keras) fails: TensorFlow itself
# only asks where the top-level `keras` package is, and the test checks it was never imported.
LOAD_WITHOUT_KERAS = """
import importlib.abc, json, sys
import numpy as np

class NoKeras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("keras", "tf_keras", "ddpm_keras") and name != "keras":
            raise ImportError("importing " + name + " is blocked in this test")

sys.meta_path.insert(0, NoKeras())
sys.modules.pop("keras", None)
import tensorflow as tf

DTYPES = {"seed": tf.int64, "num_images": tf.int32, "labels": tf.int32, "guidance_scale": tf.float32}
results = {}
for name, (path, inputs) in json.loads(sys.argv[1]).items():
    serve = tf.saved_model.load(path).signatures["serving_default"]
    images = serve(**{key: tf.constant(value, DTYPES[key]) for key, value in inputs.items()})["images"]
    np.save(path + "-" + name + ".npy", images.numpy())
try:
    serve(**{key: tf.constant(-1 if key == "seed" else value, DTYPES[key]) for key, value in inputs.items()})
    results["negative_seed"] = "accepted"
except tf.errors.InvalidArgumentError as error:
    results["negative_seed"] = error.message
results["keras_imported"] = sorted(m for m in sys.modules if m == "keras" or m.startswith(("keras.", "ddpm_keras")))
print("JSON:" + json.dumps(results))
"""


def _trained_like(model):
    """Shifts the EMA weights away from their near-zero initial values so that the network's output matters."""
    rng = np.random.default_rng(0)
    for weight in model.ema_network.weights:
        weight.assign(weight.numpy() + rng.normal(0.0, 0.05, weight.shape).astype("float32"))
    return model


def _load_without_keras(runs):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_KERAS, json.dumps(runs)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("JSON:")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][5:])


def test_the_exported_generator_gives_generate_images_images_without_keras(tmp_path):
    model = _trained_like(tiny_model(timesteps=50))
    stochastic = model.export_generator(str(tmp_path / "sde"), sampler="dpmpp_2m_sde", num_steps=8,
                                       timestep_spacing="karras")
    reduced = model.export_generator(
        str(tmp_path / "ddim-bf16"), sampler="ddim", num_steps=6, timestep_spacing="trailing", dtype="bfloat16"
    )
    results = _load_without_keras({
        "a": [stochastic, {"seed": 5, "num_images": 3}],
        "b": [stochastic, {"seed": 7, "num_images": 2}],
        "c": [reduced, {"seed": 5, "num_images": 3}],
    })

    assert results["keras_imported"] == []
    assert "seed must be in [0, 2**31)" in results["negative_seed"]
    expected = {
        "a": model.generate_images(3, seed=5, sampler="dpmpp_2m_sde", num_steps=8, timestep_spacing="karras", verbose=0),
        "b": model.generate_images(2, seed=7, sampler="dpmpp_2m_sde", num_steps=8, timestep_spacing="karras", verbose=0),
        "c": model.generate_images(3, seed=5, sampler="ddim", num_steps=6, dtype="bfloat16", verbose=0),
    }
    for name, path in (("a", stochastic), ("b", stochastic), ("c", reduced)):
        served = np.load(f"{path}-{name}.npy")
        assert served.dtype == np.uint8 and served.shape == expected[name].shape
        np.testing.assert_array_equal(served, to_uint8(expected[name]), err_msg=name)
    served_a = np.load(f"{stochastic}-a.npy")
    assert served_a.std() > 10  # Images, not a constant.
    assert not np.array_equal(served_a[:2], np.load(f"{stochastic}-b.npy"))  # Another seed, other images.

    metadata = json.loads((tmp_path / "sde" / METADATA_FILE).read_text())
    assert metadata["image_shape"] == [16, 16, 3]
    assert metadata["sampler_options"]["sampler"] == "dpmpp_2m_sde"
    assert metadata["sampler_options"]["num_steps"] == 8


def test_a_conditional_generator_takes_labels_and_guidance(tmp_path):
    from gaussian_exact import make_class_model

    model = make_class_model(clip=1.0)  # The data range [-1, 1], which the uint8 images span.
    path = model.export_generator(str(tmp_path / "cond"), sampler="dpmpp_2m_sde", num_steps=6,
                                 timestep_spacing="karras", guidance_rescale=0.3)
    labels = [0, 2, 1, 3]  # 3 is the null label: an unconditional image.
    results = _load_without_keras({
        "plain": [path, {"seed": 4, "num_images": 4, "labels": labels, "guidance_scale": 1.0}],
        "guided": [path, {"seed": 4, "num_images": 4, "labels": labels, "guidance_scale": 2.5}],
    })
    assert results["keras_imported"] == []
    options = {"seed": 4, "sampler": "dpmpp_2m_sde", "num_steps": 6, "timestep_spacing": "karras", "verbose": 0}
    for name, scale in (("plain", 1.0), ("guided", 2.5)):
        # generate_images takes classes only; the unconditional image is compared on its own.
        expected = model.generate_images(labels=labels[:3] + [0], guidance_scale=scale, guidance_rescale=0.3, **options)
        served = np.load(f"{path}-{name}.npy")
        np.testing.assert_array_equal(served[:3], to_uint8(expected[:3]), err_msg=name)
    metadata = json.loads((tmp_path / "cond" / METADATA_FILE).read_text())
    assert metadata["class_names"] == list(model.class_names) and metadata["guidance_rescale"] == 0.3


def test_export_command_writes_a_servable_generator(tmp_path, capsys):
    # What it may replace and what it refuses: tests/test_faults.py.
    import tensorflow as tf

    model = _trained_like(tiny_model(timesteps=20))
    checkpoint = str(tmp_path / "model.keras")
    model.save(checkpoint)
    out = tmp_path / "generator"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--sampler", "ddim", "--steps", "4"]) == 0
    assert "Wrote the generator (ddim, 4 steps)" in capsys.readouterr().out
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        seed=tf.constant(3, tf.int64), num_images=tf.constant(2, tf.int32)
    )["images"].numpy()
    expected = model.generate_images(2, seed=3, sampler="ddim", num_steps=4, verbose=0)
    np.testing.assert_array_equal(served, to_uint8(expected))


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    model = tiny_model(timesteps=20)
    checkpoint = str(tmp_path / "model.keras")
    model.save(checkpoint)
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert main(["export", "--checkpoint", checkpoint, "--out", str(a_file)]) == 2
    assert "is a file: name a new folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dtype must be one of .* Received: dtype='int8'"):
        model.export_generator(str(tmp_path / "g"), dtype="int8")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="needs KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND='jax'"):
        model.export_generator(str(tmp_path / "g"))
    assert not (tmp_path / "g").exists()
