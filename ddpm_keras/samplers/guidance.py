"""Guidance as a `model_fn(x_t, t)` for every sampler: classifier-free (Ho & Salimans 2021) and by a classifier.

A conditional network `model_fn(x_t, t, labels)` is trained with some labels
replaced by a null label, so it predicts both `f(x_t, t, y)` and
`f(x_t, t, null)`. Guidance samples with

    f_s = f(x_t, t, null) + s (f(x_t, t, y) - f(x_t, t, null))

where `s` is the guidance scale in the convention `s = 1 + w` of Ho &
Salimans' `w`: `s = 1` is the conditional model alone, `s = 0` the
unconditional one, `s > 1` pushes the samples towards what tells the class
apart. Both terms come from one batched network call. The combination is
taken on the network's output; for epsilon, v and x0 prediction alike it is
the same combination of the predicted noise (and of the predicted `x_0`),
since each is an affine function of the output at a given `(x_t, t)`.

`guidance_rescale` (Lin et al. 2023, sec. 3.4) pulls the guided output's
standard deviation back to the conditional output's, per image, against
the over-exposure of large scales:

    f_r = phi * f_s * std(f_cond) / std(f_s) + (1 - phi) * f_s

Classifier guidance (Dhariwal & Nichol 2021) follows the gradient of a
noise-aware classifier's `log p(y | x_t, t)` instead
(`classifier_guided_model_fn`); on a conditional model it composes with
classifier-free guidance, taking the guided output as its `model_fn`.
"""

import numpy as np
from keras import ops

from ddpm_keras.utils.autodiff import input_gradient


def guided_model_fn(model_fn, labels, null_label, guidance_scale=None, guidance_rescale=None):
    """`model_fn(x_t, t)` of a conditional network for given labels, with classifier-free guidance.

    Args:
        model_fn: Callable `(x_t, t, labels) -> network output`.
        labels: Int32 tensor `(batch,)`, a class in `[0, null_label)` or
            `null_label` (unconditional) per image.
        null_label: Integer, the label of the unconditional prediction.
        guidance_scale: `None` (no guidance: one network call with
            `labels`) or a float scalar (tensor) `s`, as in the module
            docstring. Defaults to `None`.
        guidance_rescale: `None` or a float scalar (tensor) `phi` in
            `[0, 1]`. Defaults to `None`.

    Returns:
        The callable `(x_t, t) -> output`, shaped as `x_t`.

    Example:

    >>> fn = guided_model_fn(model_fn, labels, null_label=102, guidance_scale=3.0)
    >>> eps = fn(x_t, t)
    """

    if guidance_scale is None:

        def conditional(x, t):
            return model_fn(x, t, labels)

        return conditional

    def guided(x, t):
        both = model_fn(
            ops.concatenate([x, x], axis=0),
            ops.concatenate([t, t], axis=0),
            ops.concatenate([labels, ops.full_like(labels, null_label)], axis=0),
        )
        cond, uncond = ops.split(both, 2, axis=0)
        output = uncond + ops.cast(guidance_scale, cond.dtype) * (cond - uncond)
        if guidance_rescale is None:
            return output
        axes = tuple(range(1, len(output.shape)))
        ratio = ops.std(cond, axis=axes, keepdims=True) / ops.maximum(ops.std(output, axis=axes, keepdims=True), 1e-12)
        phi = ops.cast(guidance_rescale, output.dtype)
        return phi * output * ratio + (1.0 - phi) * output

    return guided


def classifier_guided_model_fn(model_fn, classifier_fn, labels, classifier_scale, alphas_cumprod, prediction_type):
    """`model_fn(x_t, t)` whose noise follows a noise-aware classifier's gradient (Dhariwal & Nichol 2021).

    The noise the network's output stands for becomes

        eps' = eps - s sqrt(1 - ab_t) grad_x log p(y | x_t, t)

    (their Algorithm 2), and the output is rewritten in `prediction_type`
    so that every sampler reads `eps'` through `split_prediction`: for
    `"v"` the output moves by `-s sqrt(1 - ab_t) g / sqrt(ab_t)`, for
    `"x0"` by `+s (1 - ab_t) g / sqrt(ab_t)` (`g` the gradient), the
    same `eps'` with `x_0' = (x_t - sqrt(1 - ab_t) eps') / sqrt(ab_t)`.
    Since `-eps / sqrt(1 - ab_t)` is the score, this adds
    `s grad log p(y | x_t)` to it: at `s = 1` the exact score of
    `p_t(x | y)` when both networks are exact, so every sampler then
    samples the class-conditional distribution.

    The ancestral (`"ddpm"`) step with `eps'` moves its mean by
    `s beta_t / sqrt(alpha_t) g`; Dhariwal & Nichol's Algorithm 1 moves it
    by `s Sigma_t g`, which with the variance `beta_t` differs only by the
    factor `1 / sqrt(alpha_t) = 1 + O(beta_t)` (and `x_0` clipping acts on
    the guided prediction).

    The gradient is taken with the backend's own mechanism inside the
    compiled loop (`ddpm_keras.utils.autodiff.input_gradient`); one
    classifier forward and backward pass per network call.

    Args:
        model_fn: Callable `(x_t, t) -> network output`, `t` int32
            training timesteps (already guided by classifier-free
            guidance, if any).
        classifier_fn: Callable `(x_t, t) -> logits (batch, num_classes)`.
        labels: Int32 tensor `(batch,)`, the class of each image.
        classifier_scale: Float scalar (tensor) `s >= 0`.
        alphas_cumprod: The diffusion's `alphas_cumprod` over its training
            timesteps (NumPy or tensor, `(T,)`).
        prediction_type: `"epsilon"`, `"v"` or `"x0"`: what `model_fn`
            outputs.

    Returns:
        The callable `(x_t, t) -> output`, shaped as `x_t`.
    """
    alphas_cumprod = ops.convert_to_tensor(np.asarray(alphas_cumprod, np.float32))

    def guided(x, t):
        output = model_fn(x, t)
        gradient = input_gradient(lambda y: ops.sum(_log_probability(classifier_fn(y, t), labels)), x)
        ab = ops.reshape(ops.take(alphas_cumprod, ops.cast(t, "int32")), (-1,) + (1,) * (len(x.shape) - 1))
        scale = ops.cast(classifier_scale, "float32")
        if prediction_type == "epsilon":
            return output - scale * ops.sqrt(1.0 - ab) * gradient
        if prediction_type == "v":
            return output - scale * ops.sqrt(1.0 - ab) / ops.sqrt(ab) * gradient
        return output + scale * (1.0 - ab) / ops.sqrt(ab) * gradient

    return guided


def _log_probability(logits, labels):
    """`log p(y | x)` of each row of `logits` at its label."""
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return ops.take_along_axis(log_probs, ops.reshape(ops.cast(labels, "int32"), (-1, 1)), axis=-1)[:, 0]
