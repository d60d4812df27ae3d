"""`ProgressiveDistillation` (Salimans & Ho 2022): a student that samples in a few DDIM steps, trained with `fit`.

The distiller is a `DiffusionModel` whose network is the student: it trains
with the same backend steps, checkpoints, callbacks and run directories as
any model. Only its batch differs (`training_batch`): the target is where
two DDIM steps of a frozen teacher land (`diffusion.distillation`), and the
weights are the paper's truncated SNR. After every `steps_per_round`
optimizer steps the student's EMA becomes the teacher and the student's
step count halves (`update_ema`), so one `fit` of `total_steps` runs every
round from `start_steps` down to `target_steps`.
"""

import math

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import distillation as math_pd
from ddpm_keras.distillation.base import Distiller
from ddpm_keras.distillation.base import copy_network
from ddpm_keras.training import objective
from ddpm_keras.utils.checks import check_positive_int

# The DDIM step count a trained teacher's ODE is close to (DDIM-50 in the benchmarks); the default
# start is the power-of-two multiple of `target_steps` nearest to it.
TEACHER_ODE_STEPS = 64
DEFAULT_STEPS_PER_ROUND = 2000


def default_start_steps(target_steps, num_timesteps):
    """`target_steps * 2^k`, `k >= 1`, nearest to `TEACHER_ODE_STEPS` in log scale and at most `T` (if one is)."""
    k = max(1, round(math.log2(TEACHER_ODE_STEPS / target_steps)))
    while k > 1 and target_steps * 2**k > num_timesteps:
        k -= 1
    return target_steps * 2**k


