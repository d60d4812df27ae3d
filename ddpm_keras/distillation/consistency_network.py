"""`ConsistencyOutput`: the layer that turns a diffusion network into a consistency function `f(x_t, t)`.

`consistency_network(network, ...)` puts it on a functional network's
output: the result takes the network's inputs (`[x_t, t(, labels)]`, the
layers shared, so a conditional network's `class_embedding` stays a layer
of it) and outputs `f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat`, an `"x0"`
prediction that any sampler reads (`diffusion.consistency`).
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import check_prediction_type
from ddpm_keras.diffusion import consistency as math_cd
from ddpm_keras.diffusion import gather


@keras.saving.register_keras_serializable(package="ddpm_keras")
class ConsistencyOutput(keras.layers.Layer):
    """The consistency function `f(x_t, t)` from a network's output at `(x_t, t)`, the boundary condition built in.

    `f = c_skip(t) x_t + c_out(t) x0_hat`, with `x0_hat` the `x_0` that
    the output of `prediction_type` stands for and
    `c = (sigma_min / sigma_t)^2`, `c_skip = c / sqrt(ab_t)`,
    `c_out = 1 - c` (`diffusion.consistency.consistency_coefficients`):
    at `boundary_timestep`, `f = x_t / sqrt(ab_t)` whatever the network's
    output. Nothing is clipped, so the gradient reaches every output.

    Args:
        alphas_cumprod: Sequence of `T` floats, the diffusion's
            `alphas_cumprod` (saved in the config).
        prediction_type: What the wrapped network outputs: `"epsilon"`,
            `"v"` or `"x0"`. Defaults to `"epsilon"`.
        boundary_timestep: Integer in `[0, T)`, the timestep of `sigma_min`
            (the smallest of the distillation's grid). Defaults to `0`.

    Call arguments:
        inputs: `[x_t, t, output]`: the noisy images `(batch, H, W, C)`,
            the int timesteps `(batch,)` and the network's output, shaped
            as `x_t`.

    Example:

    >>> x_t, t = keras.Input((32, 32, 3)), keras.Input((), dtype="int32")
    >>> f = ConsistencyOutput(diffusion.terms_float64["alphas_cumprod"], "v")([x_t, t, unet([x_t, t])])
    """

    def __init__(self, alphas_cumprod, prediction_type="epsilon", boundary_timestep=0, **kwargs):
        super().__init__(**kwargs)
        check_prediction_type(prediction_type)
        self.alphas_cumprod = [float(a) for a in np.asarray(alphas_cumprod, np.float64).reshape(-1)]
        if not (isinstance(boundary_timestep, (int, np.integer)) and 0 <= boundary_timestep < len(self.alphas_cumprod)):
            raise ValueError(f"boundary_timestep must be an integer in [0, {len(self.alphas_cumprod)}). "
                             f"Received: boundary_timestep={boundary_timestep!r}")
        self.prediction_type, self.boundary_timestep = prediction_type, int(boundary_timestep)
        self._c_skip, self._c_out = math_cd.consistency_coefficients(self.alphas_cumprod, self.boundary_timestep)

    def call(self, inputs):
        x_t, t, output = inputs
        output = ops.cast(output, x_t.dtype)
        alpha_bar = gather(np.asarray(self.alphas_cumprod), t, x_t)
        x_start = math_cd.x0_from_prediction(output, x_t, alpha_bar, self.prediction_type)
        return math_cd.consistency_function(x_t, x_start, gather(self._c_skip, t, x_t), gather(self._c_out, t, x_t))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {
            **super().get_config(), "alphas_cumprod": self.alphas_cumprod, "prediction_type": self.prediction_type,
            "boundary_timestep": self.boundary_timestep,
        }


def consistency_network(network, alphas_cumprod, prediction_type, boundary_timestep=0):
    """`network` (a functional Keras model, its layers shared) with a `ConsistencyOutput` on its output.

    Args:
        network: A functional model `[x_t, t(, labels)] -> prediction`.
        alphas_cumprod, prediction_type, boundary_timestep: The
            `ConsistencyOutput`'s.

    Returns:
        A functional model of the same inputs (and weights) returning
        `f(x_t, t)`.
    """
    inputs, outputs = getattr(network, "inputs", None), getattr(network, "outputs", None)
    if not inputs or not outputs or len(outputs) != 1:
        raise ValueError(f"The student must be a functional Keras model [x_t, t(, labels)] -> prediction with one "
                         f"output. Received: {network!r}")
    output = ConsistencyOutput(alphas_cumprod, prediction_type, boundary_timestep, name="consistency_output")(
        [inputs[0], inputs[1], outputs[0]]
    )
    return keras.Model(inputs, output, name=network.name)


def is_consistency_network(network):
    """Whether `network`'s output is a `ConsistencyOutput`'s (`consistency_network`'s result, or its reload)."""
    layers = getattr(network, "layers", None) or []
    return bool(layers) and isinstance(layers[-1], ConsistencyOutput)
