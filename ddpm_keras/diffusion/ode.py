"""The probability-flow ODE of a DDPM and the likelihood it gives (Song et al. 2021, sec. 4.3), in `keras.ops`.

**The continuous process.** The schedule's `alphas_cumprod[k]` (integer
timesteps `k` in `[0, T)`) extend to continuous timesteps `tau` in
`[-1, T - 1]` by interpolating `log alpha_bar` linearly between integer
timesteps, with `alpha_bar(-1) = 1`, the data (`continuous_alphas_cumprod`).
This is the VP process of Song et al. 2021 (eq. 11) whose
`beta(tau) = -d log alpha_bar / d tau` is constant on each step, equal to
`-log(1 - beta_k)`; its marginals at integer timesteps are the discrete
ones exactly. Its time normalised as Song et al.'s is
`t = (tau + 1) / T` in `[0, 1]`.

**The ODE in the log-SNR.** With `alpha^2 = alpha_bar`,
`sigma^2 = 1 - alpha_bar`, the half log-SNR `lam = log(alpha / sigma)`
and the score `-eps_hat / sigma`, the probability-flow ODE
`dx/dt = -beta(t) (x + score) / 2` is, in `lam` (DPM-Solver's form),

    dx / dlam = sigma^2 x - sigma eps_hat(x, lam)

(`= alpha (x0_hat - alpha x)`, bounded, and smooth wherever the predictor
is, however `t` maps to `lam`). The likelihood does not depend on how
time is parametrised, so the solvers integrate in `lam`, from
`lam(t = eps)` down to `lam(t = 1)`; fixed steps are uniform in `lam`.

**The likelihood.** By the instantaneous change of variables (Chen et al.
2018), `log p_eps(x) = log N(x(1); 0, I) + int div_x(dx/dlam) dlam`, the
integral along the path from `lam(eps)` to `lam(1)`, solved jointly with
`x` (`probability_flow_nll`). The prior is `N(0, I)`, as the bound's.

**The divergence.** `div f = E_v[v^T J v]` for probes with
`E[v v^T] = I` (Skilling 1989, Hutchinson 1990): Rademacher or Gaussian,
drawn once per image and held along the path (Song et al.; FFJORD).
`v^T J v` is computed as `(v^T J) v` from one reverse-mode
vector-Jacobian product (`utils.autodiff`), the same number as the
forward-mode `v^T (J v)`; summed over the unit vectors `e_i` of all `D`
dimensions it is the exact trace. The `K` probes (or `D` unit vectors) ride
as `K` copies of the batch through one network call per evaluation, which
also gives the drift: one function evaluation (NFE) is one such call.

**The network between timesteps.** A network whose timestep input is
float gets the continuous `tau` itself; one with integer timesteps gets the
nearest integer timestep, clipped to `[0, T)`. Either way its output is
read at the exact `(alpha, sigma)` of `lam` (`scaled_noise`).

**Dequantisation and bits per 8-bit dimension** (`dequantize`,
`dequantization_bits`). As Song et al. report it (score_sde, after
FFJORD): the 8-bit level `k` of a value (`x = clip_min + k w'` with
`w' = range / 255`) becomes `y = clip_min + (k + u) w`, `u ~ U[0, 1)`,
bins of width `w = range / 256` (`2 / 256` for `[-1, 1]`). The continuous
density `p` of `y` bounds the probability of `k`:
`-log P(k) <= E_u[-log p(y)] - D log w`, so in bits per dimension
`bpd = nll(y) / (D ln 2) + log2(1 / w)`, `+ 7` for data in `[-1, 1]`
(score_sde's `offset = 7 - inverse_scaler(-1)`).
"""

import math

import numpy as np
from keras import ops

from ddpm_keras.diffusion.gaussian import check_prediction_type
from ddpm_keras.utils.autodiff import value_and_vector_jacobian_product
from ddpm_keras.utils.checks import check_positive_int

SOLVERS = ("rk45", "rk4")
PROBES = ("rademacher", "gaussian")
NUM_LEVELS = 256

