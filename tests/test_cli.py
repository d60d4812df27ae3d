"""The command line end to end on the `tiny` preset and synthetic data, a few steps at a time."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from ddpm_keras.cli import main

FAST = ["--preset", "tiny", "--dataset", "synthetic", "--steps-per-epoch", "2", "--batch-size", "4"]


def log_epochs(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def extractors(tmp_path_factory):
    """Small `.keras` models for the metrics: a feature extractor and a classifier of 32-px images."""
    folder = tmp_path_factory.mktemp("extractors")
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2, activation="tanh")(inputs))
    keras.Model(inputs, features, name="small_features").save(folder / "features.keras")
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(features)).save(folder / "classifier.keras")
    return {"features": str(folder / "features.keras"), "classifier": str(folder / "classifier.keras"),
            "cache": str(folder / "cache")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, extractors):
    """A run trained for one epoch, then resumed for a second that measures FID and KID."""
    out = str(tmp_path_factory.mktemp("run"))
    assert main(["train", *FAST, "--epochs", "1", "--plot-every", "1", "--out", out]) == 0
    quality = ["--fid-every", "1", "--fid-samples", "4", "--feature-extractor", extractors["features"],
               "--cache-dir", extractors["cache"]]
    assert main(["train", *FAST, "--epochs", "2", "--plot-every", "1", "--out", out, "--resume", *quality]) == 0
    return out


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A run of one epoch without grids: for the slow tests, which need a checkpoint and not `run_dir`'s epochs."""
    out = str(tmp_path_factory.mktemp("one_epoch"))
    assert main(["train", *FAST, "--epochs", "1", "--plot-every", "0", "--out", out]) == 0
    return out


def test_train_writes_model_log_and_sample_grids(run_dir):
    assert sorted(os.listdir(os.path.join(run_dir, "samples"))) == ["epoch_0001.png", "epoch_0002.png"]
    with Image.open(os.path.join(run_dir, "samples", "epoch_0002.png")) as picture:
        assert picture.size == (4 * (4 * (32 + 2) + 2),) * 2  # 16 samples of 32 px, 4x
    with open(os.path.join(run_dir, "run.json")) as f:
        run = json.load(f)
    # The preset's objective (flags not given), as the model trained it.
    assert run["prediction_type"] is None and run["model"]["prediction_type"] == "epsilon"
    assert run["model"]["loss_weighting"] is None and run["model"]["ema_warmup"] is False


V_FLAGS = ["--prediction-type", "v", "--loss-weighting", "min_snr", "--snr-gamma", "3", "--beta-schedule", "sigmoid",
           "--zero-terminal-snr", "--ema-warmup"]


