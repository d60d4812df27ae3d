"""Loading a dataset by name (or a folder's path), as the CLI does."""

import os

from ddpm_keras.data.flowers import FLOWERS_NAME
from ddpm_keras.data.flowers import flowers_class_names
from ddpm_keras.data.flowers import load_flowers
from ddpm_keras.data.folder import folder_class_names
from ddpm_keras.data.folder import load_image_folder
from ddpm_keras.data.synthetic import SYNTHETIC_CLASS_NAMES
from ddpm_keras.data.synthetic import load_synthetic

SYNTHETIC_NAME = "synthetic"
# The distinct images of `"synthetic"` unless a preset says otherwise (its training key `synthetic_images`).
SYNTHETIC_IMAGES = 1024
DATASET_NAMES = (FLOWERS_NAME, SYNTHETIC_NAME)


def load_dataset(
    name_or_path,
    split="train",
    img_size=64,
    batch_size=32,
    data_dir=None,
    shuffle=True,
    augment=True,
    seed=None,
    num_synthetic=SYNTHETIC_IMAGES,
    with_labels=False,
):
    """Loads a dataset by name, or a folder of images, as image batches.

    Args:
        name_or_path: String, `"oxford_flowers102"` (`load_flowers`),
            `"synthetic"` (`load_synthetic`), or the path of a folder of
            images (`load_image_folder`).
        split: String, the tfds split; only for `"oxford_flowers102"`.
            Defaults to `"train"`.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        batch_size: Integer, the batch size. Defaults to `32`.
        data_dir: String or `None`, the tfds data directory; only for
            `"oxford_flowers102"`. Defaults to `None`.
        shuffle: Boolean, whether to shuffle. Defaults to `True`.
        augment: Boolean, whether to flip images left-right at random.
            Defaults to `True`.
        seed: Integer or `None`, the seed (`0` for `"synthetic"` when
            `None`). Defaults to `None`.
        num_synthetic: Integer, the number of images for `"synthetic"`.
            Defaults to `1024`.
        with_labels: Boolean, whether to yield `(images, labels)` batches
            (see each loader). Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`; with
        `with_labels=True`, of `(images, labels)` with int32 labels of shape
        `(batch_size,)`, and the dataset's `class_names` attribute is
        `dataset_class_names(name_or_path, data_dir)`.

    Example:

    >>> dataset = load_dataset("synthetic", img_size=32, batch_size=16)
    >>> dataset.element_spec.shape
    TensorShape([16, 32, 32, 3])
    """
    common = dict(
        img_size=img_size,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        with_labels=with_labels,
    )
    if name_or_path == FLOWERS_NAME:
        return load_flowers(split=split, data_dir=data_dir, seed=seed, **common)
    if name_or_path == SYNTHETIC_NAME:
        return load_synthetic(
            num_images=num_synthetic,
            seed=0 if seed is None else seed,
            **common,
        )
    _check_folder_or_name(name_or_path)
    return load_image_folder(name_or_path, seed=seed, **common)


def dataset_class_names(name_or_path, data_dir=None):
    """The class names `load_dataset(name_or_path, with_labels=True)` uses.

    Builds no dataset, so a training script can store the names with the
    model before (or without) reading any image.

    Args:
        name_or_path: String, `"oxford_flowers102"`, `"synthetic"`, or the
            path of a folder with one sub-folder per class.
        data_dir: String or `None`, the tfds data directory; only for
            `"oxford_flowers102"`. Defaults to `None`.

    Returns:
        A list of strings; label `i` is `names[i]`.

    Example:

    >>> dataset_class_names("synthetic")
    ['red-5-petals', 'yellow-8-petals', 'blue-6-petals', 'purple-4-petals']
    """
    if name_or_path == FLOWERS_NAME:
        return flowers_class_names(data_dir=data_dir)
    if name_or_path == SYNTHETIC_NAME:
        return list(SYNTHETIC_CLASS_NAMES)
    _check_folder_or_name(name_or_path)
    return folder_class_names(name_or_path)


def _check_folder_or_name(name_or_path):
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.path.isdir(
        name_or_path
    ):
        raise FileNotFoundError(
            f"Unknown dataset {name_or_path!r}: it is neither one of "
            f"{', '.join(DATASET_NAMES)} nor an existing folder of images. "
            f"Received: name_or_path={name_or_path!r}"
        )
