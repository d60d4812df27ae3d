"""`score`: the score `grad log p_t(x_t)` of a model's EMA network, `DiffusionModel.score`."""

import numpy as np
from keras import ops

from ddpm_keras.inference.conditioning import label_ids
from ddpm_keras.inference.runner import check_images
from ddpm_keras.utils.checks import is_int


def score(model, x_t, t, labels=None):
    """The score `grad log p_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t)` by the model's EMA network.

    The EMA network (the one that samples) is called at `(x_t, t)`; its
    output, of any prediction type, becomes the score through
    `GaussianDiffusion.score`, the function the predictor-corrector
    sampler's Langevin steps read too.

    Args:
        model: A `DiffusionModel`.
        x_t: Noisy images `(N, H, W, C)`.
        t: An integer timestep in `[0, T)`, or one per image.
        labels: `None`, or for a class-conditional model one class (an
            integer or name) or one per image; `None` on such a model is
            the null label, the unconditional score. Defaults to `None`.

    Returns:
        The score, a float32 tensor shaped as `x_t`.

    Example:

    >>> score = model.score(x_t, 500)                     # unconditional
    >>> score = model.score(x_t, t, labels="daisy")       # a class's
    """
    x_t = ops.convert_to_tensor(check_images(x_t, "x_t", model.image_shape))
    num_images = int(x_t.shape[0])
    steps = np.asarray(ops.convert_to_numpy(t) if hasattr(t, "shape") else t)
    if steps.ndim == 0:
        steps = np.full((num_images,), steps)
    integral = steps.dtype.kind in "iu" or (steps.dtype == object and all(is_int(s) for s in steps))
    num_timesteps = model.diffusion.num_timesteps
    if not integral or steps.shape != (num_images,) or not np.all((steps >= 0) & (steps < num_timesteps)):
        raise ValueError(
            f"t must be one integer timestep in [0, {num_timesteps}) or one per image ({num_images}). "
            f"Received: t={t!r}"
        )
    t = ops.convert_to_tensor(steps.astype(np.int32))
    inputs = [x_t, t]
    if model.inpainting:  # nothing known: the score of free generation
        inputs += [ops.zeros_like(x_t), ops.zeros_like(x_t[..., :1])]
    if model.num_classes is not None:
        ids = np.full((num_images,), model.null_label, np.int32) if labels is None else label_ids(model, labels, num_images)
        inputs.append(ops.convert_to_tensor(ids))
    elif labels is not None:
        label_ids(model, labels, num_images)  # the one-line error of an unconditional model
    output = ops.cast(model.ema_network(inputs, training=False), "float32")
    return model.diffusion.score(output, x_t, t, model.prediction_type)
