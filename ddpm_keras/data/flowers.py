"""Oxford Flowers 102 from TensorFlow Datasets, failing fast when offline."""

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from ddpm_keras.data.common import _check_loader_args
from ddpm_keras.data.common import _training_pipeline
from ddpm_keras.data.common import preprocess_image
from ddpm_keras.utils.checks import image_size
from ddpm_keras.utils.download import PROBE_TIMEOUT_S
from ddpm_keras.utils.download import one_line as _one_line
from ddpm_keras.utils.download import probe_host as _probe_download_host

FLOWERS_NAME = "oxford_flowers102"

# Where tfds downloads Oxford Flowers 102 from, and the files it needs; a
# user without internet can put these files in tfds's manual directory.
_FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_FLOWERS_FILES = ("102flowers.tgz", "imagelabels.mat", "setid.mat")


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared on disk nor downloadable now."""


def flowers_class_names(data_dir=None):
    """The 102 flower names of Oxford Flowers 102, in label order.

    Read from the tfds dataset info (`info.features["label"].names`), which
    ships with tfds: nothing is downloaded or prepared.

    Args:
        data_dir: String, the tfds data directory, or `None` for tfds's
            default. Defaults to `None`.

    Returns:
        A list of 102 strings; label `i` of `load_flowers(...,
        with_labels=True)` is the flower `names[i]`.

    Example:

    >>> flowers_class_names()[:2]
    ['pink primrose', 'hard-leaved pocket orchid']
    """
    builder = tfds.builder(FLOWERS_NAME, data_dir=data_dir)
    return list(builder.info.features["label"].names)


def load_flowers(
    split="train",
    img_size=64,
    batch_size=32,
    data_dir=None,
    shuffle=True,
    augment=True,
    seed=None,
    with_labels=False,
):
    """Loads Oxford Flowers 102 from TensorFlow Datasets as image batches.

    The dataset is downloaded and prepared by tfds on first use (about
    330 MB). Without internet this fails within seconds with a
    `DatasetUnavailableError` that says how to train anyway.

    Args:
        split: String, any tfds split, e.g. `"train"` (1,020 images) or
            `"train+validation+test"` (8,189 images). Defaults to `"train"`.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        batch_size: Integer, the batch size; the last partial batch is
            dropped. Defaults to `32`.
        data_dir: String, the tfds data directory, or `None` for tfds's
            default (`~/tensorflow_datasets`). Defaults to `None`.
        shuffle: Boolean, whether to shuffle the files and the examples
            (again every epoch). Defaults to `True`.
        augment: Boolean, whether to flip images left-right at random.
            Defaults to `True`.
        seed: Integer or `None`, the seed of the shuffling and flipping.
            Defaults to `None`.
        with_labels: Boolean, whether to yield `(images, labels)` with each
            image's flower class (tfds's `label`, 0 to 101) instead of
            images alone. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`; with
        `with_labels=True`, of `(images, labels)` with int32 labels of shape
        `(batch_size,)`, and the dataset's `class_names` attribute is
        `flowers_class_names(data_dir)`.

    Raises:
        DatasetUnavailableError: The dataset is not prepared on disk and
            could not be downloaded.

    Example:

    >>> dataset = load_flowers("train", img_size=64, batch_size=32)
    >>> for images in dataset.take(1):
    ...     print(images.shape)
    (32, 64, 64, 3)
    >>> dataset = load_flowers(batch_size=32, with_labels=True)
    >>> images, labels = next(iter(dataset))
    >>> labels.shape, labels.dtype, len(dataset.class_names)
    (TensorShape([32]), tf.int32, 102)
    """
    img_size = image_size(img_size)
    _check_loader_args(batch_size, shuffle, augment, seed, with_labels)
    builder = tfds.builder(FLOWERS_NAME, data_dir=data_dir)
    _prepare_or_raise(builder)
    # Prepared above (where a download fails fast); tfds.load only reads.
    examples = tfds.load(
        FLOWERS_NAME,
        split=split,
        data_dir=data_dir,
        shuffle_files=shuffle,
        download=False,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )

    def to_example(example):
        image = preprocess_image(example["image"], img_size)
        if with_labels:
            return image, tf.cast(example["label"], tf.int32)
        return image

    examples = examples.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    class_names = None
    if with_labels:
        class_names = builder.info.features["label"].names
    return _training_pipeline(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        class_names=class_names,
    )


# Download and fail-fast checks.


def _prepare_or_raise(builder):
    """Downloads and prepares the dataset, or raises a short, clear error.

    tfds retries failed downloads 10 times with exponential backoff and no
    connect timeout, so offline it fails only after ~205 s (longer where
    packets are silently dropped), and it has no public option to shorten
    this. So when a download is really needed we first probe the download
    host with a few-second timeout (through `urllib`, which honours the
    `HTTPS_PROXY` variables as tfds's `requests` does) and give up at
    once if nothing answers. No probe when the dataset is already
    prepared, when its files are in tfds's manual directory, or when tfds
    is mocked for tests.
    """
    if builder.is_prepared():
        return
    manual_dir = _manual_dir(builder)
    needs_download = not all(
        os.path.exists(os.path.join(manual_dir, name)) for name in _FLOWERS_FILES
    )
    if needs_download and not _tfds_is_mocked():
        reason = _probe_download_host(_FLOWERS_URL, PROBE_TIMEOUT_S)
        if reason is not None:
            raise _unavailable_error(reason, manual_dir) from None
    try:
        builder.download_and_prepare()
    except (OSError, tfds.download.DownloadError) as error:
        raise _unavailable_error(_one_line(error), manual_dir) from None


def _unavailable_error(reason, manual_dir):
    return DatasetUnavailableError(
        f"The dataset {FLOWERS_NAME} is not prepared and could not be "
        f"downloaded ({reason}). To train anyway, pass `--dataset PATH` "
        "(a folder of images) or `--dataset synthetic`, or download "
        f"{', '.join(_FLOWERS_FILES)} from {_FLOWERS_URL} into tfds's manual "
        f"directory {manual_dir} (`<data_dir>/downloads/manual`, by default "
        "~/tensorflow_datasets/downloads/manual)."
    )


def _manual_dir(builder):
    """tfds's default manual directory: `<data_dir>/downloads/manual`."""
    # `builder.data_dir` is `<data_dir>/<name>/<version>`.
    data_dir_root = os.path.dirname(os.path.dirname(str(builder.data_dir)))
    return os.path.join(data_dir_root, "downloads", "manual")


def _tfds_is_mocked():
    """Whether `tfds.testing.mock_data` is active (downloads are no-ops)."""
    method = tfds.core.DatasetBuilder.download_and_prepare
    module = getattr(method, "__module__", None) or ""
    return module.startswith("tensorflow_datasets.testing")
