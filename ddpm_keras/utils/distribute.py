"""Precision and multi-device helpers: the one place that names the dtype policies and the strategies.

`PRECISIONS` are the policies a model trains in; sampling in reduced
precision (`ddpm_keras.inference.precision`) computes in one of them too.

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
import shutil

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
            over the processes of `cluster_resolver()`: those named in
            `TF_CONFIG`, or the tasks of a SLURM job step.
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
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver())


def cluster_resolver():
    """The processes of a multi-worker run: `TF_CONFIG` if set, else the SLURM job step this process is a task of.

    Every process runs the same program; TensorFlow's coordination service
    then connects them (the first to start waits for the others). A
    process that stops answering for 10 s (its heartbeat timeout) or
    whose connection drops aborts the collectives of the others, which
    then raise a `tf.errors.OpError` (`is_worker_lost`).

    Returns:
        A `tf.distribute.cluster_resolver.ClusterResolver`.

    Raises:
        ValueError: Neither `TF_CONFIG` nor `SLURM_PROCID` is set.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_PROCID" in os.environ:
        return slurm_cluster_resolver()
    raise ValueError(
        "strategy 'multiworker' needs to know the other workers: set TF_CONFIG on every worker "
        '(\'{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": I}}\'), '
        "or launch every worker with srun inside a SLURM allocation."
    )


def slurm_cluster_resolver(port_base=None):
    """TensorFlow's `SlurmClusterResolver` for this SLURM job step, on GPU and on CPU-only nodes.

    The workers are the step's tasks (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`,
    `SLURM_STEP_NODELIST`, `SLURM_STEP_TASKS_PER_NODE`), task `i` of a node
    listening on `port_base + i`; task 0 is the chief. On GPU nodes each
    task gets its share of the node's GPUs (`CUDA_VISIBLE_DEVICES`).

    Args:
        port_base: Integer, the first port on each node. Defaults to
            `$DDPM_KERAS_PORT_BASE`, else `8888`.
    """
    import tensorflow as tf
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_tasks_per_node

    if port_base is None:
        port_base = int(os.environ.get("DDPM_KERAS_PORT_BASE", 8888))
    missing = [name for name in _SLURM_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"A SLURM worker needs {', '.join(_SLURM_VARIABLES)}; {', '.join(missing)} not set. "
            "Launch the workers with srun inside the allocation (sbatch or salloc)."
        )
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver
    gpus = _gpus_per_node()
    if gpus:
        return resolver(port_base=port_base, gpus_per_node=gpus)
    # On CPU-only nodes TensorFlow's resolver would list no task (it pairs
    # each task with a slice of GPU ids): one unused id per task, not exported.
    tasks = max(expand_tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"]))
    return resolver(port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)


_SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")


def _gpus_per_node():
    """The GPUs of this node as TensorFlow's SLURM resolver counts them (`CUDA_VISIBLE_DEVICES`, `nvidia-smi`); 0 without."""
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import get_num_gpus

    if not os.environ.get("CUDA_VISIBLE_DEVICES") and shutil.which("nvidia-smi") is None:
        return 0
    try:
        return get_num_gpus()
    except (RuntimeError, OSError):
        return 0


def is_worker_lost(error):
    """Whether `error`, raised in a multi-worker step, says that another worker was lost (its collectives aborted)."""
    import tensorflow as tf

    return isinstance(error, tf.errors.UnavailableError) or (
        isinstance(error, tf.errors.OpError) and "Collective ops is aborted" in str(error)
    )


@contextlib.contextmanager
def strategy_scope(name="none", devices=None):
    """A context in which to build and compile a model for `name`'s devices.

    On TensorFlow, the scope of `get_strategy(name, devices)`. On JAX,
    `"mirrored"` sets `keras.distribution.DataParallel` over `devices`
    (default: every local device) for the duration; `"multiworker"` first
    joins the processes of the run (`initialize_processes`), then runs data
    parallel over every process's devices: each process reads the same
    `tf.data` pipeline and Keras gives it its share of each global batch.
    On PyTorch only `"none"` is supported.

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
    if name == "multiworker":
        initialize_processes()
    distribution = keras.distribution.DataParallel(devices=devices)
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


def initialize_processes():
    """Joins this JAX process to the others of a multi-process run, once, before any JAX computation.

    `keras.distribution.initialize()` reads `KERAS_DISTRIBUTION_JOB_ADDRESSES`
    (the coordinator, process 0, first), `KERAS_DISTRIBUTION_NUM_PROCESSES`
    and `KERAS_DISTRIBUTION_PROCESS_ID`; without them JAX finds the cluster
    itself (a SLURM job step, Open MPI, Cloud TPU). On CPUs the processes
    exchange gradients over TCP with gloo collectives.
    """
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        keras.distribution.initialize()
    except (ValueError, RuntimeError) as error:
        raise ValueError(
            "strategy 'multiworker' on JAX needs the other processes: set KERAS_DISTRIBUTION_JOB_ADDRESSES "
            "(process 0's host:port first), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID "
            f"on every process, or launch them with srun in a SLURM allocation. JAX said: {error}"
        ) from None


def num_replicas_in_sync():
    """Replicas summing their gradients in the current `tf.distribute` strategy (1 elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _check_strategy_name(name):
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy: {name!r}. Expected one of {STRATEGIES}.")


def is_chief(strategy=None):
    """Whether this process writes checkpoints and samples: the chief of a multi-worker run, or the only process.

    Under `MultiWorkerMirroredStrategy` every worker must take part in
    saving (it runs collective ops), but only the chief's files are kept;
    the others write to a scratch directory. The chief is the `"chief"`
    task, else worker 0 (of `TF_CONFIG`, or SLURM's task 0).

    Args:
        strategy: Optional `tf.distribute.Strategy`; without it, read from
            `TF_CONFIG` and `SLURM_PROCID`.
    """
    if _is_keras_distribution(strategy):
        return worker_of(strategy)[0] == 0
    if strategy is not None and getattr(strategy, "cluster_resolver", None) is not None:
        return bool(strategy.extended.should_checkpoint)
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if not task:
        return int(os.environ.get("SLURM_PROCID", 0)) == 0
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type in (None, "chief"):
        return True
    if task_type == "worker":
        return "chief" not in (config.get("cluster") or {}) and index == 0
    return False


def worker_of(strategy):
    """`(index, count)` of this process among the workers of `strategy` (`(0, 1)` in one process).

    `strategy` is a `tf.distribute.Strategy` or a `keras.distribution.DataParallel` (JAX).
    """
    if _is_keras_distribution(strategy):
        import jax

        return jax.process_index(), jax.process_count()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 0, 1
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices)
    count = max(1, replicas // max(1, local))
    index = resolver.task_id + (1 if resolver.task_type == "worker" and count > 1 and _has_chief(resolver) else 0)
    return index, count


def _is_keras_distribution(strategy):
    return isinstance(strategy, (keras.distribution.DataParallel, keras.distribution.ModelParallel))


def _has_chief(resolver):
    """Whether the cluster has a `"chief"` task besides its workers (a `TF_CONFIG` may; a SLURM step has not)."""
    import tensorflow as tf

    return isinstance(resolver, tf.distribute.cluster_resolver.TFConfigClusterResolver) and (
        "chief" in resolver.cluster_spec().jobs
    )
