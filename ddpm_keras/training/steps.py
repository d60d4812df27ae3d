"""The backend-specific training of `DiffusionModel`: one training step and one test step per backend.

Everything else of training (`training_batch`: the draws, the label
dropout of a conditional model, the target of the prediction type and the
loss weights; `compute_loss`; `update_ema` and its warm-up decay) is
`keras.ops` code on the model, shared by the three backends. A batch is
`images`, `(images,)` or `(images, labels[, sample_weight])`
(`batch_data`, which checks the labels against the model while the step
is traced); the sample weights are ignored.

- TensorFlow: `tf.GradientTape`; under a `tf.distribute` strategy each
  replica folds its id into the step's seed (its own timesteps, noise and
  dropped labels) and the EMA is updated once, in cross-replica context, on
  every copy. The labels' range is asserted in the graph (a no-op under
  XLA).
- JAX: a stateless step. Stateful code (the seed generator, the EMA, the
  loss tracker) runs inside a `keras.StatelessScope` mapping each variable
  to its value in the state lists, and the new values are read back into
  the returned state (the seed generator's: advanced by the draws of `t`,
  the noise and the label dropout); the gradient comes from
  `jax.value_and_grad` over `stateless_call`.
- PyTorch: `zero_grad`, `backward`, gradients from `v.value.grad`,
  `optimizer.apply` and the EMA assign under `torch.no_grad()`.

The compiled sampling chains are `ddpm_keras.inference.compiled`'s; `ddpm_keras.model`
imports this module.
"""

import keras
from keras import ops

from ddpm_keras.training import labels as training_labels
from ddpm_keras.utils.distribute import num_replicas_in_sync
from ddpm_keras.utils.seeds import DrawnSeed


def build_optimizer(model):
    """Creates the optimizer's variables (Adam's moments, ...) before `fit` traces the training step.

    Without a distribution strategy Keras's TensorFlow trainer leaves them to
    the first trace of the step, and a `tf.function` that creates variables
    is traced again: the first `fit` paid for two traces of the whole step
    (each about 6 s for the tests' tiny UNet on a 2-core CPU). Under a strategy
    they are built in its scope, as Keras builds them there. The other
    backends build them before tracing already.
    """
    if keras.backend.backend() != "tensorflow" or model.optimizer is None or model.optimizer.built:
        return
    with model.distribute_strategy.scope():
        model.optimizer.build(model.trainable_variables)


def batch_data(model, data):
    """`(images, labels)` of a training or validation batch; `labels` int32 `(batch,)` or `None`.

    `data` is `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, `y` the
    labels. A one-line `ValueError` at trace time when they do not fit the
    model (`training_labels.batch_labels`).
    """
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    return images, training_labels.batch_labels(model.num_classes, images, labels)


def _batch_size(images):
    return ops.shape(images)[0]


def _logs(model):
    """The metrics' results, as Keras's cross-replica reduction of this backend can take them.

    Under a multi-worker `tf.distribute` strategy Keras reduces each log
    with `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar
    ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388): there each result goes out as a `(1,)`
    tensor, and the reduction makes it the scalar mean over the workers.
    """
    logs = {m.name: m.result() for m in model.metrics}
    if _tf_multi_worker():
        logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


