"""`GenerationMixin`: sampling, inpainting, DDIM inversion and interpolation for `DiffusionModel`.

Every method builds a sampler `Chain` (`ddpm_keras.samplers`) and runs it
with the EMA network in compiled segments: one compiled function draws
`x_T` and sets up the chain's state, another runs `segment_steps` steps of
it from any position (compiled once, the position an argument), and a
progress bar moves between segments. The backend-specific compilation is in
`ddpm_keras._train_steps.compile_chain`.
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras import _train_steps
from ddpm_keras import samplers
from ddpm_keras._checks import check_positive_int
from ddpm_keras.precision import check_inference_dtype
from ddpm_keras.precision import inference_network

SEGMENT_STEPS = 50
DETERMINISTIC_SAMPLERS = tuple(name for name, spec in samplers.REGISTRY.items() if not spec.stochastic)


class GenerationMixin:
    """Sampling methods of a model with `ema_network`, `diffusion`, `prediction_type` and `image_shape`."""

    def generate_images(
        self,
        num_images=None,
        seed=None,
        sampler="ddpm",
        num_steps=None,
        eta=0.0,
        clip_denoised=True,
        batch_size=None,
        return_trajectory=False,
        trajectory_every=None,
        corrector_steps=1,
        snr=0.16,
        verbose=1,
        initial_noise=None,
        timestep_spacing="trailing",
        thresholding=None,
        segment_steps=SEGMENT_STEPS,
        dtype=None,
    ):
        """Samples images with the EMA network.

        The reverse chain runs as compiled code (`fori_loop`), traced once
        per (sampler, batch shape, steps, options) and reused, in segments
        of `segment_steps` steps with a progress bar between them. See
        `ddpm_keras.samplers` for the samplers; all walk the kept timesteps
        from `t = T - 1` down.

        Args:
            num_images: Integer or `None`, how many images. Defaults to
                `None`: `16`, or as many as `initial_noise` holds.
            seed: Integer or `None`. The same seed (and `batch_size`) gives
                the same images. Defaults to `None` (a fresh random seed).
            sampler: One of `ddpm_keras.samplers.SAMPLERS`: `"ddpm"`
                (ancestral; respaced when `num_steps < T`), `"ddim"`,
                `"pc"` (DDPM predictor + Langevin corrector), `"dpmpp_2m"`,
                `"dpmpp_3m"`, `"dpmpp_2m_sde"` (DPM-Solver++, Lu et al.
                2022) or `"unipc"` (Zhao et al. 2023). Defaults to `"ddpm"`.
            num_steps: Integer in `[1, T]` or `None`: `T` for `"ddpm"` and
                `"pc"`, `50` for `"ddim"`, `20` for the solvers. Each step
                is one network call (`1 + corrector_steps` for `"pc"`).
                Defaults to `None`.
            eta: Float in `[0, 1]`, DDIM's noise scale: `0` deterministic,
                `1` the DDPM posterior variance. Defaults to `0.0`.
            clip_denoised: Boolean, clip the predicted `x_0` to the data
                range at each step. Defaults to `True`.
            batch_size: Integer or `None`, images per compiled call. Larger
                requests run in chunks of this size (the last padded). Chunk
                `k` draws its noise from a seed derived from `(seed, k)`, so
                results are deterministic for a given `(seed, batch_size)`
                but differ between batch sizes. Defaults to `None` (one
                chunk, seeded with `seed` itself).
            return_trajectory: Boolean, also return the intermediate
                samples. Defaults to `False`.
            trajectory_every: Integer or `None`, steps between trajectory
                frames. Defaults to `None` (`max(1, num_steps // 20)`, about
                20 frames).
            corrector_steps: Integer >= 0, Langevin steps after each `"pc"`
                predictor step. Defaults to `1`.
            snr: Float > 0, the `"pc"` corrector's signal-to-noise ratio
                (its step size). Defaults to `0.16`.
            verbose: `0` or `1`, show a progress bar over steps when there
                is more than one segment or chunk. Defaults to `1`.
            initial_noise: `None` or an array `(N, H, W, C)`: the `x_T` to
                start from instead of noise drawn from `seed` (to compare
                samplers on the same start). Defaults to `None`.
            timestep_spacing: `"trailing"`, `"logsnr"` or `"karras"`, which
                training timesteps the `num_steps` steps visit
                (`samplers.sampling_timesteps`). Defaults to `"trailing"`.
            thresholding: `None` or a quantile in `(0, 1)` such as `0.995`:
                dynamic thresholding of the predicted `x_0` (Saharia et al.
                2022) instead of clipping. Defaults to `None`.
            segment_steps: Integer or `None`, steps per compiled segment;
                `None` runs the chain in one call. Defaults to `50`.
            dtype: `None`, `"float32"`, `"bfloat16"` or `"float16"`: the
                precision the network computes in (its weights stay
                float32; the sampler's arithmetic on `x_t` is float32
                whatever this says). Defaults to `None` (the network's own
                policy, float32 for a float32-trained network).

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
        """
        if initial_noise is not None:
            initial_noise = self._check_images(initial_noise, "initial_noise")
            if num_images is not None and num_images != len(initial_noise):
                raise ValueError(
                    f"num_images must match initial_noise's {len(initial_noise)} images (or be None). "
                    f"Received: num_images={num_images!r}"
                )
            num_images = len(initial_noise)
        num_images = check_positive_int("num_images", 16 if num_images is None else num_images)
        options = self._generation_options(
            sampler, num_steps, eta, clip_denoised, corrector_steps, snr, timestep_spacing, thresholding, dtype
        )
        num_steps = options["num_steps"]
        batch_size = num_images if batch_size is None else min(check_positive_int("batch_size", batch_size), num_images)
        segment_steps = None if segment_steps is None else check_positive_int("segment_steps", segment_steps)
        every = None
        if return_trajectory:
            every = max(1, num_steps // 20) if trajectory_every is None else check_positive_int(
                "trajectory_every", trajectory_every
            )
        build = self._generation_chain(options)

        num_chunks = -(-num_images // batch_size)
        progress = _Progress(num_chunks * num_steps, verbose and (num_chunks > 1 or _segments(num_steps, segment_steps) > 1))
        chunks = []
        for k, chunk_seed in enumerate(_chunk_seeds(seed, num_chunks)):
            x_T = None if initial_noise is None else _padded(initial_noise[k * batch_size : (k + 1) * batch_size], batch_size)
            outputs = self._run_chain(
                ("generate", tuple(sorted(options.items()))), build, (batch_size,) + self.image_shape, num_steps,
                chunk_seed, x_T=x_T, trajectory_every=every, segment_steps=segment_steps, progress=progress,
                dtype=options["dtype"],
            )
            chunks.append([ops.convert_to_numpy(o) for o in (outputs if return_trajectory else (outputs,))])
        images = self._to_images(np.concatenate([c[0] for c in chunks], axis=0)[:num_images])
        if not return_trajectory:
            return images
        trajectory = self._to_images(np.concatenate([c[1] for c in chunks], axis=1)[:, :num_images])
        return images, trajectory

    def export_generator(self, path, **options):
        """Writes the generator as a TensorFlow SavedModel: `(seed, num_images) -> uint8 images`.

        See `ddpm_keras.export.export_generator` for the options (the
        sampler and its settings, fixed at export) and the signature.

        Example:

        >>> model.export_generator("flowers_generator", sampler="dpmpp_2m_sde", num_steps=20)
        """
        from ddpm_keras.export import export_generator

        return export_generator(self, path, **options)

    def _generation_options(
        self, sampler, num_steps, eta, clip_denoised, corrector_steps, snr, timestep_spacing, thresholding, dtype
    ):
        """The checked options of a sampling chain, as `generate_images` and the export key them."""
        num_steps = samplers.check_sampler_args(
            sampler, num_steps, self.diffusion.num_timesteps, eta, corrector_steps, snr,
            timestep_spacing=timestep_spacing, thresholding=thresholding,
        )
        return {
            "sampler": sampler, "num_steps": num_steps, "eta": float(eta),
            "clip_denoised": bool(clip_denoised), "corrector_steps": int(corrector_steps),
            "snr": float(snr), "timestep_spacing": timestep_spacing,
            "thresholding": None if thresholding is None else float(thresholding),
            "dtype": check_inference_dtype(dtype),
        }

    def _generation_chain(self, options):
        """`build(model_fn, noise_fn) -> Chain` for `_generation_options`' options."""
        chain_options = {key: value for key, value in options.items() if key != "dtype"}

        def build(model_fn, noise_fn):
            return samplers.build_chain(
                model_fn, noise_fn, self.diffusion, prediction_type=self.prediction_type, **chain_options
            )

        return build

    def inference_network(self, dtype=None):
        """The EMA network, or a copy of it computing in `dtype` (made once, run with the EMA weights)."""
        dtype = check_inference_dtype(dtype)
        if dtype == "float32":
            return self.ema_network
        # A plain object holds the copies: a dict attribute would make Keras
        # track them as sublayers, and save them with the model.
        cache = getattr(self, "_inference_networks", None)
        if cache is None:
            cache = self._inference_networks = _NetworkCache()
        if dtype not in cache.networks:
            cache.networks[dtype] = inference_network(self.ema_network, dtype)
        return cache.networks[dtype]

    def inpaint(
        self, images, mask, seed=None, sampler="ddpm", num_steps=None, eta=0.0, resample=1, clip_denoised=True,
        timestep_spacing="trailing", verbose=1,
    ):
        """Fills in the unknown region of `images` (replacement method, RePaint resampling).

        At each reverse step the known region is replaced by the original
        diffused to the new noise level, `q_sample(x_0, t - 1)`; with
        `resample > 1` each step is redone after re-noising with
        `q(x_t | x_{t-1})` (Lugmayr et al. 2022, jump length 1). The output
        equals `images` exactly where `mask == 1`.

        Args:
            images: Float array `(N, H, W, C)` (or one image `(H, W, C)`) in
                the data range.
            mask: Array of 0 and 1, 1 where the pixel is known; `(H, W)`,
                `(H, W, 1)`, `(H, W, C)`, `(N, H, W, 1)` or `(N, H, W, C)`.
            seed: Integer or `None`. Defaults to `None`.
            sampler: `"ddpm"` or `"ddim"`. Defaults to `"ddpm"`.
            num_steps: Integer or `None`, as in `generate_images`.
                Defaults to `None`.
            eta: Float in `[0, 1]`, for `"ddim"`. Defaults to `0.0`.
            resample: Integer >= 1, RePaint's resampling count `r`
                (cost: `r` network calls per step). Defaults to `1`.
            clip_denoised: Boolean. Defaults to `True`.
            timestep_spacing: As in `generate_images`. Defaults to
                `"trailing"`.
            verbose: `0` or `1`, show progress over segments of a long
                chain. Defaults to `1`.

        Returns:
            A NumPy float32 array shaped as `images` (batched).

        Example:

        >>> mask = np.ones((32, 32)); mask[8:24, 8:24] = 0
        >>> filled = model.inpaint(images, mask, seed=0, resample=5)
        """
        images = self._check_images(images, "images")
        mask = _broadcast_mask(mask, images.shape)
        num_steps = samplers.check_sampler_args(
            sampler, num_steps, self.diffusion.num_timesteps, eta, samplers=samplers.INPAINT_SAMPLERS,
            timestep_spacing=timestep_spacing,
        )
        resample = check_positive_int("resample", resample)
        options = {
            "sampler": sampler, "num_steps": num_steps, "eta": float(eta), "resample": resample,
            "clip_denoised": bool(clip_denoised), "timestep_spacing": timestep_spacing,
        }

        def build(model_fn, noise_fn, x_0, known):
            context = samplers.make_context(
                model_fn, noise_fn, self.diffusion, num_steps, self.prediction_type, bool(clip_denoised),
                timestep_spacing=timestep_spacing,
            )
            return samplers.inpaint_chain(context, x_0, known, sampler, float(eta), resample)

        progress = _Progress(num_steps, verbose and _segments(num_steps, SEGMENT_STEPS) > 1)
        filled = self._run_chain(
            ("inpaint", tuple(sorted(options.items()))), build, images.shape, num_steps, seed,
            inputs=(ops.convert_to_tensor(images), ops.convert_to_tensor(mask)), progress=progress,
        )
        return np.where(mask == 1.0, images, self._to_images(filled))

    def encode(self, images, num_steps=50):
        """DDIM inversion: the latents `x_T` that deterministic DDIM decodes to `images`.

        Runs the DDIM ODE (eta = 0) forward from `x_0` to `x_T` over the
        same `num_steps` trailing-spaced timesteps as `decode`.

        Args:
            images: Float array `(N, H, W, C)` (or `(H, W, C)`) in the data
                range.
            num_steps: Integer in `[1, T]`. Defaults to `50`.

        Returns:
            A NumPy float32 array `(N, H, W, C)`, roughly standard normal.

        Example:

        >>> latents = model.encode(images)
        >>> reconstructed = model.decode(latents)
        """
        images = self._check_images(images, "images")
        samplers.check_num_steps(num_steps, self.diffusion.num_timesteps)

        def build(model_fn, noise_fn, x_0):
            context = samplers.make_context(model_fn, noise_fn, self.diffusion, num_steps, self.prediction_type)
            return samplers.ddim_encode_chain(context)

        x_0 = ops.convert_to_tensor(images)
        latents = self._run_chain(("encode", num_steps), build, images.shape, num_steps, 0, x_T=x_0, inputs=(x_0,))
        return np.asarray(ops.convert_to_numpy(latents), dtype=np.float32)

    def decode(self, noises, num_steps=50, clip_denoised=True, sampler="ddim"):
        """A deterministic sampler (DDIM, eta = 0, by default) from given latents `x_T` to images.

        Args:
            noises: Float array `(N, H, W, C)` (or `(H, W, C)`), the `x_T`.
            num_steps: Integer in `[1, T]`. Defaults to `50`.
            clip_denoised: Boolean. Defaults to `True`.
            sampler: A deterministic sampler: `"ddim"` (which `encode`
                inverts), `"dpmpp_2m"`, `"dpmpp_3m"` or `"unipc"`. Defaults
                to `"ddim"`.

        Returns:
            A NumPy float32 array `(N, H, W, C)` in the data range.

        Example:

        >>> images = model.decode(np.random.normal(size=(4, 32, 32, 3)))
        """
        noises = self._check_images(noises, "noises")
        if sampler not in DETERMINISTIC_SAMPLERS:
            raise ValueError(
                f"decode needs a deterministic sampler. Received: sampler={sampler!r}. "
                f"Expected one of {DETERMINISTIC_SAMPLERS}."
            )
        return self.generate_images(
            seed=0, sampler=sampler, num_steps=num_steps, clip_denoised=clip_denoised, initial_noise=noises,
            verbose=0,
        )

    def interpolate(
        self, num_images=8, seed=None, num_steps=50, images=None, noises=None, clip_denoised=True, sampler="ddim",
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

        Returns:
            A NumPy float32 array `(num_images, H, W, C)` in the data range.

        Example:

        >>> path = model.interpolate(8, seed=0, sampler="dpmpp_2m", num_steps=20)
        >>> morph = model.interpolate(8, images=(image_a, image_b))
        """
        num_images = check_positive_int("num_images", num_images)
        if num_images < 2:
            raise ValueError(f"num_images must be at least 2 (the two endpoints). Received: num_images={num_images}")
        samplers.check_num_steps(num_steps, self.diffusion.num_timesteps)
        if images is not None and noises is not None:
            raise ValueError("Pass images or noises, not both. Received both.")
        if images is not None:
            if sampler != "ddim":
                raise ValueError(
                    "Interpolating between images decodes with 'ddim', the inverse of encode. "
                    f"Received: sampler={sampler!r}"
                )
            latents = self.encode(self._check_pair(images, "images"), num_steps)
        elif noises is not None:
            latents = self._check_pair(noises, "noises")
        else:
            latents = np.random.default_rng(seed).standard_normal((2,) + self.image_shape).astype(np.float32)
        path = samplers.slerp(latents[0], latents[1], np.linspace(0.0, 1.0, num_images)).astype(np.float32)
        path[0], path[-1] = latents[0], latents[1]
        return self.decode(path, num_steps, clip_denoised, sampler=sampler)

    # ------------------------------------------------------------ running

    def _run_chain(
        self, key, build, shape, num_steps, seed, x_T=None, inputs=(), trajectory_every=None,
        segment_steps=SEGMENT_STEPS, progress=None, dtype="float32",
    ):
        """Runs the chain `build(model_fn, noise_fn, *inputs)` from `x_T` (or noise from `seed`) in segments.

        Returns the sample, or `(sample, frames)` with `trajectory_every`.
        """
        key = key + (tuple(shape), x_T is None, trajectory_every)
        drawn = x_T is None

        def init(model_fn, noise_fn, *args):
            x_start = noise_fn(shape, -1) if drawn else args[0]
            chain = build(model_fn, noise_fn, *args[0 if drawn else 1 :])
            return samplers.start(chain, x_start, trajectory_every)

        def segment(model_fn, noise_fn, loop_state, begin, end, *args):
            return samplers.advance(build(model_fn, noise_fn, *args), loop_state, begin, end, trajectory_every)

        run_init = self._compiled(key + ("init",), init, dtype)
        run_segment = self._compiled(key + ("segment",), segment, dtype)
        seed = _train_steps.random_seed(seed)
        loop_state = run_init(seed, *((() if drawn else (ops.convert_to_tensor(x_T),)) + tuple(inputs)))
        size = num_steps if segment_steps is None else segment_steps
        for begin in range(0, num_steps, size):
            end = min(begin + size, num_steps)
            loop_state = run_segment(seed, loop_state, _index(begin), _index(end), *inputs)
            if progress is not None:
                progress.advance(end - begin, loop_state)
        return samplers.finish(loop_state)

    def _check_images(self, images, name):
        """`images` as float32 `(N, H, W, C)` of this model's image shape, or a ValueError."""
        images = np.asarray(ops.convert_to_numpy(images), dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[0] < 1 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{name} must have shape (N,) + {self.image_shape} or {self.image_shape}. "
                f"Received: {name}.shape={images.shape}"
            )
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{name} must be finite. Received: {name} with NaN or inf values")
        return images

    def _check_pair(self, pair, name):
        """A pair `(a, b)` of `(H, W, C)` arrays as float32 `(2, H, W, C)`."""
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{name} must be a pair (a, b). Received: {name} of type {type(pair).__name__}")
        return np.concatenate([self._check_images(item, name) for item in pair], axis=0)

    def _to_images(self, images):
        """A sampler's output as a NumPy float32 array clipped to the data range."""
        images = np.asarray(ops.convert_to_numpy(images), dtype=np.float32)
        return np.clip(images, self.diffusion.clip_min, self.diffusion.clip_max)

    def _compiled(self, key, chain, dtype="float32"):
        """The compiled form of `chain`, built once per `key` and cached.

        `chain(model_fn, noise_fn, *inputs) -> outputs` is written in
        `keras.ops`; the result is `run(seed, *inputs) -> outputs` (the same
        seed gives the same outputs): on TensorFlow one
        `tf.function(jit_compile=True)`, on JAX `jax.jit` with the EMA
        weights as arguments and noise from a key folded with each draw's
        step, on PyTorch eager code under `torch.no_grad()`.
        """
        key = key + (dtype,)
        if key not in self._samplers:
            self._samplers[key] = _train_steps.compile_chain(self, chain, self.inference_network(dtype))
        return self._samplers[key]


class _NetworkCache:
    """The reduced-precision copies of a model's EMA network, by dtype."""

    def __init__(self):
        self.networks = {}


class _Progress:
    """A progress bar over sampling steps, shown only when `show`; waits for each segment to finish."""

    def __init__(self, total, show):
        self.bar = keras.utils.Progbar(total, unit_name="step") if show else None
        self.done = 0

    def advance(self, steps, loop_state):
        if self.bar is None:
            return
        # Wait for the segment (asynchronous backends return at once).
        ops.convert_to_numpy(ops.ravel(loop_state[0][0])[:1])
        self.done += steps
        self.bar.update(self.done)


def _segments(num_steps, segment_steps):
    return 1 if segment_steps is None else -(-num_steps // segment_steps)


def _index(value):
    """A loop bound as an int32 scalar tensor, so one compiled segment serves every position."""
    if keras.backend.backend() == "torch":
        return int(value)
    return ops.convert_to_tensor(value, "int32")


def _padded(images, size):
    """`images` with zero images appended up to `size`."""
    if len(images) == size:
        return images
    return np.concatenate([images, np.zeros((size - len(images),) + images.shape[1:], images.dtype)])


def _chunk_seeds(seed, num_chunks):
    """The seed of each chunk: `seed` itself for one chunk, else derived from `(seed, k)`."""
    if num_chunks == 1:
        return [seed]
    base = np.random.default_rng().integers(2**31 - 1) if seed is None else int(seed)
    return [derived_seed(base, k) for k in range(num_chunks)]


def derived_seed(base, k):
    """An int seed in `[0, 2^31 - 1)` derived from `(base, k)`."""
    return int(np.random.SeedSequence([int(base) % 2**32, k]).generate_state(1)[0] % (2**31 - 1))


def _broadcast_mask(mask, shape):
    """An inpainting mask as float32 `shape`, checked to be 0/1 and broadcastable."""
    mask = np.asarray(ops.convert_to_numpy(mask), dtype=np.float32)
    if mask.ndim == 2:
        mask = mask[..., None]
    try:
        mask = np.broadcast_to(mask, shape).astype(np.float32)
    except ValueError:
        raise ValueError(
            f"mask must broadcast to the images' shape {tuple(shape)}: use (H, W), (H, W, 1), "
            f"(H, W, C), (N, H, W, 1) or (N, H, W, C). Received: mask.shape={mask.shape}"
        ) from None
    if not np.all((mask == 0.0) | (mask == 1.0)):
        raise ValueError(
            "mask must hold only 0 (to fill in) and 1 (known). "
            f"Received: values {np.unique(mask)[:5]}..."
        )
    return mask
