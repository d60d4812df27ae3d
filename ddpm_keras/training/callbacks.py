"""Callbacks for `DiffusionModel.fit`: sample grids, sample quality, and checkpoints that survive a kill.

`SamplePlotter` and `QualityMonitor` are here; `RunCheckpoint` and the run's
CSV logs are in `checkpoint.py`, `StallWatchdog` in `watchdog.py`,
`NonFiniteGuard` in `finite.py`, `TensorBoardLogger` in `tensorboard.py`,
`PostHocEMA` in `posthoc_ema.py`;
every callback of `fit` is importable from this module
(`ddpm_keras.callbacks`).
"""

import os
import time

import keras

from ddpm_keras.metrics import inception_features
from ddpm_keras.metrics import sample_distances
from ddpm_keras.metrics.base import as_reference
from ddpm_keras.metrics.distances import DISTANCES
from ddpm_keras.samplers.options import default_sampling_for
from ddpm_keras.samplers.registry import timestep_spacing_of
from ddpm_keras.training.checkpoint import LOG_FILE
from ddpm_keras.training.checkpoint import MODEL_FILE
from ddpm_keras.training.checkpoint import QUALITY_LOG_FILE
from ddpm_keras.training.checkpoint import QUALITY_PLOT_FILE
from ddpm_keras.training.checkpoint import SAMPLES_DIR
from ddpm_keras.training.checkpoint import RunCheckpoint
from ddpm_keras.training.checkpoint import WorkerShare
from ddpm_keras.training.checkpoint import append_row
from ddpm_keras.training.checkpoint import read_rows
from ddpm_keras.training.checkpoint import resume_log
from ddpm_keras.training.checkpoint import save_atomically
from ddpm_keras.training.finite import NonFiniteGuard
from ddpm_keras.training.posthoc_ema import PostHocEMA
from ddpm_keras.training.tensorboard import TensorBoardLogger
from ddpm_keras.training.watchdog import StallWatchdog
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.progress import in_notebook
from ddpm_keras.visualize import display_scale
from ddpm_keras.visualize import plot_metrics
from ddpm_keras.visualize import save_image_grid

__all__ = [
    "LOG_FILE", "MODEL_FILE", "QUALITY_LOG_FILE", "QUALITY_PLOT_FILE", "SAMPLES_DIR", "NonFiniteGuard",
    "PostHocEMA", "QualityMonitor", "RunCheckpoint", "SamplePlotter", "StallWatchdog", "TensorBoardLogger",
    "WorkerShare", "class_rows", "describe_sampling", "read_rows", "resume_log", "save_atomically",
]


