"""A folder of image files, optionally labelled by class sub-folders."""

import os
import warnings

import tensorflow as tf
from PIL import Image

from ddpm_keras.data.common import _check_enough_images
from ddpm_keras.data.common import _check_loader_args
from ddpm_keras.data.common import _training_pipeline
from ddpm_keras.data.common import preprocess_image
from ddpm_keras.utils.checks import image_size
from ddpm_keras.utils.download import one_line as _one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# Formats that both Pillow (the up-front check) and `tf.io.decode_image`
# read; MPO is the multi-picture JPEG some cameras write.
_DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF")


def folder_class_names(path):
    """The class names of a folder with one sub-folder per class.

    The layout of `keras.utils.image_dataset_from_directory`: each
    sub-folder of `path` is a class, named after it, and holds that class's
    images (searched recursively); the names are sorted, and label `i` is
    `names[i]`. Sub-folders whose name starts with `.` (such as
    `.ipynb_checkpoints`) are not classes.

    Args:
        path: String, the folder, laid out as
            `path/<class_name>/<image>`.

    Returns:
        A sorted list of strings, the sub-folder names.

    Raises:
        FileNotFoundError: `path` is not an existing folder.
        ValueError: `path` has images directly in it, no class sub-folder,
            or a class sub-folder without image files.

    Example:

    >>> folder_class_names("my_flowers/")  # my_flowers/daisy, my_flowers/rose
    ['daisy', 'rose']
    """
    _, _, class_names = _find_labelled_image_files(path)
    return class_names


