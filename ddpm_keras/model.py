"""`DiffusionModel`: trains a noise-prediction network with `fit` and samples from it."""

import keras
import numpy as np
from keras import ops

from ddpm_keras import _train_steps
from ddpm_keras._checks import check_positive_int
from ddpm_keras import likelihood
from ddpm_keras import objectives
from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.diffusion import check_prediction_type
from ddpm_keras.distribute import num_replicas_in_sync
from ddpm_keras.generation import GenerationMixin
from ddpm_keras.generation import derived_seed
from ddpm_keras.objectives import LOSS_WEIGHTINGS  # noqa: F401 - also importable from here


@keras.saving.register_keras_serializable(package="ddpm_keras")
class DiffusionModel(GenerationMixin, keras.Model):
    """A DDPM: a noise-prediction network, its EMA shadow and the diffusion.

    `fit` trains `network` on the simplified objective of Ho et al. 2020:
    for each image a timestep `t ~ U[0, T)` and noise `eps ~ N(0, I)` are
    drawn, `x_t = q_sample(x_0, t, eps)`, and the compiled loss (the mean
    squared error by default) between the target of `prediction_type`
    (`diffusion.prediction_target(x_0, eps, t)`: `eps` itself by default)
    and `network([x_t, t])` is minimised, each example weighted by
    `loss_weighting`. After each optimizer step every weight of
    `ema_network` moves towards the network's:
    `ema_w = decay * ema_w + (1 - decay) * w`, `decay = ema` (or its
    warm-up, `ema_warmup`). Samples come from the EMA network.

    Args:
        network: A Keras model `[x_t, t] -> prediction` (the noise, `v`
            or `x_0`, as `prediction_type` says), such as `build_unet(...)`.
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
            `min(SNR, gamma) / (SNR + 1)` for v
            (`objectives.min_snr_weights`). With the default loss, the mean
            over the batch of each example's weight times its mean squared
            error over pixels; a compiled Keras loss gets the weights as
            `sample_weight`, shaped `(batch, 1, 1, 1)`. Defaults to `None`.
        snr_gamma: Float > 0, min-SNR's `gamma`. Defaults to `5.0`.
        ema_warmup: Boolean, start the EMA decay low and raise it to `ema`:
            `min(ema, (1 + n) / (10 + n))` after `n` optimizer steps, so the
            shadow network follows the network early in training instead of
            averaging in its random start. Defaults to `False`.

    Call arguments:
        inputs: `[x_t, t]`: noisy images and int timesteps `(batch,)`.
            Returns the training network's prediction. A tensor of
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
        objectives.check_loss_weighting(loss_weighting)
        snr_gamma = objectives.check_snr_gamma(snr_gamma)
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
        self.snr_gamma = snr_gamma
        self.ema_warmup = bool(ema_warmup)
        # The loss weight of each timestep (float64 math, gathered per
        # example in the training step), or None: every timestep alike.
        weights = objectives.timestep_weights(diffusion, prediction_type, loss_weighting, snr_gamma)
        self._timestep_weights = None if weights is None else weights.astype(np.float32)
        self.seed_generator = keras.random.SeedGenerator(seed, name="train_seed")
        # Validation draws its noise and timesteps from a generator that is
        # reset at the start of every evaluation: losses compare across epochs.
        self.eval_seed = 0 if seed is None else int(seed)
        self.eval_seed_generator = keras.random.SeedGenerator(self.eval_seed, name="eval_seed")
        # Unused since sampling draws from seeds derived per step; kept so
        # that the model's variables, and so its saved files, stay the same.
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
        """The loss between the training target and the network's output, each example weighted.

        Prediction and target are cast to float32 first (mixed precision).
        With no compiled loss: `mean_i(w_i * mean_pixels((y_i - y_pred_i)^2))`
        (`w_i = 1` without `sample_weight`), plus the layers' added losses.
        With a compiled Keras loss: that loss, given `sample_weight` reshaped
        to `(batch, 1, 1, 1)`, which broadcasts against the values of a loss
        per pixel (every built-in regression loss: MSE, MAE, Huber, ...).
        Under a `tf.distribute` strategy both are this replica's share of
        the global mean, as Keras's compiled losses are.

        Args:
            x: Unused.
            y: The target, `diffusion.prediction_target(...)`; `None` in
                Keras's symbolic build (zeros are used).
            y_pred: The network's output.
            sample_weight: `None` or a float tensor `(batch,)`, the weight
                of each example (see `training_batch`).
            training: Boolean.

        Returns:
            A float32 scalar tensor.
        """
        if y is None:
            # Keras's symbolic build of a compiled loss passes no target; the
            # target of the denoising loss is shaped as y_pred.
            y = ops.zeros_like(y_pred)
        y, y_pred = ops.cast(y, "float32"), ops.cast(y_pred, "float32")
        if self.loss is None:
            per_example = ops.mean(ops.square(y - y_pred), axis=tuple(range(1, len(y_pred.shape))))
            if sample_weight is not None:
                per_example = per_example * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            loss = ops.mean(per_example)
            for extra in self.losses:
                loss = loss + ops.cast(ops.sum(extra), "float32")
            # As Keras's compiled losses: this replica's share of the global
            # mean under a tf.distribute strategy (the gradients are summed).
            return loss / float(num_replicas_in_sync())
        _check_compiled_loss(self.loss)
        if sample_weight is not None:
            # A (batch,) weight would broadcast against the last axis of the per-pixel values.
            sample_weight = ops.reshape(
                ops.cast(sample_weight, "float32"), (-1,) + (1,) * (len(y_pred.shape) - 1)
            )
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def timestep_weights(self, t):
        """The loss weight of each example from its timestep, or `None` without `loss_weighting`.

        Args:
            t: Int tensor `(batch,)` of timesteps in `[0, T)`.

        Returns:
            `None`, or a float32 tensor `(batch,)`: the float64 table of
            `objectives.timestep_weights` (rounded to float32) gathered at
            `t`.

        Example:

        >>> model = DiffusionModel(network, diffusion, prediction_type="v", loss_weighting="min_snr")
        >>> model.timestep_weights(ops.convert_to_tensor([0, 999]))
        """
        if self._timestep_weights is None:
            return None
        return ops.take(ops.convert_to_tensor(self._timestep_weights), ops.cast(t, "int32"), axis=0)

    def training_batch(self, images, seed):
        """One batch of the denoising objective: `(x_t, t, target, weights)`.

        Draws `(x_t, t, eps)` with `noisy_batch`; `target` is
        `diffusion.prediction_target(images, eps, t, prediction_type)` and
        `weights` is `timestep_weights(t)` (`None` when unweighted). The
        training and validation steps of every backend take their loss
        from it: `compute_loss(y=target, y_pred=network([x_t, t]),
        sample_weight=weights)`.

        Args:
            images: Float tensor `(batch, H, W, C)`, the clean images `x_0`.
            seed: A `keras.random.SeedGenerator` (or what `keras.random`
                takes as a seed), as in `noisy_batch`.

        Returns:
            `(x_t, t, target, weights)`.
        """
        x_t, t, noise = self.noisy_batch(images, seed)
        target = self.diffusion.prediction_target(images, noise, t, self.prediction_type)
        return x_t, t, target, self.timestep_weights(t)

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

    def ema_decay(self):
        """The decay of the EMA update that follows the optimizer's latest step.

        `ema`, or with `ema_warmup` `min(ema, (1 + n) / (10 + n))` where
        `n = optimizer.iterations` is the count of optimizer updates done
        (diffusers' `EMAModel` warm-up): `2 / 11` after the first update,
        `ema` from `n >= (10 ema - 1) / (1 - ema)` on (`n >= 8,991` for
        `ema = 0.999`).

        Returns:
            `ema` (a Python float), or with `ema_warmup` a float32 scalar
            tensor.
        """
        if not self.ema_warmup:
            return self.ema
        if getattr(self, "optimizer", None) is None:
            raise ValueError(
                "ema_warmup reads the optimizer's step count: compile the model first. Received: optimizer=None"
            )
        n = ops.cast(self.optimizer.iterations, "float32")
        return ops.minimum(self.ema, (1.0 + n) / (10.0 + n))

    def update_ema(self, decay=None):
        """Moves every EMA weight towards the network's: `decay * ema_w + (1 - decay) * w`.

        Args:
            decay: `None` (`ema_decay()`) or a float (or a scalar tensor)
                in `[0, 1]`. Defaults to `None`.
        """
        decay = self.ema_decay() if decay is None else decay
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(decay * ema_weight + (1.0 - decay) * ops.cast(weight, ema_weight.dtype))

    def test_step(self, *args):
        """The validation loss on noise from the evaluation seed; `(data)`, or `(state, data)` on JAX."""
        return _train_steps.step_for(_train_steps.TEST_STEPS, "evaluate")(self, *args)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, with the validation noise reset to its fixed seed."""
        _train_steps.reset_seed(self.eval_seed_generator, self.eval_seed)
        return super().evaluate(*args, **kwargs)

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
        the data range (the outer bins extended to infinity). The reverse
        step's mean puts the `x_0` that the network's output stands for
        (read as `prediction_type`, `GaussianDiffusion.split_prediction`)
        in the posterior. See `ddpm_keras.likelihood`.

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

        def chain(model_fn, noise_fn, x_0, steps):
            return likelihood.vb_terms_loop(
                model_fn, noise_fn, self.diffusion, x_0, steps, prediction_type=self.prediction_type, **options
            )

        term_sums, prior_sum, num_images = np.zeros(len(timesteps)), 0.0, 0
        target = -(-len(data) // (batch_size or len(data))) if isinstance(data, np.ndarray) else None
        progbar = keras.utils.Progbar(target, unit_name="chunk") if verbose and target != 1 else None
        for k, (chunk, count) in enumerate(_image_chunks(self, data, batch_size)):
            run = self._compiled(("bits_per_dim", chunk.shape, len(timesteps)) + tuple(sorted(options.items())), chain)
            x_0 = ops.convert_to_tensor(chunk)
            terms = ops.convert_to_numpy(run(derived_seed(seed, k), x_0, ops.convert_to_tensor(timesteps, "int32")))
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


def _check_compiled_loss(loss):
    """Raises a `ValueError` for a compiled loss object that does not reduce to a scalar."""
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if isinstance(loss, keras.losses.Loss) and reduction in (None, "none"):
        name = type(loss).__name__
        raise ValueError(
            f"DiffusionModel needs a compiled loss that reduces to a scalar, not one value per element: "
            f"compile with the default reduction='sum_over_batch_size' (per-example weights come from "
            f"loss_weighting). Received: loss={name}(reduction={reduction!r})"
        )


def _check_same_structure(network, ema_network):
    shapes = [tuple(w.shape) for w in network.weights]
    ema_shapes = [tuple(w.shape) for w in ema_network.weights]
    if shapes != ema_shapes:
        raise ValueError(
            "ema_network must have the same weights as network, in the same "
            f"order. Received: {len(ema_shapes)} weights for {len(shapes)}, "
            "or shapes that differ."
        )
