"""Sampling chains compiled once per backend, with the EMA network's weights as arguments.

`compile_chain(ema_network, chain)` turns a chain written in `keras.ops`
(`chain(model_fn, noise_fn, *inputs)`) into `run(seed, *inputs)`: on
TensorFlow one `tf.function(jit_compile=True)`, on JAX `jax.jit` with an
explicit key, on PyTorch eager code under `torch.no_grad()`. The weights are
arguments, not constants frozen into the compiled code, so one compilation
serves every later state of the EMA network and models built under a
`tf.distribute` strategy. `ddpm_keras.inference.runner` (sampling, editing,
likelihood) and `ddpm_keras.inference.export` (the SavedModel, through
`tf_chain_function`) use it.

With `classifier=` (classifier guidance) the chain is called as
`chain(model_fn, noise_fn, *inputs, classifier_fn=...)`, the classifier's
weights being arguments of the compiled function too.
"""

import keras
from keras import ops

from ddpm_keras.utils.seeds import DrawnSeed
from ddpm_keras.utils.seeds import random_seed


def compile_chain(ema_network, chain, network=None, classifier=None):
    """`run(seed, *inputs)` running `chain(model_fn, noise_fn, *inputs)` with the EMA weights, compiled per backend.

    `network` is `ema_network` itself (the default) or a copy of it with
    another dtype policy (`ddpm_keras.inference.precision.inference_network`),
    which runs with `ema_network`'s variable values. With a `classifier`
    (a `NoisyClassifier`), the chain also gets
    `classifier_fn(x_t, t) -> logits`, run with its current weights.
    """
    backend = keras.backend.backend()
    network = ema_network if network is None else network
    if classifier is not None:
        chain = _with_classifier(chain, classifier.network)
    if backend == "jax":
        return _jax_compile_chain(ema_network, network, chain, classifier)
    if backend == "tensorflow":
        return _tf_compile_chain(ema_network, network, chain, classifier)
    if backend == "torch":
        return _torch_compile_chain(ema_network, network, chain, classifier)
    raise NotImplementedError(
        "Sampling supports the tensorflow, jax and torch backends. "
        f"Received: KERAS_BACKEND={backend!r}."
    )


def _stateless_model_fn(network, trainable, non_trainable):
    """`model_fn(x, t, *more)`: the network with the given weight values, which a compiled chain takes as arguments.

    `more` are the network's further inputs (a conditional network's
    labels). The output is float32 whatever the network computes in, so the
    chain's arithmetic stays in float32.
    """

    def model_fn(*inputs):
        outputs, _ = network.stateless_call(trainable, non_trainable, list(inputs), training=False)
        return ops.cast(outputs, "float32")

    return model_fn


def _with_classifier(chain, classifier_network):
    """`chain` taking the classifier's weight values as its last two inputs, passed on as `classifier_fn`."""

    def chain_with_classifier(model_fn, noise_fn, *inputs):
        *inputs, trainable, non_trainable = inputs
        classifier_fn = _stateless_model_fn(classifier_network, trainable, non_trainable)
        return chain(model_fn, noise_fn, *inputs, classifier_fn=classifier_fn)

    return chain_with_classifier


def _classifier_weights(classifier, convert=lambda value: value):
    """The classifier's weight values as the last two inputs of a chain made by `_with_classifier`."""
    if classifier is None:
        return ()
    trainable, non_trainable = weight_values(classifier.network)
    return [convert(v) for v in trainable], [convert(v) for v in non_trainable]


def weight_values(network):
    """The values of `network`'s trainable and non-trainable variables, as a compiled chain takes them."""
    return [v.value for v in network.trainable_variables], [v.value for v in network.non_trainable_variables]


def tf_chain_function(network, chain):
    """`fn(trainable, non_trainable, seed, *inputs)`: `chain` on TensorFlow, the weights and an int32 seed arguments.

    Each noise draw's seed is `[seed, step]`. Not compiled: `compile_chain`
    and `ddpm_keras.inference.export` wrap it in `tf.function(jit_compile=True)`.
    """
    import tensorflow as tf

    def fn(trainable, non_trainable, seed, *inputs):
        def noise_fn(shape, step):
            step_seed = tf.stack([seed, tf.cast(step, "int32")])
            return keras.random.normal(shape, seed=DrawnSeed(step_seed))

        return chain(_stateless_model_fn(network, trainable, non_trainable), noise_fn, *inputs)

    return fn


def _tf_compile_chain(weights_network, network, chain, classifier=None):
    """One `tf.function(jit_compile=True)` taking the EMA weights and the seed as arguments.

    Reading no variable inside the XLA function keeps it valid for models
    built under a `tf.distribute` strategy (XLA cannot read a mirrored
    variable's copy on another device).
    """
    import tensorflow as tf

    compiled = tf.function(tf_chain_function(network, chain), jit_compile=True, autograph=False)

    def run(seed, *inputs):
        trainable, non_trainable = weight_values(weights_network)
        return compiled(
            [tf.convert_to_tensor(v) for v in trainable],
            [tf.convert_to_tensor(v) for v in non_trainable],
            tf.constant(random_seed(seed), "int32"),
            *inputs,
            *_classifier_weights(classifier, tf.convert_to_tensor),
        )

    return run


def _jax_compile_chain(weights_network, network, chain, classifier=None):
    """`jax.jit` of the chain with the EMA weights as arguments (not frozen constants) and an explicit key."""
    import jax
    import jax.numpy as jnp

    def compiled(trainable, non_trainable, key, *inputs):
        def noise_fn(shape, step):
            data = jax.lax.convert_element_type(jnp.asarray(step, jnp.int32), jnp.uint32)
            return jax.random.normal(jax.random.fold_in(key, data), shape, dtype="float32")

        return chain(_stateless_model_fn(network, trainable, non_trainable), noise_fn, *inputs)

    jitted = jax.jit(compiled)

    def run(seed, *inputs):
        trainable, non_trainable = weight_values(weights_network)
        weights = [_jax_local(w) for w in trainable], [_jax_local(w) for w in non_trainable]
        key = jax.random.key(random_seed(seed))
        return jitted(*weights, key, *inputs, *_classifier_weights(classifier, _jax_local))

    return run


def _jax_local(value):
    """A weight replicated over the processes of a `keras.distribution`: this process's copy.

    A chain then runs on this process alone, so that processes can make
    different chunks of a request (`ddpm_keras.inference.chunks`).
    """
    if getattr(value, "is_fully_addressable", True):
        return value
    return value.addressable_data(0)


def _torch_compile_chain(weights_network, network, chain, classifier=None):
    """Eager under `torch.no_grad()`; each draw's noise comes from a seed derived from `(seed, step)`.

    Stateless like the other backends, so a chain run in segments draws the
    same noise as in one piece.
    """
    import torch

    def model_fn(*inputs):
        if network is weights_network:
            return network(list(inputs), training=False)
        return _stateless_model_fn(network, *weight_values(weights_network))(*inputs)

    def run(seed, *inputs):
        seed = random_seed(seed)

        def noise_fn(shape, step):
            # Keras seeds a torch generator with the sum of the two words.
            step_seed = (seed * 1_000_003 + int(step) + 1) % (2**31 - 1)
            return keras.random.normal(shape, seed=DrawnSeed(ops.convert_to_tensor([step_seed, 0], "int32")))

        with torch.no_grad():
            return chain(model_fn, noise_fn, *inputs, *_classifier_weights(classifier))

    return run
