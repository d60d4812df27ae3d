"""`NoisyClassifier`: a classifier of noisy images `x_t` at their timestep, trained with `fit`, for classifier guidance.

Dhariwal & Nichol 2021 guide an (unconditional or conditional) diffusion
model with the gradient of `log p(y | x_t, t)` from a classifier trained on
images noised by the same forward process. `NoisyClassifier` trains any
network `[x_t, t] -> logits` (`ddpm_keras.nn.classifier.build_classifier`)
that way: each training image gets a timestep `t ~ U[0, T)` and noise from
the classifier's seed and is classified as `q_sample(x_0, t, eps)`.
`DiffusionModel.generate_images(..., classifier=clf, classifier_scale=s)`
then guides every sampler with it.
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.training import labels as training_labels
from ddpm_keras.training.steps import replica_seed
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import check_seed
from ddpm_keras.utils.checks import is_int
from ddpm_keras.utils.seeds import reset_seed


@keras.saving.register_keras_serializable(package="ddpm_keras")
class NoisyClassifier(keras.Model):
    """A classifier of `x_t = q_sample(x_0, t, eps)` at its timestep `t`, trained on `(images, labels)` with `fit`.

    Called on a batch of clean images (as `fit`, `evaluate` and `predict`
    call it), it draws `t ~ U[0, T)` and `eps ~ N(0, I)` per image from its
    seed and returns `network([x_t, t])`'s logits; called on `[x_t, t]` it
    is the network itself. `compile()` defaults to the sparse
    cross-entropy of the logits and accuracy. Validation noise comes from
    a generator reset at each `evaluate`, so accuracies compare across
    epochs. `accuracy_by_noise_level` gives the accuracy at chosen
    timesteps: the curve to look at before guiding (a classifier that is
    at chance at large `t` guides only the late steps).

    Args:
        network: A Keras model `[x_t, t] -> logits (batch, num_classes)`,
            such as `build_classifier(...)`.
        diffusion: The `GaussianDiffusion` of the model it will guide (the
            same schedule and `T`; checked when guiding).
        seed: Integer or `None`, the seed of the training noise and
            timesteps. Defaults to `None` (random).
        class_names: `None` or a list of `num_classes` strings; guidance
            then takes class names as labels. Defaults to `None`.

    Example:

    >>> network = build_classifier(32, 3, 10, [32, 64], [False, True])
    >>> classifier = NoisyClassifier(network, model.diffusion, seed=0)
    >>> classifier.compile(optimizer=keras.optimizers.Adam(3e-4))
    >>> classifier.fit(images, labels, batch_size=64, epochs=10)
    >>> guided = model.generate_images(16, labels=3, classifier=classifier, classifier_scale=3.0)
    """

    def __init__(self, network, diffusion, seed=None, class_names=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"diffusion must be a GaussianDiffusion. Received: diffusion={diffusion!r}")
        inputs, outputs = getattr(network, "inputs", None) or [], getattr(network, "outputs", None) or []
        if len(inputs) != 2 or len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise ValueError(
                "network must be a Keras model [x_t, t] -> logits (batch, num_classes), such as build_classifier(...). "
                f"Received: a network with {len(inputs)} inputs and outputs {[tuple(o.shape) for o in outputs]}"
            )
        if seed is not None and not is_int(seed):
            raise ValueError(f"seed must be None or an integer. Received: seed={seed!r}")
        self.network = network
        self.diffusion = diffusion
        self.seed = seed
        self.class_names = training_labels.check_class_names(class_names, self.num_classes)
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")
        self.eval_seed = 0 if seed is None else int(seed)
        self.eval_seed_generator = keras.random.SeedGenerator(self.eval_seed, name="eval_seed")
        self.built = True

    @property
    def num_classes(self):
        """The classes of the network's logits."""
        return int(self.network.outputs[0].shape[-1])

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images the network takes."""
        return tuple(self.network.inputs[0].shape[1:])

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the sparse cross-entropy of logits and accuracy as defaults."""
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss is None else loss
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if metrics is None else metrics
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded classifier as it was saved (Keras skips an overridden `compile` otherwise)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            x_t, t = inputs
            return self.network([x_t, t], training=training)
        images = ops.convert_to_tensor(inputs)
        seed = replica_seed(self.seed_generator) if training else self.eval_seed_generator
        t = keras.random.randint((ops.shape(images)[0],), 0, self.diffusion.num_timesteps, dtype="int32", seed=seed)
        noise = keras.random.normal(ops.shape(images), dtype=images.dtype, seed=seed)
        return self.network([self.diffusion.q_sample(images, t, noise), t], training=training)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate` with the validation noise reset to its fixed seed."""
        reset_seed(self.eval_seed_generator, self.eval_seed)
        return super().evaluate(x, y, *args, **kwargs)

    def accuracy_by_noise_level(self, images, labels, timesteps=None, seed=0, batch_size=256):
        """The accuracy on `(images, labels)` noised to each of `timesteps`: `{t: accuracy}`.

        Args:
            images: Float array `(N, H, W, C)` in the data range.
            labels: Int array `(N,)` of classes.
            timesteps: `None` or integers in `[0, T)`. Defaults to `None`:
                ten timesteps evenly spaced from `0` to `T - 1`.
            seed: Integer, the seed of the noise (the same for every
                timestep). Defaults to `0`.
            batch_size: Integer, images per network call. Defaults to
                `256`.

        Returns:
            A dict from each timestep (int) to the accuracy (float).

        Example:

        >>> classifier.accuracy_by_noise_level(test_images, test_labels)
        {0: 0.97, 111: 0.96, ..., 999: 0.11}
        """
        images = np.asarray(ops.convert_to_numpy(images), np.float32)
        labels = np.asarray(ops.convert_to_numpy(labels)).astype(np.int64).reshape(-1)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape or len(labels) != len(images):
            raise ValueError(
                f"images must be (N,) + {self.image_shape} with one label each. "
                f"Received: images.shape={images.shape}, {len(labels)} labels"
            )
        num_timesteps = self.diffusion.num_timesteps
        if timesteps is None:
            timesteps = np.unique(np.linspace(0, num_timesteps - 1, 10).round().astype(int))
        timesteps = [int(t) for t in timesteps]
        if any(not 0 <= t < num_timesteps for t in timesteps):
            raise ValueError(f"timesteps must be in [0, {num_timesteps}). Received: timesteps={timesteps}")
        batch_size = check_positive_int("batch_size", batch_size)
        noise = np.random.default_rng(check_seed("seed", seed)).standard_normal(images.shape).astype(np.float32)
        accuracy = {}
        for t in timesteps:
            correct = 0
            for begin in range(0, len(images), batch_size):
                x_0, eps = images[begin : begin + batch_size], noise[begin : begin + batch_size]
                steps = ops.full((len(x_0),), t, dtype="int32")
                logits = self.network([self.diffusion.q_sample(x_0, steps, eps), steps], training=False)
                predicted = np.argmax(ops.convert_to_numpy(logits), -1)
                correct += int(np.sum(predicted == labels[begin : begin + batch_size]))
            accuracy[t] = correct / len(images)
        return accuracy

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "diffusion": self.diffusion.get_config(),
            "seed": self.seed,
            "class_names": self.class_names,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        diffusion = GaussianDiffusion.from_config(config.pop("diffusion"))
        return cls(network, diffusion, **config)
