"""A run directory that survives a kill: the checkpoint of each finished epoch and the CSV logs beside it.

`RunCheckpoint` writes `RUN_DIR/model.keras` (network, EMA, optimizer,
epoch) atomically at the end of each epoch and appends the epoch's logs to
`RUN_DIR/log.csv`; `resume_log` reconciles that log with the checkpoint a
run resumes from.
"""

import csv
import os
import time

import keras

from ddpm_keras.training.finite import NonFiniteError
from ddpm_keras.training.finite import non_finite_weights
from ddpm_keras.utils import files

MODEL_FILE = "model.keras"
LOG_FILE = "log.csv"
QUALITY_LOG_FILE = "quality.csv"
QUALITY_PLOT_FILE = "quality.png"
SAMPLES_DIR = "samples"


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
        append_row(self.log_path, row)


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


def append_row(path, row):
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
