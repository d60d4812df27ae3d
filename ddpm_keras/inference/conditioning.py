"""Labels and classifier-free guidance of a sampling request, checked and fed to the compiled chains.

A request on a class-conditional model becomes a `Conditioning`: one int32
label per image (the null label for unconditional images) and the guidance
scale and rescale. The chains take them as their last inputs
(`chain_inputs`), so one compiled chain serves every label and scale, and
`with_guidance` turns the conditional network into the `model_fn(x_t, t)`
the samplers call (`samplers.guided_model_fn`). A request with a
noise-aware classifier (`classifier_guidance.py`) adds its labels and scale
as the chain's inputs before those, and its gradient to the guided output.
The model is read through `num_classes`, `null_label` and `class_names`
only (and, for classifier guidance, `diffusion` and `prediction_type`).
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.inference import classifier_guidance
from ddpm_keras.utils.checks import check_number
from ddpm_keras.utils.checks import shorten


class Conditioning(NamedTuple):
    """The labels of a request (int32, one per image; `None` for an unconditional model) and its guidance."""

    labels: np.ndarray
    guidance_scale: float
    guidance_rescale: float
    classifier: classifier_guidance.ClassifierGuidance = None


def request(
    model, labels, num_images, guidance_scale=1.0, guidance_rescale=0.0, classifier=None, classifier_scale=1.0
):
    """The checked `Conditioning` of a request, or `None` for an unconditional model.

    Args:
        model: A `DiffusionModel`.
        labels: `None`, one class, or one per image (integers or names).
        num_images: Integer, the images of the request.
        guidance_scale: Float >= 0. Defaults to `1.0`.
        guidance_rescale: Float in `[0, 1]`. Defaults to `0.0`.
        classifier: `None` or a `NoisyClassifier` for classifier guidance
            towards `labels` (its classes). Defaults to `None`.
        classifier_scale: Float >= 0, classifier guidance's scale.
            Defaults to `1.0`.

    Returns:
        A `Conditioning` (the null label everywhere for `labels=None`), or
        `None` when the model is unconditional and nothing asks for labels
        or a classifier.
    """
    guidance_scale = check_float("guidance_scale", guidance_scale, low=0.0)
    guidance_rescale = check_float("guidance_rescale", guidance_rescale, low=0.0, high=1.0)
    guided = classifier_guidance.request(model, classifier, labels, num_images, classifier_scale, label_ids)
    if model.num_classes is None:
        if labels is not None and guided is None:
            raise ValueError(
                "This model is unconditional (its network takes no labels): sample without labels, or train "
                f"a model with build_unet(..., num_classes=N). Received: labels={shorten(labels)}"
            )
        if guidance_scale != 1.0 or guidance_rescale != 0.0:
            raise ValueError(
                "Classifier-free guidance needs a class-conditional model; this one is unconditional. "
                f"Received: guidance_scale={guidance_scale}, guidance_rescale={guidance_rescale}"
            )
        return None if guided is None else Conditioning(None, 1.0, 0.0, guided)
    if labels is None:
        if guidance_scale != 1.0:
            raise ValueError(
                "Guidance needs labels to guide towards: pass labels=... (classes or class names). "
                f"Received: labels=None, guidance_scale={guidance_scale}"
            )
        return Conditioning(np.full((num_images,), model.null_label, np.int32), 1.0, 0.0)
    return Conditioning(label_ids(model, labels, num_images), guidance_scale, guidance_rescale, guided)


def label_ids(model, labels, num_images=None):
    """Class labels (integers or names, one or one per image) as a checked int32 array.

    Args:
        model: A class-conditional `DiffusionModel`.
        labels: An integer or class name, or a sequence of them.
        num_images: Integer or `None`, how many labels are wanted: one label
            is repeated to it; a sequence must have that length. Defaults
            to `None` (one label gives one).

    Returns:
        A NumPy int32 array of classes in `[0, num_classes)`.
    """
    if model.num_classes is None:
        raise ValueError(f"This model is unconditional: it takes no labels. Received: labels={shorten(labels)}")
    single = isinstance(labels, (str, int, np.integer)) or (isinstance(labels, np.ndarray) and labels.ndim == 0)
    items = [labels.item() if isinstance(labels, np.ndarray) else labels] if single else list(labels)
    if single and num_images is not None:
        items = items * num_images
    if num_images is not None and len(items) != num_images:
        raise ValueError(f"labels must be one class or one per image ({num_images}). Received: {len(items)} labels")
    return np.asarray([_label_id(model, item) for item in items], np.int32)


def _label_id(model, item):
    if isinstance(item, str):
        names = list(model.class_names or [])
        if item not in names:
            known = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(
                f"Unknown class name {item!r}. "
                + (f"Known: {known}." if names else "This model has no class names: pass integers.")
            )
        return names.index(item)
    if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < model.num_classes:
        raise ValueError(f"Each label must be a class in [0, {model.num_classes}) or a class name. Received: {item!r}")
    return int(item)


def key(conditioning):
    """What a compiled chain depends on: `None`, or whether it guides (two passes) and rescales, and its classifier."""
    if conditioning is None:
        return None
    free = None
    if conditioning.labels is not None:
        free = (conditioning.guidance_scale != 1.0, conditioning.guidance_rescale > 0.0)
    return free, classifier_guidance.key(conditioning.classifier)


def classifier_of(conditioning):
    """The `NoisyClassifier` a request guides with, which the compiled chain takes; or `None`."""
    return None if conditioning is None or conditioning.classifier is None else conditioning.classifier.classifier


def chain_inputs(conditioning, begin, size, null_label):
    """The chain inputs of images `[begin, begin + size)`: the classifier's, then labels (null-padded) and scales."""
    if conditioning is None:
        return ()
    guided = classifier_guidance.chain_inputs(conditioning.classifier, begin, size)
    if conditioning.labels is None:
        return guided
    labels = conditioning.labels[begin : begin + size]
    labels = np.concatenate([labels, np.full((size - len(labels),), null_label, np.int32)])
    return guided + (
        ops.convert_to_tensor(labels, "int32"),
        ops.convert_to_tensor(conditioning.guidance_scale, "float32"),
        ops.convert_to_tensor(conditioning.guidance_rescale, "float32"),
    )


def with_guidance(build, conditioning, null_label):
    """`build(model_fn, noise_fn, *inputs)` fed by a conditional network: `chain_inputs` as its last inputs.

    Classifier-free guidance (a conditional network) turns the network into
    `model_fn(x_t, t)` first; classifier guidance then adds its gradient to
    that output.
    """
    if conditioning is None:
        return build
    build = classifier_guidance.wrap(build, conditioning.classifier)
    if conditioning.labels is None:
        return build
    return guided_build(build, null_label, *key(conditioning)[0])


def guided_build(build, null_label, guided, rescaled):
    """`with_guidance` for given flags: whether the chain guides (two passes) and rescales."""

    def conditional(model_fn, noise_fn, *inputs, **networks):
        *inputs, labels, scale, rescale = inputs
        fn = samplers.guided_model_fn(
            model_fn, labels, null_label, scale if guided else None, rescale if rescaled else None
        )
        return build(fn, noise_fn, *inputs, **networks)

    return conditional


def check_float(name, value, low=None, high=None):
    """`value` as a finite float within `[low, high]`, or a one-line ValueError naming it."""
    return check_number(name, value, low=low, high=high)
