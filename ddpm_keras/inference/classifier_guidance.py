"""Classifier guidance of a sampling request: the classifier checked against the model, its inputs and chain wrapper.

`generate_images`, `inpaint`, `decode` and `interpolate` take
`classifier=` (a trained `ddpm_keras.NoisyClassifier`) and
`classifier_scale=`; `conditioning.request` checks them here and keeps a
`ClassifierGuidance`. Its labels and scale are inputs of the compiled chain
(`chain_inputs`), its weights arguments of the compiled function
(`ddpm_keras.inference.compiled.compile_chain(..., classifier=...)`), so one
compilation serves every label and scale; `wrap` turns the chain's
`model_fn` into the guided one (`samplers.classifier_guided_model_fn`).
The classifier is read through `network`, `diffusion`, `num_classes` and
`class_names` only.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.utils.checks import check_number


class ClassifierGuidance(NamedTuple):
    """A checked request's classifier, labels (int32, one per image), scale and the model's terms it needs."""

    classifier: object
    labels: np.ndarray
    scale: float
    alphas_cumprod: np.ndarray
    prediction_type: str


def request(model, classifier, labels, num_images, classifier_scale, label_ids):
    """The checked `ClassifierGuidance` of a request, or `None` without a classifier.

    Args:
        model: A `DiffusionModel`.
        classifier: `None` or a `NoisyClassifier` trained on the model's
            diffusion and image shape.
        labels: One class or one per image (integers or the classifier's
            class names).
        num_images: Integer, the images of the request.
        classifier_scale: Float >= 0, the guidance scale `s`.
        label_ids: `conditioning.label_ids`, which reads the classes.

    Returns:
        A `ClassifierGuidance`, or `None`.
    """
    scale = check_number("classifier_scale", classifier_scale, low=0.0)
    if classifier is None:
        if scale != 1.0:
            raise ValueError(
                "classifier_scale needs a classifier: pass classifier=NoisyClassifier(...) (trained on this "
                f"model's diffusion). Received: classifier=None, classifier_scale={classifier_scale}"
            )
        return None
    check_classifier(model, classifier)
    if labels is None:
        raise ValueError(
            "Classifier guidance needs labels to guide towards: pass labels=... (the classifier's classes). "
            "Received: labels=None"
        )
    alphas_cumprod = np.asarray(model.diffusion.terms_float64["alphas_cumprod"], np.float32)
    ids = label_ids(classifier, labels, num_images)
    return ClassifierGuidance(classifier, ids, scale, alphas_cumprod, model.prediction_type)


def check_classifier(model, classifier):
    """A one-line ValueError unless `classifier` classifies `model`'s noisy images at its timesteps."""
    network = getattr(classifier, "network", None)
    outputs = getattr(network, "outputs", None) or []
    if not hasattr(classifier, "diffusion") or len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ValueError(
            "classifier must be a ddpm_keras.NoisyClassifier (a network [x_t, t] -> logits trained on noisy "
            f"images). Received: classifier of type {type(classifier).__name__}"
        )
    shape = tuple(classifier.network.inputs[0].shape[1:])
    if shape != tuple(model.image_shape):
        raise ValueError(
            f"The classifier takes images of shape {shape}, the model makes {tuple(model.image_shape)}: "
            "train a classifier at the model's image size."
        )
    mine = np.asarray(model.diffusion.terms_float64["alphas_cumprod"])
    theirs = np.asarray(classifier.diffusion.terms_float64["alphas_cumprod"])
    if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-6, atol=1e-9):
        raise ValueError(
            "The classifier was trained on another diffusion than the model's "
            f"(T={len(theirs)} against T={len(mine)}, or another schedule): its timesteps mean other noise "
            "levels. Train it with NoisyClassifier(network, model.diffusion)."
        )


def key(guidance):
    """What a compiled chain depends on: the classifier itself (its weights are arguments), or `None`."""
    return None if guidance is None else ("classifier", guidance.classifier)


def chain_inputs(guidance, begin, size):
    """The chain inputs of images `[begin, begin + size)`: the classifier's labels (padded to `size`) and scale."""
    if guidance is None:
        return ()
    labels = guidance.labels[begin : begin + size]
    labels = np.concatenate([labels, np.zeros((size - len(labels),), np.int32)])
    return ops.convert_to_tensor(labels, "int32"), ops.convert_to_tensor(guidance.scale, "float32")


def wrap(build, guidance):
    """`build(model_fn, noise_fn, *inputs)` whose `model_fn` follows the classifier; `chain_inputs` come last.

    The compiled function passes the classifier as `classifier_fn`
    (`(x_t, t) -> logits`, run with its weights as arguments).
    """
    if guidance is None:
        return build

    def guided(model_fn, noise_fn, *inputs, classifier_fn):
        *inputs, labels, scale = inputs
        fn = samplers.classifier_guided_model_fn(
            model_fn, classifier_fn, labels, scale, guidance.alphas_cumprod, guidance.prediction_type
        )
        return build(fn, noise_fn, *inputs)

    return guided
