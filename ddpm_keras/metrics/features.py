"""Feature extractors for sample-quality metrics, and batched extraction to NumPy.

`inception_features` and `inception_classifier` wrap Keras's `InceptionV3`
the way the FID and Inception Score protocols use it: images in `[-1, 1]`
(what `DiffusionModel.generate_images` returns), resized to 299x299
bilinearly inside the model. Any Keras model `images -> features` (or
`images -> class probabilities` for the Inception Score) can stand in for
them.

Keras's InceptionV3 weights are a port of the ImageNet-trained Keras model,
not the 2015 TensorFlow Inception graph that published FIDs use: numbers
computed with them compare checkpoints of one project but are not the
numbers papers report.
"""

import hashlib
import json
import os

import keras
import numpy as np
from keras import ops

from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.download import keras_home
from ddpm_keras.utils.download import one_line
from ddpm_keras.utils.download import probe_host
from ddpm_keras.utils.progress import progress_bar

INCEPTION_SIZE = 299
_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
_WEIGHTS_FILES = {
    # include_top: (file name, md5 as keras.applications checks it)
    False: ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "bcbd6486424b2319ff4ef7d526e38f63"),
    True: ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "9a0d58056eeedaa3f26cb7ebd46da564"),
}


class WeightsUnavailableError(RuntimeError):
    """The extractor's weights are neither on disk nor downloadable now."""


def inception_features(weights="imagenet", name="inception_v3_features"):
    """InceptionV3's 2048 pooled features of images in `[-1, 1]`, for FID and KID.

    Args:
        weights: `"imagenet"` (Keras's weights, downloaded on first use to
            `~/.keras/models/`, or `$KERAS_HOME/models/`), the path of a
            local `.h5` weights file of `InceptionV3(include_top=False)`, or
            `None` (random weights, for tests). Defaults to `"imagenet"`.
        name: String, the model's name. Defaults to
            `"inception_v3_features"`.

    Returns:
        A Keras model `(N, H, W, 3)` in `[-1, 1]` of any size ->
        `(N, 2048)` float32: bilinear resize to 299x299, then
        `InceptionV3(include_top=False, pooling="avg")`.

    Raises:
        WeightsUnavailableError: `"imagenet"` weights are not in the cache
            and cannot be downloaded; the message names the file, the
            cache folder and how to pass a path.

    Example:

    >>> extractor = inception_features()          # or weights="/data/inception_notop.h5"
    >>> features = extractor.predict(images)      # (N, 2048)
    """
    return _inception(weights, include_top=False, name=name)


def inception_classifier(weights="imagenet", name="inception_v3_classifier"):
    """InceptionV3's ImageNet class probabilities `(N, 1000)` of images in `[-1, 1]`, for the Inception Score.

    Args:
        weights: `"imagenet"`, the path of a local `.h5` weights file of the
            full `InceptionV3`, or `None`. Defaults to `"imagenet"`.
        name: String, the model's name. Defaults to
            `"inception_v3_classifier"`.

    Returns:
        A Keras model `(N, H, W, 3)` in `[-1, 1]` -> `(N, 1000)` softmax
        probabilities.

    Raises:
        WeightsUnavailableError: as `inception_features`.
    """
    return _inception(weights, include_top=True, name=name)


def _inception(weights, include_top, name):
    weights = resolve_inception_weights(weights, include_top)
    inputs = keras.Input((None, None, 3), name="images")
    x = keras.layers.Resizing(INCEPTION_SIZE, INCEPTION_SIZE, interpolation="bilinear", name="resize_299")(inputs)
    try:
        backbone = keras.applications.InceptionV3(
            include_top=include_top,
            weights=weights,
            input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
            pooling=None if include_top else "avg",
        )
    except Exception as error:  # noqa: BLE001 - a weights file that does not load is one line naming it
        if weights is None:
            raise
        expected = _WEIGHTS_FILES[bool(include_top)][0]
        raise ValueError(
            f"Cannot read {weights} as InceptionV3 weights ({type(error).__name__}: {one_line(error)[:200]}): "
            f"pass Keras's {expected}."
        ) from None
    return keras.Model(inputs, backbone(x), name=name)


