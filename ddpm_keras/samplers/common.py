"""What every sampler shares: the denoiser, coefficient gathering, and running a chain in segments.

A sampler is a `Chain`: `init(x_T) -> state`, `step(i, state) -> state`
for `i` in `[0, num_steps)`, and the sample is `state[0]`. The state is a
tuple of tensors (a multistep solver keeps its past predictions there), so
a caller can run the loop in one piece (`run_chain`) or in segments with
the state in between (`start`, `advance`, `finish`) and show progress.
"""

from typing import Callable
from typing import NamedTuple

import numpy as np
from keras import ops

from ddpm_keras.diffusion import check_prediction_type
from ddpm_keras.diffusion import gather  # noqa: F401 - the samplers' gather, importable from here


class Chain(NamedTuple):
    """A reverse chain: `init(x_T) -> state`, `step(i, state) -> state`, `num_steps` steps; `state[0]` is `x`."""

    init: Callable
    step: Callable
    num_steps: int


def single_state(step):
    """A `Chain` step over the state `(x,)` from a step over `x`."""

    def wrapped(i, state):
        return (step(i, state[0]),)

    return wrapped


def initial_state(x_T):
    """The state `(x_T,)` of a chain that keeps nothing but the sample."""
    return (x_T,)


# ---------------------------------------------------------------- predictions


def make_denoiser(
    model_fn, diffusion, timestep_map, prediction_type="epsilon", clip_denoised=True, thresholding=None,
):
    """`denoise(x, t) -> (x_0, noise)`: the network's prediction at step `t` of a (respaced) diffusion.

    The network is called with the training timestep `timestep_map[t]`;
    its output becomes `(x_0, noise)` through
    `GaussianDiffusion.split_prediction`. With `clip_denoised`, `x_0` is
    clipped to the data range; with `thresholding` (a quantile `p`), it is
    dynamically thresholded instead (`dynamic_threshold`). In both cases
    the noise is recomputed from the new `x_0`, so that
    `x = sqrt(ab) x_0 + sqrt(1 - ab) noise` still holds.

    Args:
        model_fn: Callable `(x_t, t) -> network output`, `t` an int32
            tensor `(batch,)` of training timesteps.
        diffusion: The `GaussianDiffusion` the sampler walks (often
            respaced).
        timestep_map: Int array, its steps' training timesteps.
        prediction_type: One of `diffusion.PREDICTION_TYPES`. Defaults to
            `"epsilon"`.
        clip_denoised: Boolean. Defaults to `True`.
        thresholding: `None` or a float in `(0, 1)`. Defaults to `None`.

    Returns:
        The callable `denoise(x, t)`, `t` an int32 tensor `(batch,)`.
    """
    check_prediction_type(prediction_type)
    timestep_table = ops.convert_to_tensor(np.asarray(timestep_map), "int32")
    clip_min, clip_max = diffusion.clip_min, diffusion.clip_max

    def denoise(x, t):
        output = model_fn(x, ops.take(timestep_table, t))
        x_start, noise = diffusion.split_prediction(output, x, t, prediction_type)
        if thresholding is not None:
            x_start = dynamic_threshold(x_start, thresholding, clip_min, clip_max)
        elif clip_denoised:
            x_start = ops.clip(x_start, clip_min, clip_max)
        else:
            return x_start, noise
        return x_start, diffusion.predict_noise_from_start(x, t, x_start)

    return denoise


def dynamic_threshold(x_start, quantile, clip_min=-1.0, clip_max=1.0):
    """Dynamic thresholding of a predicted `x_0` (Saharia et al. 2022, Imagen, sec. 2.3).

    Per image, `s` is the `quantile` of `|x_0|` measured from the centre
    of the data range in units of its half-width, floored at 1; `x_0` is
    clipped to `[-s, s]` (in those units) and divided by `s`. Saturated
    pixels are pulled inside the range instead of piling up at its edges;
    with `s = 1` this is plain clipping.

    Args:
        x_start: The predicted `x_0`, `(batch, ...)`.
        quantile: Float in `(0, 1)`, e.g. `0.995`.
        clip_min, clip_max: Floats, the data range. Default to `-1.0`, `1.0`.

    Returns:
        The thresholded `x_0`, inside `[clip_min, clip_max]`.
    """
    centre, half_width = 0.5 * (clip_max + clip_min), 0.5 * (clip_max - clip_min)
    scaled = (x_start - centre) / half_width
    flat = ops.reshape(ops.abs(scaled), (ops.shape(scaled)[0], -1))
    s = ops.maximum(ops.quantile(flat, quantile, axis=1), 1.0)
    s = ops.reshape(ops.cast(s, scaled.dtype), (-1,) + (1,) * (len(scaled.shape) - 1))
    return centre + half_width * ops.clip(scaled, -s, s) / s