def _tf_multi_worker():
    """Whether this step runs under a `tf.distribute` strategy spanning several processes."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode and in_multi_worker_mode())


def _track_loss(model, loss, images):
    """Adds the (distribution-scaled) loss of this replica to the tracker, unscaled."""
    model.loss_tracker.update_state(
        ops.multiply(loss, float(num_replicas_in_sync())), sample_weight=_batch_size(images)
    )


# ----------------------------------------------------------------- TensorFlow


def tensorflow_train_step(model, data):
    import tensorflow as tf

    images, labels = _tf_batch_data(model, data)
    inputs, target, weights = model.training_batch(images, _tf_replica_seed(model.seed_generator), labels)
    trainable = model.network.trainable_variables
    with tf.GradientTape() as tape:
        prediction = model.network(inputs, training=True)
        loss = model.compute_loss(y=target, y_pred=prediction, sample_weight=weights, training=True)
        scaled_loss = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, trainable)
    model.optimizer.apply_gradients(zip(gradients, trainable))
    _tf_update_ema(model)
    _track_loss(model, loss, images)
    return _logs(model)


def tensorflow_test_step(model, data):
    images, labels = _tf_batch_data(model, data)
    seed = _tf_replica_seed(model.eval_seed_generator)
    inputs, target, weights = model.training_batch(images, seed, labels, training=False)
    prediction = model.network(inputs, training=False)
    loss = model.compute_loss(y=target, y_pred=prediction, sample_weight=weights, training=False)
    _track_loss(model, loss, images)
    return _logs(model)


def _tf_batch_data(model, data):
    """`batch_data`, with the labels asserted in `[0, num_classes)` in the graph (datasets included)."""
    import tensorflow as tf

    images, labels = batch_data(model, data)
    if labels is None:
        return images, labels
    message = (
        f"labels must be classes in [0, num_classes) = [0, {model.num_classes}) (the null label "
        f"{model.null_label} is drawn by the model, cond_drop_prob). Received: a batch whose min or max label is"
    )
    num_classes = tf.constant(model.num_classes, labels.dtype)
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(tf.reduce_min(labels), message=message),
        tf.debugging.assert_less(tf.reduce_max(labels), num_classes, message=message),
    ]):
        return images, tf.identity(labels)


def replica_seed(seed_generator):
    """`seed_generator`, or on TensorFlow under several replicas a seed of its own for each replica.

    For any model whose training step draws noise (`NoisyClassifier`):
    without it every replica of a mirrored seed generator draws the same.
    """
    if keras.backend.backend() == "tensorflow":
        return _tf_replica_seed(seed_generator)
    return seed_generator


def _tf_replica_seed(seed_generator):
    """`seed_generator`, or under several replicas its next seed with the replica id folded in.

    A mirrored seed generator holds the same state on every replica: without
    the replica id each replica would draw the same timesteps and noise.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed_generator
    seed = tf.cast(seed_generator.next(), "int64")
    replica_id = tf.cast(context.replica_id_in_sync_group, "int32")
    task_seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return DrawnSeed(tf.cast(tf.math.floormod(task_seed, 2**31 - 1), "int32"))


def _tf_update_ema(model):
    """`model.update_ema()`, done once in cross-replica context under a strategy.

    In replica context a plain `assign` would write each device's copy from
    that replica alone; `strategy.extended.update` writes every copy of each
    mirrored variable from the (synchronised) source variable's copy on its
    device: `model.update_ema(assign=...)` with that write.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if not tf.distribute.has_strategy() or context is None:
        model.update_ema()
        return

    def update(strategy):
        # The step count was advanced by the optimizer update before this
        # merge: the same decay as `model.update_ema()`.
        def assign(variable, update, source):
            strategy.extended.update(
                variable.value, lambda copy, value: copy.assign(update(copy, value)), args=(source.value,),
                group=False,
            )

        model.update_ema(assign=assign)

    context.merge_call(update)


# ------------------------------------------------------------------------ JAX


def _run_stateless(variables, values, fn):
    """Runs stateful `fn()` with `variables` read from `values`; returns `(fn(), new values)`."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
        outputs = fn()
    new_values = []
    for variable, value in zip(variables, values):
        new_value = scope.get_current_value(variable)
        new_values.append(value if new_value is None else new_value)
    return outputs, new_values


