"""`DiffusionModel`: trains a noise-prediction network with `fit` and samples from it.

The model holds the network, its EMA shadow and the diffusion, and the
training objective (`compute_loss`, `training_batch`, the EMA update); the
backend's training step is `ddpm_keras.training.steps`'. Sampling, editing,
the likelihood and the export are functions of `ddpm_keras.inference` that
take the model; its methods of those names call them, and its
`runner` (`inference.runner.ChainRunner`) owns the compiled chains.
"""

import functools

import keras
import numpy as np

from ddpm_keras import hub
from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.diffusion import check_prediction_type
from ddpm_keras.diffusion import objectives
from ddpm_keras.diffusion.objectives import LOSS_WEIGHTINGS  # noqa: F401 - also importable from here
from ddpm_keras.inference import conditioning
from ddpm_keras.inference import edit
from ddpm_keras.inference import export
from ddpm_keras.inference import generate
from ddpm_keras.inference import likelihood
from ddpm_keras.inference import score as scoring
from ddpm_keras.inference.runner import ChainRunner
from ddpm_keras.nn.unet import network_is_inpainting
from ddpm_keras.nn.unet import network_num_classes
from ddpm_keras.options import TRAINING_OPTIONS
from ddpm_keras.preset_builder import inpainting_model
from ddpm_keras.samplers.options import check_default_sampling
from ddpm_keras.training import labels as training_labels
from ddpm_keras.training import masks as training_masks
from ddpm_keras.training import objective
from ddpm_keras.training import steps as train_steps
from ddpm_keras.utils.checks import is_int
from ddpm_keras.utils.seeds import reset_seed


def _calls(function):
    """A method that is `function(self, ...)`, with `function`'s signature and docstring."""

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        return function(self, *args, **kwargs)

    return method


