"""Sampling a float32-trained network in reduced precision.

`inference_network(network, "bfloat16")` is a copy of the network whose
layers compute in bfloat16 (Keras's `"mixed_bfloat16"` policy: float32
variables, 16-bit matmuls and convolutions) except its output layer, which
keeps its own policy. The copy's variables are never filled: the compiled
samplers call it with the EMA network's variable values (`stateless_call`),
so it always runs the current weights, and the sampler's arithmetic on
`x_t` stays in float32.

Example:

>>> images = model.generate_images(16, seed=0, dtype="bfloat16")
"""

import keras

from ddpm_keras.utils.distribute import PRECISIONS

INFERENCE_DTYPES = ("float32", "bfloat16", "float16")
# The training precision each reduced dtype computes in, by its name in utils.distribute.
_POLICIES = {name.removeprefix("mixed_"): name for name in PRECISIONS if name.startswith("mixed_")}


def check_inference_dtype(dtype):
    """`dtype` as one of `INFERENCE_DTYPES` (`None` is `"float32"`), or a ValueError naming it."""
    dtype = "float32" if dtype is None else dtype
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(
            f"dtype must be one of {INFERENCE_DTYPES} (the precision the network computes in while "
            f"sampling; its weights stay float32). Received: dtype={dtype!r}"
        )
    return dtype


def inference_network(network, dtype):
    """A copy of functional `network` computing in `dtype`, its variables in the same order and trainable state.

    Args:
        network: A functional `keras.Model`, such as `build_unet`'s.
        dtype: `"float32"` (returns `network` itself), `"bfloat16"` or
            `"float16"`.

    Returns:
        A `keras.Model` taking the same inputs, to be called with
        `network`'s variable values through `stateless_call`.
    """
    dtype = check_inference_dtype(dtype)
    if dtype == "float32":
        return network
    policy = _POLICIES[dtype]
    output_layers = {id(tensor._keras_history.operation) for tensor in network.outputs}

    def clone(layer):
        config = layer.get_config()
        if id(layer) not in output_layers:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(network, clone_function=clone)
    for source, target in zip(network._flatten_layers(include_self=True), copy._flatten_layers(include_self=True)):
        target.trainable = source.trainable
    for source, target in zip(network.weights, copy.weights):
        target.trainable = source.trainable
    for which in ("trainable_variables", "non_trainable_variables"):
        if [tuple(v.shape) for v in getattr(copy, which)] != [tuple(v.shape) for v in getattr(network, which)]:
            raise ValueError(
                f"Could not copy the network for dtype={dtype!r}: its {which} differ from the original's. "
                "Sample with dtype='float32'."
            )
    return copy