# Dormand & Prince 1980, RK5(4)7FM: nodes, stages, the fifth-order weights (the seventh stage's
# row, first same as last) and the difference to the embedded fourth-order ones.
_DP_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


# ---------------------------------------------------------------- the continuous process


def continuous_alphas_cumprod(alphas_cumprod, timestep):
    """`alpha_bar` at continuous timesteps: `log alpha_bar` interpolated linearly between integer timesteps.

    Args:
        alphas_cumprod: The schedule's `alphas_cumprod`, `(T,)` (a NumPy
            array or a tensor).
        timestep: Float tensor (any shape) of timesteps in `[-1, T - 1]`;
            `-1` is the data (`alpha_bar = 1`), an integer `k >= 0` gives
            `alphas_cumprod[k]`. Values outside are clipped.

    Returns:
        A float32 tensor shaped as `timestep`.

    Example:

    >>> continuous_alphas_cumprod(diffusion.alphas_cumprod, ops.convert_to_tensor([0.5]))  # sqrt(ab_0 ab_1)
    """
    knots = _log_knots(alphas_cumprod)
    position = ops.clip(ops.cast(timestep, "float32") + 1.0, 0.0, float(knots.shape[0] - 1))
    low = ops.minimum(ops.floor(position), float(knots.shape[0] - 2))
    index = ops.cast(low, "int32")
    weight = position - low
    return ops.exp((1.0 - weight) * ops.take(knots, index) + weight * ops.take(knots, index + 1))


def _log_knots(alphas_cumprod):
    """`[0, log ab_0, ..., log ab_{T-1}]`, float32: `log alpha_bar` at the timesteps `-1, 0, ..., T - 1`."""
    if isinstance(alphas_cumprod, (np.ndarray, list, tuple)):
        table = np.log(np.asarray(alphas_cumprod, np.float64))
        return ops.convert_to_tensor(np.concatenate([[0.0], table]).astype(np.float32))
    log_ab = ops.log(ops.cast(alphas_cumprod, "float32"))
    return ops.concatenate([ops.zeros((1,), "float32"), log_ab])


def timestep_of_log_snr(alphas_cumprod, log_snr):
    """The continuous timestep whose `alpha_bar` has half log-SNR `log_snr`: the inverse of the interpolation.

    `log alpha_bar = -softplus(-2 log_snr)`, located between the knots of
    `continuous_alphas_cumprod`. `log_snr` is a scalar tensor.
    """
    knots = _log_knots(alphas_cumprod)
    target = -ops.softplus(-2.0 * ops.cast(log_snr, "float32"))
    last = knots.shape[0] - 2
    index = ops.clip(ops.sum(ops.cast(knots > target, "int32")) - 1, 0, last)
    upper, lower = ops.take(knots, index), ops.take(knots, index + 1)
    return ops.cast(index, "float32") - 1.0 + (upper - target) / (upper - lower)


def log_snr_at(alphas_cumprod, t):
    """The half log-SNR `log(alpha / sigma)` at Song et al.'s time `t` in `(0, 1]` (float64, on the host)."""
    table = np.asarray(alphas_cumprod, np.float64)
    positions = np.arange(len(table) + 1) / len(table)
    log_ab = np.interp(t, positions, np.concatenate([[0.0], np.log(table)]))
    return 0.5 * (log_ab - math.log(-math.expm1(log_ab)))


def check_ode_schedule(alphas_cumprod):
    """Raises a `ValueError` when `alphas_cumprod[T - 1] == 0`: the ODE's prior `N(0, I)` needs noise with a signal."""
    if not np.asarray(alphas_cumprod, np.float64)[-1] > 0.0:
        raise ValueError(
            "The probability-flow likelihood needs alphas_cumprod[T - 1] > 0: its end lam(t = 1) is -inf with "
            "zero terminal SNR. Received: a diffusion with alphas_cumprod[T - 1] == 0 (use method='vlb')."
        )


# ---------------------------------------------------------------- the drift and its divergence


