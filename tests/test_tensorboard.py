"""TensorBoardLogger: the epoch logs as scalars and the sample grids as images, read back from the event files."""

import csv
import glob
import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model
from PIL import Image
from tensorflow.core.util import event_pb2

from ddpm_keras.cli import build_parser
from ddpm_keras.cli import main
from ddpm_keras.cli import train as train_command
from ddpm_keras.training.callbacks import NonFiniteGuard
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.callbacks import SamplePlotter
from ddpm_keras.training.callbacks import TensorBoardLogger


def read_events(log_dir):
    """`{(step, tag): (plugin name, value)}` of every summary under `log_dir/train`, file after file."""
    found = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                found[event.step, value.tag] = (value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
    return found


def decode_image(tensor):
    """The image plugin's tensor `[width, height, png]` as `(width, height, uint8 array)`."""
    width, height, png = tensor
    return int(width), int(height), tf.image.decode_png(png).numpy()


def test_epoch_logs_become_scalars_at_the_one_based_epoch(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.on_epoch_end(0, {"loss": 0.5, "fid": np.float64(12.375), "kid": 1 / 3, "note": "text",
                            "per_class": np.zeros(3), "stopped": True})
    logger.on_epoch_end(2, {"loss": keras.ops.convert_to_tensor(0.125), "kid_std": np.float32(0.0625)})
    logger.on_train_end()
    events = read_events(tmp_path / "tb")
    assert {key: plugin for key, (plugin, _) in events.items()} == {
        (1, "loss"): "scalars", (1, "fid"): "scalars", (1, "kid"): "scalars", (3, "loss"): "scalars",
        (3, "kid_std"): "scalars",
    }
    values = {key: value for key, (_, value) in events.items()}
    assert values == {(1, "loss"): 0.5, (1, "fid"): 12.375, (1, "kid"): np.float32(1 / 3), (3, "loss"): 0.125,
                      (3, "kid_std"): 0.0625}
    assert all(value.dtype == np.float32 and value.shape == () for value in values.values())


def test_log_images_writes_the_grid_as_a_png(tmp_path):
    """Two constant 3x5 images side by side, 2-px white padding, 3x: each pixel known in closed form."""
    images = np.empty((2, 3, 5, 3), np.float32)
    images[0] = [-1.0, 0.0, 1.0]  # -> 0, 128 (127.5 rounded to even), 255
    images[1] = [2.0, -3.0, 0.5]  # clipped -> 255, 0; 0.5 -> 191
    logger = TensorBoardLogger(tmp_path)
    logger.log_images("samples", images, step=7, ncols=2, scale=3)
    (key, (plugin, tensor)), = read_events(tmp_path).items()
    assert key == (7, "samples") and plugin == "images"
    width, height, picture = decode_image(tensor)
    expected = np.full((2 + 3 + 2, 2 + 5 + 2 + 5 + 2, 3), 255, np.uint8)
    expected[2:5, 2:7] = [0, 128, 255]
    expected[2:5, 9:14] = [255, 0, 191]
    expected = expected.repeat(3, axis=0).repeat(3, axis=1)
    assert (width, height) == (3 * 16, 3 * 7)
    np.testing.assert_array_equal(picture, expected)


def test_the_writer_opens_at_the_first_write_and_reopens_after_close(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.on_epoch_end(0, {"note": "no number"})
    logger.on_epoch_end(1, None)
    assert not os.path.exists(tmp_path / "tb")
    logger.on_epoch_end(1, {"loss": 1.5})
    assert read_events(tmp_path / "tb") == {(2, "loss"): ("scalars", 1.5)}  # flushed at once
    logger.on_train_end()
    logger.on_epoch_end(2, {"loss": 0.75})  # a second fit: a second event file
    logger.close()
    assert len(os.listdir(tmp_path / "tb" / "train")) == 2
    assert {key: value for key, (_, value) in read_events(tmp_path / "tb").items()} == {
        (2, "loss"): 1.5, (3, "loss"): 0.75}


def test_bad_arguments_are_refused(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(TypeError, match="Received: log_dir=3"):
        TensorBoardLogger(3)
    with pytest.raises(ValueError, match="Received: step=1.5"):
        logger.log_scalars({"loss": 1.0}, step=1.5)
    with pytest.raises(ValueError, match="Received: {'loss': 'x'}"):
        logger.log_scalars({"loss": "x"}, step=1)
    with pytest.raises(ValueError, match="Received: scale=0"):
        logger.log_images("samples", np.zeros((1, 4, 4, 3)), step=1, scale=0)
    with pytest.raises(TypeError, match="tensorboard must be a TensorBoardLogger"):
        SamplePlotter(tmp_path, tensorboard=str(tmp_path))


def test_sample_plotter_logs_the_grid_it_saves(tmp_path):
    model = tiny_model(timesteps=10)
    logger = TensorBoardLogger(tmp_path / "tensorboard")
    plotter = SamplePlotter(tmp_path, every=2, num_images=4, seed=5, sampling={}, show=False, tensorboard=logger)
    plotter.set_model(model)
    plotter.on_epoch_end(0)  # not a plotting epoch
    plotter.on_epoch_end(1)
    logger.close()
    (key, (plugin, tensor)), = read_events(tmp_path / "tensorboard").items()
    assert key == (2, "samples") and plugin == "images"
    width, height, picture = decode_image(tensor)
    with Image.open(tmp_path / "samples" / "epoch_0002.png") as saved:
        assert (width, height) == saved.size == (4 * (2 * (16 + 2) + 2),) * 2  # 4x for 16-px images
        np.testing.assert_array_equal(picture, np.asarray(saved))


def callbacks_of(argv, run_dir, write_dir=None):
    args = build_parser().parse_args(["train", *argv])
    model = types.SimpleNamespace(image_shape=(16, 16, 3))
    callbacks, plotter, _ = train_command._callbacks(
        args, model, write_dir or run_dir, run_dir, "synthetic", plot_every=1, worker=0, workers=1)
    return callbacks, plotter


def test_train_tensorboard_logs_after_the_quality_monitor_and_gets_the_grids(tmp_path, monkeypatch):
    import ddpm_keras.cli.evaluate

    monitor = keras.callbacks.Callback()  # stands for the QualityMonitor of --fid-every
    monkeypatch.setattr(ddpm_keras.cli.evaluate, "quality_monitor", lambda *args: monitor)
    callbacks, plotter = callbacks_of(["--tensorboard", "--fid-every", "1"], str(tmp_path))
    assert [type(c) for c in callbacks] == [NonFiniteGuard, keras.callbacks.Callback, RunCheckpoint,
                                            TensorBoardLogger, SamplePlotter]
    assert callbacks[1] is monitor and plotter.tensorboard is callbacks[3]
    assert callbacks[3].log_dir == os.path.join(str(tmp_path), "tensorboard")
    # Without the flag, and on a worker that does not write into the run directory: no events.
    for argv, write_dir in [([], None), (["--tensorboard"], str(tmp_path / "worker"))]:
        callbacks, plotter = callbacks_of(argv, str(tmp_path), write_dir)
        assert not any(isinstance(c, TensorBoardLogger) for c in callbacks) and plotter.tensorboard is None


FAST = ["--preset", "tiny", "--dataset", "synthetic", "--steps-per-epoch", "2", "--batch-size", "4"]


@pytest.mark.slow  # two whole commands
def test_train_tensorboard_writes_loss_and_grids_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", *FAST, "--epochs", "1", "--plot-every", "1", "--out", out, "--tensorboard"]) == 0
    assert main(["train", *FAST, "--epochs", "2", "--plot-every", "1", "--out", out, "--resume", "--tensorboard"]) == 0
    events = read_events(os.path.join(out, "tensorboard"))
    assert sorted(events) == [(1, "loss"), (1, "samples"), (2, "loss"), (2, "samples")]
    with open(os.path.join(out, "log.csv"), newline="") as f:
        losses = {int(row["epoch"]): float(row["loss"]) for row in csv.DictReader(f)}
    for epoch in (1, 2):
        assert events[epoch, "loss"][1] == np.float32(losses[epoch])
        with Image.open(os.path.join(out, "samples", f"epoch_{epoch:04d}.png")) as saved:
            np.testing.assert_array_equal(decode_image(events[epoch, "samples"][1])[2], np.asarray(saved))
    with open(os.path.join(out, "run.json")) as f:
        assert [launch["tensorboard"] for launch in json.load(f)["launches"]] == [True, True]
