"""`ConsistencyDistillation` (Song et al. 2023, Algorithm 2): a consistency model of a trained one, trained with `fit`.

The distiller is a `DiffusionModel` whose network is the student
consistency function `f_theta` (the teacher's network with a
`ConsistencyOutput` on it, an `"x0"` network) and whose EMA network is the
target `f_{theta^-}` of the loss and the network that samples. Only its
batch differs (`training_batch`): the target is the EMA network's `f` after
one DDIM step of a frozen teacher (`diffusion.consistency`), and the loss is
the plain squared error. Its `student` samples with the `"consistency"`
sampler in `target_steps` network calls.
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.diffusion import consistency as math_cd
from ddpm_keras.diffusion import gather
from ddpm_keras.distillation.base import Distiller
from ddpm_keras.distillation.base import copy_network
from ddpm_keras.distillation.consistency_network import consistency_network
from ddpm_keras.distillation.consistency_network import is_consistency_network
from ddpm_keras.utils.checks import is_int

DEFAULT_DISCRETIZATION_STEPS = 18  # Song et al. 2023's N for CD on CIFAR-10 (LPIPS): the grid's points


@keras.saving.register_keras_serializable(package="ddpm_keras")
class ConsistencyDistillation(Distiller):
    """Distils a trained model into a consistency model that samples in `target_steps` network calls.

    Consistency distillation (Song et al. 2023, Algorithm 2) on the grid
    `t_0 = 0 < t_1 < ... < t_{N-1} = T - 1` of `N =
    num_discretization_steps` timesteps (`samplers.sampling_timesteps(...,
    "karras")`: Karras et al.'s `rho = 7` spacing, as the paper's): for
    `n ~ U{0..N-2}` and `x_{t_{n+1}} = q_sample(x_0, t_{n+1}, z)`, one
    deterministic DDIM step of the teacher gives `x_hat_{t_n}`, and the
    student's `f_theta(x_{t_{n+1}}, t_{n+1})` learns the target network's
    `f_{theta^-}(x_hat_{t_n}, t_n)` (stopped gradient) under the plain
    squared error. The target network is the student's EMA (decay `ema`,
    the paper's `mu`), updated after every optimizer step; it is also the
    network that samples.

    `f` is parameterised with the boundary condition built in
    (`diffusion.consistency`, `ConsistencyOutput`):
    `f(x, t) = c(t) x / sqrt(ab_t) + (1 - c(t)) x0_hat(x, t)`,
    `c = (sigma_min / sigma_t)^2` in the VE scaling
    `sigma_t = sqrt((1 - ab_t) / ab_t)`, `x0_hat` read from the copied
    teacher network's own prediction type. The student is that network
    with the layer on top: an `"x0"` network, which every sampler reads.

    Args:
        teacher: A trained `DiffusionModel`: its EMA network is the
            teacher (copied: the model is not changed) and the student's
            start. A class-conditional teacher gives a class-conditional
            student, trained with the teacher's label dropout so that
            classifier-free guidance still works.
        target_steps: Integer in `[1, T]`, the student's sampling steps
            (`default_sampling`). Defaults to `4`.
        num_discretization_steps: Integer in `[2, T]`, `N`, the points of
            the grid. Defaults to `18` (the paper's for CIFAR-10).
        ema: Float in `[0, 1]`, the target network's decay `mu`. Defaults
            to `0.95` (the paper's for consistency distillation).
        seed: Integer or `None`, the seed of the training draws. Defaults
            to `None`.
        clip_denoised: Boolean, clip the teacher's `x_0` to the data range
            in its DDIM step, as its DDIM sampler does. Defaults to `True`.
        student_network: `None` (a copy of the teacher's EMA network) or a
            network of the teacher's inputs to start the student from,
            outputting `student_prediction_type`; wrapped by
            `ConsistencyOutput` unless it already ends with one. Defaults
            to `None`.
        student_prediction_type: `None` (the teacher's) or what
            `student_network` outputs. Defaults to `None`.

    Example:

    >>> distiller = ConsistencyDistillation(teacher, target_steps=2)
    >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> distiller.fit(dataset, epochs=10, steps_per_epoch=1000)
    >>> images = distiller.student.generate_images(16, seed=0)  # 2 consistency steps
    """

    method = "consistency"
    # The student's output is f, an x_0: its prediction type is fixed.
    FIXED_OPTIONS = Distiller.FIXED_OPTIONS + ("prediction_type",)

    def __init__(
        self,
        teacher,
        target_steps=4,
        num_discretization_steps=DEFAULT_DISCRETIZATION_STEPS,
        ema=0.95,
        seed=None,
        clip_denoised=True,
        student_network=None,
        student_prediction_type=None,
        student_ema_network=None,
        teacher_network=None,
        **kwargs,
    ):
        self.check_teacher(teacher, "ConsistencyDistillation")
        diffusion, num_timesteps = teacher.diffusion, teacher.diffusion.num_timesteps
        self.target_steps = _check_steps("target_steps", target_steps, 1, num_timesteps)
        self.num_discretization_steps = _check_steps("num_discretization_steps", num_discretization_steps, 2,
                                                     num_timesteps)
        self._grid = samplers.sampling_timesteps(diffusion, self.num_discretization_steps, "karras").astype(np.int32)
        if student_network is None:  # the trainable network's clone (the EMA network is frozen), with the EMA's weights
            student_network, student_prediction_type = copy_network(teacher.network, teacher.ema_network), None
        if not is_consistency_network(student_network):
            student_network = consistency_network(
                student_network, diffusion.terms_float64["alphas_cumprod"],
                student_prediction_type or teacher.prediction_type, int(self._grid[0]),
            )
        super().__init__(
            teacher, student_network, "x0", student_ema_network=student_ema_network, teacher_network=teacher_network,
            clip_denoised=clip_denoised, ema=ema, seed=seed, **kwargs,
        )

    @property
    def discretization(self):
        """The grid `t_0 < ... < t_{N-1}`: an int32 NumPy array `(num_discretization_steps,)`."""
        return self._grid.copy()

    def student_sampling(self):
        """The student's sampler: `target_steps` steps of multistep consistency sampling."""
        return {"sampler": "consistency", "num_steps": self.target_steps}

    @property
    def teacher_sampling(self):
        """The teacher's sampler that the student distils: deterministic DDIM over the grid (`"karras"`, `N` steps)."""
        return {"sampler": "ddim", "num_steps": self.num_discretization_steps, "timestep_spacing": "karras"}

    def training_batch(self, images, seed, labels=None, training=True):
        """One batch: `([x_{t_{n+1}}, t_{n+1}(, labels)], f_{theta^-}(x_hat_{t_n}, t_n), None)`."""
        batch = ops.shape(images)[0]
        intervals = self.num_discretization_steps - 1
        position = keras.random.uniform((batch,), seed=seed) * float(intervals)
        n = ops.minimum(ops.cast(ops.floor(position), "int32"), intervals - 1)  # n ~ U{0..N-2}
        grid = ops.convert_to_tensor(self._grid)
        t_n, t_next = ops.take(grid, n), ops.take(grid, n + 1)
        noise = keras.random.normal(ops.shape(images), dtype=images.dtype, seed=seed)
        x_next = self.diffusion.q_sample(images, t_next, noise)
        extra = []
        if labels is not None:
            extra = [self.drop_labels(labels, seed) if training else ops.cast(labels, "int32")]

        def target_function(x, t):
            return ops.cast(self.ema_network([x, t] + extra, training=False), x.dtype)

        target = math_cd.consistency_target(
            self.teacher_denoiser(extra), target_function, x_next, t_next, t_n,
            gather(self.diffusion.alphas_cumprod, t_n, images),
        )
        return [x_next, t_next] + extra, target, None

    def distiller_config(self):
        return {"target_steps": self.target_steps, "num_discretization_steps": self.num_discretization_steps}


def _check_steps(name, value, low, num_timesteps):
    if not is_int(value) or not low <= value <= num_timesteps:
        raise ValueError(f"{name} must be an integer in [{low}, {num_timesteps}] (the diffusion's timesteps). "
                         f"Received: {name}={value!r}")
    return int(value)
