"""The pipeline every loader shares, image preprocessing and argument checks.

Every loader builds its `tf.data.Dataset` the same way:

    decode -> centre crop + resize + scale -> cache -> shuffle examples
    -> random left-right flip -> batch (drop remainder) -> prefetch

Unlike the keras.io example, examples are shuffled *before* batching (the
example shuffled whole batches, so the same images always met in a batch),
and the flip comes after the cache so that every epoch sees fresh flips.
An example is an image, or an `(image, label)` pair; the label travels with
its image through the shuffle and is left alone by the flip.
"""

import numpy as np
import tensorflow as tf

from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import image_size
from ddpm_keras.utils.checks import is_int

# The shuffle buffer holds preprocessed float32 images; 10,000 covers the
# whole of Oxford Flowers 102 (8,189 images, 400 MB at 64 px).
_MAX_SHUFFLE_BUFFER = 10_000


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


def _to_rgb(image):
    """Repeats a grayscale channel to RGB, or drops an alpha channel."""
    image = image[..., :3]
    shape = tf.shape(image)
    return tf.broadcast_to(image, tf.stack([shape[0], shape[1], 3]))


# The shared pipeline.


def _training_pipeline(
    examples,
    batch_size,
    shuffle,
    augment,
    seed,
    num_examples=None,
    cache=True,
    class_names=None,
):
    """Caches, shuffles examples, flips, batches and prefetches.

    `examples` yields images, or `(image, label)` pairs; with `class_names`
    (a sequence of strings) the returned dataset carries them as
    `dataset.class_names`, as `keras.utils.image_dataset_from_directory`
    does.
    """
    if cache:
        examples = examples.cache()
    if shuffle:
        examples = examples.shuffle(
            _shuffle_buffer_size(examples, num_examples),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    if augment:
        examples = _random_flips(examples, seed)
    examples = examples.batch(batch_size, drop_remainder=True)
    dataset = examples.prefetch(tf.data.AUTOTUNE)
    if class_names is not None:
        dataset.class_names = list(class_names)
    return dataset


def _random_flips(examples, seed):
    """Flips each image left-right with probability 1/2, anew every epoch.

    `tf.image.random_flip_left_right(image, seed=seed)` inside `map` would
    repeat the same flips every epoch when seeded (its random state is
    re-created with each iteration), so the coin flips come from a
    `tf.data.Dataset.random` stream that is re-randomised every epoch.
    Labels pass through unchanged.
    """
    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def flip(example, coin):
        def flipped(image):
            return tf.where(coin % 2 == 0, tf.reverse(image, axis=[-2]), image)

        if isinstance(example, tuple):
            image, label = example
            return flipped(image), label
        return flipped(example)

    return tf.data.Dataset.zip((examples, coins)).map(
        flip, num_parallel_calls=tf.data.AUTOTUNE
    )


def _shuffle_buffer_size(examples, num_examples):
    """The dataset size when known, capped at `_MAX_SHUFFLE_BUFFER`."""
    if num_examples is None:
        num_examples = int(examples.cardinality())
    if num_examples <= 0:  # Unknown or infinite cardinality.
        return _MAX_SHUFFLE_BUFFER
    return min(num_examples, _MAX_SHUFFLE_BUFFER)


# Argument checks.


def _check_loader_args(batch_size, shuffle, augment, seed, with_labels=False):
    check_positive_int("batch_size", batch_size)
    _check_bool("shuffle", shuffle)
    _check_bool("augment", augment)
    _check_bool("with_labels", with_labels)
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
