"""A loss or weights that stop being finite: found at once, and never written as a checkpoint.

A diverging run (a learning rate too high, float16 without loss scaling,
data holding NaN) turns the loss NaN or Inf; one such step makes every
weight NaN, and a checkpoint saved after it would replace the last good
one. `NonFiniteGuard` stops `fit` at the first non-finite loss, before any
epoch-end callback runs, and `non_finite_weights` is the cheap check
`RunCheckpoint` makes before each save and the command line makes before it
samples from, resumes or exports a file.
"""

import keras
import numpy as np
from keras import ops

LIKELY_CAUSES = (
    "Likely causes: a learning rate too high (--learning-rate), mixed precision without loss scaling "
    "(float16 needs --precision mixed_float16, which scales the loss), or images holding NaN or Inf."
)


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or weights; nothing after the last finite state was saved.

    Attributes:
        message: String, what happened and where.
        hint: String, the likely causes.
        epoch: Integer, the 1-based epoch in which it happened.
        step: Integer or `None`, the 1-based step within that epoch.
    """

    def __init__(self, message, epoch=None, step=None, hint=LIKELY_CAUSES):
        super().__init__(f"{message} {hint}".strip())
        self.message, self.hint = message, hint
        self.epoch, self.step = epoch, step


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, so that no NaN or Inf state is ever saved.

    Keras's `TerminateOnNaN` sets `stop_training`, after which `fit` still
    ends the epoch and every `on_epoch_end` runs: a checkpoint callback then
    saves the NaN weights over the last good file. This callback raises
    `NonFiniteError` from the batch instead, so no later callback of the
    epoch runs and `fit` raises it to the caller; the last checkpoint
    written stays as it was. It also checks the epoch's logged loss (the
    mean, non-finite as soon as one step was) at the end of each epoch,
    which catches what `check_every > 1` skipped before the checkpoint
    callbacks that follow it in the list.

    The check reads the logged loss, a running mean the step already
    computed: one scalar copied to the host per checked batch. On a GPU
    where even that matters, `check_every=50` waits on the device once
    every 50 steps; the epoch-end check still guards the checkpoints.

    Works on the three backends and under a distribution strategy (the
    logs are the reduced loss).

    Args:
        check_every: Integer, check the loss every `check_every` batches.
            Defaults to `1`.
        monitor: String, the log to check. Defaults to `"loss"`.

    Example:

    >>> model.fit(dataset, epochs=100, callbacks=[NonFiniteGuard(), RunCheckpoint("runs/flowers")])
    """

    def __init__(self, check_every=1, monitor="loss"):
        super().__init__()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer. Received: check_every={check_every!r}")
        self.check_every = check_every
        self.monitor = monitor
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every == 0:
            self._check(logs, self._epoch + 1, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, epoch + 1, None)

    def _check(self, logs, epoch, step):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        values = np.asarray(ops.convert_to_numpy(value), dtype=np.float64).reshape(-1)
        if np.all(np.isfinite(values)):
            return
        where = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch}"
        shown = ", ".join(f"{v:g}" for v in values[:4])
        raise NonFiniteError(f"the {self.monitor} became {shown} in {where}: training stopped.", epoch=epoch, step=step)


def non_finite_weights(model):
    """The paths of the variables of `model`'s network and EMA network holding NaN or Inf; `[]` when all are finite.

    One reduction per variable on its device and one copy of as many
    booleans to the host: cheap beside a save. A model without
    `network`/`ema_network` has its own weights checked.
    """
    variables = [(prefix, v) for prefix, part in _parts(model) for v in part.weights]
    if not variables:
        return []
    finite = ops.convert_to_numpy(ops.stack([ops.all(ops.isfinite(v.value)) for _, v in variables]))
    return [f"{prefix}/{v.path}" for (prefix, v), ok in zip(variables, finite) if not ok]


def _parts(model):
    """`(name, network)` for a `DiffusionModel`'s network and EMA network; `[(name, model)]` for another model."""
    parts = [(name, getattr(model, name)) for name in ("network", "ema_network") if hasattr(model, name)]
    return parts or [(model.name, model)]


def count_non_finite(model):
    """`(non-finite values, all values)` in `model`'s network and EMA network, for messages."""
    bad = total = 0
    for _, part in _parts(model):
        for variable in part.weights:
            values = ops.convert_to_numpy(variable.value)
            bad += int(np.size(values) - np.isfinite(values).sum())
            total += int(np.size(values))
    return bad, total


def check_finite_model(model, path):
    """Raises a one-line `ValueError` when the model loaded from `path` has non-finite weights."""
    bad = non_finite_weights(model)
    if not bad:
        return model
    values, total = count_non_finite(model)
    raise ValueError(
        f"{path} holds NaN or Inf weights ({values:,} of {total:,} values, in {len(bad)} variable(s) such as "
        f"{bad[0]}): it was saved after its training diverged and cannot sample or train on. Use an earlier "
        "checkpoint, or train again with a lower learning rate."
    )