@keras.saving.register_keras_serializable(package="ddpm_keras")
class ProgressiveDistillation(Distiller):
    """Distils a trained model into a student of `target_steps` deterministic DDIM steps.

    Round `r` teaches the student to take in one DDIM step what the
    teacher takes in two, on the trailing grid of the samplers: the
    student of `N = start_steps / 2^(r + 1)` steps, from `x_t`,
    `t ~ U{g_2, g_4, ..., g_2N}` of the teacher's `2N`-step grid, learns
    `x~ = two_step_target(teacher, x_t)` in its own prediction type,
    weighted by `max(SNR, 1)` on the error in `x_0` (Salimans & Ho 2022,
    Algorithm 2 and sec. 4). The student starts as a copy of the
    teacher's EMA network, and after every `steps_per_round` optimizer
    steps its EMA becomes the next round's teacher. `fit` for
    `total_steps` optimizer steps runs every round; further steps keep
    training the last one. `student` is the distilled `DiffusionModel`,
    which samples with `sampler="ddim", num_steps=N` by default.

    The student keeps the teacher's prediction type. `"v"` or `"x0"` is
    what the paper distils (an `eps` student must predict the data from
    almost pure noise at the first step, where `x_0 = (x_t - sigma eps) /
    alpha` magnifies its error by `1 / alpha`): distil an `"epsilon"`
    teacher into a student of another type through `student_network`
    and `prediction_type`.

    Args:
        teacher: A trained `DiffusionModel`: its EMA network is the first
            teacher (copied: the model is not changed). A
            class-conditional teacher gives a class-conditional student,
            trained with the teacher's label dropout so that classifier-free
            guidance still works.
        target_steps: Integer >= 1, the student's final step count.
            Defaults to `4`.
        start_steps: `None`, or the teacher's step count in the first
            round: `target_steps * 2^k` with `k >= 1`, at most `T`.
            Defaults to `None`: the one of those nearest to `64` (a
            trained teacher's DDIM is close to its ODE there) that is at
            most `T`.
        steps_per_round: Integer >= 1, optimizer steps per round.
            Defaults to `None`: `2000`.
        student_network: `None` (a copy of the teacher's EMA network) or a
            network of the same inputs to start the student from.
            Defaults to `None`.
        prediction_type: `None` (the teacher's) or the student's
            prediction type, with `student_network`. Defaults to `None`.
        ema: Float in `[0, 1]`, the student's EMA decay; the EMA is the
            next teacher, so its horizon `1 / (1 - ema)` should be well
            inside a round. Defaults to `0.995`.
        seed: Integer or `None`, the seed of the training draws. Defaults
            to `None`.
        clip_denoised: Boolean, clip the teacher's `x_0` to the data range
            as its DDIM sampler does. Defaults to `True`.

    Example:

    >>> distiller = ProgressiveDistillation(teacher, target_steps=4, steps_per_round=1000)
    >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> distiller.fit(images, batch_size=64, epochs=distiller.total_steps // (len(images) // 64))
    >>> images = distiller.student.generate_images(16, seed=0)  # 4 DDIM steps
    """

    method = "progressive"

    def __init__(
        self,
        teacher,
        target_steps=4,
        start_steps=None,
        steps_per_round=None,
        student_network=None,
        prediction_type=None,
        ema=0.995,
        seed=None,
        clip_denoised=True,
        student_ema_network=None,
        teacher_network=None,
        **kwargs,
    ):
        self.check_teacher(teacher, "ProgressiveDistillation")
        num_timesteps = teacher.diffusion.num_timesteps
        self.target_steps = check_positive_int("target_steps", target_steps)
        self.start_steps = default_start_steps(self.target_steps, num_timesteps) if start_steps is None else start_steps
        rounds = math.log2(self.start_steps / self.target_steps) if isinstance(self.start_steps, int) else 0
        if not (isinstance(self.start_steps, int) and rounds >= 1 and rounds == int(rounds)
                and self.start_steps <= num_timesteps):
            raise ValueError(
                f"start_steps must be target_steps times a power of two (2, 4, ...), at most T = {num_timesteps}: "
                f"each round halves the steps. Received: start_steps={start_steps!r} for target_steps={target_steps}"
            )
        self.num_rounds = int(rounds)
        self.steps_per_round = check_positive_int(
            "steps_per_round", DEFAULT_STEPS_PER_ROUND if steps_per_round is None else steps_per_round
        )
        if student_network is None:  # the trainable network's clone (the EMA network is frozen), with the EMA's weights
            student_network = copy_network(teacher.network, teacher.ema_network)
        super().__init__(
            teacher, student_network, teacher.prediction_type if prediction_type is None else prediction_type,
            student_ema_network=student_ema_network, teacher_network=teacher_network, clip_denoised=clip_denoised,
            ema=ema, seed=seed, **kwargs,
        )
        # Rounds finished: the teacher of round r is the student's EMA after r rounds.
        self.distill_round = keras.Variable(0, dtype="int32", trainable=False, name="distill_round")
        alphas_cumprod = self.diffusion.terms_float64["alphas_cumprod"]
        self._round_steps = math_pd.round_steps(self.start_steps, self.num_rounds).astype(np.int32)
        self._grids = math_pd.round_grids(num_timesteps, self.start_steps, self.num_rounds).reshape(-1)
        self._levels = math_pd.levels_with_data(alphas_cumprod).astype(np.float32)
        self._timestep_weights = math_pd.truncated_snr_weights(alphas_cumprod, self.prediction_type).astype(np.float32)

    @property
    def total_steps(self):
        """Optimizer steps that run every round: `num_rounds * steps_per_round`."""
        return self.num_rounds * self.steps_per_round

    @property
    def student_steps(self):
        """The step count the student has been trained for: the current round's (`start_steps` before any step)."""
        optimizer = getattr(self, "optimizer", None)
        iterations = 0 if optimizer is None else int(ops.convert_to_numpy(optimizer.iterations))
        if iterations == 0:
            return self.start_steps
        return int(self._round_steps[min((iterations - 1) // self.steps_per_round, self.num_rounds - 1)])

    def student_sampling(self):
        """The student's sampler: deterministic DDIM over `student_steps` trailing steps."""
        return {"sampler": "ddim", "num_steps": self.student_steps, "timestep_spacing": "trailing"}

    @property
    def teacher_sampling(self):
        """The first round's teacher: deterministic DDIM over `start_steps` trailing steps."""
        return {"sampler": "ddim", "num_steps": self.start_steps, "timestep_spacing": "trailing"}

    def training_batch(self, images, seed, labels=None, training=True):
        """One batch of round `distill_round`: `([x_t, t(, labels)], the student's target, truncated-SNR weights)`."""
        batch = ops.shape(images)[0]
        last = self.num_rounds - 1
        round_index = ops.minimum(ops.cast(self.distill_round, "int32"), last)
        steps = ops.take(ops.convert_to_tensor(self._round_steps), round_index)
        position = keras.random.uniform((batch,), seed=seed) * ops.cast(steps, "float32")
        i = ops.minimum(ops.cast(ops.floor(position), "int32"), steps - 1) + 1  # the student's step, in [1, N]
        row = round_index * (self.start_steps + 1)
        grids = ops.convert_to_tensor(self._grids)
        t, u, s = (ops.take(grids, row + 2 * i - k) for k in (0, 1, 2))
        ab_t, ab_u, ab_s = (self._level(k, images.dtype) for k in (t, u, s))
        noise = keras.random.normal(ops.shape(images), dtype=images.dtype, seed=seed)
        x_t = ops.sqrt(ab_t) * images + ops.sqrt(1.0 - ab_t) * noise
        extra = []
        if labels is not None:
            extra = [self.drop_labels(labels, seed) if training else ops.cast(labels, "int32")]
        x_tilde = math_pd.two_step_target(self.teacher_denoiser(extra), x_t, t, u, (ab_t, ab_u, ab_s))
        target = math_pd.student_target(ops.stop_gradient(x_tilde), x_t, ab_t, self.prediction_type)
        return [x_t, t] + extra, target, self.timestep_weights(t)

    def _level(self, t, dtype):
        """`alpha_bar` at timesteps `t` (`-1`: the data), shaped `(batch, 1, 1, 1)`."""
        return ops.cast(ops.reshape(ops.take(ops.convert_to_tensor(self._levels), t + 1), (-1, 1, 1, 1)), dtype)

    def update_ema(self, decay=None, assign=None):
        """The EMA update; then, at the end of a round, the student's EMA becomes the teacher.

        After optimizer step `n`, when `n` is a multiple of
        `steps_per_round` and below `total_steps`, every teacher weight
        is set to the student's EMA and `distill_round` advances.
        """
        super().update_ema(decay=decay, assign=assign)
        if getattr(self, "optimizer", None) is None:
            return
        assign = objective.assign_variable if assign is None else assign
        n = ops.cast(self.optimizer.iterations, "int32")
        ends = ops.logical_and(ops.equal(n % self.steps_per_round, 0), ops.less(n, self.total_steps))

        def handed_over(teacher_weight, ema_weight):
            return ops.where(ends, ops.cast(ema_weight, teacher_weight.dtype), teacher_weight)

        for ema_weight, teacher_weight in zip(self.ema_network.weights, self.teacher_network.weights):
            assign(teacher_weight, handed_over, ema_weight)
        assign(self.distill_round, lambda done, _: done + ops.cast(ends, "int32"), self.distill_round)

    def distiller_config(self):
        return {"target_steps": self.target_steps, "start_steps": self.start_steps,
                "steps_per_round": self.steps_per_round}
