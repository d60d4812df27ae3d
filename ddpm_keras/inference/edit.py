"""Editing with a trained model: inpainting, DDIM inversion, decoding and interpolation.

Each function is the body of the `DiffusionModel` method of its name; they
start from given images or latents and run their chains through the
model's `runner.ChainRunner`. `decode` and `interpolate` sample with
`generate.generate_images`.
"""

import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.inference import conditioning
from ddpm_keras.inference import masked
from ddpm_keras.inference.generate import generate_images
from ddpm_keras.inference.generate import generation_chain
from ddpm_keras.inference.generate import resolved_options
from ddpm_keras.inference.runner import DETERMINISTIC_SAMPLERS
from ddpm_keras.inference.runner import SEGMENT_STEPS
from ddpm_keras.inference.runner import Progress
from ddpm_keras.inference.runner import check_images
from ddpm_keras.inference.runner import check_pair
from ddpm_keras.inference.runner import num_segments
from ddpm_keras.inference.runner import to_images
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import check_seed


def inpaint(
    model, images, mask, seed=None, sampler="ddpm", num_steps=None, eta=0.0, resample=1, clip_denoised=True,
    timestep_spacing=None, verbose=1, labels=None, guidance_scale=1.0, guidance_rescale=0.0, classifier=None,
    classifier_scale=1.0, **sampler_options,
):
    """Fills in the unknown region of `images` (replacement method, RePaint resampling).

    At each reverse step the known region is replaced by the original
    diffused to the new noise level, `q_sample(x_0, t - 1)`; with
    `resample > 1` each step is redone after re-noising with
    `q(x_t | x_{t-1})` (Lugmayr et al. 2022, jump length 1). The output
    equals `images` exactly where `mask == 1`.

    On an inpainting model (`model.inpainting`: its network trained with
    the masked image and the mask as inputs, `build_unet(...,
    inpainting=True)`) any sampler of `samplers.SAMPLERS` runs as in
    `generate_images`, the network fed `images * mask` and the mask at
    each call (`inference.masked`); no replacement, no resampling. Its
    outputs are made to predict the known pixels exactly
    (`inference.masked.known_pixels_projected`), and the known pixels
    are pasted at the end.

    Args:
        images: Float array `(N, H, W, C)` (or one image `(H, W, C)`) in
            the data range.
        mask: Array of 0 and 1, 1 where the pixel is known; `(H, W)`,
            `(H, W, 1)`, `(H, W, C)`, `(N, H, W, 1)` or `(N, H, W, C)`
            (an inpainting model's the same on every channel).
        seed: Integer or `None`. Defaults to `None`.
        sampler: `"ddpm"` or `"ddim"`; any of `samplers.SAMPLERS` on an
            inpainting model. Defaults to `"ddpm"`.
        num_steps: Integer or `None`, as in `generate_images`.
            Defaults to `None`.
        eta: Float in `[0, 1]`, for `"ddim"`. Defaults to `0.0`.
        resample: Integer >= 1, RePaint's resampling count `r`
            (cost: `r` network calls per step); `1` on an inpainting
            model. Defaults to `1`.
        clip_denoised: Boolean. Defaults to `True`.
        timestep_spacing: As in `generate_images`; `None` is the
            sampler's own (`"trailing"` but for `"heun"`). Defaults to
            `None`.
        verbose: `0` or `1`, show progress over segments of a long
            chain. Defaults to `1`.
        labels, guidance_scale, guidance_rescale: For a conditional
            model, as in `generate_images` (one label per image, or
            one for all). Default to `None`, `1.0`, `0.0`.
        classifier, classifier_scale: Classifier guidance towards
            `labels`, as in `generate_images`. Default to `None`, `1.0`.
        **sampler_options: The sampler's other options, as in
            `generate_images` (`corrector_steps` of `"pc"`, `s_churn`
            of `"heun"`, ...).

    Returns:
        A NumPy float32 array shaped as `images` (batched).

    Example:

    >>> mask = np.ones((32, 32)); mask[8:24, 8:24] = 0
    >>> filled = model.inpaint(images, mask, seed=0, resample=5)
    """
    seed = check_seed("seed", seed)
    images = check_images(images, "images", model.image_shape)
    mask = _broadcast_mask(mask, images.shape)
    if model.inpainting:
        request = conditioning.request(
            model, labels, len(images), guidance_scale, guidance_rescale, classifier, classifier_scale
        )
        options = resolved_options(
            model, sampler, num_steps=num_steps, eta=eta, clip_denoised=clip_denoised,
            timestep_spacing=timestep_spacing, **sampler_options,
        )
        return _inpaint_with_mask(model, images, mask, seed, options, resample, verbose, request)
    options = resolved_options(
        model, sampler, samplers.INPAINT_SAMPLERS, num_steps=num_steps, eta=eta, clip_denoised=clip_denoised,
        timestep_spacing=timestep_spacing, **sampler_options,
    )
    num_steps = options.num_steps
    resample = check_positive_int("resample", resample)
    request = conditioning.request(
        model, labels, len(images), guidance_scale, guidance_rescale, classifier, classifier_scale
    )

    def build(model_fn, noise_fn, x_0, known):
        context = samplers.make_context(
            model_fn, noise_fn, model.diffusion, num_steps, model.prediction_type, options.clip_denoised,
            timestep_spacing=options.timestep_spacing,
        )
        return samplers.inpaint_chain(context, x_0, known, options.sampler, options.eta, resample)

    progress = Progress(num_steps, verbose and num_segments(num_steps, SEGMENT_STEPS) > 1)
    filled = model.runner.run_chain(
        ("inpaint", options, resample, conditioning.key(request)),
        conditioning.with_guidance(build, request, model.null_label), images.shape, num_steps, seed,
        inputs=(ops.convert_to_tensor(images), ops.convert_to_tensor(mask))
        + conditioning.chain_inputs(request, 0, len(images), model.null_label),
        progress=progress, classifier=conditioning.classifier_of(request),
    )
    return np.where(mask == 1.0, images, to_images(filled, model.diffusion))


