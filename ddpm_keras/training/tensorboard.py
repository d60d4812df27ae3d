"""`TensorBoardLogger`: a run's epoch logs and sample grids as TensorBoard events.

The events are written with TensorFlow alone (`tf.summary.write` and the
scalar and image plugins' metadata, as `tf.summary.scalar` and
`tf.summary.image` write them), so that logging works on every Keras backend
without the `tensorboard` package, which only viewing needs.
"""

import contextlib
import os

import keras
import numpy as np

from ddpm_keras.visualize import image_grid

# The sub-folder of the events, as `keras.callbacks.TensorBoard` names it.
TRAIN_DIR = "train"


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes each epoch's logs as TensorBoard scalars, and grids of samples as images.

    At the end of each epoch every numeric entry of `logs` becomes a scalar
    of the same name at step `epoch + 1` (the 1-based epoch of `log.csv` and
    of the grid files): the loss, and the `fid`, `kid` and `kid_std` that a
    `QualityMonitor` puts there when it comes before this callback in the
    list (Keras calls callbacks in list order). `log_images` adds a grid of
    images; `SamplePlotter(..., tensorboard=logger)` calls it with each grid
    it saves. The events go to `<log_dir>/train/`, as with
    `keras.callbacks.TensorBoard`; the writer opens at the first write, is
    flushed after each write and closed at the end of `fit`.

    Writing needs only TensorFlow, on every backend; viewing needs the
    `tensorboard` package: `tensorboard --logdir <log_dir>` (or a folder
    above it). With several workers, give the callback to one of them only.

    Args:
        log_dir: String, the folder of the event files (created at the
            first write).

    Example:

    >>> logger = TensorBoardLogger("runs/flowers/tensorboard")
    >>> model.fit(dataset, epochs=50, callbacks=[
    ...     QualityMonitor(reference, every=10), RunCheckpoint("runs/flowers"), logger,
    ...     SamplePlotter("runs/flowers", every=5, tensorboard=logger),
    ... ])
    """

    def __init__(self, log_dir):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path. Received: log_dir={log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    @property
    def train_dir(self):
        """The folder of the event files: `<log_dir>/train`."""
        return os.path.join(self.log_dir, TRAIN_DIR)

    def on_epoch_end(self, epoch, logs=None):
        scalars = {name: number for name, value in (logs or {}).items() if (number := _as_number(value)) is not None}
        if scalars:
            self.log_scalars(scalars, epoch + 1)

    def on_train_end(self, logs=None):
        self.close()

    def log_scalars(self, scalars, step):
        """Writes each `name: value` of the dict `scalars` (real numbers) as a float32 scalar summary at `step`."""
        numbers = {name: _as_number(value) for name, value in scalars.items()}
        wrong = {name: scalars[name] for name, number in numbers.items() if number is None}
        if wrong:
            raise ValueError(f"scalars must be real numbers. Received: {wrong!r}")
        with self._writing(step) as tf:
            metadata = _metadata("scalars", "DATA_CLASS_SCALAR")
            for name, number in numbers.items():
                tf.summary.write(name, tf.constant(number, tf.float32), metadata=metadata)

    def log_images(self, tag, images, step, ncols=None, scale=1):
        """Writes a batch of images as one grid (see `visualize.image_grid`): a PNG image summary at `step`.

        Args:
            tag: String, the name of the image series, e.g. `"samples"`.
            images: Float array `(N, H, W, C)` with C = 1 or 3, values in
                `[-1, 1]` (clipped outside).
            step: Integer, the step, e.g. the 1-based epoch.
            ncols: Integer, images per row. Defaults to `ceil(sqrt(N))`.
            scale: Integer, the enlargement of the grid (nearest
                neighbour). Defaults to `1`.
        """
        grid = image_grid(keras.ops.convert_to_numpy(images), ncols=ncols, scale=scale)
        height, width = grid.shape[:2]
        with self._writing(step) as tf:
            # The image plugin's tensor: the width and height as strings, then the encoded images.
            tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.image.encode_png(grid)])
            tf.summary.write(tag, tensor, metadata=_metadata("images", "DATA_CLASS_BLOB_SEQUENCE"))

    def close(self):
        """Flushes and closes the event file; a later write opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @contextlib.contextmanager
    def _writing(self, step):
        """A context where `tf.summary.write` writes into this logger's events at `step`; yields `tf`, then flushes."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be an integer. Received: step={step!r}")
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.train_dir)
        with tf.device("/cpu:0"), self._writer.as_default(step=int(step)):
            yield tf
        self._writer.flush()


def _metadata(plugin_name, data_class):
    """The `SummaryMetadata` that TensorBoard's plugin `plugin_name` reads (its plugin data version 0)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    metadata.data_class = getattr(summary_pb2, data_class)
    return metadata


def _as_number(value):
    """A logs entry as a float, or `None` when it is not one real number (a string, an array, a boolean)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    if not isinstance(value, (int, float, np.generic, np.ndarray)):
        try:
            value = keras.ops.convert_to_numpy(value)  # a tensor of any backend
        except (TypeError, ValueError, RuntimeError):
            return None
    array = np.asarray(value)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return None
    return float(array.reshape(()))
