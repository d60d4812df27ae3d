"""Distillation: students that sample in a few network calls, trained from a model with `compile` and `fit`.

- `ProgressiveDistillation` (Salimans & Ho 2022): rounds that halve a
  deterministic DDIM sampler's steps, from `start_steps` to `target_steps`.

A distiller is a `DiffusionModel` whose network is the student, so it trains
with the same steps, callbacks and run directories; its `student` is the
distilled `DiffusionModel`, whose `default_sampling` holds its sampler and
step count.
"""

from ddpm_keras.distillation.progressive import ProgressiveDistillation

__all__ = ["ProgressiveDistillation"]