def jax_train_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    images, labels = batch_data(model, data)
    # The seed generator's state is a non-trainable variable: the draws (t,
    # the noise, the dropped labels) advance it in the returned state.
    (inputs, target, weights), non_trainable = _run_stateless(
        model.non_trainable_variables, non_trainable,
        lambda: model.training_batch(images, model.seed_generator, labels),
    )

    def loss_fn(trainable, non_trainable):
        prediction, non_trainable = model.stateless_call(trainable, non_trainable, inputs, training=True)
        loss, (_, non_trainable, _) = model.stateless_compute_loss(
            trainable, non_trainable, metrics_variables, y=target, y_pred=prediction, sample_weight=weights,
            training=True,
        )
        scaled_loss, _ = _run_stateless(
            model.optimizer.variables, optimizer_variables, lambda: model.optimizer.scale_loss(loss)
        )
        return scaled_loss, (loss, non_trainable)

    (_, (loss, non_trainable)), gradients = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, non_trainable
    )
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable
    )

    # The EMA (non-trainable) moves towards the new trainable values; the
    # loss tracker's variables update in the same scope. The optimizer's
    # variables are read (not written) there: its new step count sets the
    # EMA warm-up's decay.
    def finish():
        model.update_ema()
        _track_loss(model, loss, images)
        return _logs(model)

    variables = model.trainable_variables + model.non_trainable_variables + model.metrics_variables
    logs, values = _run_stateless(
        variables + model.optimizer.variables,
        trainable + non_trainable + metrics_variables + list(optimizer_variables),
        finish,
    )
    # The optimizer's values come last and are left out: the state keeps the
    # structure Keras compiled the step for (its shardings, under a distribution).
    num_trainable, num_non_trainable = len(trainable), len(non_trainable)
    metrics_begin = num_trainable + num_non_trainable
    non_trainable = values[num_trainable:metrics_begin]
    metrics_variables = values[metrics_begin : metrics_begin + len(metrics_variables)]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def jax_test_step(model, state, data):
    trainable, non_trainable, metrics_variables = state
    variables = model.trainable_variables + model.non_trainable_variables + model.metrics_variables
    logs, values = _run_stateless(
        variables, list(trainable) + list(non_trainable) + list(metrics_variables),
        lambda: _eager_test_step(model, data),
    )
    num_trainable, num_non_trainable = len(trainable), len(non_trainable)
    return logs, (
        trainable,
        values[num_trainable : num_trainable + num_non_trainable],
        values[num_trainable + num_non_trainable :],
    )


def _eager_test_step(model, data):
    """The validation step as stateful `keras.ops` code (PyTorch; JAX inside a StatelessScope)."""
    images, labels = batch_data(model, data)
    inputs, target, weights = model.training_batch(images, model.eval_seed_generator, labels, training=False)
    prediction = model.network(inputs, training=False)
    loss = model.compute_loss(y=target, y_pred=prediction, sample_weight=weights, training=False)
    _track_loss(model, loss, images)
    return _logs(model)


# -------------------------------------------------------------------- PyTorch


def torch_train_step(model, data):
    import torch

    images, labels = batch_data(model, data)
    inputs, target, weights = model.training_batch(images, model.seed_generator, labels)
    model.zero_grad()
    prediction = model.network(inputs, training=True)
    loss = model.compute_loss(y=target, y_pred=prediction, sample_weight=weights, training=True)
    model.optimizer.scale_loss(loss).backward()
    trainable = model.network.trainable_variables
    gradients = [v.value.grad for v in trainable]
    with torch.no_grad():
        model.optimizer.apply(gradients, trainable)
        model.update_ema()
    _track_loss(model, loss.detach(), images)
    return _logs(model)


def torch_test_step(model, data):
    import torch

    with torch.no_grad():
        return _eager_test_step(model, data)


TRAIN_STEPS = {"tensorflow": tensorflow_train_step, "jax": jax_train_step, "torch": torch_train_step}
TEST_STEPS = {"tensorflow": tensorflow_test_step, "jax": jax_test_step, "torch": torch_test_step}


def step_for(steps, what):
    backend = keras.backend.backend()
    if backend not in steps:
        raise NotImplementedError(
            f"DiffusionModel.{what} supports the tensorflow, jax and torch backends. "
            f"Received: KERAS_BACKEND={backend!r}."
        )
    return steps[backend]
