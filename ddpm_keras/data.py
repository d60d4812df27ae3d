"""Input pipelines: Oxford Flowers 102, a folder of images, synthetic flowers.

Every loader returns a `tf.data.Dataset` of float32 image batches of shape
`(batch_size, height, width, 3)` scaled to `[-1, 1]`, built the same way:

    decode -> centre crop + resize + scale -> cache -> shuffle examples
    -> random left-right flip -> batch (drop remainder) -> prefetch

Unlike the keras.io example, examples are shuffled *before* batching (the
example shuffled whole batches, so the same images always met in a batch),
and the flip comes after the cache so that every epoch sees fresh flips.

This module sits above the math and network layers: it imports only
TensorFlow, TensorFlow Datasets, NumPy, Pillow and the standard library.
"""

import os
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ddpm_keras._checks import check_positive_int
from ddpm_keras._checks import image_size
from ddpm_keras._checks import is_int
from ddpm_keras._download import PROBE_TIMEOUT_S
from ddpm_keras._download import one_line as _one_line
from ddpm_keras._download import probe_host as _probe_download_host

FLOWERS_NAME = "oxford_flowers102"
SYNTHETIC_NAME = "synthetic"
DATASET_NAMES = (FLOWERS_NAME, SYNTHETIC_NAME)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# Where tfds downloads Oxford Flowers 102 from, and the files it needs; a
# user without internet can put these files in tfds's manual directory.
_FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_FLOWERS_FILES = ("102flowers.tgz", "imagelabels.mat", "setid.mat")
# The shuffle buffer holds preprocessed float32 images; 10,000 covers the
# whole of Oxford Flowers 102 (8,189 images, 400 MB at 64 px).
_MAX_SHUFFLE_BUFFER = 10_000
# Formats that both Pillow (the up-front check) and `tf.io.decode_image`
# read; MPO is the multi-picture JPEG some cameras write.
_DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF")
_SYNTHETIC_SUPERSAMPLING = 2
_SYNTHETIC_CHUNK = 128


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared on disk nor downloadable now."""


def preprocess_image(image, img_size):
    """Centre-crops, resizes and scales one image to `[-1, 1]`.

    As in the keras.io example: crop the largest centred square, resize it
    with antialiasing, then map `[0, 255]` to `[-1, 1]` with
    `image / 127.5 - 1` and clip. For a non-square target the crop is the
    largest centred region with the target's aspect ratio instead of a
    square, so that nothing is stretched. Works inside `tf.data` on images
    of any (dynamic) height and width.

    Args:
        image: Tensor of shape `(height, width, channels)` with values in
            `[0, 255]` (usually uint8). 1 channel (grayscale) is repeated to
            RGB; with 4 channels (RGBA) the alpha channel is dropped.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            output size.

    Returns:
        A float32 tensor of shape `(height, width, 3)` with values in
        `[-1, 1]`.

    Example:

    >>> image = tf.zeros((48, 64, 3), dtype=tf.uint8)
    >>> preprocess_image(image, 32).shape
    TensorShape([32, 32, 3])
    """
    target_height, target_width = image_size(img_size)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    # Compare height / width with target_height / target_width without
    # rounding: the image is relatively taller when h * tw > w * th.
    taller = height * target_width > width * target_height
    crop_height = tf.where(taller, width * target_height // target_width, height)
    crop_width = tf.where(taller, width, height * target_width // target_height)
    crop_height = tf.maximum(crop_height, 1)
    crop_width = tf.maximum(crop_width, 1)
    image = tf.image.crop_to_bounding_box(
        image,
        (height - crop_height) // 2,
        (width - crop_width) // 2,
        crop_height,
        crop_width,
    )
    image = _to_rgb(tf.cast(image, tf.float32))
    image = tf.image.resize(image, size=(target_height, target_width), antialias=True)
    image = image / 127.5 - 1.0
    return tf.clip_by_value(image, -1.0, 1.0)


def load_flowers(
    split="train",
    img_size=64,
    batch_size=32,
    data_dir=None,
    shuffle=True,
    augment=True,
    seed=None,
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

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`.

    Raises:
        DatasetUnavailableError: The dataset is not prepared on disk and
            could not be downloaded.

    Example:

    >>> dataset = load_flowers("train", img_size=64, batch_size=32)
    >>> for images in dataset.take(1):
    ...     print(images.shape)
    (32, 64, 64, 3)
    """
    img_size = image_size(img_size)
    _check_loader_args(batch_size, shuffle, augment, seed)
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
    images = examples.map(
        lambda example: preprocess_image(example["image"], img_size),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _training_pipeline(
        images,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
    )


def load_image_folder(
    path, img_size=64, batch_size=32, shuffle=True, augment=True, seed=None
):
    """Loads every image under a folder (recursively) as image batches.

    Files ending in `.png`, `.jpg`, `.jpeg`, `.bmp` or `.gif` (any case)
    are used, of any size; each is centre-cropped and resized like
    `preprocess_image`. Every file is checked up front with Pillow: files
    that cannot be read are skipped with a warning naming each one. A file
    that passes the check but still fails to decode in TensorFlow (e.g. a
    truncated JPEG) is dropped from the pipeline with a logged warning.

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

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`.

    Raises:
        FileNotFoundError: `path` is not an existing folder.
        ValueError: The folder holds no readable image, or fewer than
            `batch_size`.

    Example:

    >>> dataset = load_image_folder("my_flowers/", img_size=32, batch_size=8)
    >>> for images in dataset.take(1):
    ...     print(images.shape)
    (8, 32, 32, 3)
    """
    img_size = image_size(img_size)
    _check_loader_args(batch_size, shuffle, augment, seed)
    files = _readable_images(_find_image_files(path))
    if not files:
        raise ValueError(
            f"No readable image in the folder {path!r} (every file found "
            "was skipped, see the warnings above)."
        )
    _check_enough_images(len(files), batch_size, f"The folder {path!r}")
    images = tf.data.Dataset.from_tensor_slices(files).map(
        lambda file: preprocess_image(_decode_image_file(file), img_size),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    images = images.ignore_errors(log_warning=True)
    return _training_pipeline(
        images,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        num_examples=len(files),
    )


def synthetic_flowers(num_images, img_size=64, seed=0, return_params=False):
    """Draws simple flower-like images, deterministically from a seed.

    Each image is a plain background (light or dark, low saturation) with
    one flower: petals bounded by the polar curve
    `r = R * |cos(k * (theta - phi) / 2)| ** p` (`k` from 4 to 9 petals) in
    a saturated colour shaded darker towards the middle, and a yellow or
    brown disc in the centre. The flower's position and size vary, but it
    never reaches the image corners. Edges are antialiased by drawing at
    twice the resolution and averaging.

    Args:
        num_images: Integer, the number of images.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        seed: Integer, the seed; the same seed gives the same images.
            Defaults to `0`.
        return_params: Boolean, also return each image's drawing
            parameters (for labels, or to train a feature extractor).
            Defaults to `False`.

    Returns:
        A float32 NumPy array of shape `(num_images, height, width, 3)` with
        values in `[-1, 1]`; with `return_params=True`, `(images, params)`
        where `params` maps names (`"num_petals"`, `"radius"`,
        `"centre_x"`, `"petal_colour"`, `"background"`, ...) to arrays of
        `num_images` rows, lengths relative to the image size.

    Example:

    >>> images = synthetic_flowers(16, img_size=32, seed=0)
    >>> images.shape
    (16, 32, 32, 3)
    """
    check_positive_int("num_images", num_images)
    height, width = image_size(img_size)
    _check_seed(seed, allow_none=False)
    flowers = _random_flower_params(np.random.default_rng(seed), num_images)
    images = np.empty((num_images, height, width, 3), dtype=np.float32)
    for start in range(0, num_images, _SYNTHETIC_CHUNK):
        chunk = slice(start, start + _SYNTHETIC_CHUNK)
        part = {name: values[chunk] for name, values in flowers.items()}
        images[chunk] = _draw_flowers(part, height, width)
    images = images * 2.0 - 1.0
    return (images, flowers) if return_params else images


def load_synthetic(
    num_images=1024,
    img_size=64,
    batch_size=32,
    shuffle=True,
    augment=True,
    seed=0,
):
    """Loads `synthetic_flowers` images as image batches.

    This exists so that a newcomer can watch a model learn within minutes
    on a CPU, with no download, and for tests and benchmarks. It is not a
    stand-in for the real dataset: the images are far simpler than photos.

    Args:
        num_images: Integer, the number of distinct images. Defaults to
            `1024`.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        batch_size: Integer, the batch size; the last partial batch is
            dropped. Defaults to `32`.
        shuffle: Boolean, whether to shuffle the images (again every
            epoch). Defaults to `True`.
        augment: Boolean, whether to flip images left-right at random.
            Defaults to `True`.
        seed: Integer, the seed of the images, the shuffling and the
            flipping. Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`.

    Example:

    >>> dataset = load_synthetic(256, img_size=32, batch_size=16)
    >>> len(dataset)
    16
    """
    check_positive_int("num_images", num_images)
    _check_loader_args(batch_size, shuffle, augment, seed)
    _check_seed(seed, allow_none=False)
    _check_enough_images(num_images, batch_size, "The synthetic dataset")
    images = synthetic_flowers(num_images, img_size=img_size, seed=seed)
    return _training_pipeline(
        tf.data.Dataset.from_tensor_slices(images),
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        num_examples=num_images,
        cache=False,  # Already in memory.
    )


def load_dataset(
    name_or_path,
    split="train",
    img_size=64,
    batch_size=32,
    data_dir=None,
    shuffle=True,
    augment=True,
    seed=None,
    num_synthetic=1024,
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

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`.

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
    )
    if name_or_path == FLOWERS_NAME:
        return load_flowers(split=split, data_dir=data_dir, seed=seed, **common)
    if name_or_path == SYNTHETIC_NAME:
        return load_synthetic(
            num_images=num_synthetic,
            seed=0 if seed is None else seed,
            **common,
        )
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.path.isdir(
        name_or_path
    ):
        raise FileNotFoundError(
            f"Unknown dataset {name_or_path!r}: it is neither one of "
            f"{', '.join(DATASET_NAMES)} nor an existing folder of images. "
            f"Received: name_or_path={name_or_path!r}"
        )
    return load_image_folder(name_or_path, seed=seed, **common)


# The shared pipeline.


def _training_pipeline(
    images,
    batch_size,
    shuffle,
    augment,
    seed,
    num_examples=None,
    cache=True,
):
    """Caches, shuffles examples, flips, batches and prefetches."""
    if cache:
        images = images.cache()
    if shuffle:
        images = images.shuffle(
            _shuffle_buffer_size(images, num_examples),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    if augment:
        images = _random_flips(images, seed)
    images = images.batch(batch_size, drop_remainder=True)
    return images.prefetch(tf.data.AUTOTUNE)


def _random_flips(images, seed):
    """Flips each image left-right with probability 1/2, anew every epoch.

    `tf.image.random_flip_left_right(image, seed=seed)` inside `map` would
    repeat the same flips every epoch when seeded (its random state is
    re-created with each iteration), so the coin flips come from a
    `tf.data.Dataset.random` stream that is re-randomised every epoch.
    """
    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((images, coins)).map(
        lambda image, coin: tf.where(
            coin % 2 == 0, tf.reverse(image, axis=[-2]), image
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _shuffle_buffer_size(images, num_examples):
    """The dataset size when known, capped at `_MAX_SHUFFLE_BUFFER`."""
    if num_examples is None:
        num_examples = int(images.cardinality())
    if num_examples <= 0:  # Unknown or infinite cardinality.
        return _MAX_SHUFFLE_BUFFER
    return min(num_examples, _MAX_SHUFFLE_BUFFER)


def _to_rgb(image):
    """Repeats a grayscale channel to RGB, or drops an alpha channel."""
    image = image[..., :3]
    shape = tf.shape(image)
    return tf.broadcast_to(image, tf.stack([shape[0], shape[1], 3]))


# Oxford Flowers 102: download and fail-fast checks.


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


# Image folders.


def _find_image_files(path):
    """Sorted paths of the image files under `path`, searched recursively."""
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No folder at {path!r}; expected a folder of images "
            f"({accepted}, any case). Received: path={path!r}"
        )
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(
            f"No image files in the folder {path!r} or its subfolders; "
            f"accepted extensions: {accepted} (any case)."
        )
    return files


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


# Synthetic flowers.


def _random_flower_params(rng, num_images):
    """Per-image parameters, in image-relative units (the image is 1 x 1)."""
    n = num_images
    dark = rng.random(n) < 0.5
    brightness = np.where(dark, rng.uniform(0.05, 0.25, n), rng.uniform(0.75, 0.95, n))
    tint = rng.uniform(-0.05, 0.05, (n, 3))
    petal_hsv = np.stack(
        [rng.random(n), rng.uniform(0.7, 1.0, n), rng.uniform(0.75, 1.0, n)],
        axis=-1,
    )
    yellow, brown = np.array([0.95, 0.8, 0.1]), np.array([0.45, 0.25, 0.08])
    disc_colour = np.where(rng.random((n, 1)) < 0.5, yellow, brown)
    radius = rng.uniform(0.2, 0.35, n)
    return {
        "background": np.clip(brightness[:, None] + tint, 0.0, 1.0),
        "petal_colour": _hsv_to_rgb(petal_hsv),
        "disc_colour": np.clip(disc_colour + rng.uniform(-0.05, 0.05, (n, 3)), 0, 1),
        "num_petals": rng.integers(4, 10, n),
        "phase": rng.uniform(0.0, 2.0 * np.pi, n),
        "sharpness": rng.uniform(0.4, 1.0, n),
        # Centres within [0.35, 0.65] and radii <= 0.35 keep the flower
        # away from the corners (their distance to the centre is >= 0.49).
        "centre_x": rng.uniform(0.35, 0.65, n),
        "centre_y": rng.uniform(0.35, 0.65, n),
        "radius": radius,
        "disc_radius": radius * rng.uniform(0.15, 0.3, n),
    }


def _draw_flowers(flowers, height, width):
    """Renders flowers supersampled, then averages down to `(height, width)`."""
    scale = _SYNTHETIC_SUPERSAMPLING
    ys = (np.arange(height * scale, dtype=np.float32) + 0.5) / (height * scale)
    xs = (np.arange(width * scale, dtype=np.float32) + 0.5) / (width * scale)

    def per_image(name):
        return flowers[name].astype(np.float32)[:, None, None]

    dy = ys[None, :, None] - per_image("centre_y")
    dx = xs[None, None, :] - per_image("centre_x")
    distance = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, dx)
    petal_edge = per_image("radius") * np.abs(
        np.cos(per_image("num_petals") * (angle - per_image("phase")) / 2.0)
    ) ** per_image("sharpness")
    petal = (distance < petal_edge)[..., None]
    disc = (distance < per_image("disc_radius"))[..., None]
    shade = (0.6 + 0.4 * np.minimum(distance / per_image("radius"), 1.0))[..., None]

    def colour(name):
        return flowers[name].astype(np.float32)[:, None, None, :]

    image = np.where(petal, colour("petal_colour") * shade, colour("background"))
    image = np.where(disc, colour("disc_colour"), image)
    image = image.reshape(len(image), height, scale, width, scale, 3)
    return image.mean(axis=(2, 4))


def _hsv_to_rgb(hsv):
    """Vectorised HSV to RGB for an array of shape `(..., 3)` in `[0, 1]`."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    weight = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[..., None] * (1.0 - saturation[..., None] * weight)


# Argument checks.


def _check_loader_args(batch_size, shuffle, augment, seed):
    check_positive_int("batch_size", batch_size)
    _check_bool("shuffle", shuffle)
    _check_bool("augment", augment)
    _check_seed(seed, allow_none=True)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")


def _check_seed(seed, allow_none):
    if (seed is None and allow_none) or (is_int(seed) and seed >= 0):
        return
    expected = "a non-negative integer" + (" or None" if allow_none else "")
    raise ValueError(f"`seed` must be {expected}. Received: seed={seed!r}")


def _check_enough_images(num_images, batch_size, what):
    if num_images < batch_size:
        raise ValueError(
            f"{what} has {num_images} images, fewer than one batch, so "
            "dropping the last partial batch leaves nothing. Use a smaller "
            f"batch size. Received: batch_size={batch_size}"
        )
