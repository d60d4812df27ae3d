"""`DiffusionModel`: trains a noise-prediction network with `fit` and samples from it."""

import keras
import numpy as np
from keras import ops

from ddpm_keras import _train_steps
from ddpm_keras._checks import check_positive_int
from ddpm_keras import likelihood
from ddpm_keras import sampling
from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.diffusion import check_prediction_type
from ddpm_keras.distribute import num_replicas_in_sync

LOSS_WEIGHTINGS = (None, "min_snr")


@keras.saving.register_keras_serializable(package="ddpm_keras")
class DiffusionModel(keras.Model):
    """A DDPM: a noise-prediction network, its EMA shadow and the diffusion.

    `fit` trains `network` on the simplified objective of Ho et al. 2020:
    for each image a timestep `t ~ U[0, T)` and noise `eps ~ N(0, I)` are
    drawn, `x_t = q_sample(x_0, t, eps)`, and the compiled loss (the mean
    squared error by default) between `eps` and `network([x_t, t])` is
    minimised. After each optimizer step every weight of `ema_network` moves
    towards the network's: `ema_w = ema * ema_w + (1 - ema) * w`. Samples
    come from the EMA network.

    Args:
        network: A Keras model `[x_t, t] -> predicted noise`, such as
            `build_unet(...)`.
        diffusion: A `GaussianDiffusion`.
        ema_network: A model of the same structure, holding the exponential
            moving average of the weights. Defaults to `None`: a clone of
            `network` with its weights.
        ema: Float in `[0, 1]`, the EMA decay. Defaults to `0.999`.
        seed: Integer or `None`, the seed of the training noise and
            timesteps. Defaults to `None` (random).
        prediction_type: `"epsilon"` (the noise, Ho et al. 2020), `"v"`
            (`sqrt(ab) eps - sqrt(1 - ab) x_0`, Salimans & Ho 2022) or
            `"x0"`: what `network` is trained to output. Every sampler and
            the likelihood read it through
            `GaussianDiffusion.split_prediction`. Defaults to `"epsilon"`.
        loss_weighting: `None` (every timestep alike) or `"min_snr"`: each
            example's loss is weighted by min-SNR-gamma (Hang et al. 2023),
            the weight that matches `prediction_type`:
            `min(SNR, gamma) / SNR` for epsilon, `min(SNR, gamma)` for x0,
            `min(SNR, gamma) / (SNR + 1)` for v. Defaults to `None`.
        snr_gamma: Float > 0, min-SNR's `gamma`. Defaults to `5.0`.
        ema_warmup: Boolean, start the EMA decay low and raise it to `ema`:
            `min(ema, (1 + n) / (10 + n))` after `n` optimizer steps, so the
            shadow network follows the network early in training instead of
            averaging in its random start. Defaults to `False`.

    Call arguments:
        inputs: `[x_t, t]`: noisy images and int timesteps `(batch,)`.
            Returns the training network's noise prediction. A tensor of
            images alone is taken at `t = 0`.

    Example:

    >>> network = build_unet(32, 3, [32, 64, 128], [False, True, True])
    >>> model = DiffusionModel(network, GaussianDiffusion(timesteps=1000))
    >>> model.compile(optimizer=keras.optimizers.Adam(2e-4))
    >>> model.fit(dataset, epochs=10)
    >>> images = model.generate_images(num_images=16, seed=0)
    """

    def __init__(
        self,
        network,
        diffusion,
        ema_network=None,
        ema=0.999,
        seed=None,
        prediction_type="epsilon",
        loss_weighting=None,
        snr_gamma=5.0,
        ema_warmup=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(
                "diffusion must be a GaussianDiffusion. "
                f"Received: diffusion={diffusion!r}"
            )
        if not 0.0 <= ema <= 1.0:
            raise ValueError(f"ema must be in [0, 1]. Received: ema={ema}")
        check_prediction_type(prediction_type)
        if prediction_type == "epsilon" and diffusion.zero_terminal_snr:
            raise ValueError(
                "prediction_type='epsilon' is ill-posed with zero terminal SNR: at t = T - 1 the noise is "
                "x_T itself and says nothing about x_0. Use prediction_type='v' (or 'x0'). "
                "Received: a diffusion with alphas_cumprod[T - 1] == 0"
            )
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"Unknown loss_weighting: {loss_weighting!r}. Expected one of {LOSS_WEIGHTINGS} "
                "(None: every timestep alike; 'min_snr': min-SNR-gamma, Hang et al. 2023)."
            )
        if isinstance(snr_gamma, bool) or not isinstance(snr_gamma, (int, float)) or not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be a positive float, e.g. 5.0. Received: snr_gamma={snr_gamma!r}")
        if ema_network is None:
            ema_network = keras.models.clone_model(network)
            ema_network.set_weights(network.get_weights())
        _check_same_structure(network, ema_network)
        self.network = network
        self.ema_network = ema_network
        _freeze(self.ema_network)
        self.diffusion = diffusion
        self.ema = float(ema)
        self.seed = seed
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting
        self.snr_gamma = float(snr_gamma)
        self.ema_warmup = bool(ema_warmup)
        self.seed_generator = keras.random.SeedGenerator(seed, name="train_seed")
        # Validation draws its noise and timesteps from a generator that is
        # reset at the start of every evaluation: losses compare across epochs.
        self.eval_seed = 0 if seed is None else int(seed)
        self.eval_seed_generator = keras.random.SeedGenerator(self.eval_seed, name="eval_seed")
        self.sample_seed_generator = keras.random.SeedGenerator(0, name="sample_seed")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Epochs completed, saved with the weights so that a checkpoint says
        # where training resumes.
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="epoch")
        self._samplers = {}
        # The sub-networks are built, so this model is: the optimizer state
        # is then restored when a `.keras` file is loaded.
        self.built = True

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images the network takes."""
        return tuple(self.network.inputs[0].shape[1:])

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            x_t, t = inputs
        else:
            # Keras builds a compiled loss by calling the model on a batch of
            # images alone.
            x_t = inputs
            t = ops.zeros((ops.shape(x_t)[0],), dtype="int32")
        return self.network([x_t, t], training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss between the true and predicted noise; MSE if none was compiled."""
        if y is None:
            # Keras's symbolic build of a compiled loss passes no target; the
            # target of the denoising loss is the noise, shaped as y_pred.
            y = ops.zeros_like(y_pred)
        if self.loss is None:
            loss = ops.mean(ops.square(ops.cast(y, "float32") - ops.cast(y_pred, "float32")))
            for extra in self.losses:
                loss = loss + ops.cast(ops.sum(extra), "float32")
            # As Keras's compiled losses: this replica's share of the global
            # mean under a tf.distribute strategy (the gradients are summed).
            return loss / float(num_replicas_in_sync())
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def noisy_batch(self, images, seed):
        """Draws `t ~ U[0, T)` and `eps ~ N(0, I)`; returns `(x_t, t, eps)`."""
        batch = ops.shape(images)[0]
        t = keras.random.randint(
            (batch,), 0, self.diffusion.num_timesteps, dtype="int32", seed=seed
        )
        noise = keras.random.normal(ops.shape(images), dtype=images.dtype, seed=seed)
        return self.diffusion.q_sample(images, t, noise), t, noise

    def train_step(self, *args):
        """One optimizer step of the network, then the EMA update.

        `train_step(data)` on TensorFlow and PyTorch; the stateless
        `train_step(state, data) -> (logs, state)` on JAX. The backend's
        step is in `ddpm_keras._train_steps`.
        """
        return _train_steps.step_for(_train_steps.TRAIN_STEPS, "fit")(self, *args)

    def update_ema(self):
        """Moves every EMA weight towards the network's: `ema * ema_w + (1 - ema) * w`."""
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(self.ema * ema_weight + (1.0 - self.ema) * ops.cast(weight, ema_weight.dtype))

    def test_step(self, *args):
        """The validation loss on noise from the evaluation seed; `(data)`, or `(state, data)` on JAX."""
        return _train_steps.step_for(_train_steps.TEST_STEPS, "evaluate")(self, *args)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, with the validation noise reset to its fixed seed."""
        _train_steps.reset_seed(self.eval_seed_generator, self.eval_seed)
        return super().evaluate(*args, **kwargs)

    def generate_images(
        self,
        num_images=16,
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
    ):
        """Samples images with the EMA network.

        The whole reverse chain runs as one compiled function (`fori_loop`),
        traced once per (sampler, batch shape, steps, options) and reused.
        See `ddpm_keras.sampling` for the samplers; all walk "trailing"
        spaced timesteps that start at `t = T - 1`.

        Args:
            num_images: Integer, how many images. Defaults to `16`.
            seed: Integer or `None`. The same seed (and `batch_size`) gives
                the same images. Defaults to `None` (a fresh random seed).
            sampler: `"ddpm"` (ancestral; respaced when `num_steps < T`,
                Nichol & Dhariwal 2021), `"ddim"` (Song et al. 2021) or
                `"pc"` (DDPM predictor + Langevin corrector, Song et al.
                2021). Defaults to `"ddpm"`.
            num_steps: Integer in `[1, T]` or `None`: `T` for `"ddpm"` and
                `"pc"`, `50` for `"ddim"`. Defaults to `None`.
            eta: Float in `[0, 1]`, DDIM's noise scale: `0` deterministic,
                `1` the DDPM posterior variance. Defaults to `0.0`.
            clip_denoised: Boolean, clip the predicted `x_0` to the data
                range at each step. Defaults to `True`.
            batch_size: Integer or `None`, images per compiled call. Larger
                requests run in chunks of this size (the last padded), with
                a progress bar over chunks when `verbose`. Chunk `k` draws
                its noise from a seed derived from `(seed, k)`, so results
                are deterministic for a given `(seed, batch_size)` but
                differ between batch sizes. Defaults to `None` (one chunk,
                seeded with `seed` itself).
            return_trajectory: Boolean, also return the intermediate
                samples. Defaults to `False`.
            trajectory_every: Integer or `None`, steps between trajectory
                frames. Defaults to `None` (`max(1, num_steps // 20)`, about
                20 frames).
            corrector_steps: Integer >= 0, Langevin steps after each `"pc"`
                predictor step. Defaults to `1`.
            snr: Float > 0, the `"pc"` corrector's signal-to-noise ratio
                (its step size). Defaults to `0.16`.
            verbose: `0` or `1`, show the progress bar over chunks (only
                when there is more than one). Defaults to `1`.

        Returns:
            A NumPy float32 array `(num_images, H, W, C)` in
            `[clip_min, clip_max]` (`[-1, 1]` by default); with
            `return_trajectory=True`, `(images, trajectory)` where
            `trajectory` is `(frames, num_images, H, W, C)`, clipped to the
            data range: `x_T`, the sample after every `trajectory_every`-th
            step, and the final images (`trajectory[-1] == images`).

        Example:

        >>> images = model.generate_images(16, seed=0, sampler="ddim", num_steps=50)
        >>> images, frames = model.generate_images(4, return_trajectory=True)
        """
        num_images = check_positive_int("num_images", num_images)
        num_steps = sampling.check_sampler_args(
            sampler, num_steps, self.diffusion.num_timesteps, eta, corrector_steps, snr
        )
        batch_size = num_images if batch_size is None else min(check_positive_int("batch_size", batch_size), num_images)
        every = None
        if return_trajectory:
            every = max(1, num_steps // 20) if trajectory_every is None else check_positive_int(
                "trajectory_every", trajectory_every
            )
        shape = (batch_size,) + self.image_shape
        options = {
            "sampler": sampler, "num_steps": num_steps, "eta": float(eta),
            "clip_denoised": bool(clip_denoised), "corrector_steps": int(corrector_steps),
            "snr": float(snr), "trajectory_every": every,
        }

        def chain(eps_fn, noise_fn):
            return sampling.sample_loop(eps_fn, noise_fn, self.diffusion, noise_fn(shape, -1), **options)

        run = self._compiled(("generate", shape) + tuple(sorted(options.items())), chain)
        num_chunks = -(-num_images // batch_size)
        progbar = keras.utils.Progbar(num_chunks, unit_name="chunk") if verbose and num_chunks > 1 else None
        chunks = []
        for k, chunk_seed in enumerate(_chunk_seeds(seed, num_chunks)):
            outputs = run(chunk_seed)
            chunks.append([ops.convert_to_numpy(o) for o in (outputs if return_trajectory else (outputs,))])
            if progbar is not None:
                progbar.update(k + 1)
        images = self._to_images(np.concatenate([c[0] for c in chunks], axis=0)[:num_images])
        if not return_trajectory:
            return images
        trajectory = self._to_images(np.concatenate([c[1] for c in chunks], axis=1)[:, :num_images])
        return images, trajectory

    def inpaint(self, images, mask, seed=None, sampler="ddpm", num_steps=None, eta=0.0, resample=1, clip_denoised=True):
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

        Returns:
            A NumPy float32 array shaped as `images` (batched).

        Example:

        >>> mask = np.ones((32, 32)); mask[8:24, 8:24] = 0
        >>> filled = model.inpaint(images, mask, seed=0, resample=5)
        """
        images = self._check_images(images, "images")
        mask = _broadcast_mask(mask, images.shape)
        num_steps = sampling.check_sampler_args(
            sampler, num_steps, self.diffusion.num_timesteps, eta, samplers=sampling.INPAINT_SAMPLERS
        )
        resample = check_positive_int("resample", resample)
        shape = images.shape
        options = {
            "sampler": sampler, "num_steps": num_steps, "eta": float(eta),
            "resample": resample, "clip_denoised": bool(clip_denoised),
        }

        def chain(eps_fn, noise_fn, x_0, known):
            return sampling.inpaint_loop(eps_fn, noise_fn, self.diffusion, noise_fn(shape, -1), x_0, known, **options)

        run = self._compiled(("inpaint", shape) + tuple(sorted(options.items())), chain)
        filled = self._to_images(run(seed, ops.convert_to_tensor(images), ops.convert_to_tensor(mask)))
        return np.where(mask == 1.0, images, filled)

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
        sampling.check_num_steps(num_steps, self.diffusion.num_timesteps)

        def chain(eps_fn, noise_fn, x_0):
            return sampling.ddim_encode_loop(eps_fn, self.diffusion, x_0, num_steps)

        run = self._compiled(("encode", images.shape, num_steps), chain)
        return np.asarray(ops.convert_to_numpy(run(0, ops.convert_to_tensor(images))), dtype=np.float32)

    def decode(self, noises, num_steps=50, clip_denoised=True):
        """Deterministic DDIM (eta = 0) from given latents `x_T` to images.

        Args:
            noises: Float array `(N, H, W, C)` (or `(H, W, C)`), the `x_T`.
            num_steps: Integer in `[1, T]`. Defaults to `50`.
            clip_denoised: Boolean. Defaults to `True`.

        Returns:
            A NumPy float32 array `(N, H, W, C)` in the data range.

        Example:

        >>> images = model.decode(np.random.normal(size=(4, 32, 32, 3)))
        """
        noises = self._check_images(noises, "noises")
        sampling.check_num_steps(num_steps, self.diffusion.num_timesteps)

        def chain(eps_fn, noise_fn, x_T):
            return sampling.sample_loop(
                eps_fn, noise_fn, self.diffusion, x_T, "ddim", num_steps, clip_denoised=clip_denoised
            )

        run = self._compiled(("decode", noises.shape, num_steps, bool(clip_denoised)), chain)
        return self._to_images(run(0, ops.convert_to_tensor(noises)))

    def interpolate(self, num_images=8, seed=None, num_steps=50, images=None, noises=None, clip_denoised=True):
        """Images along a spherical interpolation (slerp) between two latents.

        The latents are two standard normal draws from `seed`, the given
        `noises`, or the DDIM inversions (`encode`) of two given `images`;
        the path is decoded with deterministic DDIM (`decode`), so the
        endpoints are exactly the decodes of the two latents.

        Args:
            num_images: Integer >= 2, images along the path. Defaults to
                `8`.
            seed: Integer or `None`, the seed of the two latents when
                neither `images` nor `noises` is given. Defaults to `None`.
            num_steps: Integer in `[1, T]`, DDIM steps. Defaults to `50`.
            images: `None` or a pair `(a, b)` of images `(H, W, C)` to
                interpolate between. Defaults to `None`.
            noises: `None` or a pair `(z_a, z_b)` of latents `(H, W, C)`.
                Defaults to `None`.
            clip_denoised: Boolean. Defaults to `True`.

        Returns:
            A NumPy float32 array `(num_images, H, W, C)` in the data range.

        Example:

        >>> path = model.interpolate(8, seed=0)
        >>> morph = model.interpolate(8, images=(image_a, image_b))
        """
        num_images = check_positive_int("num_images", num_images)
        if num_images < 2:
            raise ValueError(f"num_images must be at least 2 (the two endpoints). Received: num_images={num_images}")
        sampling.check_num_steps(num_steps, self.diffusion.num_timesteps)
        if images is not None and noises is not None:
            raise ValueError("Pass images or noises, not both. Received both.")
        if images is not None:
            latents = self.encode(self._check_pair(images, "images"), num_steps)
        elif noises is not None:
            latents = self._check_pair(noises, "noises")
        else:
            latents = np.random.default_rng(seed).standard_normal((2,) + self.image_shape).astype(np.float32)
        path = sampling.slerp(latents[0], latents[1], np.linspace(0.0, 1.0, num_images)).astype(np.float32)
        path[0], path[-1] = latents[0], latents[1]
        return self.decode(path, num_steps, clip_denoised)

    def bits_per_dim(
        self,
        data,
        num_steps=None,
        batch_size=None,
        seed=0,
        clip_denoised=True,
        model_variance="fixedsmall",
        return_terms=False,
        verbose=1,
    ):
        """The negative log-likelihood bound in bits per dimension, with the EMA network.

        The variational bound of Ho et al. 2020 (eq. 5), as Ho et al. and
        Nichol & Dhariwal 2021 (improved-diffusion) report it: the prior
        term `KL(q(x_T | x_0) || N(0, I))`, for each `t > 0` the term
        `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` and the decoder's
        `-log p(x_0 | x_1)` at `t = 0`, each from one draw of `x_t`; every
        term is the mean over `H * W * C` divided by `ln 2`. The images are
        taken as 8-bit data: a value `x` stands for the bin of width
        `(clip_max - clip_min) / 255` centred on it, of the 256 levels of
        the data range (the outer bins extended to infinity). See
        `ddpm_keras.likelihood`.

        With `num_steps` `None` (or `T`), every timestep: the bound itself,
        up to the Monte Carlo error of its one draw of noise per term and
        image. With `num_steps=n < T` it is an unbiased stratified
        estimate from `n` network calls per image: the prior and `t = 0`
        exact, the timesteps `[1, T)` split into `n - 1` contiguous strata
        with geometrically spaced edges (the first ones single timesteps,
        where the terms are largest: `likelihood.stratified_timesteps`),
        one `t` drawn uniformly in each (from `seed`, the same for every
        image), its term weighted by the stratum's size.

        Images are processed in order in chunks of `batch_size` (the last
        one padded), each through one compiled loop over the timesteps,
        traced once per chunk shape, number of steps and options. Chunk `k`
        draws its noise from a seed derived from `(seed, k)`: the same
        images in the same order give the same result for the same
        `(seed, batch_size)`, however a dataset batches them.

        Args:
            data: Images `(N, H, W, C)` (a NumPy array or a tensor) in the
                data range, or a `tf.data.Dataset` (or any iterable) of such
                batches or of `(images, labels, ...)` tuples.
            num_steps: `None` or an integer in `[2, T]` (`1` when
                `T == 1`), the timesteps evaluated per image. Defaults to
                `None` (all `T`).
            batch_size: Integer or `None`, images per compiled call.
                Defaults to `None`: all of an array at once, or the size of
                a dataset's first batch.
            seed: Integer or `None`, the seed of the noise and of the
                stratified timesteps. Defaults to `0`.
            clip_denoised: Boolean, clip the predicted `x_0` to the data
                range in the reverse step's mean. Defaults to `True`.
            model_variance: `"fixedsmall"` (the posterior variance, which
                the DDPM sampler uses) or `"fixedlarge"` (`beta_t`), the
                reverse step's fixed variance; at `t = 0` both use
                `posterior_variance[1]`. Defaults to `"fixedsmall"`.
            return_terms: Boolean, return the terms too. Defaults to
                `False`.
            verbose: `0` or `1`, show a progress bar over chunks. Defaults
                to `1`.

        Returns:
            The mean over all images of the bound, in bits per dimension (a
            Python float). With `return_terms=True`, a dict: `"bpd"` (that
            float), `"prior_bpd"`, `"decoder_bpd"` (the `t = 0` term),
            `"timesteps"` (int array `(n,)`, increasing, from 0),
            `"terms_bpd"` (float array `(n,)`, each timestep's term
            averaged over images, unweighted), `"weights"` (int array
            `(n,)`, the stratum sizes, all 1 for the exact bound) and
            `"num_images"`; `bpd == prior_bpd + sum(weights * terms_bpd)`.

        Example:

        >>> bpd = model.bits_per_dim(test_images)                       # all T timesteps
        >>> terms = model.bits_per_dim(test_ds, num_steps=100, return_terms=True)
        """
        seed = _train_steps.random_seed(seed)
        timesteps, weights = likelihood.stratified_timesteps(self.diffusion.num_timesteps, num_steps, seed)
        likelihood.check_model_variance(model_variance)
        batch_size = None if batch_size is None else check_positive_int("batch_size", batch_size)
        if hasattr(data, "shape"):
            data = self._check_images(data, "data")
        options = {"clip_denoised": bool(clip_denoised), "model_variance": model_variance}

        def chain(eps_fn, noise_fn, x_0, steps):
            return likelihood.vb_terms_loop(eps_fn, noise_fn, self.diffusion, x_0, steps, **options)

        term_sums, prior_sum, num_images = np.zeros(len(timesteps)), 0.0, 0
        target = -(-len(data) // (batch_size or len(data))) if isinstance(data, np.ndarray) else None
        progbar = keras.utils.Progbar(target, unit_name="chunk") if verbose and target != 1 else None
        for k, (chunk, count) in enumerate(_image_chunks(self, data, batch_size)):
            run = self._compiled(("bits_per_dim", chunk.shape, len(timesteps)) + tuple(sorted(options.items())), chain)
            x_0 = ops.convert_to_tensor(chunk)
            terms = ops.convert_to_numpy(run(_derived_seed(seed, k), x_0, ops.convert_to_tensor(timesteps, "int32")))
            term_sums += np.asarray(terms, np.float64)[:, :count].sum(axis=1)
            prior_sum += float(np.sum(ops.convert_to_numpy(likelihood.prior_bpd(self.diffusion, x_0))[:count]))
            num_images += count
            if progbar is not None:
                progbar.add(1)
        if progbar is not None and target is None and num_images:
            progbar.update(k + 1, finalize=True)  # ends a bar of unknown length
        if num_images == 0:
            raise ValueError(f"data must hold at least one image. Received: an empty {type(data).__name__}")
        terms_bpd, prior = term_sums / num_images, prior_sum / num_images
        bpd = float(prior + np.sum(weights * terms_bpd))
        if not return_terms:
            return bpd
        return {
            "bpd": bpd, "prior_bpd": prior, "decoder_bpd": float(terms_bpd[0]), "timesteps": timesteps,
            "terms_bpd": terms_bpd, "weights": weights, "num_images": num_images,
        }

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

    def _compiled(self, key, chain):
        """The compiled form of `chain`, built once per `key` and cached."""
        if key not in self._samplers:
            self._samplers[key] = self._compile_chain(chain)
        return self._samplers[key]

    def _compile_chain(self, chain):
        """Compiles a sampling chain with the EMA network; the backend-specific part of sampling.

        Args:
            chain: Callable `(eps_fn, noise_fn, *inputs) -> outputs`, written
                in `keras.ops` (see `ddpm_keras.sampling`).

        Returns:
            `run(seed, *inputs) -> outputs`: the same seed gives the same outputs.

        On TensorFlow, one `tf.function(jit_compile=True)`; on JAX, `jax.jit`
        with the EMA weights as arguments and noise from a key folded with
        each draw's step; on PyTorch, eager under `torch.no_grad()`.
        """
        return _train_steps.compile_chain(self, chain)

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "ema_network": keras.saving.serialize_keras_object(self.ema_network),
            "diffusion": self.diffusion.get_config(),
            "ema": self.ema,
            "seed": self.seed,
            "prediction_type": self.prediction_type,
            "loss_weighting": self.loss_weighting,
            "snr_gamma": self.snr_gamma,
            "ema_warmup": self.ema_warmup,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        ema_network = keras.saving.deserialize_keras_object(config.pop("ema_network"))
        diffusion = GaussianDiffusion.from_config(config.pop("diffusion"))
        return cls(network, diffusion, ema_network=ema_network, **config)


def _chunk_seeds(seed, num_chunks):
    """The seed of each chunk: `seed` itself for one chunk, else derived from `(seed, k)`."""
    if num_chunks == 1:
        return [seed]
    base = np.random.default_rng().integers(2**31 - 1) if seed is None else int(seed)
    return [_derived_seed(base, k) for k in range(num_chunks)]


def _derived_seed(base, k):
    """An int seed in `[0, 2^31 - 1)` derived from `(base, k)`."""
    return int(np.random.SeedSequence([int(base) % 2**32, k]).generate_state(1)[0] % (2**31 - 1))


def _image_chunks(model, data, batch_size):
    """Yields `(chunk, count)`: `data`'s images in order, in chunks of `batch_size`, the last zero-padded.

    `data` is an array of images or an iterable of batches (or of
    `(images, ...)` tuples); `batch_size=None` takes the size of the array,
    or of the first batch.
    """
    if isinstance(data, np.ndarray):
        batches = iter([data])
    elif hasattr(data, "as_numpy_iterator"):
        batches = data.as_numpy_iterator()
    else:
        try:
            batches = iter(data)
        except TypeError:
            raise ValueError(
                "data must be images (N, H, W, C) or an iterable of batches of images. "
                f"Received: data of type {type(data).__name__}"
            ) from None
    pending = np.zeros((0,) + model.image_shape, np.float32)
    for batch in batches:
        pending = np.concatenate([pending, model._check_images(_train_steps.images_from(batch), "data")])
        batch_size = batch_size or len(pending)
        while len(pending) >= batch_size:
            yield pending[:batch_size], batch_size
            pending = pending[batch_size:]
    if len(pending):
        padding = np.zeros((batch_size - len(pending),) + model.image_shape, np.float32)
        yield np.concatenate([pending, padding]), len(pending)


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


def _freeze(model):
    """Makes every layer and variable of `model` non-trainable.

    Setting `model.trainable = False` alone can leave sublayers trainable
    (on TensorFlow the flag is not propagated when it is already False, as
    after loading), and a trainable EMA weight would enter the optimizer.
    """
    model.trainable = False
    for layer in model._flatten_layers(include_self=True):
        layer.trainable = False
    for variable in model.weights:
        variable.trainable = False


def _check_same_structure(network, ema_network):
    shapes = [tuple(w.shape) for w in network.weights]
    ema_shapes = [tuple(w.shape) for w in ema_network.weights]
    if shapes != ema_shapes:
        raise ValueError(
            "ema_network must have the same weights as network, in the same "
            f"order. Received: {len(ema_shapes)} weights for {len(shapes)}, "
            "or shapes that differ."
        )
