"""Distillation: students that sample in a few network calls, trained from a model with `compile` and `fit`.

- `ProgressiveDistillation` (Salimans & Ho 2022): rounds that halve a
  deterministic DDIM sampler's steps, from `start_steps` to `target_steps`.
- `ConsistencyDistillation` (Song et al. 2023): a consistency model, trained
  on one DDIM step of the teacher against its own EMA (the target network);
  it samples with the `"consistency"` sampler in `target_steps` calls.
  `ConsistencyOutput` is the layer that makes a network a consistency
  function.

A distiller is a `DiffusionModel` whose network is the student, so it trains
with the same steps, callbacks and run directories; its `student` is the
distilled `DiffusionModel`, whose `default_sampling` holds its sampler and
step count.
"""

from ddpm_keras.distillation.consistency import ConsistencyDistillation
from ddpm_keras.distillation.consistency_network import ConsistencyOutput
from ddpm_keras.distillation.progressive import ProgressiveDistillation

__all__ = ["ConsistencyDistillation", "ConsistencyOutput", "ProgressiveDistillation"]
