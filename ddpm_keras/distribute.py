"""Precision and multi-device helpers: the one place that names dtype policies and strategies.

`set_precision` sets Keras's global dtype policy; call it before building a
model. `strategy_scope` builds the models of a run on several devices:
`tf.distribute` strategies on TensorFlow, `keras.distribution.DataParallel`
on JAX.

Example:

>>> set_precision("mixed_bfloat16")
>>> with strategy_scope("mirrored"):
...     model = DiffusionModel(build_unet(...), GaussianDiffusion())
...     model.compile(optimizer=keras.optimizers.Adam(2e-4))
>>> model.fit(dataset, epochs=10)
"""

import contextlib
import json
import os

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("none", "mirrored", "multiworker")


def set_precision(name):
    """Sets the global dtype policy for the models built afterwards.

    `"mixed_float16"` and `"mixed_bfloat16"` compute in 16 bits and keep
    the variables (the EMA weights included) in float32; the softmax of the
    attention, the GroupNorm statistics, the loss and the head of the UNet
    stay in float32. Under `"mixed_float16"`, `compile` wraps the optimizer
    in a `keras.optimizers.LossScaleOptimizer`.

    Args:
        name: String, one of `"float32"`, `"mixed_float16"`,
            `"mixed_bfloat16"`.

    Returns:
        The `keras.DTypePolicy` now global.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision: {name!r}. Expected one of {PRECISIONS}.")
    keras.mixed_precision.set_global_policy(name)
    return keras.mixed_precision.global_policy()


def get_strategy(name="none", devices=None):
    """A `tf.distribute` strategy by name (TensorFlow backend).

    Args:
        name: String. `"none"`: the default strategy (one device).
            `"mirrored"`: `tf.distribute.MirroredStrategy`, synchronous data
            parallelism over the GPUs of this machine (or over `devices`).
            `"multiworker"`: `tf.distribute.MultiWorkerMirroredStrategy`
            over the machines named in the `TF_CONFIG` environment variable.
        devices: Optional list of device names for `"mirrored"`, such as
            `["/gpu:0", "/gpu:1"]`. Defaults to every GPU (the CPU if none).

    Returns:
        A `tf.distribute.Strategy`. Build and compile the model under its
        `scope()`; `fit` then splits each global batch across the replicas.
    """
    _check_strategy_name(name)
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "get_strategy returns tf.distribute strategies and needs "
            f"KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND={backend!r}. "
            "Use strategy_scope(name), which also covers JAX."
        )
    if devices is not None and name != "mirrored":
        raise ValueError(f"devices applies to 'mirrored' only. Received: name={name!r}, devices={devices}")
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


@contextlib.contextmanager
def strategy_scope(name="none", devices=None):
    """A context in which to build and compile a model for `name`'s devices.

    On TensorFlow, the scope of `get_strategy(name, devices)`. On JAX,
    `"mirrored"` sets `keras.distribution.DataParallel` over `devices`
    (default: every local device) for the duration; `"multiworker"` needs
    `keras.distribution.initialize()` first, then runs data parallel over
    every process's devices. On PyTorch only `"none"` is supported.

    Args:
        name: String, one of `"none"`, `"mirrored"`, `"multiworker"`.
        devices: Optional list of devices (see `get_strategy`; on JAX,
            `keras.distribution.list_devices()` names).

    Yields:
        The `tf.distribute.Strategy` on TensorFlow; the
        `keras.distribution.DataParallel` (or `None` for `"none"`) on JAX.
    """
    _check_strategy_name(name)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = get_strategy(name, devices)
        with strategy.scope():
            yield strategy
        return
    if name == "none":
        yield None
        return
    if backend != "jax":
        raise ValueError(
            f"strategy {name!r} needs KERAS_BACKEND=tensorflow or jax. "
            f"Received: KERAS_BACKEND={backend!r}. Use strategy 'none'."
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


def num_replicas_in_sync():
    """Replicas summing their gradients in the current `tf.distribute` strategy (1 elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _check_strategy_name(name):
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy: {name!r}. Expected one of {STRATEGIES}.")


def is_chief():
    """Whether this process writes checkpoints and samples: not a worker of index > 0 in `TF_CONFIG`.

    Under `MultiWorkerMirroredStrategy` every worker must take part in
    saving (it runs collective ops), but only the chief's files are kept;
    the others write to a scratch directory.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type in (None, "chief"):
        return True
    if task_type == "worker":
        return "chief" not in (config.get("cluster") or {}) and index == 0
    return False