@pytest.mark.slow
def test_objective_flags_override_the_preset_and_a_resumed_run_keeps_them(tmp_path, capsys):
    out = str(tmp_path / "v-run")
    assert main(["train", *FAST, "--epochs", "1", "--plot-every", "0", "--out", out, *V_FLAGS]) == 0
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert (model.prediction_type, model.loss_weighting, model.snr_gamma, model.ema_warmup) == ("v", "min_snr", 3.0, True)
    assert model.diffusion.beta_schedule == "sigmoid" and model.diffusion.zero_terminal_snr
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    assert (run["prediction_type"], run["loss_weighting"], run["snr_gamma"]) == ("v", "min_snr", 3.0)
    assert run["zero_terminal_snr"] is True and run["ema_warmup"] is True and run["beta_schedule"] == "sigmoid"
    assert run["preset_config"]["training"]["loss_weighting"] == "min_snr"
    assert run["model"]["diffusion"]["rescale_zero_terminal_snr"] is True and run["model"]["snr_gamma"] == 3.0
    # A resumed run takes its options from the saved model; one given that differs is a one-line error.
    capsys.readouterr()
    resume = ["train", *FAST, "--epochs", "2", "--plot-every", "0", "--out", out, "--resume"]
    assert main([*resume, "--prediction-type", "x0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prediction-type x0 differs from the resumed model's 'v'" in err and len(err.splitlines()) == 1
    assert main([*resume, "--no-ema-warmup"]) == 2
    assert "--no-ema-warmup differs" in capsys.readouterr().err
    assert main([*resume, "--prediction-type", "v"]) == 0
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert int(model.epoch) == 2 and model.prediction_type == "v" and model.diffusion.zero_terminal_snr
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["model"]["loss_weighting"] == "min_snr"


def test_train_fid_every_logs_fid_and_kid(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["fid"] == "" and float(rows[1]["fid"]) >= 0 and rows[1]["kid"] != ""
    assert os.path.exists(os.path.join(run_dir, "quality.png"))


def test_evaluate_prints_a_table_and_writes_json(run_dir, extractors, tmp_path, capsys):
    out = str(tmp_path / "metrics.json")
    argv = ["evaluate", "--checkpoint", run_dir, "--num-samples", "8", "--sampler", "ddim", "--steps", "3",
            "--metrics", "fid,kid,is,bpd", "--feature-extractor", extractors["features"],
            "--classifier", extractors["classifier"], "--is-splits", "2", "--kid-subset-size", "4",
            "--bpd-images", "4", "--bpd-steps", "3", "--cache-dir", extractors["cache"], "--out", out]
    assert main(argv) == 0
    with open(out) as f:
        report = json.load(f)
    results = report["metrics"]
    assert set(results) == {"fid", "kid", "kid_std", "is", "is_std", "bpd"}
    assert report["dataset"] == "synthetic" and report["num_samples"] == 8  # the dataset from run.json
    assert results["fid"] > 0 and 1.0 <= results["is"] <= 5.0 and 0 < results["bpd"] < 100
    assert report["sampling"] == {"sampler": "ddim", "num_steps": 3, "eta": 0.0, "timestep_spacing": "trailing",
                                  "corrector_steps": 1, "snr": 0.16, "s_churn": 0.0, "s_tmin": 0.0,
                                  "s_noise": 1.0}
    printed = capsys.readouterr().out
    assert "FID" in printed and "bits/dim" in printed and f"{results['fid']:.5g}" in printed
    # The training run's reference statistics were reused from the cache: one file.
    assert len(os.listdir(extractors["cache"])) == 1


@pytest.mark.slow  # a whole command, ~35 s; the ODE likelihood itself: tests/test_likelihood_ode.py
def test_evaluate_bpd_ode_reports_the_likelihood_and_its_evaluations(one_epoch_run, tmp_path, capsys):
    out = str(tmp_path / "ode.json")
    argv = ["evaluate", "--checkpoint", one_epoch_run, "--metrics", "bpd-ode", "--bpd-images", "2",
            "--batch-size", "2", "--ode-solver", "rk4", "--ode-steps", "2", "--out", out]
    assert main(argv) == 0
    with open(out) as f:
        report = json.load(f)
    assert set(report["metrics"]) == {"bpd-ode", "bpd-ode_nfe"} and report["metrics"]["bpd-ode_nfe"] == 8
    assert 0 < report["metrics"]["bpd-ode"] < 100 and report["bpd_images"] == 2
    assert report["bpd_ode"] == {"solver": "rk4", "num_steps": 2, "num_probes": 1}
    assert "bits/dim (ODE)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-samples", "1"], "--num-samples 1 is too few for fid: it needs at least 2."),
        (["--metrics", "bpd-ode", "--ode-tolerance", "0"], "--ode-tolerance must be > 0. Received: 0.0"),
        (["--metrics", "is", "--num-samples", "5"], "--num-samples 5 is too few for is: it needs at least 10"),
        (["--out", "metrics.txt"], "--out must name a .json file"),
    ],
)
def test_evaluate_bad_values_are_one_line_errors(run_dir, extra, message, capsys):
    assert main(["evaluate", "--checkpoint", run_dir, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_rejects_an_unknown_metric(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", "x", "--metrics", "fid,sharpness"])
    assert exit_info.value.code == 2
    assert "unknown metric sharpness: choose from fid,kid,is,bpd,bpd-ode" in capsys.readouterr().err


def test_evaluate_needs_a_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "No checkpoint at" in capsys.readouterr().err


def test_evaluate_strategy_mirrored_on_one_device_matches_none(run_dir, extractors, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", run_dir, "--strategy", "bogus"])
    assert exit_info.value.code == 2
    assert "--strategy: invalid choice: 'bogus'" in capsys.readouterr().err
    reports = {}
    for strategy in ("none", "mirrored"):
        out = str(tmp_path / f"{strategy}.json")
        argv = ["evaluate", "--checkpoint", run_dir, "--num-samples", "12", "--batch-size", "16", "--sampler", "ddim",
                "--steps", "2", "--metrics", "fid,kid", "--feature-extractor", extractors["features"],
                "--kid-subset-size", "2", "--cache-dir", extractors["cache"], "--strategy", strategy, "--out", out]
        assert main(argv) == 0
        with open(out) as f:
            reports[strategy] = json.load(f)
        printed = capsys.readouterr().out
        # One chunk of --batch-size: nothing to deal to the replicas, said in one line.
        assert ("--batch-size decides the chunks" in printed) == (strategy == "mirrored")
    assert reports["mirrored"]["metrics"] == reports["none"]["metrics"]


def test_resume_continues_the_epoch_count_with_optimizer_state(run_dir):
    assert log_epochs(run_dir) == [1, 2]
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert int(model.epoch) == 2
    assert int(model.optimizer.iterations) == 4  # 2 epochs x 2 steps: the Adam state carried over


def test_sample_writes_a_png_grid(run_dir, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    assert main(["sample", "--checkpoint", run_dir, "--num-images", "2", "--seed", "1", "--out", out]) == 0
    with Image.open(out) as picture:
        assert picture.size == (4 * (2 * (32 + 2) + 2), 4 * (32 + 2 + 2))
    assert "Wrote 2 samples (ddpm)" in capsys.readouterr().out  # presets.DEFAULT_SAMPLING


def test_sample_with_ddim_writes_the_trajectory_gif(run_dir, tmp_path):
    out, gif = str(tmp_path / "ddim.png"), str(tmp_path / "ddim.gif")
    argv = ["sample", "--checkpoint", run_dir, "--num-images", "2", "--sampler", "ddim", "--steps", "10", "--out", out]
    assert main([*argv, "--gif", gif]) == 0
    with Image.open(gif) as picture:
        frames = picture.n_frames
    with Image.open(out) as grid:
        first = np.asarray(grid)
    assert frames >= 2
    # DDIM with eta = 0 is deterministic: the same seed draws the same grid.
    assert main(argv) == 0
    with Image.open(out) as grid:
        np.testing.assert_array_equal(np.asarray(grid), first)


def write_image(path, pixels):
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def test_inpaint_keeps_the_known_pixels(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    image = write_image(tmp_path / "image.png", rng.integers(0, 256, (32, 32, 3)))
    mask = np.full((32, 32), 255)
    mask[8:24, 8:24] = 0
    mask_path = write_image(tmp_path / "mask.png", mask)
    out = str(tmp_path / "inpainted.png")
    argv = ["inpaint", "--checkpoint", run_dir, "--image", image, "--mask", mask_path,
            "--num-images", "2", "--sampler", "ddim", "--steps", "5", "--out", out]
    assert main(argv) == 0
    with Image.open(out) as picture:
        grid = np.asarray(picture)[::4, ::4]  # undo the 4x display scale
    original, filled = grid[2:34, 2:34], grid[2 + 2 * 34 : 2 + 2 * 34 + 32, 2:34]
    known = mask > 0
    np.testing.assert_array_equal(filled[known], original[known])
    assert np.abs(filled[~known].astype(int) - original[~known]).mean() > 1


def test_interpolate_between_two_images(run_dir, tmp_path):
    rng = np.random.default_rng(1)
    a = write_image(tmp_path / "a.png", rng.integers(0, 256, (40, 48, 3)))
    b = write_image(tmp_path / "b.png", rng.integers(0, 256, (32, 32, 3)))
    out = str(tmp_path / "path.png")
    assert main(["interpolate", "--checkpoint", run_dir, "--images", a, b, "--num-images", "3",
                 "--steps", "5", "--out", out]) == 0
    with Image.open(out) as picture:
        assert picture.size == (4 * (5 * 34 + 2), 4 * 36)  # the two inputs and 3 decodes


@pytest.mark.slow
def test_kill_9_mid_training_keeps_the_last_finished_epoch(tmp_path):
    out = str(tmp_path / "killed")
    command = [sys.executable, "-m", "ddpm_keras", "train", *FAST, "--epochs", "100", "--plot-every", "0", "--out", out]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (
            os.path.exists(os.path.join(out, "log.csv")) and len(log_epochs(out)) >= 2
        ):
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    completed = int(model.epoch)
    assert completed >= 2
    assert main(["train", *FAST, "--epochs", str(completed + 1), "--plot-every", "0", "--out", out, "--resume"]) == 0
    assert log_epochs(out) == list(range(1, completed + 2))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--checkpoint", "missing_dir", "--out", "x.png"], "No checkpoint at missing_dir"),
        (["train", *FAST, "--img-size", "30"], "img_size=30"),
        (["train", *FAST, "--resume"], "No checkpoint at"),
        (["train", "--preset", "tiny", "--dataset", "no/such/folder"], "no/such/folder"),
        (["sample", "--checkpoint", "missing_dir", "--out", "x.jpg"], "--out must name a .png file"),
        (["train", *FAST, "--zero-terminal-snr"], "Use prediction_type='v'"),
    ],
)
def test_bad_values_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("ddpm-keras: error:")


def test_an_existing_run_needs_resume(run_dir, capsys):
    assert main(["train", *FAST, "--out", run_dir]) == 2
    assert "--resume" in capsys.readouterr().err


def test_argument_errors_name_the_value(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "-1"])
    assert exit_info.value.code == 2
    assert "--epochs: expected a positive integer, got -1" in capsys.readouterr().err
    for argv, message in [
        (["--snr-gamma", "0"], "--snr-gamma: expected a finite number > 0, got 0"),
        (["--loss-weighting", "snr"], "--loss-weighting: invalid choice: 'snr'"),
        (["--prediction-type", "noise"], "--prediction-type: invalid choice: 'noise'"),
    ]:
        with pytest.raises(SystemExit):
            main(["train", *argv])
        assert message in capsys.readouterr().err


def test_help_explains_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ["--preset", "--dataset", "--split", "--epochs", "--steps-per-epoch", "--batch-size",
                   "--out", "--resume", "--plot-every", "--seed", "--prediction-type", "--loss-weighting",
                   "--snr-gamma", "--beta-schedule", "--zero-terminal-snr", "--ema-warmup"]:
        assert option in text
    assert "Default: flowers64" in text and "Default: 0" in text


@pytest.mark.slow  # a whole command, ~35 s; guidance itself: tests/test_classifier_guidance.py
def test_train_classifier_then_sample_with_classifier_guidance(one_epoch_run, tmp_path, capsys):
    clf = str(tmp_path / "clf.keras")
    argv = ["train-classifier", "--checkpoint", one_epoch_run, "--dataset", "synthetic", "--steps-per-epoch", "2",
            "--batch-size", "4", "--epochs", "1", "--out", clf]
    assert main(argv) == 0
    assert "Accuracy on a batch of training images by timestep: t=0:" in capsys.readouterr().out
    classifier = keras.saving.load_model(clf)
    assert classifier.class_names[0] == "red-5-petals" and classifier.diffusion.num_timesteps == 1000
    out = str(tmp_path / "guided.png")
    sample = ["sample", "--checkpoint", one_epoch_run, "--classifier", clf, "--class", "red-5-petals",
              "--num-images", "2", "--sampler", "ddim", "--steps", "3", "--out", out]
    assert main([*sample, "--guidance-sweep", "0,4"]) == 0
    assert "the same noise under classifier guidance scales 0, 4" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size == (4 * (2 * (32 + 2) + 2), 4 * (2 * (32 + 2) + 2))  # 2 rows of 2
    # The file is not a classifier: one line.
    assert main([*sample[:4], os.path.join(one_epoch_run, "model.keras"), *sample[5:], "--overwrite"]) == 2
    assert "holds a DiffusionModel, not a NoisyClassifier" in capsys.readouterr().err