def scaled_noise(model_output, x, alpha, sigma, prediction_type="epsilon"):
    """`sigma * eps_hat` that a network's output at `x` stands for, at the level `(alpha, sigma)`.

    `"epsilon"`: `sigma * output`; `"x0"`: `x - alpha * output`; `"v"`:
    `sigma (sigma x + alpha v)` (`GaussianDiffusion.split_prediction` at a
    continuous level, free of division by `alpha` or `sigma`).
    """
    check_prediction_type(prediction_type)
    model_output = ops.cast(model_output, x.dtype)
    if prediction_type == "epsilon":
        return sigma * model_output
    if prediction_type == "x0":
        return x - alpha * model_output
    return sigma * (sigma * x + alpha * model_output)


def make_flow(model_fn, alphas_cumprod, probes, prediction_type="epsilon", float_timesteps=False, trace_weight=1.0):
    """`flow(lam, (x, delta)) -> (dx/dlam, d delta/dlam)`: the drift and its divergence estimate.

    Args:
        model_fn: Callable `(x, timesteps) -> network output`, `timesteps`
            `(batch,)` float32 (`float_timesteps`) or int32.
        alphas_cumprod: The schedule's `alphas_cumprod`, `(T,)`.
        probes: Tensor `(K, batch, ...)`: `K` probes per image.
        prediction_type: What the network outputs. Defaults to
            `"epsilon"`.
        float_timesteps: Boolean, pass the continuous timestep rather than
            the nearest integer one. Defaults to `False`.
        trace_weight: Float, the weight of each probe's `v^T J v`: `1 / K`
            for the Skilling-Hutchinson mean, `1` for the exact trace over
            unit vectors. Defaults to `1.0`.

    Returns:
        `flow(log_snr, state)`, `state = (x, delta)` with `x` `(batch, ...)`:
        the drift `sigma^2 x - sigma eps_hat` of `x` (from the first copy)
        and, per image, `trace_weight * sum_k v_k^T J v_k`. One network
        call on the `K * batch` copies.

    Example:

    >>> flow = make_flow(model_fn, diffusion.terms_float64["alphas_cumprod"], draw_probes(noise), trace_weight=1.0)
    """
    num_probes, num_timesteps = probes.shape[0], len(alphas_cumprod)
    flat_probes = ops.reshape(probes, (-1,) + tuple(probes.shape[2:]))

    def flow(log_snr, state):
        x = state[0]
        batch = ops.shape(x)[0]
        log_snr = ops.cast(log_snr, "float32")
        alpha, sigma = ops.sqrt(ops.sigmoid(2.0 * log_snr)), ops.sqrt(ops.sigmoid(-2.0 * log_snr))
        timestep = timestep_of_log_snr(alphas_cumprod, log_snr)
        if not float_timesteps:
            timestep = ops.cast(ops.clip(ops.round(timestep), 0.0, num_timesteps - 1.0), "int32")
        timesteps = ops.zeros((batch * num_probes,), timestep.dtype) + timestep

        def drift(y):
            return ops.square(sigma) * y - scaled_noise(model_fn(y, timesteps), y, alpha, sigma, prediction_type)

        copies = ops.tile(x, (num_probes,) + (1,) * (len(x.shape) - 1))
        value, product = value_and_vector_jacobian_product(drift, copies, flat_probes)
        per_probe = ops.sum(ops.reshape(product * flat_probes, (num_probes, batch, -1)), axis=2)
        return value[:batch], trace_weight * ops.sum(per_probe, axis=0)

    return flow


def draw_probes(noise, probe="rademacher"):
    """Skilling-Hutchinson probes from standard normal `noise`: its signs (Rademacher) or itself (Gaussian)."""
    check_probe(probe)
    return ops.sign(noise) if probe == "rademacher" else noise


def unit_probes(image_shape, batch):
    """The `D = prod(image_shape)` unit vectors of the exact trace, `(D, batch) + image_shape`, float32."""
    dims = int(np.prod(image_shape))
    basis = np.eye(dims, dtype=np.float32).reshape((dims, 1) + tuple(image_shape))
    return ops.convert_to_tensor(np.broadcast_to(basis, (dims, batch) + tuple(image_shape)).copy())