def _inpaint_with_mask(model, images, mask, seed, options, resample, verbose, request):
    """`inpaint` on an inpainting model: any sampler, the masked images and the mask fed to the network each call."""
    if resample != 1:
        raise ValueError(
            "resample is RePaint's, for a model not trained to inpaint; this inpainting model takes the mask as an "
            f"input and needs none: pass resample=1. Received: resample={resample}"
        )
    known = masked.inpainting_mask(mask, images.shape)
    build = masked.with_mask(
        conditioning.with_guidance(generation_chain(model, options), request, model.null_label),
        model.diffusion, model.prediction_type,
    )
    progress = Progress(options.num_steps, verbose and num_segments(options.num_steps, SEGMENT_STEPS) > 1)
    filled = model.runner.run_chain(
        ("inpaint_model", options, conditioning.key(request)), build, images.shape, options.num_steps, seed,
        inputs=conditioning.chain_inputs(request, 0, len(images), model.null_label)
        + masked.chain_inputs(images, known),
        progress=progress, classifier=conditioning.classifier_of(request),
    )
    return np.where(mask == 1.0, images, to_images(filled, model.diffusion))


def encode(model, images, num_steps=50, labels=None):
    """DDIM inversion: the latents `x_T` that deterministic DDIM decodes to `images`.

    Runs the DDIM ODE (eta = 0) forward from `x_0` to `x_T` over the
    same `num_steps` trailing-spaced timesteps as `decode`.

    Args:
        images: Float array `(N, H, W, C)` (or `(H, W, C)`) in the data
            range.
        num_steps: Integer in `[1, T]`. Defaults to `50`.
        labels: For a conditional model, the class of each image (or
            one for all), as in `generate_images`; `None` inverts the
            unconditional model. Defaults to `None`.

    Returns:
        A NumPy float32 array `(N, H, W, C)`, roughly standard normal.

    Example:

    >>> latents = model.encode(images)
    >>> reconstructed = model.decode(latents)
    """
    images = check_images(images, "images", model.image_shape)
    samplers.check_num_steps(num_steps, model.diffusion.num_timesteps)
    request = conditioning.request(model, labels, len(images), 1.0, 0.0)

    def build(model_fn, noise_fn, x_0):
        context = samplers.make_context(model_fn, noise_fn, model.diffusion, num_steps, model.prediction_type)
        return samplers.ddim_encode_chain(context)

    x_0 = ops.convert_to_tensor(images)
    latents = model.runner.run_chain(
        ("encode", num_steps, conditioning.key(request)), conditioning.with_guidance(build, request, model.null_label),
        images.shape, num_steps, 0, x_T=x_0,
        inputs=(x_0,) + conditioning.chain_inputs(request, 0, len(images), model.null_label),
    )
    return np.asarray(ops.convert_to_numpy(latents), dtype=np.float32)


def decode(
    model, noises, num_steps=50, clip_denoised=True, sampler="ddim", labels=None, guidance_scale=1.0,
    guidance_rescale=0.0, classifier=None, classifier_scale=1.0,
):
    """A deterministic sampler (DDIM, eta = 0, by default) from given latents `x_T` to images.

    Args:
        noises: Float array `(N, H, W, C)` (or `(H, W, C)`), the `x_T`.
        num_steps: Integer in `[1, T]`. Defaults to `50`.
        clip_denoised: Boolean. Defaults to `True`.
        sampler: A deterministic sampler: `"ddim"` (which `encode`
            inverts), `"dpmpp_2m"`, `"dpmpp_3m"`, `"unipc"` or `"heun"`
            (with its default `s_churn = 0`). Defaults to `"ddim"`.
        labels, guidance_scale, guidance_rescale: For a conditional
            model, as in `generate_images`. Default to `None`, `1.0`,
            `0.0`.
        classifier, classifier_scale: Classifier guidance towards
            `labels`, as in `generate_images`. Default to `None`, `1.0`.

    Returns:
        A NumPy float32 array `(N, H, W, C)` in the data range.

    Example:

    >>> images = model.decode(np.random.normal(size=(4, 32, 32, 3)))
    """
    noises = check_images(noises, "noises", model.image_shape)
    if sampler not in DETERMINISTIC_SAMPLERS:
        raise ValueError(
            f"decode needs a deterministic sampler. Received: sampler={sampler!r}. "
            f"Expected one of {DETERMINISTIC_SAMPLERS}."
        )
    return generate_images(
        model, seed=0, sampler=sampler, num_steps=num_steps, clip_denoised=clip_denoised, initial_noise=noises,
        verbose=0, labels=labels, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
        classifier=classifier, classifier_scale=classifier_scale,
    )


