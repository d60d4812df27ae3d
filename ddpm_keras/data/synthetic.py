"""Synthetic flowers: procedurally drawn, optionally in a few colour classes."""

import numpy as np
import tensorflow as tf

from ddpm_keras.data.common import _check_enough_images
from ddpm_keras.data.common import _check_loader_args
from ddpm_keras.data.common import _check_seed
from ddpm_keras.data.common import _training_pipeline
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import image_size
from ddpm_keras.utils.checks import is_int

_SUPERSAMPLING = 2
_CHUNK = 128

# The labelled classes: a petal colour family (an HSV hue, +- _CLASS_HUE_SPREAD)
# and a petal count each. Neighbouring hues are >= 0.11 (40 degrees) apart
# from range to range, so the flower's hue alone tells the class.
_CLASSES = (
    # name, petal hue, number of petals
    ("red-5-petals", 0.0, 5),
    ("yellow-8-petals", 0.15, 8),
    ("blue-6-petals", 0.61, 6),
    ("purple-4-petals", 0.79, 4),
)
_CLASS_HUE_SPREAD = 0.025
SYNTHETIC_CLASS_NAMES = tuple(name for name, _, _ in _CLASSES)

_YELLOW_DISC = np.array([0.95, 0.8, 0.1])
_BROWN_DISC = np.array([0.45, 0.25, 0.08])
# Pixels whose chroma (max - min of RGB in [0, 1]) is below this are
# background (chroma <= 0.1) or antialiased edges; petals have >= 0.3.
_FLOWER_CHROMA = 0.2


def synthetic_flowers(
    num_images, img_size=64, seed=0, return_params=False, labels=None
):
    """Draws simple flower-like images, deterministically from a seed.

    Each image is a plain background (light or dark, low saturation) with
    one flower: petals bounded by the polar curve
    `r = R * |cos(k * (theta - phi) / 2)| ** p` (`k` from 4 to 9 petals) in
    a saturated colour shaded darker towards the middle, and a yellow or
    brown disc in the centre. The flower's position and size vary, but it
    never reaches the image corners. Edges are antialiased by drawing at
    twice the resolution and averaging.

    With `labels`, each image's flower is drawn from its class (see
    `SYNTHETIC_CLASS_NAMES`): the petal hue is within 0.025 of the class's
    hue (red 0.0, yellow 0.15, blue 0.61, purple 0.79) and the petal count
    is the class's (5, 8, 6, 4); yellow flowers always have a brown disc.
    Everything else is drawn as without labels.

    Args:
        num_images: Integer, the number of images.
        img_size: Integer, or tuple of 2 integers `(height, width)`, the
            image size. Defaults to `64`.
        seed: Integer, the seed; the same seed gives the same images.
            Defaults to `0`.
        return_params: Boolean, also return each image's drawing
            parameters (for labels, or to train a feature extractor).
            Defaults to `False`.
        labels: `None`, or integer array of shape `(num_images,)` with
            values in `[0, len(SYNTHETIC_CLASS_NAMES))`, the class of each
            image. `None` draws the unlabelled flowers (any hue, 4 to 9
            petals), the same images as before labels existed. Defaults to
            `None`.

    Returns:
        A float32 NumPy array of shape `(num_images, height, width, 3)` with
        values in `[-1, 1]`; with `return_params=True`, `(images, params)`
        where `params` maps names (`"num_petals"`, `"radius"`,
        `"centre_x"`, `"petal_colour"`, `"background"`, ...; with `labels`,
        also `"label"`) to arrays of `num_images` rows, lengths relative to
        the image size.

    Example:

    >>> images = synthetic_flowers(16, img_size=32, seed=0)
    >>> images.shape
    (16, 32, 32, 3)
    >>> red_and_blue = synthetic_flowers(2, img_size=32, labels=[0, 2])
    >>> synthetic_class_of(red_and_blue)
    array([0, 2], dtype=int32)
    """
    check_positive_int("num_images", num_images)
    height, width = image_size(img_size)
    _check_seed(seed, allow_none=False)
    rng = np.random.default_rng(seed)
    flowers = _random_flower_params(rng, num_images)
    if labels is not None:
        labels = _check_labels(labels, num_images)
        flowers = _class_flower_params(rng, flowers, labels)
    images = draw_flowers(flowers, (height, width))
    return (images, flowers) if return_params else images