class SamplePlotter(keras.callbacks.Callback):
    """Saves a grid of EMA samples every `every` epochs, and shows it in a notebook.

    The samples come from a fixed seed, so grids of successive epochs show
    the same noise being decoded by a model that learns. On a
    class-conditional model each row of the grid is one class (`classes`),
    with `num_images // len(classes)` samples of it. Files are
    `<run_dir>/samples/epoch_0001.png`, ... (1-based epoch numbers). No
    display is needed: grids are written with Pillow; in a Jupyter/Colab
    kernel each grid is also displayed inline. With `tensorboard`, each
    grid is also written as an image summary `"samples"` at step
    `epoch + 1`.

    Args:
        run_dir: String, the run directory.
        every: Integer, plot every `every` epochs. Defaults to `1`.
        num_images: Integer, the number of samples. Defaults to `16`.
        seed: Integer, the seed of the samples. Defaults to `0`.
        sampling: Dict of keyword arguments of `generate_images` choosing the
            sampler. Defaults to `None`: `samplers.DEFAULT_SAMPLING`, its
            steps capped at the model's `T`.
        scale: Integer, the upscaling of the saved grid. Defaults to `4` for
            images of 32 px or less, else `2`.
        show: Boolean or `None`, display inline; `None` displays when
            running in an IPython kernel. Defaults to `None`.
        classes: For a conditional model, the classes of the rows (integers
            or names). Defaults to `None`: up to 4 classes spread over
            `[0, num_classes)`.
        guidance_scale: Float, the classifier-free guidance of a
            conditional model's rows. Defaults to `1.0`.
        tensorboard: A `TensorBoardLogger` that also receives each grid
            (its `log_images`), or `None`. Defaults to `None`.

    Example:

    >>> model.fit(dataset, epochs=50, callbacks=[SamplePlotter("runs/tiny", every=5)])
    """

    def __init__(
        self, run_dir, every=1, num_images=16, seed=0, sampling=None, scale=None, show=None, classes=None,
        guidance_scale=1.0, tensorboard=None,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer. Received: every={every!r}")
        if tensorboard is not None and not callable(getattr(tensorboard, "log_images", None)):
            raise TypeError(f"tensorboard must be a TensorBoardLogger or None. Received: tensorboard={tensorboard!r}")
        self.run_dir = os.fspath(run_dir)
        self.every = every
        self.num_images = num_images
        self.seed = seed
        self.sampling = None if sampling is None else dict(sampling)
        self.scale = scale
        self.show = in_notebook() if show is None else show
        self.classes = classes
        self.guidance_scale = guidance_scale
        self.tensorboard = tensorboard
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        labels, ncols = class_rows(self.model, self.num_images, self.classes)
        conditioning = {} if labels is None else {"labels": labels, "guidance_scale": self.guidance_scale}
        images = self.model.generate_images(
            num_images=len(labels) if labels is not None else self.num_images, seed=self.seed,
            **sampling_of(self), **conditioning,
        )
        scale = self.scale or display_scale(images)
        path = os.path.join(self.run_dir, SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
        self.last_path = save_image_grid(images, path, ncols=ncols, scale=scale)
        if self.tensorboard is not None:
            self.tensorboard.log_images("samples", images, epoch + 1, ncols=ncols, scale=scale)
        if self.show:
            from IPython.display import Image
            from IPython.display import display

            print(f"Samples after epoch {epoch + 1}:")
            display(Image(filename=path))


def class_rows(model, num_images, classes=None, max_rows=4):
    """The labels of a grid with one row per class: `(labels, ncols)`, or `(None, None)` for an unconditional model.

    Args:
        model: A `DiffusionModel`.
        num_images: Integer, about how many images in all.
        classes: `None` (up to `max_rows` classes spread over
            `[0, num_classes)`) or a list of classes (integers or names).
        max_rows: Integer, the rows when `classes` is `None`. Defaults to
            `4`.

    Returns:
        `(labels, ncols)`: a list with each class repeated `ncols` times,
        row by row.
    """
    if getattr(model, "num_classes", None) is None:
        return None, None
    if classes is None:
        rows = min(max_rows, model.num_classes)
        classes = sorted({round(i * (model.num_classes - 1) / max(rows - 1, 1)) for i in range(rows)})
    classes = list(model.label_ids(list(classes)))
    ncols = max(1, num_images // len(classes))
    return [int(k) for k in classes for _ in range(ncols)], ncols


class QualityMonitor(keras.callbacks.Callback):
    """Measures FID and KID of EMA samples every `every` epochs and puts them in the epoch's logs.

    The values land in `logs` under `"fid"`, `"kid"` and `"kid_std"`, so
    that `History`, `RunCheckpoint`'s `log.csv`, TensorBoard,
    `keras.callbacks.ModelCheckpoint(monitor="fid", mode="min")` and
    `EarlyStopping` see them. Place this callback before those that read
    the logs: Keras calls callbacks in list order. On epochs without a
    measurement the keys are absent (ModelCheckpoint and EarlyStopping
    then skip the epoch). With `run_dir`, each measurement is also appended
    to `<run_dir>/quality.csv` and `<run_dir>/quality.png` (the metrics
    against the epoch) is redrawn; on resume, rows after the model's
    completed epochs are dropped.

    The samples come from a fixed seed (the same noise every time), so the
    figures follow the model rather than the draw; a figure from
    `num_samples` images still has sampling error (about 15% for FID from
    1,000 images between seeds), and FID is biased upwards with fewer
    samples: compare figures of equal `num_samples`.

    Args:
        reference: The real images' statistics: a `ReferenceStatistics`
            (see `ddpm_keras.metrics.reference_statistics`), its `.npz`
            path, or real images / a dataset of them.
        every: Integer, measure every `every` epochs. Defaults to `10`.
        num_samples: Integer, generated images per measurement. Defaults to
            `1000`.
        sampling: Dict of `generate_images` arguments choosing the sampler.
            Defaults to `None`: the sample grids' (`DEFAULT_SAMPLING`, its
            steps capped at the model's `T`).
        metrics: Sequence of `"fid"` and `"kid"`. Defaults to
            `("fid", "kid")`.
        feature_extractor: A Keras model `images -> features`. Defaults to
            `None`: InceptionV3 with ImageNet weights.
        run_dir: String or `None`, where to write `quality.csv` and
            `quality.png`. Defaults to `None` (nothing written).
        seed: Integer, the seed of the samples. Defaults to `0`.
        batch_size: Integer, images per compiled sampling call. Defaults to
            `128`.
        kid_subset_size: Integer, KID's subset size. Defaults to `1000`.
        verbose: `0` or `1`, print each measurement. Defaults to `1`.

    Example:

    >>> reference = reference_statistics(real_images, dataset_name="flowers", split="train")
    >>> model.fit(dataset, epochs=100, callbacks=[
    ...     QualityMonitor(reference, every=10, run_dir="runs/flowers"),
    ...     keras.callbacks.ModelCheckpoint("best.keras", monitor="fid", mode="min", save_best_only=True),
    ... ])
    """

    def __init__(self, reference, every=10, num_samples=1000, sampling=None, metrics=("fid", "kid"),
                 feature_extractor=None, run_dir=None, seed=0, batch_size=128, kid_subset_size=1000, verbose=1):
        super().__init__()
        self.every = check_positive_int("every", every)
        self.num_samples = check_positive_int("num_samples", num_samples)
        unknown = [name for name in metrics if name not in DISTANCES]
        if unknown or not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {DISTANCES}. Received: metrics={metrics!r}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for FID and KID. Received: num_samples={num_samples}")
        self.sampling = None if sampling is None else dict(sampling)
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.seed = seed
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.verbose = verbose
        self.metric_names = list(metrics)
        self.kid_subset_size = check_positive_int("kid_subset_size", kid_subset_size)
        self.feature_extractor = inception_features() if feature_extractor is None else feature_extractor
        # Computed (and checked against the extractor) once, now rather than at the first measurement.
        self.reference = as_reference(reference, self.feature_extractor, keep_features="kid" in metrics)
        self.history = []

    def on_train_begin(self, logs=None):
        if self.run_dir is None:
            return
        completed = int(keras.ops.convert_to_numpy(self.model.epoch)) if hasattr(self.model, "epoch") else 0
        resume_log(self.run_dir, completed, QUALITY_LOG_FILE)
        self.history = read_rows(os.path.join(self.run_dir, QUALITY_LOG_FILE))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        start = time.perf_counter()
        images = self.model.generate_images(
            self.num_samples, seed=self.seed, batch_size=min(self.batch_size, self.num_samples), verbose=0,
            **sampling_of(self),
        )
        values = sample_distances(images, self.reference, self.feature_extractor, self.metric_names,
                                  kid_subset_size=self.kid_subset_size)
        if logs is not None:
            logs.update(values)
        seconds = time.perf_counter() - start
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(f"\nEpoch {epoch + 1}: {shown} ({self.num_samples} samples, {seconds:.1f} s)")
        if self.run_dir is not None:
            row = {"epoch": epoch + 1, **values, "num_samples": self.num_samples, "seconds": round(seconds, 3)}
            append_row(os.path.join(self.run_dir, QUALITY_LOG_FILE), row)
            self.history.append(row)
            plot_metrics(self.history, os.path.join(self.run_dir, QUALITY_PLOT_FILE), self.metric_names,
                         title=f"{self.num_samples} samples, {describe_sampling(sampling_of(self))}")


def sampling_of(callback):
    """The `generate_images` sampling of a callback that draws from its model: its own, else the default for its `T`."""
    if callback.sampling is not None:
        return callback.sampling
    return default_sampling_for(callback.model.diffusion.num_timesteps)


def describe_sampling(sampling):
    """`"ddim, 50 steps"` (`"..., karras spacing"` when not trailing): a `generate_images` sampling dict in words."""
    steps, sampler = sampling.get("num_steps"), sampling.get("sampler", "ddpm")
    spacing = timestep_spacing_of(sampler, sampling.get("timestep_spacing"))
    return (f"{sampler}, {'all' if steps is None else steps} steps"
            + ("" if spacing == "trailing" else f", {spacing} spacing"))


