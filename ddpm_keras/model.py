"""`DiffusionModel`: trains a noise-prediction network with `fit` and samples from it."""

import secrets

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.sampling import ddpm_sample_loop


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

    def __init__(self, network, diffusion, ema_network=None, ema=0.999, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(
                "diffusion must be a GaussianDiffusion. "
                f"Received: diffusion={diffusion!r}"
            )
        if not 0.0 <= ema <= 1.0:
            raise ValueError(f"ema must be in [0, 1]. Received: ema={ema}")
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
        self.seed_generator = keras.random.SeedGenerator(seed, name="train_seed")
        # Validation draws its noise and timesteps from a generator that is
        # reset at the start of every evaluation: losses compare across epochs.
        self.eval_seed = 0 if seed is None else int(seed)
        self.eval_seed_generator = keras.random.SeedGenerator(self.eval_seed, name="eval_seed")
        self.sample_seed_generator = keras.random.SeedGenerator(0, name="sample_seed")
        self.loss_tracker = keras.metrics.Mean(name="loss")
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
            return loss
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

    def train_step(self, data):
        images = _images_from(data)
        x_t, t, noise = self.noisy_batch(images, self.seed_generator)
        loss = self._optimizer_step(x_t, t, noise)
        self.update_ema()
        self.loss_tracker.update_state(loss, sample_weight=ops.shape(images)[0])
        return {m.name: m.result() for m in self.metrics}

    def _optimizer_step(self, x_t, t, noise):
        """One gradient step of the network; the only backend-specific part of training."""
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise NotImplementedError(
                "DiffusionModel.fit needs the TensorFlow backend. "
                f"Received: KERAS_BACKEND={backend!r}. Set KERAS_BACKEND=tensorflow."
            )
        import tensorflow as tf

        with tf.GradientTape() as tape:
            pred_noise = self.network([x_t, t], training=True)
            loss = self.compute_loss(y=noise, y_pred=pred_noise, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        trainable = self.network.trainable_variables
        gradients = tape.gradient(scaled_loss, trainable)
        self.optimizer.apply_gradients(zip(gradients, trainable))
        return loss

    def update_ema(self):
        """Moves every EMA weight towards the network's: `ema * ema_w + (1 - ema) * w`."""
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(self.ema * ema_weight + (1.0 - self.ema) * ops.cast(weight, ema_weight.dtype))

    def test_step(self, data):
        images = _images_from(data)
        x_t, t, noise = self.noisy_batch(images, self.eval_seed_generator)
        pred_noise = self.network([x_t, t], training=False)
        loss = self.compute_loss(y=noise, y_pred=pred_noise, training=False)
        self.loss_tracker.update_state(loss, sample_weight=ops.shape(images)[0])
        return {m.name: m.result() for m in self.metrics}

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, with the validation noise reset to its fixed seed."""
        _reset_seed(self.eval_seed_generator, self.eval_seed)
        return super().evaluate(*args, **kwargs)

    def generate_images(self, num_images=16, seed=None):
        """Samples images with the EMA network through the full `T`-step chain.

        The whole reverse chain runs as one compiled function, traced once
        per `num_images` and reused.

        Args:
            num_images: Integer, how many images. Defaults to `16`.
            seed: Integer or `None`. The same seed gives the same images.
                Defaults to `None` (a fresh random seed).

        Returns:
            A NumPy float32 array `(num_images, H, W, C)` in
            `[clip_min, clip_max]` (`[-1, 1]` by default).
        """
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(
                f"num_images must be a positive integer. Received: num_images={num_images!r}"
            )
        shape = (int(num_images),) + self.image_shape

        def chain(eps_fn, noise_fn):
            return ddpm_sample_loop(eps_fn, noise_fn, self.diffusion, noise_fn(shape, -1))

        images = self._compiled(("ddpm", shape), chain)(seed)
        return self._to_images(images)

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
        """
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise NotImplementedError(
                "Sampling needs the TensorFlow backend. "
                f"Received: KERAS_BACKEND={backend!r}. Set KERAS_BACKEND=tensorflow."
            )
        import tensorflow as tf

        def eps_fn(x, t):
            return self.ema_network([x, t], training=False)

        def noise_fn(shape, step):
            return keras.random.normal(shape, seed=self.sample_seed_generator)

        compiled = tf.function(
            lambda *inputs: chain(eps_fn, noise_fn, *inputs), jit_compile=True, autograph=False
        )

        def run(seed, *inputs):
            seed = secrets.randbelow(2**31 - 1) if seed is None else int(seed)
            _reset_seed(self.sample_seed_generator, seed)
            return compiled(*inputs)

        return run

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "ema_network": keras.saving.serialize_keras_object(self.ema_network),
            "diffusion": self.diffusion.get_config(),
            "ema": self.ema,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        ema_network = keras.saving.deserialize_keras_object(config.pop("ema_network"))
        diffusion = GaussianDiffusion.from_config(config.pop("diffusion"))
        return cls(network, diffusion, ema_network=ema_network, **config)


def _images_from(data):
    """The images of a batch: `x`, or the `x` of `(x,)`, `(x, y)`, `(x, y, w)`."""
    if isinstance(data, (list, tuple)):
        return data[0]
    return data


def _reset_seed(seed_generator, seed):
    seed_generator.state.assign(
        ops.convert_to_tensor([seed, 0], dtype=seed_generator.state.dtype)
    )


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
