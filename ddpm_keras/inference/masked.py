"""The mask of an inpainting network (`build_unet(..., inpainting=True)`), fed to the compiled chains.

An inpainting network takes `[x_t, t, masked_image, mask(, labels)]`. A
request to `inpaint` on such a model becomes two more chain inputs
(`chain_inputs`: the masked images and the one-channel mask, 1 where
known), and `with_mask` turns the raw network into the `model_fn(x_t, t,
...)` the rest of the chain calls, as `conditioning.with_guidance` does
for labels; it wraps outside the guidance, so that guidance's batched
passes get the mask too, and its network outputs predict the known
pixels exactly (`known_pixels_projected`). Every other chain
(generation, DDIM inversion, the likelihood) calls the network without a
mask, and `with_free_inputs` gives it the all-zero mask: nothing known,
free generation, which the model trained on (`training.masks`, kind
`"all"`).
"""

import numpy as np
from keras import ops


def inpainting_mask(mask, shape):
    """The one-channel mask `(N, H, W, 1)` of an inpainting network from a checked mask of `shape` `(N, H, W, C)`.

    Raises:
        ValueError: One line, for a mask that differs between the channels
            of a pixel (an inpainting network takes one mask per pixel).
    """
    mask = np.broadcast_to(np.asarray(mask, np.float32), shape)
    single = mask[..., :1]
    if not np.array_equal(np.broadcast_to(single, shape), mask):
        raise ValueError(
            f"An inpainting model takes one mask per pixel, the same for its {shape[-1]} channels: pass a mask of "
            f"shape (H, W), (H, W, 1) or (N, H, W, 1). Received: a mask of shape {tuple(mask.shape)} whose channels "
            "differ"
        )
    return np.ascontiguousarray(single)


def chain_inputs(images, mask):
    """The chain inputs of an inpainting request: `(masked_image, mask)`, the images zeroed where unknown."""
    return (ops.convert_to_tensor(images * mask, "float32"), ops.convert_to_tensor(mask, "float32"))


def with_mask(build, diffusion, prediction_type):
    """`build(model_fn, noise_fn, *inputs)` fed by an inpainting network: `chain_inputs` as its last two inputs.

    The network is called as `model_fn(x_t, t, masked_image, mask, *more)`
    (`more`: the labels of a conditional network, added by the guidance
    inside); a batch that guidance doubles gets the mask repeated. Each
    network output goes through `known_pixels_projected` with `diffusion` and
    `prediction_type`, the model's.
    """

    def conditioned(model_fn, noise_fn, *inputs, **networks):
        *inputs, masked_image, mask = inputs

        def fn(x, t, *more):
            repeats = x.shape[0] // masked_image.shape[0]
            images, masks = (
                (masked_image, mask) if repeats == 1
                else (ops.concatenate([masked_image] * repeats, 0), ops.concatenate([mask] * repeats, 0))
            )
            output = model_fn(x, t, images, masks, *more)
            return known_pixels_projected(output, x, t, images, masks, diffusion, prediction_type)

        return build(fn, noise_fn, *inputs, **networks)

    return conditioned


def known_pixels_projected(output, x_t, t, known_images, mask, diffusion, prediction_type):
    """An inpainting network's `output` whose predicted `x_0` is the known pixels where `mask == 1`.

    Where a pixel is known, the exact `E[x_0 | x_t, known pixels]` is that
    pixel; a trained network only approximates it (a small one drifts by
    several hundredths), and the hole, generated next to its copy, meets
    the true pixels with a seam when they are pasted at the end. Where
    `mask == 1` the output is rewritten, in `prediction_type`, as the
    prediction of `x_0 = known_images` and of the noise that `x_t` then
    implies (`diffusion.prediction_target`); elsewhere it is unchanged,
    to the bit, and an exact network's is unchanged everywhere. Every
    sampler's step then moves the known pixels by the exact posterior
    `q(x_s | x_t, x_0)`.

    Args:
        output: The network's output at `(x_t, t)`.
        x_t: The noisy images `(N, H, W, C)`.
        t: Int tensor `(N,)`, the diffusion's timesteps.
        known_images: The images, zero where unknown, `(N, H, W, C)`.
        mask: `(N, H, W, 1)`, 1 where known.
        diffusion: The model's `GaussianDiffusion`.
        prediction_type: What `output` is (`"epsilon"`, `"v"`, `"x0"`).

    Returns:
        The projected output, float32 shaped as `x_t`.
    """
    output = ops.cast(output, x_t.dtype)
    known_images = ops.cast(known_images, x_t.dtype)
    mask = ops.cast(mask, x_t.dtype)
    noise = diffusion.predict_noise_from_start(x_t, t, known_images)
    projected = diffusion.prediction_target(known_images, noise, t, prediction_type)
    return mask * projected + (1.0 - mask) * output


def with_free_inputs(chain, inpainting):
    """`chain`, whose calls of an inpainting network without a mask get the all-zero mask (free generation).

    A call `model_fn(x_t, t)` (or `(x_t, t, labels)`) becomes `model_fn(x_t,
    t, zeros, zeros(, labels))`; calls from `with_mask`, with the mask, are
    left as they are. `chain` itself when not `inpainting` (the model's
    `inpainting`, `nn.unet.network_is_inpainting` of its network).
    """
    if not inpainting:
        return chain

    def free(model_fn, noise_fn, *inputs, **networks):
        def fn(x, t, *more):
            if len(more) >= 2:
                return model_fn(x, t, *more)
            zeros = ops.zeros_like(x)
            return model_fn(x, t, zeros, zeros[..., :1], *more)

        return chain(fn, noise_fn, *inputs, **networks)

    return free
