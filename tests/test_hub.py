"""Presets in keras-hub's layout: save_to_preset and from_preset round trips, and every way a handle fails."""

import builtins
import hashlib
import json
import os

import numpy as np
import pytest

from ddpm_keras import DiffusionModel
from ddpm_keras import hub
from ddpm_keras.utils.files import OutputExistsError

SAMPLING = dict(sampler="ddim", num_steps=3, verbose=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny conditional model whose EMA differs from its network, written as a preset."""
    model = DiffusionModel.from_preset("tiny_cond", img_size=8, widths=[8, 16], has_attention=[False, True],
                                       first_conv_channels=8, seed=0, learning_rate=3e-4)
    rng = np.random.default_rng(0)
    for weight in model.network.weights:  # as if trained: the raw weights moved away from the EMA's
        weight.assign(np.asarray(weight) + rng.normal(0, 0.05, weight.shape).astype("float32"))
    folder = str(tmp_path_factory.mktemp("preset") / "tiny_cond8")
    model.save_to_preset(folder, description="a test", trained_on="noise", training={"learning_rate": 3e-4},
                         sampling={"guidance_scale": 3.0})
    return model, folder


def test_a_preset_folder_loads_back_with_the_ema_network_and_gives_the_same_images(trained):
    model, folder = trained
    assert sorted(os.listdir(folder)) == sorted(hub.PRESET_FILES)
    loaded = DiffusionModel.from_preset(folder)
    for mine, theirs in zip(model.ema_network.weights, loaded.network.weights):  # fine-tuning starts from the EMA
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(model.network.weights, loaded.network.weights)) > 0.01
    np.testing.assert_array_equal(model.generate_images(4, seed=1, labels=[0, 1, 2, 3], guidance_scale=3.0, **SAMPLING),
                                  loaded.generate_images(4, seed=1, labels=[0, 1, 2, 3], guidance_scale=3.0, **SAMPLING))
    assert loaded.class_names == model.class_names and loaded.prediction_type == "v"
    assert loaded.default_sampling is None  # its metadata names no sampler
    assert float(np.asarray(loaded.optimizer.learning_rate)) == pytest.approx(3e-4)
    metadata = hub.read_metadata(folder)
    assert metadata["sampling"] == {"guidance_scale": 3.0} and metadata["parameter_count"] == model.network.count_params()
    assert metadata["img_size"] == [8, 8] and metadata["num_classes"] == 4


def test_a_shipped_preset_samples_as_its_metadata_says_with_no_arguments():
    model = DiffusionModel.from_preset("synthetic_flowers32_cond", compile=False)
    sampling = hub.read_metadata("synthetic_flowers32_cond")["sampling"]
    # DDPM respaced to 50 steps, not the 1,000-call chain of a model without default_sampling.
    assert sampling["sampler"] == "ddpm" and sampling["num_steps"] == 50
    assert model.default_sampling == {k: v for k, v in sampling.items() if k != "guidance_scale"}
    assert DiffusionModel.from_preset("synthetic_flowers32_cond", compile=False, default_sampling=None).default_sampling is None


def test_options_may_change_but_not_the_network(trained):
    _, folder = trained
    assert DiffusionModel.from_preset(folder, ema=0.9, compile=False).ema == 0.9
    with pytest.raises(ValueError, match="fixes its network and diffusion.*Received: widths="):
        DiffusionModel.from_preset(folder, widths=[4, 8])


def test_save_to_preset_replaces_its_own_preset_and_refuses_other_folders(trained, tmp_path):
    model, folder = trained
    model.save_to_preset(folder)  # its own: replaced
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text("{}")  # a name a preset also uses
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in tmp_path.iterdir()}
    with pytest.raises(OutputExistsError, match="left alone"):
        model.save_to_preset(tmp_path)
    assert {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in tmp_path.iterdir()} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        model.save_to_preset(tmp_path / "file")


@pytest.mark.parametrize("broken", ["config.json", "metadata.json", "model.weights.h5"])
def test_a_corrupt_file_is_an_error_naming_it(trained, tmp_path, broken):
    _, folder = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in hub.PRESET_FILES:
        (copy / name).write_bytes((open(os.path.join(folder, name), "rb")).read())
    (copy / broken).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=f"{copy / broken}"):
        DiffusionModel.from_preset(str(copy))
    (copy / broken).unlink()
    with pytest.raises(FileNotFoundError, match=f"has no {broken}"):
        DiffusionModel.from_preset(str(copy))


def test_a_config_of_another_kind_is_named(trained, tmp_path):
    _, folder = trained
    for name in hub.PRESET_FILES:
        (tmp_path / name).write_bytes(open(os.path.join(folder, name), "rb").read())
    (tmp_path / "config.json").write_text(json.dumps({"class_name": "Dense", "config": {"units": 3}}))
    with pytest.raises(ValueError, match="config.json is not a DiffusionModel's"):
        DiffusionModel.from_preset(str(tmp_path))


def test_unknown_names_and_missing_folders_are_one_line_errors():
    with pytest.raises(ValueError, match="Unknown preset: 'no_such'. Pretrained: .*synthetic_flowers32.*tiny"):
        DiffusionModel.from_preset("no_such")
    with pytest.raises(FileNotFoundError, match="No preset folder at /nowhere/preset"):
        DiffusionModel.from_preset("/nowhere/preset")


def test_hub_handles_need_their_client_library(monkeypatch):
    real_import = builtins.__import__

    def without_hubs(name, *args, **kwargs):
        if name in ("huggingface_hub", "kagglehub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_hubs)
    with pytest.raises(hub.PresetUnavailableError, match=r"hf://owner/name needs the huggingface_hub package: pip"):
        DiffusionModel.from_preset("hf://owner/name")
    with pytest.raises(hub.PresetUnavailableError, match=r"kaggle://o/m/keras/v needs the kagglehub package"):
        DiffusionModel.from_preset("kaggle://o/m/keras/v")


def test_an_offline_hub_handle_names_the_handle_and_the_cache(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.PresetUnavailableError, match=f"hf://owner/name .*not in the cache {tmp_path}"):
        DiffusionModel.from_preset("hf://owner/name")


def test_the_keras_io_preset_offline_names_itself_and_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("ddpm_keras.convert.probe_host", lambda url: "github.com: offline")
    assert "keras_io_flowers64" in DiffusionModel.presets
    with pytest.raises(hub.PresetUnavailableError, match="keras_io_flowers64 is not in the cache .*offline"):
        DiffusionModel.from_preset("keras_io_flowers64")
    assert not os.path.exists(tmp_path / "ddpm_keras" / "presets" / "keras_io_flowers64" / "config.json")


def test_the_keras_io_preset_is_converted_once_then_read_from_the_cache(trained, monkeypatch, tmp_path):
    model, folder = trained
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    made = []

    def build():  # stands in for the download and conversion (tests/test_convert.py checks those)
        made.append(1)
        return model

    metadata, _ = hub._CONVERTED["keras_io_flowers64"]
    monkeypatch.setitem(hub._CONVERTED, "keras_io_flowers64", (metadata, build))
    first = DiffusionModel.from_preset("keras_io_flowers64", compile=False)
    second = DiffusionModel.from_preset("keras_io_flowers64", compile=False)
    assert made == [1]
    assert hub.read_metadata("keras_io_flowers64")["trained_on"].startswith("oxford_flowers102")
    for mine, theirs in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
