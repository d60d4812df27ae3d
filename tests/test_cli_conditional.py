"""The command line's class-conditional path: train on labels, sample by class, guidance sweeps, errors."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_model
from PIL import Image

from ddpm_keras.cli import main
from ddpm_keras.data import SYNTHETIC_CLASS_NAMES

FAST = ["--steps-per-epoch", "2", "--batch-size", "4", "--epochs", "1", "--img-size", "8"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "tiny_cond")
    assert main(["train", "--preset", "tiny_cond", *FAST, "--plot-every", "1", "--out", out]) == 0
    return out


def grid_rows(path, img_size=8, scale=4, padding=2):
    height = Image.open(path).size[1] // scale
    return (height - padding) // (img_size + padding)


def test_a_conditional_preset_trains_on_the_synthetic_classes(cond_run):
    run = json.load(open(os.path.join(cond_run, "run.json")))
    assert run["model"]["num_classes"] == 4 and run["model"]["cond_drop_prob"] == 0.1
    model = keras.saving.load_model(os.path.join(cond_run, "model.keras"))
    assert model.num_classes == 4 and list(model.class_names) == list(SYNTHETIC_CLASS_NAMES)
    # SamplePlotter: one row per class.
    assert grid_rows(os.path.join(cond_run, "samples", "epoch_0001.png")) == 4


@pytest.mark.slow
def test_class_conditional_sizes_the_network_from_a_folder_of_classes(tmp_path):
    for name, colour in (("daisy", (250, 250, 250)), ("rose", (200, 20, 40))):
        os.makedirs(tmp_path / "flowers" / name)
        for i in range(4):
            Image.new("RGB", (12, 12), colour).save(tmp_path / "flowers" / name / f"{i}.png")
    out = str(tmp_path / "run")
    argv = ["train", "--preset", "tiny", "--dataset", str(tmp_path / "flowers"), "--class-conditional",
            "--cond-drop-prob", "0.3", *FAST, "--plot-every", "0", "--out", out]
    assert main(argv) == 0
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.num_classes == 2 and list(model.class_names) == ["daisy", "rose"] and model.cond_drop_prob == 0.3


def test_sample_by_class_name_by_label_and_as_a_guidance_sweep(cond_run, tmp_path, capsys):
    by_name = str(tmp_path / "by_name.png")
    argv = ["sample", "--checkpoint", cond_run, "--steps", "4", "--out", by_name]
    assert main([*argv, "--class", "red-5-petals", "--class", "blue-6-petals", "--num-images", "6",
                 "--guidance-scale", "2"]) == 0
    assert grid_rows(by_name) == 2  # One row per class, 3 images each.
    assert main([*argv, "--labels", "0,3,purple-4-petals", "--guidance-rescale", "0.5"]) == 0
    assert "Wrote 3 samples" in capsys.readouterr().out
    sweep = str(tmp_path / "sweep.png")
    argv[-1] = sweep
    assert main([*argv, "--labels", "1", "--num-images", "3", "--guidance-sweep", "1,2.5,6"]) == 0
    assert grid_rows(sweep) == 3  # One row per scale.
    assert "guidance scales 1, 2.5, 6 (top to bottom)" in capsys.readouterr().out
    grid = np.asarray(Image.open(sweep), np.float32)

    def row(r):  # 8-px images, 2-px padding, drawn 4x.
        return grid[4 * (2 + 10 * r) : 4 * (10 + 10 * r)]

    assert np.abs(row(0) - row(2)).max() > 0  # The same noise, another guidance scale.


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class", "daisy"], "Unknown class name 'daisy'. Known: 'red-5-petals'"),
        (["--labels", "0,9"], r"Each label must be a class in [0, 4) or a class name. Received: 9"),
        (["--labels", "0,1", "--num-images", "3"], "labels must be one class or one per image (3). Received: 2"),
        (["--guidance-scale", "3"], "Guidance needs labels to guide towards"),
        (["--labels", "0", "--class", "red-5-petals"], "Pass --labels or --class, not both."),
        (["--labels", "0", "--guidance-sweep", "1,x"], "--guidance-sweep must be numbers separated by commas"),
    ],
)
def test_sample_errors_are_one_line(cond_run, tmp_path, capsys, extra, message):
    assert main(["sample", "--checkpoint", cond_run, "--steps", "2", "--out", str(tmp_path / "x.png"), *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_labels_for_an_unconditional_model_and_cond_drop_prob_alone_are_errors(tmp_path, capsys):
    path = str(tmp_path / "plain.keras")
    tiny_model(timesteps=10).save(path)
    assert main(["sample", "--checkpoint", path, "--labels", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "This model is unconditional" in capsys.readouterr().err
    argv = ["train", "--preset", "tiny", "--dataset", "synthetic", "--cond-drop-prob", "0.2", *FAST,
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "--cond-drop-prob applies to class-conditional runs" in capsys.readouterr().err