# ---------------------------------------------------------------- the solvers


def _combine(state, increments, weights, h):
    """`state + h * sum(w * k)` over the tensors of a state tuple."""
    result = []
    for i, value in enumerate(state):
        total = value
        for weight, k in zip(weights, increments):
            if weight != 0.0:
                total = total + (h * weight) * k[i]
        result.append(total)
    return tuple(result)


def rk4(flow, state, start, end, num_steps):
    """Classical fourth-order Runge-Kutta with `num_steps` equal steps from `start` to `end`, one `fori_loop`.

    Returns:
        `(state at end, nfe)`, `nfe = 4 * num_steps`.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    h = (end - start) / num_steps

    def step(i, y):
        t = start + h * ops.cast(i, "float32")
        k1 = flow(t, y)
        k2 = flow(t + 0.5 * h, _combine(y, [k1], [0.5], h))
        k3 = flow(t + 0.5 * h, _combine(y, [k2], [0.5], h))
        k4 = flow(t + h, _combine(y, [k3], [1.0], h))
        return _combine(y, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6], h)

    return ops.fori_loop(0, num_steps, step, tuple(state)), 4 * num_steps


def rk45(flow, state, start, end, rtol=1e-5, atol=1e-5, first_step=0.01, max_steps=10_000):
    """Adaptive Dormand-Prince RK5(4) from `start` to `end` in one `while_loop`, as scipy's `RK45`.

    A step is accepted when the root mean square, over every component of
    the state, of its error estimate divided by
    `atol + rtol * max(|y|, |y_new|)` is at most 1; the next step is scaled
    by `0.9 err^(-1/5)`, within `[0.2, 10]` (at most 1 after a rejection).
    The last stage of an accepted step is the first of the next (FSAL), so
    a step costs six function evaluations, a rejected one too.

    Args:
        flow: Callable `(t, state) -> derivative`, over a tuple of tensors.
        state: The tuple of tensors at `start`.
        start, end: Floats, the interval (`end < start` integrates
            backwards).
        rtol, atol: Floats > 0, the tolerances. Default to `1e-5` (Song et
            al.'s).
        first_step: Float, the first step as a fraction of the interval.
            Defaults to `0.01`.
        max_steps: Integer, the most steps tried (accepted or not).
            Defaults to `10000`.

    Returns:
        `(state at end, nfe, num_accepted, num_rejected)`, the counts int32
        tensors; the state is NaN where `max_steps` ran out before `end`.
    """
    span = float(end - start)
    direction = 1.0 if span >= 0 else -1.0
    size = sum(int(np.prod(v.shape)) for v in state)

    def norm(error, y, y_new):
        total = 0.0
        for e, a, b in zip(error, y, y_new):
            scale = atol + rtol * ops.maximum(ops.abs(a), ops.abs(b))
            total = total + ops.sum(ops.square(e / scale))
        return ops.sqrt(total / size)

    def body(t, h, y, k_first, nfe, accepted, rejected):
        h = direction * ops.minimum(ops.abs(h), ops.abs(end - t))
        ks = [k_first]
        for node, row in zip(_DP_NODES[1:], _DP_STAGES[1:]):
            ks.append(flow(t + node * h, _combine(y, ks, row, h)))
        y_new = _combine(y, ks[:6], _DP_STAGES[6], h)
        error = _combine(tuple(ops.zeros_like(v) for v in y), ks, _DP_ERROR, h)
        err = norm(error, y, y_new)
        err = ops.where(ops.isfinite(err), err, 1e10)
        ok = err <= 1.0
        factor = ops.clip(0.9 * ops.power(ops.maximum(err, 1e-10), -0.2), 0.2, 10.0)
        factor = ops.where(ok, factor, ops.minimum(factor, 1.0))
        keep = lambda new, old: ops.where(ok, new, old)  # noqa: E731
        return (
            keep(t + h, t), h * factor, tuple(keep(a, b) for a, b in zip(y_new, y)),
            tuple(keep(a, b) for a, b in zip(ks[6], k_first)), nfe + 6,
            accepted + ops.cast(ok, "int32"), rejected + 1 - ops.cast(ok, "int32"),
        )

    def cond(t, h, y, k_first, nfe, accepted, rejected):
        remaining = direction * (end - t) > 1e-6 * abs(span)
        return ops.logical_and(remaining, accepted + rejected < max_steps)

    start_t = ops.convert_to_tensor(start, "float32")
    zero = ops.convert_to_tensor(0, "int32")
    loop = (start_t, ops.convert_to_tensor(first_step * span, "float32"), tuple(state),
            flow(start_t, tuple(state)), zero + 1, zero, zero)
    t, _, y, _, nfe, accepted, rejected = ops.while_loop(cond, body, loop)
    unfinished = direction * (end - t) > 1e-6 * abs(span)
    y = tuple(ops.where(unfinished, float("nan"), v) for v in y)
    return y, nfe, accepted, rejected


# ---------------------------------------------------------------- the likelihood


def probability_flow_nll(flow, x, start, end, solver="rk45", num_steps=None, rtol=1e-5, atol=1e-5):
    """`(prior_nll, divergence_integral, nfe)`: the pieces of `-log p_eps(x)` along the probability-flow ODE.

    Integrates `(x, delta)` from the half log-SNR `start` (the data's end,
    `lam(t = eps)`) to `end` (`lam(t = 1)`) with `solver`; then
    `-log p_eps(x) = prior_nll - divergence_integral`, with
    `prior_nll = -log N(x(1); 0, I)` per image and the integral per image.

    Args:
        flow: `make_flow(...)`.
        x: The data, `(batch, ...)`.
        start, end: Floats, `log_snr_at(alphas_cumprod, eps)` and
            `log_snr_at(alphas_cumprod, 1.0)`.
        solver: `"rk45"` or `"rk4"`. Defaults to `"rk45"`.
        num_steps: Integer, RK4's steps (uniform in `lam`).
        rtol, atol: Floats, RK45's tolerances. Default to `1e-5`.

    Returns:
        `(prior_nll (batch,), divergence_integral (batch,), nfe)` in nats.
    """
    check_solver(solver)
    state = (x, ops.zeros((ops.shape(x)[0],), "float32"))
    if solver == "rk4":
        (x_end, integral), nfe = rk4(flow, state, start, end, num_steps)
    else:
        (x_end, integral), nfe, _, _ = rk45(flow, state, start, end, rtol, atol)
    dims = float(np.prod(x.shape[1:]))
    flat = ops.reshape(x_end, (ops.shape(x_end)[0], -1))
    prior_nll = 0.5 * ops.sum(ops.square(flat), axis=1) + 0.5 * dims * math.log(2.0 * math.pi)
    return prior_nll, integral, nfe


def dequantize(x, uniform, clip_min=-1.0, clip_max=1.0):
    """8-bit data, as Song et al. dequantise it: level `k` to `clip_min + (k + uniform) * range / 256`.

    Args:
        x: Data on the 256 levels `clip_min + k * range / 255`.
        uniform: Noise in `[0, 1)` shaped as `x`.
        clip_min, clip_max: Floats, the data range.
    """
    width = clip_max - clip_min
    level = ops.clip(ops.round((x - clip_min) * ((NUM_LEVELS - 1) / width)), 0.0, NUM_LEVELS - 1.0)
    return clip_min + (level + uniform) * (width / NUM_LEVELS)


def dequantization_bits(clip_min=-1.0, clip_max=1.0):
    """`log2(256 / range)`: bits per dimension from the density of `dequantize`'s values to 8-bit data (7 on `[-1, 1]`)."""
    return math.log2(NUM_LEVELS / (clip_max - clip_min))


def check_solver(solver):
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver: {solver!r}. Expected one of {SOLVERS}.")


def check_probe(probe):
    if probe not in PROBES:
        raise ValueError(f"Unknown probe: {probe!r}. Expected one of {PROBES} (the Skilling-Hutchinson probes).")
