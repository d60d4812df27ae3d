import csv

import keras
import numpy as np
import pytest
from conftest import tiny_images
from conftest import tiny_model
from PIL import Image

from ddpm_keras.metrics import reference_statistics
from ddpm_keras.metrics import sample_distances
from ddpm_keras.training.callbacks import QualityMonitor
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.callbacks import SamplePlotter
from ddpm_keras.training.callbacks import resume_log
from ddpm_keras.visualize import image_grid


def read_log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_checkpoint_log_and_sample_grids_each_epoch(tmp_path):
    model = tiny_model(timesteps=10)
    plotter = SamplePlotter(tmp_path, every=2, num_images=4, seed=3, sampling={}, show=False)
    model.fit(tiny_images(16), batch_size=8, epochs=3, verbose=0,
              callbacks=[RunCheckpoint(tmp_path), plotter])
    rows = read_log(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert int(loaded.epoch) == 3 and int(loaded.optimizer.iterations) == 6
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_0002.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    # A 2x2 grid of 16-px images with 2-px padding, upscaled 4x for small images.
    with Image.open(tmp_path / "samples" / "epoch_0002.png") as picture:
        assert picture.size == (4 * (2 * (16 + 2) + 2),) * 2


def test_sample_grid_shows_the_seeded_samples(tmp_path):
    model = tiny_model(timesteps=10)
    plotter = SamplePlotter(tmp_path, num_images=4, seed=5, sampling={}, scale=1, show=False)
    plotter.set_model(model)
    plotter.on_epoch_end(0)
    with Image.open(plotter.last_path) as picture:
        np.testing.assert_array_equal(np.asarray(picture), image_grid(model.generate_images(4, seed=5)))


def test_resume_log_drops_epochs_the_checkpoint_lacks(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,loss,seconds\n1,0.9,1.0\n2,0.8,1.0\n3,0.7,1.0\n")
    resume_log(tmp_path, 2)
    assert [r["epoch"] for r in read_log(tmp_path)] == ["1", "2"]


def test_log_gains_columns_that_appear_later(tmp_path):
    model = tiny_model(timesteps=10)
    checkpoint = RunCheckpoint(tmp_path)
    checkpoint.set_model(model)
    for epoch, logs in enumerate([{"loss": 0.5}, {"loss": 0.4, "val_loss": 0.45}]):
        checkpoint.on_epoch_begin(epoch)
        checkpoint.on_epoch_end(epoch, logs)
    rows = read_log(tmp_path)
    assert rows[0]["val_loss"] == "" and float(rows[1]["val_loss"]) == pytest.approx(0.45)


def test_plot_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every=0"):
        SamplePlotter(tmp_path, every=0)


def small_extractor(img_size=16):
    """A fixed random convolutional feature extractor `images -> (batch, 8)`."""
    inputs = keras.Input((img_size, img_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_extractor")


def test_quality_monitor_feeds_history_log_csv_and_model_checkpoint(tmp_path):
    model = tiny_model(timesteps=10)
    extractor = small_extractor()
    reference = reference_statistics(tiny_images(64), extractor, cache_dir=False, verbose=0)
    sampling = {"sampler": "ddim", "num_steps": 3}
    monitor = QualityMonitor(reference, every=1, num_samples=12, sampling=sampling, feature_extractor=extractor,
                             run_dir=tmp_path, batch_size=12, kid_subset_size=6, verbose=0)
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best_{epoch}.keras"), monitor="fid", mode="min",
                                           save_best_only=True)
    history = model.fit(tiny_images(16), batch_size=8, epochs=3, verbose=0,
                        callbacks=[monitor, RunCheckpoint(tmp_path), best]).history
    fids = history["fid"]
    assert len(fids) == 3 and len(history["kid"]) == 3 and len(history["kid_std"]) == 3
    # The logged figure is the FID of the seeded samples of the final EMA network.
    images = model.generate_images(12, seed=0, batch_size=12, verbose=0, **sampling)
    assert sample_distances(images, reference, extractor, ["fid"])["fid"] == pytest.approx(fids[-1], rel=1e-5)
    assert [float(r["fid"]) for r in read_log(tmp_path)] == pytest.approx(fids)
    # ModelCheckpoint saved exactly at the epochs that set a new best FID.
    record_epochs = [e + 1 for e in range(3) if fids[e] < min(fids[:e], default=np.inf)]
    assert sorted(int(p.stem.split("_")[1]) for p in tmp_path.glob("best_*.keras")) == record_epochs
    with Image.open(tmp_path / "quality.png") as picture:
        assert picture.size[0] > 400
    # On resume, measurements after the checkpoint's epochs are dropped.
    model.epoch.assign(1)
    monitor.on_train_begin()
    assert [int(r["epoch"]) for r in monitor.history] == [1]
    with open(tmp_path / "quality.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1]


def test_quality_monitor_rejects_bad_arguments():
    extractor = small_extractor()
    reference = reference_statistics(tiny_images(8), extractor, cache_dir=False, keep_features=False, verbose=0)
    with pytest.raises(ValueError, match="'bpd'"):
        QualityMonitor(reference, metrics=("fid", "bpd"), feature_extractor=extractor)
    with pytest.raises(ValueError, match="num_samples"):
        QualityMonitor(reference, num_samples=1, metrics=("fid",), feature_extractor=extractor)
    with pytest.raises(ValueError, match="keep_features=True"):
        QualityMonitor(reference, metrics=("kid",), feature_extractor=extractor)