@keras.saving.register_keras_serializable(package="ddpm_keras")
class DiffusionModel(keras.Model):
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

    A class-conditional network (`build_unet(..., num_classes=N)`, inputs
    `[x_t, t, labels]`) trains on `(images, labels)`: `fit(images, labels)`
    or a dataset of `(images, labels)` tuples, one int class in `[0, N)` per
    image. Each training step replaces every label by the null label `N`
    with probability `cond_drop_prob` (`drop_labels`), so the one network
    also learns the unconditional model of classifier-free guidance (Ho &
    Salimans 2022). Validation (`evaluate`, `validation_data`) uses the
    labels as given: its loss is the conditional one.

    An inpainting network (`build_unet(..., inpainting=True)`, inputs
    `[x_t, t, masked_image, mask(, labels)]`) trains on `fit(images)` with
    a random mask per image from the model's seed (`training.masks`, at
    the rates `mask_rates`; 1 = known); `inpaint` then runs any sampler
    with the mask as an input, and `to_inpainting()` starts one.

    Args:
        network: A Keras model `[x_t, t] -> prediction` (the noise, `v`
            or `x_0`, as `prediction_type` says), such as `build_unet(...)`,
            or `[x_t, t, labels] -> prediction` for a class-conditional one
            (`ddpm_keras.nn.unet.network_num_classes`).
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
        cond_drop_prob: Float in `[0, 1)`, the probability that a training
            label is replaced by the null label (Ho & Salimans 2022 found
            0.1 to 0.2 best). Ignored by an unconditional model. Defaults to
            `0.1`.
        class_names: `None` or a list of `num_classes` strings, the name of
            each class (a conditional model only); saved with the model.
            Defaults to `None`.
        mask_rates: `None` (`training.masks.DEFAULT_MASK_RATES`) or a dict
            from the mask kinds `"box"`, `"half"`, `"stroke"`, `"all"` to
            their probabilities in training, summing to 1; for an
            inpainting network. Defaults to `None`.
        inpainting_loss: `"all"` or `"hole"`, an inpainting network's
            loss: on every pixel (as the Stable Diffusion inpainting
            models) or on the pixels to fill only (as Palette, Saharia et
            al. 2022; at sampling the known pixels' prediction is exact,
            not the network's). In `bench/inpainting.py` `"hole"` gave a
            smaller seam after a short fine-tuning and the same seam with
            a larger error on the filled pixels after a long one.
            Defaults to `"all"`.
        default_sampling: `None` or a dict of `generate_images`'s sampler
            and its options (`{"sampler": "ddim", "num_steps": 4}`, fields
            of `samplers.SamplerOptions`): what `generate_images` samples
            with when it is given no `sampler`; saved with the model (a
            distilled student keeps its sampler and step count there, a
            pretrained preset the sampling of its metadata). `None`:
            `"ddpm"` over every timestep. Defaults to `None`.

    Call arguments:
        inputs: `[x_t, t]`, or `[x_t, t, labels]` for a conditional
            network (`objective.network_inputs`: an inpainting network's
            mask after `t`, the all-zero mask when none is given). Returns
            the training network's prediction. Without labels a
            conditional network gets the null label (its unconditional
            prediction); a tensor of images alone is taken at `t = 0`.

    Example:

    >>> network = build_unet(32, 3, [32, 64, 128], [False, True, True])
    >>> model = DiffusionModel(network, GaussianDiffusion(timesteps=1000))
    >>> model.compile(optimizer=keras.optimizers.Adam(2e-4))
    >>> model.fit(dataset, epochs=10)
    >>> images = model.generate_images(num_images=16, seed=0)
    >>> conditional = DiffusionModel(build_unet(32, 3, [32, 64, 128], [False, True, True], num_classes=10),
    ...                              GaussianDiffusion(timesteps=1000), cond_drop_prob=0.1)
    >>> conditional.compile(optimizer=keras.optimizers.Adam(2e-4))
    >>> conditional.fit(images, labels, batch_size=64, epochs=10)
    """

    # name -> metadata of the pretrained presets `from_preset` takes by name (keras-hub's `presets`).
    presets = hub.PresetsProperty()

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
        cond_drop_prob=0.1,
        class_names=None,
        mask_rates=None,
        inpainting_loss="all",
        default_sampling=None,
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
        objective.check_same_structure(network, ema_network)
        self._num_classes = network_num_classes(network)
        self.cond_drop_prob = training_labels.check_cond_drop_prob(cond_drop_prob)
        self.class_names = training_labels.check_class_names(class_names, self._num_classes)
        self.inpainting = network_is_inpainting(network)  # the network takes the masked image and the mask
        self.mask_rates = training_masks.check_mask_rates(
            training_masks.DEFAULT_MASK_RATES if mask_rates is None else mask_rates
        )
        self.inpainting_loss = training_masks.check_inpainting_loss(inpainting_loss)
        self.default_sampling = check_default_sampling(default_sampling)
        self.network = network
        self.ema_network = ema_network
        objective.freeze(self.ema_network)
        self.diffusion = diffusion
        self.ema = float(ema)
        if seed is not None and not is_int(seed):
            raise ValueError(f"seed must be None or an integer. Received: seed={seed!r}")
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
        self._runner = None
        # The sub-networks are built, so this model is: the optimizer state
        # is then restored when a `.keras` file is loaded.
        self.built = True

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images the network takes."""
        return tuple(self.network.inputs[0].shape[1:])

    @property
    def num_classes(self):
        """The number of classes of a class-conditional network, or `None` for an unconditional one."""
        return self._num_classes

    @property
    def null_label(self):
        """The label of the unconditional model, `num_classes` (or `None` for an unconditional network)."""
        return self._num_classes

    @property
    def metrics(self):
        return [self.loss_tracker]

    @property
    def runner(self):
        """The `inference.runner.ChainRunner` that compiles and runs this model's sampling chains (made once)."""
        if self._runner is None:
            self._runner = ChainRunner(self)
        return self._runner

    @property
    def sampling_strategy(self):
        """The `tf.distribute` strategy the model was built under, whose replicas share large requests; or `None`."""
        return getattr(self, "_distribute_strategy", None)

    # Sampling, editing, the likelihood, the score and the export: functions of `ddpm_keras.inference`.
    generate_images = _calls(generate.generate_images)
    inpaint = _calls(edit.inpaint)
    encode = _calls(edit.encode)
    decode = _calls(edit.decode)
    interpolate = _calls(edit.interpolate)
    bits_per_dim = _calls(likelihood.bits_per_dim)
    score = _calls(scoring.score)
    export_generator = _calls(export.export_generator)
    label_ids = _calls(conditioning.label_ids)

    def inference_network(self, dtype=None):
        """The EMA network, or a copy of it computing in `dtype` (`runner.inference_network`)."""
        return self.runner.inference_network(dtype)

    def call(self, inputs, training=False):
        return self.network(objective.network_inputs(self, inputs), training=training)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with the labels (`y`, `validation_data`'s, a dataset's) checked first."""
        y = np.asarray(y) if isinstance(y, (list, tuple)) else y  # A list of classes, not one target per output.
        training_labels.check_fit_arguments(self.num_classes, x, y, kwargs.get("validation_data"))
        train_steps.build_optimizer(self)  # before fit traces its step, which would otherwise be traced twice
        return super().fit(x, y, *args, **kwargs)

    # The denoising objective: functions of `ddpm_keras.training.objective`.
    drop_labels = _calls(objective.drop_labels)
    training_batch = _calls(objective.training_batch)
    noisy_batch = _calls(objective.noisy_batch)
    random_masks = _calls(objective.random_masks)
    to_inpainting = _calls(inpainting_model)
    ema_decay = _calls(objective.ema_decay)
    update_ema = _calls(objective.update_ema)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss between the training target and the network's output, each example weighted: `objective.compute_loss`."""
        return objective.compute_loss(self, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def timestep_weights(self, t):
        """The loss weight of each example from its timestep, or `None` without `loss_weighting` (`objective.timestep_weights`)."""
        return objective.timestep_weights(self, t)

    def train_step(self, *args):
        """One optimizer step of the network, then the EMA update.

        `train_step(data)` on TensorFlow and PyTorch; the stateless
        `train_step(state, data) -> (logs, state)` on JAX. The backend's
        step is in `ddpm_keras.training.steps`.
        """
        return train_steps.step_for(train_steps.TRAIN_STEPS, "fit")(self, *args)

    def test_step(self, *args):
        """The validation loss on noise from the evaluation seed; `(data)`, or `(state, data)` on JAX."""
        return train_steps.step_for(train_steps.TEST_STEPS, "evaluate")(self, *args)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, with the validation noise reset to its fixed seed and the labels checked."""
        y = np.asarray(y) if isinstance(y, (list, tuple)) else y
        training_labels.check_fit_arguments(self.num_classes, x, y)
        reset_seed(self.eval_seed_generator, self.eval_seed)
        return super().evaluate(x, y, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "ema_network": keras.saving.serialize_keras_object(self.ema_network),
            "diffusion": self.diffusion.get_config(),
            "seed": self.seed,
            "class_names": self.class_names,
            "default_sampling": self.default_sampling,
            **{name: getattr(self, name) for name in TRAINING_OPTIONS},
        }

    @classmethod
    def from_preset(cls, preset, compile=True, **overrides):
        """A model from a preset, keras-hub's way: pretrained weights, or a configuration to train.

        `preset`: a pretrained preset (`DiffusionModel.presets`), a preset
        folder, `"hf://owner/name"`, `"kaggle://owner/model/keras/variant"`,
        or a configuration of `ddpm_keras.presets` (untrained). `overrides`:
        a configuration's constructor arguments, or a weights preset's
        options and `learning_rate` (`hub.from_preset`).

        Example:

        >>> images = DiffusionModel.from_preset("synthetic_flowers32").generate_images(16, seed=0)
        >>> model = DiffusionModel.from_preset("tiny", img_size=16, prediction_type="v", seed=0)
        """
        return hub.from_preset(cls, preset, compile=compile, **overrides)

    def save_to_preset(self, preset_dir, **description):
        """Writes a keras-hub preset folder (config, EMA weights, metadata) that `from_preset` reads: `hub.save_to_preset`."""
        return hub.save_to_preset(self, preset_dir, **description)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        ema_network = keras.saving.deserialize_keras_object(config.pop("ema_network"))
        diffusion = GaussianDiffusion.from_config(config.pop("diffusion"))
        return cls(network, diffusion, ema_network=ema_network, **config)
