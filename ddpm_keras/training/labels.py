"""Class labels in training: their checks and the label dropout of classifier-free guidance.

A class-conditional `DiffusionModel` (its network built with
`build_unet(..., num_classes=N)`) trains on `(images, labels)` batches, one
int class in `[0, N)` per image. In each training step every label is
replaced by the null label `N` with probability `cond_drop_prob` (Ho &
Salimans 2022, Algorithm 1), so that one network learns both the
conditional and the unconditional model that classifier-free guidance
combines when sampling.

The checks raise one-line `ValueError`s: `check_batch` on the structure
of a batch (labels or none, their shape and dtype: before `fit` and
`evaluate` on a `tf.data.Dataset`'s element spec, and on every input while
a step is traced, at the first batch, on every backend),
`check_label_values` on the values of a label array (before `fit` and
`evaluate`, on the arrays they are given: `check_fit_arguments`). Only
`ddpm_keras.model` and `ddpm_keras.training.steps` import this module.
"""

import numbers

import keras
import numpy as np
from keras import ops

from ddpm_keras.utils.checks import shorten


def check_cond_drop_prob(cond_drop_prob):
    """`cond_drop_prob` as a float, or a `ValueError` unless it is a number in `[0, 1)` (not a boolean)."""
    if (
        isinstance(cond_drop_prob, bool)
        or not isinstance(cond_drop_prob, numbers.Real)
        or not 0.0 <= cond_drop_prob < 1.0
    ):
        raise ValueError(
            "cond_drop_prob must be a float in [0, 1), the probability of training on the null label "
            f"(0.1 to 0.2 is usual). Received: cond_drop_prob={cond_drop_prob!r}"
        )
    return float(cond_drop_prob)


def check_class_names(class_names, num_classes):
    """`class_names` as a list of `num_classes` strings (or `None`), or a one-line `ValueError`."""
    if class_names is None:
        return None
    if num_classes is None:
        raise ValueError(
            "class_names needs a class-conditional network (build_unet(..., num_classes=N)); this one is "
            f"unconditional. Received: class_names={shorten(class_names)}"
        )
    if isinstance(class_names, str) or not isinstance(class_names, (list, tuple)):
        raise ValueError(
            f"class_names must be a list of {num_classes} strings. Received: class_names={shorten(class_names)}"
        )
    if len(class_names) != num_classes or not all(isinstance(name, str) for name in class_names):
        raise ValueError(
            f"class_names must be a list of num_classes={num_classes} strings, one per class. "
            f"Received: {len(class_names)} names: {shorten(class_names)}"
        )
    return list(class_names)


def unconditional_error(labels):
    """The `ValueError` of labels given to an unconditional model."""
    return ValueError(
        "This model's network is unconditional, but labels were given: pass images only, or build the "
        f"network with num_classes (build_unet(..., num_classes=N)). Received: labels of shape {_shape(labels)}"
    )


def batch_labels(num_classes, images, labels):
    """The labels of a training or validation batch, checked (`check_batch`): int32 `(batch,)` or `None`."""
    check_batch(num_classes, images, labels)
    return None if labels is None else ops.cast(labels, "int32")


def check_batch(num_classes, images, labels, name="labels"):
    """Checks that a batch's labels fit the model, from their static shapes and dtypes.

    Args:
        num_classes: `None` (an unconditional model) or an integer.
        images: The batch's images (a tensor or a `tf.TensorSpec`).
        labels: The batch's labels (the `y` of `(x, y)`), or `None`.
        name: String, what the message calls them. Defaults to `"labels"`.

    Raises:
        ValueError: One line: labels given to an unconditional model, none
            to a conditional one, or labels not integers `(batch,)`.
    """
    if num_classes is None:
        if labels is not None:
            raise unconditional_error(labels)
        return None
    if labels is None:
        raise ValueError(
            f"This model is class-conditional (num_classes={num_classes}) and trains on (images, labels): pass "
            "fit(images, labels) or a dataset of (images, labels) tuples. Received: images only"
        )
    _check_structure(labels, _leading(images), name)


def check_label_values(num_classes, labels, name="labels"):
    """Checks that an array of labels (NumPy or a tensor) holds classes in `[0, num_classes)`.

    Args:
        num_classes: `None` (nothing to check) or an integer.
        labels: `None` (nothing to check) or an integer array.
        name: String, what the message calls them. Defaults to `"labels"`.

    Raises:
        ValueError: One line with the range found.
    """
    if labels is None or num_classes is None:
        return
    values = np.asarray(ops.convert_to_numpy(labels))
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"{name} must be classes in [0, num_classes) = [0, {num_classes}) (the null label {num_classes} is "
            f"drawn by the model, cond_drop_prob). Received: {name} from {values.min()} to {values.max()}"
        )


def check_fit_arguments(num_classes, x, y, validation_data=None):
    """One-line errors, before any tracing, for labels of `fit` or `evaluate` that do not fit the model.

    Arrays: their shape, dtype and range; a `tf.data.Dataset`: the
    structure of its elements (labels or none, their shape and dtype).
    A generator or a `PyDataset` is checked in the step, as it is traced.
    """
    pairs = [(x, y, "labels")]
    if isinstance(validation_data, (list, tuple)):
        val_x, val_y, _ = keras.utils.unpack_x_y_sample_weight(tuple(validation_data))
        pairs.append((val_x, val_y, "validation labels"))
    elif validation_data is not None:
        pairs.append((validation_data, None, "validation labels"))
    for images, labels, name in pairs:
        if hasattr(images, "element_spec"):
            images, labels, _ = keras.utils.unpack_x_y_sample_weight(images.element_spec)
            check_batch(num_classes, images, labels, name)
        elif hasattr(images, "shape"):
            labels = labels if labels is None or hasattr(labels, "shape") else np.asarray(labels)
            check_batch(num_classes, images, labels, name)
            check_label_values(num_classes, labels, name)


def drop_labels(labels, null_label, cond_drop_prob, seed):
    """`labels` (int32) with each replaced by `null_label` with probability `cond_drop_prob`.

    One uniform draw per label from `seed` (a `keras.random.SeedGenerator`,
    or what `keras.random` takes as a seed); no draw when `cond_drop_prob`
    is 0.
    """
    labels = ops.cast(labels, "int32")
    if not cond_drop_prob:
        return labels
    keep = ops.greater_equal(keras.random.uniform(ops.shape(labels), seed=seed), cond_drop_prob)
    return ops.where(keep, labels, ops.full_like(labels, null_label))


def _check_structure(labels, num_images, name="labels"):
    shape = _static_shape(labels)
    if shape is None or len(shape) != 1:
        hint = " (flatten labels of shape (batch, 1))" if shape is not None and shape[1:] == (1,) else ""
        raise ValueError(
            f"{name} must have shape (batch,), one integer class per image{hint}. "
            f"Received: {name}.shape={'unknown' if shape is None else shape}"
        )
    if num_images is not None and shape[0] is not None and shape[0] != num_images:
        raise ValueError(
            f"{name} must hold one class per image. Received: {shape[0]} labels for {num_images} images"
        )
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" not in dtype:
        raise ValueError(f"{name} must be integers (class indices). Received: {name}.dtype={dtype}")


def _static_shape(value):
    """The static shape as a tuple (`None` for unknown sizes), or `None` when even the rank is unknown."""
    shape = value.shape
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(None if size is None else int(size) for size in shape)


def _leading(images):
    shape = _static_shape(images)
    return shape[0] if shape else None


def _shape(labels):
    return _static_shape(labels) if hasattr(labels, "shape") else type(labels).__name__
