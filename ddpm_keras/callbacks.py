"""Callbacks for `DiffusionModel.fit`: sample grids each epoch, and checkpoints that survive a kill."""

import csv
import os
import time

import keras

from ddpm_keras.visualize import save_image_grid

MODEL_FILE = "model.keras"
LOG_FILE = "log.csv"
SAMPLES_DIR = "samples"

# The fastest sampler of the model: 50 deterministic DDIM steps.
DEFAULT_SAMPLING = {"sampler": "ddim", "num_steps": 50}


class SamplePlotter(keras.callbacks.Callback):
    """Saves a grid of EMA samples every `every` epochs, and shows it in a notebook.

    The samples come from a fixed seed, so grids of successive epochs show
    the same noise being decoded by a model that learns. Files are
    `<run_dir>/samples/epoch_0001.png`, ... (1-based epoch numbers). No
    display is needed: grids are written with Pillow; in a Jupyter/Colab
    kernel each grid is also displayed inline.

    Args:
        run_dir: String, the run directory.
        every: Integer, plot every `every` epochs. Defaults to `1`.
        num_images: Integer, the number of samples. Defaults to `16`.
        seed: Integer, the seed of the samples. Defaults to `0`.
        sampling: Dict of keyword arguments of `generate_images` choosing the
            sampler. Defaults to `DEFAULT_SAMPLING` (DDIM, 50 steps).
        scale: Integer, the upscaling of the saved grid. Defaults to `4` for
            images of 32 px or less, else `2`.
        show: Boolean or `None`, display inline; `None` displays when
            running in an IPython kernel. Defaults to `None`.

    Example:

    >>> model.fit(dataset, epochs=50, callbacks=[SamplePlotter("runs/tiny", every=5)])
    """

    def __init__(self, run_dir, every=1, num_images=16, seed=0, sampling=None, scale=None, show=None):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer. Received: every={every!r}")
        self.run_dir = os.fspath(run_dir)
        self.every = every
        self.num_images = num_images
        self.seed = seed
        self.sampling = dict(DEFAULT_SAMPLING if sampling is None else sampling)
        self.scale = scale
        self.show = _in_ipython_kernel() if show is None else show
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        images = self.model.generate_images(num_images=self.num_images, seed=self.seed, **self.sampling)
        scale = self.scale or (4 if max(images.shape[1:3]) <= 32 else 2)
        path = os.path.join(self.run_dir, SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
        self.last_path = save_image_grid(images, path, scale=scale)
        if self.show:
            from IPython.display import Image
            from IPython.display import display

            print(f"Samples after epoch {epoch + 1}:")
            display(Image(filename=path))


class RunCheckpoint(keras.callbacks.Callback):
    """Writes the full training state and a CSV log to a run directory each epoch.

    At the end of every epoch the model (network, EMA network, optimizer
    state, and the count of completed epochs in `model.epoch`) is saved to
    `<run_dir>/model.keras` through a temporary file and a rename, so a kill
    at any moment leaves the last finished epoch intact; then a row is
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
        self.model.epoch.assign(epoch + 1)
        save_atomically(self.model, self.model_path)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}, "seconds": round(seconds, 3)}
        _append_row(self.log_path, row)


def save_atomically(model, path):
    """`model.save(path)` through a temporary file and a rename."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(path) or ".", f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resume_log(run_dir, completed_epochs):
    """Drops rows of `log.csv` for epochs after `completed_epochs` (written after the last checkpoint)."""
    path = os.path.join(os.fspath(run_dir), LOG_FILE)
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [row for row in rows if int(row["epoch"]) <= completed_epochs]
    if len(kept) != len(rows):
        _write_rows(path, kept, list(rows[0].keys()))


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
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _in_ipython_kernel():
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