def check_thresholding(thresholding):
    """Raises a `ValueError` unless `thresholding` is `None` or a float in `(0, 1)`."""
    if thresholding is None:
        return
    if isinstance(thresholding, bool) or not isinstance(thresholding, (int, float)) or not 0.0 < thresholding < 1.0:
        raise ValueError(
            "thresholding must be None or a quantile in (0, 1), e.g. 0.995 (Imagen's dynamic thresholding). "
            f"Received: thresholding={thresholding!r}"
        )


# ---------------------------------------------------------------- tables


def gather_scalar(table, i):
    """`table[i]` of a float64 NumPy table as a float32 scalar tensor, `i` a scalar loop index."""
    return ops.take(ops.convert_to_tensor(np.asarray(table, np.float32)), i)


def batch_steps(x, t):
    """A scalar step index as an int32 tensor `(batch,)`."""
    return ops.full((ops.shape(x)[0],), t, dtype="int32")


# ---------------------------------------------------------------- running


def trajectory_length(num_steps, trajectory_every):
    """Frames of a trajectory: `x_T`, every `trajectory_every`-th step, and the last."""
    return 1 + -(-num_steps // trajectory_every)


def start(chain, x_T, trajectory_every=None):
    """The loop state before step 0: `(chain state, frames)`; `frames` is `()` without a trajectory."""
    state = tuple(chain.init(x_T))
    if trajectory_every is None:
        return state, ()
    frames = ops.zeros((trajectory_length(chain.num_steps, trajectory_every),) + tuple(x_T.shape), x_T.dtype)
    frames = ops.slice_update(frames, (0,) * len(frames.shape), x_T[None])
    return state, (frames,)


def advance(chain, loop_state, begin, end, trajectory_every=None):
    """Runs steps `[begin, end)` of `chain` from `loop_state` with one `fori_loop`.

    `begin` and `end` may be tensors, so one compiled segment serves every
    part of a long chain.
    """

    def body(i, loop_state):
        state, frames = loop_state
        state = tuple(chain.step(i, state))
        if frames:
            # Every step writes to slot ceil((i + 1) / k): a slot's last
            # write is the k-th step of its window, or the final step.
            slot = (i + trajectory_every) // trajectory_every
            x = state[0]
            frames = (ops.slice_update(frames[0], (slot,) + (0,) * len(x.shape), x[None]),)
        return state, frames

    return ops.fori_loop(begin, end, body, loop_state)


def finish(loop_state):
    """The sample, or `(sample, frames)`, of a finished loop state."""
    state, frames = loop_state
    return (state[0], frames[0]) if frames else state[0]


def run_chain(chain, x_T, trajectory_every=None):
    """Runs a whole `Chain` from `x_T`; the sample, or `(sample, frames)` with `trajectory_every`.

    Frames are `x_T`, the sample after every `trajectory_every`-th step and
    after the last, stacked `(frames, *x_T.shape)`.
    """
    loop_state = start(chain, x_T, trajectory_every)
    return finish(advance(chain, loop_state, 0, chain.num_steps, trajectory_every))


def slerp(z_0, z_1, weights):
    """Spherical interpolation between `z_0` and `z_1` (Shoemake 1985), in float64 NumPy.

    Args:
        z_0, z_1: Arrays of the same shape.
        weights: 1-D array of interpolation weights in `[0, 1]`.

    Returns:
        An array `(len(weights), *z_0.shape)`; its first and last entries
        are `z_0` and `z_1` for weights 0 and 1.
    """
    z_0, z_1 = np.asarray(z_0, np.float64), np.asarray(z_1, np.float64)
    cos = np.sum(z_0 * z_1) / (np.linalg.norm(z_0) * np.linalg.norm(z_1))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    weights = np.asarray(weights, np.float64).reshape((-1,) + (1,) * z_0.ndim)
    if theta < 1e-6:
        return (1.0 - weights) * z_0 + weights * z_1
    return (np.sin((1.0 - weights) * theta) * z_0 + np.sin(weights * theta) * z_1) / np.sin(theta)
