"""`Distiller`: what progressive and consistency distillation share, a `DiffusionModel` whose network is the student.

A distiller holds a frozen copy of the teacher's EMA network
(`teacher_network`, saved in its config), starts its student from that
network's weights, and trains it with `DiffusionModel`'s steps; a subclass
gives its batch (`training_batch`), its student's sampler
(`student_sampling`), the teacher's sampler that the student imitates
(`teacher_sampling`) and its own constructor arguments (`distiller_config`).
"""

import keras
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.diffusion import GaussianDiffusion
from ddpm_keras.model import DiffusionModel
from ddpm_keras.training import objective

class Distiller(DiffusionModel):
    """A `DiffusionModel` trained to imitate a frozen teacher; see `ProgressiveDistillation`, `ConsistencyDistillation`.

    Args:
        teacher: A trained `DiffusionModel`, not an inpainting one: its EMA
            network is the teacher (copied: the model is not changed).
        student_network: The student's network.
        prediction_type: What the student's network outputs.
        student_ema_network: `None` (a copy of `student_network`) or the
            student's EMA network.
        teacher_network: `None` (a copy of the teacher's EMA network) or
            the frozen teacher network itself (when loading).
        clip_denoised: Boolean, clip the teacher's `x_0` to the data range
            as its DDIM sampler does.
        **kwargs: `DiffusionModel`'s other arguments (`ema`, `seed`, ...).
    """

    # Options of `DiffusionModel` a distiller fixes itself, left out of its config: its sampling is its student's,
    # its loss weighting its method's, and the labels' dropout and names the teacher's (saved with the teacher).
    FIXED_OPTIONS = (
        "default_sampling", "loss_weighting", "snr_gamma", "mask_rates", "inpainting_loss", "cond_drop_prob",
        "class_names",
    )

    def __init__(self, teacher, student_network, prediction_type, student_ema_network=None, teacher_network=None,
                 clip_denoised=True, **kwargs):
        kwargs.pop("default_sampling", None)  # a distiller's is its student's (a property)
        super().__init__(
            student_network, teacher.diffusion,
            ema_network=copy_network(student_network) if student_ema_network is None else student_ema_network,
            prediction_type=prediction_type, cond_drop_prob=teacher.cond_drop_prob, class_names=teacher.class_names,
            **kwargs,
        )
        if self.num_classes != teacher.num_classes:
            raise ValueError(f"student_network must take the teacher's labels: the teacher has num_classes="
                             f"{teacher.num_classes}. Received: a network with num_classes={self.num_classes}")
        self.clip_denoised = bool(clip_denoised)
        self.teacher_prediction_type = teacher.prediction_type
        self.teacher_network = copy_network(teacher.ema_network) if teacher_network is None else teacher_network
        objective.freeze(self.teacher_network)

    @staticmethod
    def check_teacher(teacher, name):
        """Raises a one-line error unless `teacher` is a `DiffusionModel` that generates (not an inpainting one)."""
        if not isinstance(teacher, DiffusionModel):
            raise TypeError(f"teacher must be a trained DiffusionModel. Received: teacher={teacher!r}")
        if teacher.inpainting:
            raise ValueError(f"{name} distils a generative model; the teacher is an inpainting network. Distil the "
                             "model it was made from.")

    def student_sampling(self):
        """The student's sampler and its options (`default_sampling`): a subclass's."""
        raise NotImplementedError

    @property
    def teacher_sampling(self):
        """The teacher's sampler that the student imitates (what `TeacherStudentGrid` draws above the student)."""
        raise NotImplementedError

    @property
    def default_sampling(self):
        """What `generate_images()` samples with: the student's sampler (`student_sampling`)."""
        return self.student_sampling()

    @default_sampling.setter
    def default_sampling(self, value):
        if value is not None:
            raise ValueError(f"A distiller samples as its student. Received: default_sampling={value!r}")

    @property
    def student(self):
        """The distilled `DiffusionModel` (copies of the student's weights), sampling with `default_sampling`."""
        return DiffusionModel(
            copy_network(self.network), self.diffusion, ema_network=copy_network(self.ema_network), ema=self.ema,
            seed=self.seed, prediction_type=self.prediction_type, cond_drop_prob=self.cond_drop_prob,
            class_names=self.class_names, default_sampling=self.default_sampling, name=f"{self.name}_student",
        )

    def teacher_denoiser(self, extra):
        """`denoise(x, t) -> (x_0, eps)` of the teacher network at training timesteps `t`, clipped as its DDIM clips.

        Args:
            extra: `[]`, or `[labels]` for a conditional teacher.
        """
        return samplers.make_denoiser(
            lambda x, t: ops.cast(self.teacher_network([x, t] + extra, training=False), x.dtype), self.diffusion,
            range(self.diffusion.num_timesteps), self.teacher_prediction_type, clip_denoised=self.clip_denoised,
        )

    def distiller_config(self):
        """The subclass's own constructor arguments, for `get_config`."""
        raise NotImplementedError

    def get_config(self):
        config = {k: v for k, v in super().get_config().items() if k not in self.FIXED_OPTIONS}
        return {
            **config,
            "teacher_network": keras.saving.serialize_keras_object(self.teacher_network),
            "teacher_prediction_type": self.teacher_prediction_type,
            "teacher_cond_drop_prob": self.cond_drop_prob,
            "class_names": self.class_names,
            "clip_denoised": self.clip_denoised,
            **self.distiller_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        teacher_network = keras.saving.deserialize_keras_object(config.pop("teacher_network"))
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        ema_network = keras.saving.deserialize_keras_object(config.pop("ema_network"))
        teacher = DiffusionModel(
            teacher_network, GaussianDiffusion.from_config(config.pop("diffusion")), ema_network=teacher_network,
            prediction_type=config.pop("teacher_prediction_type"), cond_drop_prob=config.pop("teacher_cond_drop_prob"),
            class_names=config.pop("class_names"),
        )
        return cls(teacher, student_network=network, student_ema_network=ema_network, teacher_network=teacher_network,
                   **config)


def copy_network(network, weights_of=None):
    """A clone of `network` holding the weights of `weights_of` (`None`: its own)."""
    clone = keras.models.clone_model(network)
    clone.set_weights((network if weights_of is None else weights_of).get_weights())
    return clone