def resolve_inception_weights(weights, include_top=False):
    """The weights argument for `InceptionV3`: a local file path, or `None`.

    `"imagenet"` becomes the cached file in `<KERAS_HOME>/models/`, downloaded
    there first if it is missing and the server answers within a few
    seconds; otherwise a one-line `WeightsUnavailableError`.
    """
    if weights is None:
        return None
    filename, md5 = _WEIGHTS_FILES[bool(include_top)]
    if weights != "imagenet":
        path = os.path.expanduser(os.fspath(weights))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No InceptionV3 weights file at {path}. Pass the path of {filename} "
                "(or weights='imagenet' to download it)."
            )
        return path
    cache_dir = os.path.join(keras_home(), "models")
    cached = os.path.join(cache_dir, filename)
    if os.path.isfile(cached):
        return cached
    reason = probe_host(_WEIGHTS_URL)
    if reason is None:
        try:
            return keras.utils.get_file(filename, _WEIGHTS_URL + filename, cache_subdir="models", file_hash=md5)
        except Exception as error:  # noqa: BLE001 - any download failure becomes the one-line error
            reason = one_line(error)
    raise WeightsUnavailableError(
        f"The InceptionV3 weights {filename} are not in {cache_dir} and could not be downloaded "
        f"({reason}). Copy the file there from a machine with internet access ({_WEIGHTS_URL}{filename}), "
        "or pass its path: weights='/path/to/" + filename + "' (command line: --inception-weights PATH)."
    )


def extractor_id(model):
    """A short identity of a feature extractor: its name and a hash of its layers and weights.

    The hash covers each layer's class and configuration (its name aside,
    since Keras numbers unnamed layers per session) and every weight, so
    reference statistics cached under one id are not reused with another
    extractor.
    """
    digest = hashlib.blake2b(digest_size=6)
    for layer in model._flatten_layers(include_self=False):
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        digest.update(f"{type(layer).__name__}{json.dumps(config, sort_keys=True, default=str)}".encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight)).tobytes())
    return f"{model.name}-{digest.hexdigest()}"


def image_batches(data, batch_size=64):
    """Yields float32 NumPy batches `(n, H, W, C)` from an array or an iterable of batches.

    Args:
        data: An array or tensor `(N, H, W, C)` (split into batches of
            `batch_size`), or a `tf.data.Dataset` or other iterable of
            batches; elements that are `(images, labels)` tuples give their
            images.
        batch_size: Integer, the batch size for arrays. Defaults to `64`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if _is_array(data):
        images = _as_images(data)
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
    for element in iterator:
        if isinstance(element, (tuple, list)):
            element = element[0]
        yield _as_images(element)


def extract_features(model, data, batch_size=64, verbose=0):
    """Runs `model` over every image of `data`; returns the outputs as float64 NumPy `(N, D)`.

    Batches are padded to `batch_size` so that the model is compiled for one
    shape only.

    Args:
        model: A Keras model `images -> (batch, D)`.
        data: Images, as `image_batches` takes them.
        batch_size: Integer, images per model call. Defaults to `64`.
        verbose: `0` or `1`, show a progress bar over images. Defaults to
            `0`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    total = len(data) if _is_array(data) else None
    progbar = progress_bar(total, unit_name="image") if verbose else None
    outputs = []
    for batch in image_batches(data, batch_size):
        for start in range(0, len(batch), batch_size):
            outputs.append(_predict_padded(model, batch[start:start + batch_size], batch_size))
            if progbar is not None:
                progbar.add(len(outputs[-1]))
    if progbar is not None and total is None:
        progbar.update(sum(len(o) for o in outputs), finalize=True)  # ends a bar of unknown length
    if not outputs:
        raise ValueError("No images to extract features from: the data is empty.")
    features = np.concatenate(outputs, axis=0)
    if features.ndim != 2:
        raise ValueError(
            f"The feature extractor {model.name!r} must return (batch, features). "
            f"Received: outputs of shape {features.shape}"
        )
    return features


def _predict_padded(model, images, batch_size):
    count = len(images)
    if count < batch_size:
        images = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
    outputs = np.asarray(ops.convert_to_numpy(model.predict_on_batch(images)), dtype=np.float64)
    return outputs[:count]


def _is_array(data):
    return isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype") and not hasattr(data, "element_spec"))


def _as_images(batch):
    images = np.asarray(ops.convert_to_numpy(batch), dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "Images must be a batch of shape (N, H, W, C) with N >= 1. "
            f"Received: shape={images.shape}"
        )
    return images
