"""Sampling: `generate_images` and the checked options and chain that generation and the export share.

`generate_images` builds a sampler `Chain` (`ddpm_keras.samplers`) and runs
it with the model's EMA network in compiled segments (`runner.ChainRunner`);
the editing functions (inpaint, encode, decode, interpolate) are in
`edit.py`.
"""

import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.inference import conditioning
from ddpm_keras.inference.chunks import ChunkPlan
from ddpm_keras.inference.precision import check_inference_dtype
from ddpm_keras.inference.runner import SEGMENT_STEPS
from ddpm_keras.inference.runner import Progress
from ddpm_keras.inference.runner import check_images
from ddpm_keras.inference.runner import chunk_seeds
from ddpm_keras.inference.runner import num_segments
from ddpm_keras.inference.runner import padded
from ddpm_keras.inference.runner import to_images
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import check_seed


def generate_images(
    model,
    num_images=None,
    seed=None,
    sampler=None,
    *,
    batch_size=None,
    return_trajectory=False,
    trajectory_every=None,
    verbose=1,
    initial_noise=None,
    segment_steps=SEGMENT_STEPS,
    dtype=None,
    labels=None,
    guidance_scale=1.0,
    guidance_rescale=0.0,
    classifier=None,
    classifier_scale=1.0,
    **sampler_options,
):
    """Samples images with `model`'s EMA network: `DiffusionModel.generate_images`.

    The reverse chain runs as compiled code (`fori_loop`), traced once
    per (sampler, batch shape, steps, options) and reused, in segments
    of `segment_steps` steps with a progress bar between them. See
    `ddpm_keras.samplers` for the samplers; all walk the kept timesteps
    from `t = T - 1` down.

    Args:
        model: A `DiffusionModel`.
        num_images: Integer or `None`, how many images. Defaults to
            `None`: `16`, or as many as `initial_noise` holds.
        seed: Integer or `None`. The same seed (and `batch_size`) gives
            the same images. Defaults to `None` (a fresh random seed).
        sampler: A name of `ddpm_keras.samplers.SAMPLERS`: `"ddpm"`
            (ancestral; respaced when `num_steps < T`), `"ddim"`, `"pc"`
            (DDPM predictor + Langevin corrector), `"dpmpp_2m"`,
            `"dpmpp_3m"`, `"dpmpp_2m_sde"` (DPM-Solver++, Lu et al. 2022),
            `"unipc"` (Zhao et al. 2023), `"heun"` (EDM's Heun sampler,
            Karras et al. 2022) or `"consistency"` (multistep consistency
            sampling, Song et al. 2023: a consistency distillation
            student's); or a `samplers.SamplerOptions`
            holding the sampler and its options (then pass none of them
            beside it); or `None`: the model's `default_sampling` (a
            distilled student's sampler and step count, a preset's
            sampling), the options given here overriding its own, and
            `"ddpm"` over every timestep for a model without one. The
            default's sampler named explicitly also takes its options
            where none are given. Defaults to `None`.
        batch_size: Integer or `None`, images per compiled call. Larger
            requests run in chunks of this size (the last padded). Chunk
            `k` draws its noise from a seed derived from `(seed, k)`, so
            results are deterministic for a given `(seed, batch_size)`
            but differ between batch sizes. The chunks of a model built
            under a strategy are dealt to its devices and workers
            (`ddpm_keras.inference.chunks`), with the same images.
            Defaults to `None` (one chunk, seeded with `seed` itself).
        return_trajectory: Boolean, also return the intermediate
            samples. Defaults to `False`.
        trajectory_every: Integer or `None`, steps between trajectory
            frames. Defaults to `None` (`max(1, num_steps // 20)`, about
            20 frames).
        verbose: `0` or `1`, show a progress bar over steps when there
            is more than one segment or chunk. Defaults to `1`.
        initial_noise: `None` or an array `(N, H, W, C)`: the `x_T` to
            start from instead of noise drawn from `seed` (to compare
            samplers on the same start). Defaults to `None`.
        segment_steps: Integer or `None`, steps per compiled segment;
            `None` runs the chain in one call. Defaults to `50`.
        dtype: `None`, `"float32"`, `"bfloat16"` or `"float16"`: the
            precision the network computes in (its weights stay
            float32; the sampler's arithmetic on `x_t` is float32
            whatever this says). Defaults to `None` (the network's own
            policy, float32 for a float32-trained network).
        labels: For a class-conditional model: `None` (unconditional
            samples, the null label), one class for every image, or
            one per image; classes as integers in `[0, num_classes)`
            or as names from `class_names`. `num_images` defaults to
            their count. Defaults to `None`.
        guidance_scale: Float >= 0, classifier-free guidance's `s` in
            the convention `s = 1 + w` of Ho & Salimans' `w`: the
            network's output is `uncond + s (cond - uncond)`, both from
            one batched call; `1` is the conditional model alone (one
            call, no unconditional pass), larger values trade
            diversity for fidelity to the class
            (`samplers.guided_model_fn`). Defaults to `1.0`.
        guidance_rescale: Float in `[0, 1]`, Lin et al.'s rescale of
            the guided output's standard deviation to the conditional
            one's (sec. 3.4), against over-saturation at large scales.
            Defaults to `0.0`.
        classifier: `None` or a `ddpm_keras.NoisyClassifier` trained on
            this model's diffusion: classifier guidance (Dhariwal &
            Nichol 2021) towards `labels` (the classifier's classes), for
            every sampler. The predicted noise becomes
            `eps - s sqrt(1 - ab_t) grad log p(y | x_t, t)`
            (`samplers.classifier_guided_model_fn`), the gradient taken
            inside the compiled loop; on a conditional model it adds to
            classifier-free guidance's output. Defaults to `None`.
        classifier_scale: Float >= 0, classifier guidance's `s`: `1`
            samples `p(x | y)` when both networks are exact, larger
            values sharpen it. Defaults to `1.0`.
        **sampler_options: The sampler's options, fields of
            `samplers.SamplerOptions` (one table of them, checked there):
            `num_steps` (integer in `[1, T]`, or `None`: `T` for `"ddpm"`
            and `"pc"`, `50` for `"ddim"`, `20` for the solvers, `1` for
            `"consistency"`; each step
            is one network call, `1 + corrector_steps` for `"pc"`, two
            for `"heun"` but its last), `timestep_spacing` (`"trailing"`,
            `"logsnr"` or `"karras"`: which training timesteps the steps
            visit; `None`, the default, is the sampler's own: `"karras"`
            for `"heun"`, else `"trailing"`), `clip_denoised`,
            `thresholding` (dynamic thresholding at a quantile such as
            `0.995` instead of clipping), `eta` (DDIM's noise scale in
            `[0, 1]`), `corrector_steps` and `snr` (the `"pc"` corrector's
            Langevin steps and step size), `s_churn`, `s_tmin`, `s_tmax`
            and `s_noise` (`"heun"`'s stochastic churn).

    Returns:
        A NumPy float32 array `(num_images, H, W, C)` in
        `[clip_min, clip_max]` (`[-1, 1]` by default); with
        `return_trajectory=True`, `(images, trajectory)` where
        `trajectory` is `(frames, num_images, H, W, C)`, clipped to the
        data range: `x_T`, the sample after every `trajectory_every`-th
        step, and the final images (`trajectory[-1] == images`).

    Example:

    >>> images = model.generate_images(16, seed=0, sampler="dpmpp_2m_sde", num_steps=20)
    >>> images, frames = model.generate_images(4, return_trajectory=True)
    >>> roses = model.generate_images(16, labels="rose", classifier=classifier, classifier_scale=3.0)
    """
    seed = check_seed("seed", seed)
    if initial_noise is not None:
        initial_noise = check_images(initial_noise, "initial_noise", model.image_shape)
        if num_images is not None and num_images != len(initial_noise):
            raise ValueError(
                f"num_images must match initial_noise's {len(initial_noise)} images (or be None). "
                f"Received: num_images={num_images!r}"
            )
        num_images = len(initial_noise)
    if num_images is None and labels is not None and not isinstance(labels, (str, int, np.integer)):
        num_images = len(labels)
    num_images = check_positive_int("num_images", 16 if num_images is None else num_images)
    request = conditioning.request(
        model, labels, num_images, guidance_scale, guidance_rescale, classifier, classifier_scale
    )
    sampler, sampler_options = with_default_sampling(model, sampler, sampler_options)
    options = resolved_options(model, sampler, **sampler_options)
    dtype = check_inference_dtype(dtype)
    num_steps = options.num_steps
    batch_size = num_images if batch_size is None else min(check_positive_int("batch_size", batch_size), num_images)
    segment_steps = None if segment_steps is None else check_positive_int("segment_steps", segment_steps)
    every = None
    if return_trajectory:
        every = max(1, num_steps // 20) if trajectory_every is None else check_positive_int(
            "trajectory_every", trajectory_every
        )
    build = conditioning.with_guidance(generation_chain(model, options), request, model.null_label)
    key = ("generate", options, conditioning.key(request))

    num_chunks = -(-num_images // batch_size)
    plan = ChunkPlan(num_chunks, model.sampling_strategy)
    progress = Progress(
        plan.num_local_chunks * num_steps, verbose and (num_chunks > 1 or num_segments(num_steps, segment_steps) > 1)
    )
    seeds = chunk_seeds(seed, num_chunks)

    def run_chunk(k):
        x_T = None if initial_noise is None else padded(initial_noise[k * batch_size : (k + 1) * batch_size], batch_size)
        outputs = model.runner.run_chain(
            key, build, (batch_size,) + model.image_shape, num_steps, seeds[k], x_T=x_T,
            inputs=conditioning.chain_inputs(request, k * batch_size, batch_size, model.null_label),
            trajectory_every=every, segment_steps=segment_steps, progress=progress, dtype=dtype,
            classifier=conditioning.classifier_of(request),
        )
        return tuple(ops.convert_to_numpy(o) for o in (outputs if return_trajectory else (outputs,)))

    chunks = plan.run(run_chunk)
    images = to_images(np.concatenate([c[0] for c in chunks], axis=0)[:num_images], model.diffusion)
    if not return_trajectory:
        return images
    trajectory = to_images(np.concatenate([c[1] for c in chunks], axis=1)[:, :num_images], model.diffusion)
    return images, trajectory


def with_default_sampling(model, sampler, options, fallback=None):
    """`(sampler, options)`: with `sampler=None` the model's `default_sampling`, the options given overriding its own.

    A model without `default_sampling` gets `fallback` (a dict naming a
    sampler and its options; `None`: `"ddpm"`). A sampler named that is
    the default's own also takes the default's options where none are
    given (its steps, its spacing), as the command line does.
    """
    default = dict(model.default_sampling or fallback or {"sampler": "ddpm"})
    default_sampler = default.pop("sampler")
    if sampler is None:
        sampler = default_sampler
    if sampler != default_sampler or isinstance(sampler, samplers.SamplerOptions):
        return sampler, options
    return sampler, {**default, **options}


def resolved_options(model, sampler="ddpm", samplers_allowed=None, **options):
    """`sampler` and `options` as `samplers.SamplerOptions` checked against `model`'s diffusion, `num_steps` set."""
    return samplers.sampler_options(sampler, **options).resolved(model.diffusion.num_timesteps, samplers_allowed)


def generation_chain(model, options):
    """`build(model_fn, noise_fn) -> Chain`: the sampler chain of resolved `SamplerOptions` on `model`'s diffusion."""
    chain_options = options.as_dict()

    def build(model_fn, noise_fn):
        return samplers.build_chain(
            model_fn, noise_fn, model.diffusion, prediction_type=model.prediction_type, **chain_options
        )

    return build