def load_image_folder(
    path,
    img_size=64,
    batch_size=32,
    shuffle=True,
    augment=True,
    seed=None,
    with_labels=False,
):
    """Loads every image under a folder (recursively) as image batches.

    Files ending in `.png`, `.jpg`, `.jpeg`, `.bmp` or `.gif` (any case)
    are used, of any size; each is centre-cropped and resized like
    `preprocess_image`. Every file is checked up front with Pillow: files
    that cannot be read are skipped with a warning naming each one. A file
    that passes the check but still fails to decode in TensorFlow (e.g. a
    truncated JPEG) is dropped from the pipeline with a logged warning.

    With `with_labels=True` the folder must hold one sub-folder per class,
    as for `keras.utils.image_dataset_from_directory` (see
    `folder_class_names`); label `i` is the `i`-th sub-folder in sorted
    order.

    Args:
        path: String, the folder.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        batch_size: Integer, the batch size; the last partial batch is
            dropped. Defaults to `32`.
        shuffle: Boolean, whether to shuffle the images (again every
            epoch). Defaults to `True`.
        augment: Boolean, whether to flip images left-right at random.
            Defaults to `True`.
        seed: Integer or `None`, the seed of the shuffling and flipping.
            Defaults to `None`.
        with_labels: Boolean, whether to yield `(images, labels)`, each
            image's class being the sub-folder it is in. Defaults to
            `False`.

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`; with
        `with_labels=True`, of `(images, labels)` with int32 labels of shape
        `(batch_size,)`, and the dataset's `class_names` attribute is
        `folder_class_names(path)`.

    Raises:
        FileNotFoundError: `path` is not an existing folder.
        ValueError: The folder holds no readable image, or fewer than
            `batch_size`; with `with_labels=True`, also when it is not laid
            out as one sub-folder per class or a class has no readable
            image.

    Example:

    >>> dataset = load_image_folder("my_flowers/", img_size=32, batch_size=8)
    >>> for images in dataset.take(1):
    ...     print(images.shape)
    (8, 32, 32, 3)
    >>> dataset = load_image_folder("my_flowers/", batch_size=8, with_labels=True)
    >>> dataset.class_names
    ['daisy', 'rose']
    """
    img_size = image_size(img_size)
    _check_loader_args(batch_size, shuffle, augment, seed, with_labels)
    class_names = None
    if with_labels:
        files, labels, class_names = _find_labelled_image_files(path)
    else:
        files = _find_image_files(path)
        labels = [0] * len(files)
    readable = set(_readable_images(files))
    labels = [label for file, label in zip(files, labels) if file in readable]
    files = [file for file in files if file in readable]
    if not files:
        raise ValueError(
            f"No readable image in the folder {path!r} (every file found "
            "was skipped, see the warnings above)."
        )
    if with_labels:
        _check_every_class_readable(path, class_names, labels)
    _check_enough_images(len(files), batch_size, f"The folder {path!r}")

    def decode(file):
        return preprocess_image(_decode_image_file(file), img_size)

    if with_labels:
        examples = tf.data.Dataset.from_tensor_slices(
            (files, tf.constant(labels, dtype=tf.int32))
        ).map(
            lambda file, label: (decode(file), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        examples = tf.data.Dataset.from_tensor_slices(files).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE
        )
    # Drops an undecodable file's whole example, so labels stay aligned.
    examples = examples.ignore_errors(log_warning=True)
    return _training_pipeline(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        num_examples=len(files),
        class_names=class_names,
    )


def _check_folder(path):
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        raise FileNotFoundError(
            f"No folder at {path!r}; expected a folder of images "
            f"({', '.join(IMAGE_EXTENSIONS)}, any case). Received: path={path!r}"
        )


def _is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _image_files_under(path):
    """Sorted paths of the image files under `path`, searched recursively."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if _is_image_file(name)
    )


def _find_image_files(path):
    """Sorted paths of the image files under `path`, or a clear error."""
    _check_folder(path)
    files = _image_files_under(path)
    if not files:
        raise ValueError(
            f"No image files in the folder {path!r} or its subfolders; "
            f"accepted extensions: {', '.join(IMAGE_EXTENSIONS)} (any case)."
        )
    return files


def _find_labelled_image_files(path):
    """`(files, labels, class_names)` of a folder of class sub-folders."""
    _check_folder(path)
    layout = os.path.join(str(path), "<class_name>", "<image>")
    entries = sorted(os.listdir(path))
    loose = [
        name
        for name in entries
        if _is_image_file(name) and os.path.isfile(os.path.join(path, name))
    ]
    if loose:
        raise ValueError(
            f"The folder {path!r} has {len(loose)} image(s) directly in it "
            f"(e.g. {loose[0]!r}), but with_labels=True expects one "
            f"sub-folder per class ({layout}); move them into class "
            "sub-folders, or pass with_labels=False. "
            f"Received: path={path!r}"
        )
    class_names = [
        name
        for name in entries
        if not name.startswith(".") and os.path.isdir(os.path.join(path, name))
    ]
    if not class_names:
        raise ValueError(
            f"The folder {path!r} has no class sub-folders, but "
            f"with_labels=True expects one sub-folder per class ({layout}). "
            f"Received: path={path!r}"
        )
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_files = _image_files_under(os.path.join(path, name))
        if not class_files:
            raise ValueError(
                f"The class folder {os.path.join(str(path), name)!r} holds no "
                f"image files ({', '.join(IMAGE_EXTENSIONS)}, any case); add "
                "images or remove it (every sub-folder is a class). "
                f"Received: path={path!r}"
            )
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, labels, class_names


def _check_every_class_readable(path, class_names, labels):
    missing = sorted(set(range(len(class_names))) - set(labels))
    if missing:
        name = class_names[missing[0]]
        raise ValueError(
            f"The class folder {os.path.join(str(path), name)!r} has no "
            "readable image (every file was skipped, see the warnings "
            f"above). Received: path={path!r}"
        )


def _readable_images(files):
    """The files Pillow can read, warning about each one it cannot."""
    readable = []
    for file in files:
        problem = _image_file_problem(file)
        if problem is None:
            readable.append(file)
        else:
            warnings.warn(f"Skipping {file}: {problem}", stacklevel=3)
    return readable


def _image_file_problem(file):
    """`None` if `file` looks like a decodable image, else why not."""
    try:
        with Image.open(file) as image:
            image_format = image.format
            image.verify()
    except Exception as error:  # Pillow raises many types on bad files.
        return f"not a readable image ({_one_line(error)})"
    if image_format not in _DECODABLE_FORMATS:
        return f"{image_format} images are not supported"
    return None


def _decode_image_file(file):
    image = tf.io.decode_image(
        tf.io.read_file(file), channels=3, expand_animations=False
    )
    image.set_shape((None, None, 3))
    return image