def draw_flowers(params, img_size):
    """Draws flowers from their parameters (as `synthetic_flowers(..., return_params=True)` returns them).

    Args:
        params: Dict of per-image arrays: `"num_petals"`, `"radius"`,
            `"centre_x"`, ... (any may be changed, e.g. the petal counts).
        img_size: Integer, or tuple of 2 integers `(height, width)`.

    Returns:
        A float32 NumPy array `(num_images, height, width, 3)` in `[-1, 1]`.
    """
    height, width = image_size(img_size)
    num_images = len(params["num_petals"])
    images = np.empty((num_images, height, width, 3), dtype=np.float32)
    for start in range(0, num_images, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        images[chunk] = _draw_flowers({name: values[chunk] for name, values in params.items()}, height, width)
    return images * 2.0 - 1.0


def synthetic_class_of(images):
    """The synthetic class of each image, from the hue of its flower.

    The flower's hue is the direction of the summed opponent-colour vectors
    `(r - (g + b) / 2, sqrt(3) / 2 * (g - b))` of the image's saturated
    pixels (chroma above 0.2, so the background and most of the disc's
    edge do not count); the class is the one whose petal hue is nearest.
    It recovers the labels of `synthetic_flowers(..., labels=...)` for more
    than 99% of images at 16 px and above, and judges generated samples the
    same way.

    Args:
        images: Array of shape `(num_images, height, width, 3)` with values
            in `[-1, 1]` (NumPy, or any tensor NumPy can convert).

    Returns:
        An int32 NumPy array of shape `(num_images,)`, indices into
        `SYNTHETIC_CLASS_NAMES`; `-1` for an image with no saturated pixel
        (no flower to judge).

    Example:

    >>> images = synthetic_flowers(4, img_size=32, labels=[0, 1, 2, 3])
    >>> synthetic_class_of(images)
    array([0, 1, 2, 3], dtype=int32)
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "`images` must have shape (num_images, height, width, 3). "
            f"Received: images.shape={images.shape}"
        )
    hue, has_flower = _flower_hue(images)
    pure_colours = _hsv_to_rgb(np.array([[hue, 1.0, 1.0] for _, hue, _ in _CLASSES]))
    centres = _hue_of(pure_colours)
    distance = np.abs(hue[:, None] - centres[None, :])
    distance = np.minimum(distance, 1.0 - distance)  # Hue is circular.
    classes = np.argmin(distance, axis=1).astype(np.int32)
    return np.where(has_flower, classes, -1).astype(np.int32)


def load_synthetic(
    num_images=1024,
    img_size=64,
    batch_size=32,
    shuffle=True,
    augment=True,
    seed=0,
    with_labels=False,
):
    """Loads `synthetic_flowers` images as image batches.

    This exists so that a newcomer can watch a model learn within minutes
    on a CPU, with no download, and for tests and benchmarks. It is not a
    stand-in for the real dataset: the images are far simpler than photos.

    With `with_labels=True` the images are drawn in classes (see
    `SYNTHETIC_CLASS_NAMES` and `synthetic_flowers`), balanced: each class
    has `num_images // 4` or one more images, in an order drawn from the
    seed. Without labels the images are those of
    `synthetic_flowers(num_images, img_size, seed=seed)`.

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
        seed: Integer, the seed of the images, the labels, the shuffling and
            the flipping. Defaults to `0`.
        with_labels: Boolean, whether to yield `(images, labels)` with each
            image's class. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of float32 tensors of shape
        `(batch_size, height, width, 3)` with values in `[-1, 1]`; with
        `with_labels=True`, of `(images, labels)` with int32 labels of shape
        `(batch_size,)`, and the dataset's `class_names` attribute is
        `list(SYNTHETIC_CLASS_NAMES)`.

    Example:

    >>> dataset = load_synthetic(256, img_size=32, batch_size=16)
    >>> len(dataset)
    16
    >>> dataset = load_synthetic(256, img_size=32, batch_size=16, with_labels=True)
    >>> dataset.class_names
    ['red-5-petals', 'yellow-8-petals', 'blue-6-petals', 'purple-4-petals']
    """
    check_positive_int("num_images", num_images)
    _check_loader_args(batch_size, shuffle, augment, seed, with_labels)
    _check_seed(seed, allow_none=False)
    _check_enough_images(num_images, batch_size, "The synthetic dataset")
    if with_labels:
        labels = synthetic_labels(num_images, seed=seed)
        images = synthetic_flowers(num_images, img_size, seed=seed, labels=labels)
        examples = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        images = synthetic_flowers(num_images, img_size=img_size, seed=seed)
        examples = tf.data.Dataset.from_tensor_slices(images)
    return _training_pipeline(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        num_examples=num_images,
        cache=False,  # Already in memory.
        class_names=SYNTHETIC_CLASS_NAMES if with_labels else None,
    )


def synthetic_labels(num_images, seed=0):
    """Balanced synthetic class labels in an order drawn from a seed.

    Each class gets `num_images // len(SYNTHETIC_CLASS_NAMES)` labels or one
    more; the random order comes from a stream separate from the one
    `synthetic_flowers(seed=seed)` draws the flowers from.

    Args:
        num_images: Integer, the number of labels.
        seed: Integer, the seed. Defaults to `0`.

    Returns:
        An int32 NumPy array of shape `(num_images,)`.

    Example:

    >>> np.bincount(synthetic_labels(10, seed=0))
    array([3, 3, 2, 2])
    """
    check_positive_int("num_images", num_images)
    _check_seed(seed, allow_none=False)
    rng = np.random.default_rng([seed, 1])  # Not the flowers' stream.
    labels = np.arange(num_images) % len(_CLASSES)
    return rng.permutation(labels).astype(np.int32)


def _check_labels(labels, num_images):
    array = np.asarray(labels)
    num_classes = len(_CLASSES)
    valid = (
        array.shape == (num_images,)
        and (array.dtype.kind in "iu" or all(is_int(v) for v in array.tolist()))
        and bool(np.all((array >= 0) & (array < num_classes)))
    )
    if not valid:
        shown = labels if array.size <= 8 else f"array of shape {array.shape}"
        raise ValueError(
            f"`labels` must be {num_images} integers (one per image) in "
            f"[0, {num_classes}), indices into SYNTHETIC_CLASS_NAMES. "
            f"Received: labels={shown!r}"
        )
    return array.astype(np.int64)


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
    disc_colour = np.where(rng.random((n, 1)) < 0.5, _YELLOW_DISC, _BROWN_DISC)
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


def _class_flower_params(rng, flowers, labels):
    """Redraws the class-specific parameters (petal hue and count, disc).

    Draws after `_random_flower_params` from the same generator, so the
    unlabelled flowers of a seed are unchanged.
    """
    n = len(labels)
    hues = np.array([hue for _, hue, _ in _CLASSES])[labels]
    petal_hsv = np.stack(
        [
            (hues + rng.uniform(-_CLASS_HUE_SPREAD, _CLASS_HUE_SPREAD, n)) % 1.0,
            rng.uniform(0.7, 1.0, n),
            rng.uniform(0.75, 1.0, n),
        ],
        axis=-1,
    )
    yellow = (labels == SYNTHETIC_CLASS_NAMES.index("yellow-8-petals"))[:, None]
    brown = np.clip(_BROWN_DISC + rng.uniform(-0.05, 0.05, (n, 3)), 0, 1)
    return {
        **flowers,
        "petal_colour": _hsv_to_rgb(petal_hsv),
        "num_petals": np.array([petals for _, _, petals in _CLASSES])[labels],
        "disc_colour": np.where(yellow, brown, flowers["disc_colour"]),
        "label": labels,
    }


def _draw_flowers(flowers, height, width):
    """Renders flowers supersampled, then averages down to `(height, width)`."""
    scale = _SUPERSAMPLING
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


def _hue_of(rgb):
    """The opponent-colour hue in `[0, 1)` of colours of shape `(..., 3)`."""
    x, y = _opponent_colour(rgb)
    return (np.arctan2(y, x) / (2.0 * np.pi)) % 1.0


def _opponent_colour(rgb):
    """`(r - (g + b) / 2, sqrt(3) / 2 * (g - b))`: its angle is the hue."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return red - (green + blue) / 2.0, np.sqrt(3.0) / 2.0 * (green - blue)


def _flower_hue(images):
    """Each image's flower hue (see `synthetic_class_of`) and whether any.

    Returns `(hue, has_flower)`: hue in `[0, 1)`, float64 of shape
    `(num_images,)`, and a boolean mask of the images with saturated pixels.
    """
    rgb = np.clip((images.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
    saturated = rgb.max(axis=-1) - rgb.min(axis=-1) > _FLOWER_CHROMA
    summed = np.where(saturated[..., None], rgb, 0.0)
    x, y = _opponent_colour(summed)
    hue = (np.arctan2(y.sum(axis=(1, 2)), x.sum(axis=(1, 2))) / (2.0 * np.pi)) % 1.0
    return hue, saturated.any(axis=(1, 2))
