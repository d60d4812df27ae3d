"""Gradients with respect to an input, in each backend's own mechanism, usable inside compiled loops.

`keras.ops` has no `grad`; classifier guidance (the gradient of a
classifier's log-probability with respect to `x_t`) and the exact likelihood
(vector-Jacobian products of the probability-flow drift) need one inside
the compiled sampling loop. `value_and_vector_jacobian_product` is the one
mechanism, per backend: `tf.GradientTape` on TensorFlow, `jax.vjp` on JAX and
`torch.autograd.grad` on PyTorch (under `torch.enable_grad()`, since sampling
runs under `torch.no_grad()`), so it traces into `tf.function`/`jax.jit` code
with no round trip to the host; `input_gradient(fn, x)` is its product with
`v = 1` for a scalar `fn`.
"""

import keras
from keras import ops


def input_gradient(fn, x):
    """The gradient of the scalar `fn(x)` with respect to the tensor `x`, shaped and typed as `x`.

    Args:
        fn: Callable `x -> scalar tensor`, written in `keras.ops` (it may
            call Keras models).
        x: A float tensor.

    Returns:
        `d fn / d x`, a tensor like `x` (no gradient flows back through it).

    Example:

    >>> g = input_gradient(lambda x: ops.sum(ops.square(x)), x)  # 2 x
    """
    _, gradient = value_and_vector_jacobian_product(fn, x, 1.0)
    return gradient


def value_and_vector_jacobian_product(fn, x, v):
    """`(fn(x), v^T (d fn / d x))` from one forward and one reverse pass, in each backend's own mechanism.

    The probability-flow likelihood needs both the drift and the
    Skilling-Hutchinson term `sum(vjp * v)` of each evaluation; this gives
    them for the price of one network call (`jax.vjp` on JAX, one
    `tf.GradientTape` on TensorFlow, `torch.autograd.grad` with
    `grad_outputs=v` on PyTorch, under `torch.enable_grad()`).

    Args:
        fn: Callable `x -> tensor` shaped as `v`, written in `keras.ops`.
        x: A float tensor.
        v: A tensor shaped as `fn(x)`.

    Returns:
        `(value, vjp)`: `fn(x)` and the vector-Jacobian product, a tensor
        like `x` (no gradient flows back through either).

    Example:

    >>> value, vjp = value_and_vector_jacobian_product(lambda x: x * x, x, ops.ones_like(x))  # x^2, 2 x
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(value * tf.cast(v, value.dtype))
        return tf.stop_gradient(value), tf.stop_gradient(tape.gradient(total, x))
    if backend == "jax":
        import jax

        value, pullback = jax.vjp(fn, ops.convert_to_tensor(x))
        (product,) = pullback(ops.cast(v, value.dtype))
        return jax.lax.stop_gradient(value), jax.lax.stop_gradient(product)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            x = ops.convert_to_tensor(x).detach().requires_grad_(True)
            value = fn(x)
            (product,) = torch.autograd.grad(value, x, grad_outputs=ops.cast(v, value.dtype))
        return value.detach(), product.detach()
    raise NotImplementedError(
        "Vector-Jacobian products support the tensorflow, jax and torch backends. "
        f"Received: KERAS_BACKEND={backend!r}."
    )
