"""Callbacks for `DiffusionModel.fit`: sample grids, sample quality, and checkpoints that survive a kill."""

import csv
import math
import os
import signal
import sys
import threading
import time

import keras

from ddpm_keras.metrics import inception_features
from ddpm_keras.metrics import sample_distances
from ddpm_keras.metrics.base import as_reference
from ddpm_keras.metrics.distances import DISTANCES
from ddpm_keras.samplers.options import DEFAULT_SAMPLING
from ddpm_keras.training.finite import NonFiniteError
from ddpm_keras.training.finite import NonFiniteGuard  # noqa: F401 - a callback of fit, importable from here
from ddpm_keras.training.finite import non_finite_weights
from ddpm_keras.utils import files
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.progress import in_notebook
from ddpm_keras.visualize import display_scale
from ddpm_keras.visualize import plot_metrics
from ddpm_keras.visualize import save_image_grid

MODEL_FILE = "model.keras"
LOG_FILE = "log.csv"
QUALITY_LOG_FILE = "quality.csv"
QUALITY_PLOT_FILE = "quality.png"
SAMPLES_DIR = "samples"


class SamplePlotter(keras.callbacks.Callback):
    """Saves a grid of EMA samples every `every` epochs, and shows it in a notebook.

    The samples come from a fixed seed, so grids of successive epochs show
    the same noise being decoded by a model that learns. On a
    class-conditional model each row of the grid is one class (`classes`),
    with `num_images // len(classes)` samples of it. Files are
    `<run_dir>/samples/epoch_0001.png`, ... (1-based epoch numbers). No
    display is needed: grids are written with Pillow; in a Jupyter/Colab
    kernel each grid is also displayed inline.

    Args:
        run_dir: String, the run directory.
        every: Integer, plot every `every` epochs. Defaults to `1`.
        num_images: Integer, the number of samples. Defaults to `16`.
        seed: Integer, the seed of the samples. Defaults to `0`.
        sampling: Dict of keyword arguments of `generate_images` choosing the
            sampler. Defaults to `samplers.DEFAULT_SAMPLING`.
        scale: Integer, the upscaling of the saved grid. Defaults to `4` for
            images of 32 px or less, else `2`.
        show: Boolean or `None`, display inline; `None` displays when
            running in an IPython kernel. Defaults to `None`.
        classes: For a conditional model, the classes of the rows (integers
            or names). Defaults to `None`: up to 4 classes spread over
            `[0, num_classes)`.
        guidance_scale: Float, the classifier-free guidance of a
            conditional model's rows. Defaults to `1.0`.

    Example:

    >>> model.fit(dataset, epochs=50, callbacks=[SamplePlotter("runs/tiny", every=5)])
    """

    def __init__(
        self, run_dir, every=1, num_images=16, seed=0, sampling=None, scale=None, show=None, classes=None,
        guidance_scale=1.0,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer. Received: every={every!r}")
        self.run_dir = os.fspath(run_dir)
        self.every = every
        self.num_images = num_images
        self.seed = seed
        self.sampling = dict(DEFAULT_SAMPLING if sampling is None else sampling)
        self.scale = scale
        self.show = in_notebook() if show is None else show
        self.classes = classes
        self.guidance_scale = guidance_scale
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        labels, ncols = class_rows(self.model, self.num_images, self.classes)
        conditioning = {} if labels is None else {"labels": labels, "guidance_scale": self.guidance_scale}
        images = self.model.generate_images(
            num_images=len(labels) if labels is not None else self.num_images, seed=self.seed,
            **self.sampling, **conditioning,
        )
        scale = self.scale or display_scale(images)
        path = os.path.join(self.run_dir, SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
        self.last_path = save_image_grid(images, path, ncols=ncols, scale=scale)
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


class RunCheckpoint(keras.callbacks.Callback):
    """Writes the full training state and a CSV log to a run directory each epoch.

    At the end of every epoch the model (network, EMA network, optimizer
    state, and the count of completed epochs in `model.epoch`) is saved to
    `<run_dir>/model.keras` through a temporary file and a rename, so a kill
    at any moment, or a full disk, leaves the last finished epoch intact.
    Weights holding NaN or Inf are never saved: the callback raises
    `NonFiniteError` instead and the previous file stays. Then a row is
    appended to `<run_dir>/log.csv` (`epoch`, the logs such as `loss` and
    `val_loss`, and `seconds`). `resume_log` trims rows of epochs the
    checkpoint does not hold, so a resumed log has each epoch once.

    Args:
        run_dir: String, the run directory (created if missing).
    """

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = os.fspath(run_dir)
        self._epoch_start = None

    @property
    def model_path(self):
        return os.path.join(self.run_dir, MODEL_FILE)

    @property
    def log_path(self):
        return os.path.join(self.run_dir, LOG_FILE)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start if self._epoch_start else float("nan")
        bad = non_finite_weights(self.model)
        if bad:
            raise NonFiniteError(
                f"the weights became NaN or Inf in epoch {epoch + 1} ({len(bad)} variables, such as {bad[0]}): "
                f"{self.model_path} was not written.", epoch=epoch + 1,
            )
        self.model.epoch.assign(epoch + 1)
        try:
            save_atomically(self.model, self.model_path)
        except BaseException:
            self.model.epoch.assign(epoch)  # the file on disk still holds `epoch` epochs
            raise
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}, "seconds": round(seconds, 3)}
        _append_row(self.log_path, row)


