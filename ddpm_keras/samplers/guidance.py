"""Classifier-free guidance (Ho & Salimans 2021) as a `model_fn(x_t, t)` for every sampler.

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
"""

from keras import ops


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