def interpolate(
    model, num_images=8, seed=None, num_steps=50, images=None, noises=None, clip_denoised=True, sampler="ddim",
    labels=None, guidance_scale=1.0, guidance_rescale=0.0, classifier=None, classifier_scale=1.0,
):
    """Images along a spherical interpolation (slerp) between two latents.

    The latents are two standard normal draws from `seed`, the given
    `noises`, or the DDIM inversions (`encode`) of two given `images`;
    the path is decoded with a deterministic sampler (`decode`), so the
    endpoints are exactly the decodes of the two latents.

    Args:
        num_images: Integer >= 2, images along the path. Defaults to
            `8`.
        seed: Integer or `None`, the seed of the two latents when
            neither `images` nor `noises` is given. Defaults to `None`.
        num_steps: Integer in `[1, T]`, decoding steps. Defaults to
            `50`.
        images: `None` or a pair `(a, b)` of images `(H, W, C)` to
            interpolate between. Defaults to `None`.
        noises: `None` or a pair `(z_a, z_b)` of latents `(H, W, C)`.
            Defaults to `None`.
        clip_denoised: Boolean. Defaults to `True`.
        sampler: The deterministic sampler of `decode`; with `images`
            only `"ddim"`, the inverse of `encode`. Defaults to
            `"ddim"`.
        labels: For a conditional model, one class (integer or name)
            for the whole path, also used to invert `images`; `None`
            for the unconditional model. Defaults to `None`.
        guidance_scale, guidance_rescale: The decoding's guidance, as
            in `generate_images`. Default to `1.0`, `0.0`.
        classifier, classifier_scale: The decoding's classifier
            guidance towards `labels`, as in `generate_images` (images
            are inverted without it). Default to `None`, `1.0`.

    Returns:
        A NumPy float32 array `(num_images, H, W, C)` in the data range.

    Example:

    >>> path = model.interpolate(8, seed=0, sampler="dpmpp_2m", num_steps=20)
    >>> morph = model.interpolate(8, images=(image_a, image_b))
    """
    num_images = check_positive_int("num_images", num_images)
    if num_images < 2:
        raise ValueError(f"num_images must be at least 2 (the two endpoints). Received: num_images={num_images}")
    samplers.check_num_steps(num_steps, model.diffusion.num_timesteps)
    seed = check_seed("seed", seed)
    if images is not None and noises is not None:
        raise ValueError("Pass images or noises, not both. Received both.")
    if images is not None:
        if sampler != "ddim":
            raise ValueError(
                "Interpolating between images decodes with 'ddim', the inverse of encode. "
                f"Received: sampler={sampler!r}"
            )
        pair = check_pair(images, "images", model.image_shape)
        # The classifier's labels guide the decoding only; an unconditional network inverts without them.
        latents = encode(model, pair, num_steps, labels=None if model.num_classes is None else labels)
    elif noises is not None:
        latents = check_pair(noises, "noises", model.image_shape)
    else:
        latents = np.random.default_rng(seed).standard_normal((2,) + model.image_shape).astype(np.float32)
    path = samplers.slerp(latents[0], latents[1], np.linspace(0.0, 1.0, num_images)).astype(np.float32)
    path[0], path[-1] = latents[0], latents[1]
    return decode(
        model, path, num_steps, clip_denoised, sampler=sampler, labels=labels, guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale, classifier=classifier, classifier_scale=classifier_scale,
    )


def _broadcast_mask(mask, shape):
    """An inpainting mask as float32 `shape`, checked to be 0/1 and broadcastable."""
    mask = np.asarray(ops.convert_to_numpy(mask), dtype=np.float32)
    given = mask.shape
    if mask.ndim == 2:
        mask = mask[..., None]
    try:
        mask = np.broadcast_to(mask, shape).astype(np.float32)
    except ValueError:
        raise ValueError(
            f"mask must broadcast to the images' shape {tuple(shape)}: use (H, W), (H, W, 1), "
            f"(H, W, C), (N, H, W, 1) or (N, H, W, C). Received: mask.shape={given}"
        ) from None
    if not np.all((mask == 0.0) | (mask == 1.0)):
        raise ValueError(
            "mask must hold only 0 (to fill in) and 1 (known). "
            f"Received: values {np.unique(mask)[:5]}..."
        )
    return mask