class WorkerShare(keras.callbacks.Callback):
    """Prints, on each worker of a multi-worker TensorFlow run, the images it trained on in the epoch.

    The count is this worker's own (its replicas' loss-tracker counts, not
    summed across workers): with `W` workers each trains on `1 / W` of
    every global batch.

    Args:
        worker: Integer, this worker's index.
        workers: Integer, how many workers train together.
    """

    def __init__(self, worker, workers):
        super().__init__()
        self.worker, self.workers = worker, workers

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        local = tf.distribute.get_strategy().experimental_local_results(self.model.loss_tracker.count.value)
        images = int(round(sum(float(count) for count in local)))
        print(f"worker {self.worker} of {self.workers}: epoch {epoch + 1}: trained on {images} images", flush=True)


class StallWatchdog(keras.callbacks.Callback):
    """Ends the process when training makes no progress for `timeout` seconds: a lost worker's bound.

    In a multi-worker run a worker whose peer died waits inside a
    collective until TensorFlow notices (seconds when the connection
    drops; up to a minute or more otherwise). From the end of the first
    step (its tracing and compilation do not count), a thread checks every
    second that a batch or an epoch began or ended within `timeout`
    seconds; if not, it prints `message` and exits with `exit_code`
    (without cleanup: the run directory holds the last finished epoch).
    The pauses between two steps (the epoch-end checkpoint, sample grids,
    FID measurements) must stay below `timeout`.

    A call can hold the interpreter while it waits (TensorFlow's eager
    collectives, as when a checkpoint reads the metrics' variables): no
    Python thread runs then. With `alarm`, `SIGALRM` at its default action
    ends the process `ALARM_MARGIN` seconds after `timeout` in that case
    (status 142 in a shell); it is re-armed at each step, from the main
    thread, and replaces any other use of `SIGALRM`.

    Args:
        timeout: Seconds without progress before the process ends.
        message: String printed on standard error first.
        exit_code: Integer, the process's exit status.
        alarm: Boolean, add the `SIGALRM` bound. Defaults to `False`.
    """

    ALARM_MARGIN = 15

    def __init__(self, timeout, message, exit_code, alarm=False):
        super().__init__()
        self.timeout, self.message, self.exit_code = float(timeout), message, int(exit_code)
        self.alarm = alarm and hasattr(signal, "alarm")
        self._last = time.monotonic()
        self._armed = False
        self._stop = threading.Event()
        self._thread = None

    def _progress(self, *args, **kwargs):
        self._last = time.monotonic()
        if self.alarm and self._armed:
            signal.alarm(math.ceil(self.timeout) + self.ALARM_MARGIN)

    on_epoch_begin = on_epoch_end = on_train_batch_begin = _progress

    def on_train_batch_end(self, batch, logs=None):
        self._armed = True
        self._progress()

    def on_train_begin(self, logs=None):
        self._armed = False
        self._progress()
        if self.alarm:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def on_train_end(self, logs=None):
        self.stop()

    def stop(self):
        """Stops watching (`fit` does not call `on_train_end` when it raises)."""
        self._stop.set()
        if self.alarm:
            signal.alarm(0)

    def _watch(self):
        while not self._stop.wait(1.0):
            if self._armed and time.monotonic() - self._last > self.timeout:
                print(self.message, file=sys.stderr, flush=True)
                os._exit(self.exit_code)


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
            Defaults to `None`: the sample grids' (`DEFAULT_SAMPLING`).
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
        self.sampling = dict(DEFAULT_SAMPLING if sampling is None else sampling)
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
            **self.sampling,
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
            _append_row(os.path.join(self.run_dir, QUALITY_LOG_FILE), row)
            self.history.append(row)
            plot_metrics(self.history, os.path.join(self.run_dir, QUALITY_PLOT_FILE), self.metric_names,
                         title=f"{self.num_samples} samples, {describe_sampling(self.sampling)}")


def describe_sampling(sampling):
    """`"ddim, 50 steps"` (`"..., karras spacing"` when not trailing): a `generate_images` sampling dict in words."""
    steps = sampling.get("num_steps")
    spacing = sampling.get("timestep_spacing", "trailing")
    return (f"{sampling.get('sampler', 'ddpm')}, {'all' if steps is None else steps} steps"
            + ("" if spacing == "trailing" else f", {spacing} spacing"))


def save_atomically(model, path):
    """`model.save(path)` through a temporary file beside it and a rename (`files.atomic_write`)."""
    return files.atomic_write(path, model.save, mode=None)


def resume_log(run_dir, completed_epochs, filename=LOG_FILE):
    """Reconciles a run's CSV log (`log.csv`) with a checkpoint of `completed_epochs` epochs.

    Rows of epochs after `completed_epochs` (written after the last
    checkpoint) are dropped. Returns the epochs up to `completed_epochs`
    that have no row (a kill between the save and the log's append, or a
    log lost), for the caller to report; they stay missing.
    """
    path = os.path.join(os.fspath(run_dir), filename)
    rows = read_rows(path)
    kept = [row for row in rows if int(row["epoch"]) <= completed_epochs]
    if len(kept) != len(rows):
        _write_rows(path, kept, list(rows[0].keys()))
    logged = {int(row["epoch"]) for row in kept}
    return [epoch for epoch in range(1, completed_epochs + 1) if epoch not in logged]


def read_rows(path):
    """The rows of a CSV log as dicts; `[]` if the file does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _append_row(path, row):
    """Appends `row` to a CSV file, widening the header if new columns appear."""
    rows, fields = [], []
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    if set(row) <= set(fields):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerow(row)
            f.flush()
            os.fsync(f.fileno())
        return
    fields += [k for k in row if k not in fields]
    _write_rows(path, rows + [row], fields)


def _write_rows(path, rows, fields):
    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)

    files.atomic_write(path, write, mode="w")
