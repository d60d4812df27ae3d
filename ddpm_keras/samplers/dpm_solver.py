"""DPM-Solver++ multistep (Lu et al. 2022), deterministic (2M, 3M) and stochastic (2M SDE), in data prediction.

Along a path of noise levels `(alpha_k, sigma_k)`, `k = 0..n` (point 0 the
noisiest, point `n` the data: `alpha = 1, sigma = 0`), with
`lambda = log(alpha / sigma)` and `h_i = lambda_{i+1} - lambda_i`, step `i`
moves `x` from point `i` to `i + 1` using the network's predicted `x_0`
at point `i` (`m_i`) and at the one or two points before (`m_{i-1}`,
`m_{i-2}`). Every step is linear:

    x_{i+1} = a_i x_i + c0_i m_i + c1_i m_{i-1} + c2_i m_{i-2} + s_i z

with coefficients that depend only on the path, computed once in float64
NumPy (`dpmpp_coefficients`) and gathered inside the compiled loop:

- 1st order (DDIM): `a = sigma_{i+1} / sigma_i`, `c0 = alpha_{i+1} (1 - e^{-h})`.
- 2M (the "midpoint" form of diffusers): `D = m_i + (m_i - m_{i-1}) / (2 r)`,
  `r = h_{i-1} / h_i`.
- 3M: the third-order Taylor form of the same integral,
  `x_{i+1} = a x_i + c0 m_i + alpha_{i+1} phi_2 D1 - 2 alpha_{i+1} phi_3 D2` with
  `phi_2 = expm1(-h) / h + 1`, `phi_3 = phi_2 / h - 1/2`, and the divided
  differences `D1 ~ h m'`, `D2 ~ h^2 m'' / 2` of diffusers'
  `multistep_dpm_solver_third_order_update` (and of the DPM-Solver code).
  Those weight `D2` by `phi_3` alone: half the Taylor coefficient, which
  leaves a local error of order `h^3`, so their "3M" converges with order 2
  (`tests/test_solvers.py` measures both).
- 2M SDE (`sde-dpmsolver++`): `a = (sigma_{i+1} / sigma_i) e^{-h}`, the data
  term `alpha_{i+1} (1 - e^{-2h}) D` and noise `sigma_{i+1} sqrt(1 - e^{-2h}) z`.

The first steps have lower order (there is no history yet), as does the
last step, which goes to `sigma = 0` (`h` infinite) and returns `m_i`, the
predicted `x_0` at the smallest kept timestep `s_0`; runs of fewer than 15
steps also take the step before it at order at most 2 (diffusers'
`lower_order_final`). `e^{-h}` is computed as `alpha_i sigma_{i+1} /
(sigma_i alpha_{i+1})`, so a path starting at zero SNR (`lambda = -inf`)
or ending at the data gives finite coefficients.
"""

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather_scalar

DPMPP_SAMPLERS = {"dpmpp_2m": (2, False), "dpmpp_3m": (3, False), "dpmpp_2m_sde": (2, True)}
FEW_STEPS = 15


def step_orders(h, order, few_steps=FEW_STEPS):
    """The order of each step: warm-up from 1, lower at the end, and never across an infinite step.

    Args:
        h: Float64 array `(n,)` of the steps in `lambda` (may hold `inf`
            at either end).
        order: Integer, the solver's order.
        few_steps: Integer, below this many steps the last two steps have
            order 1 and at most 2. Defaults to `15`.

    Returns:
        An int array `(n,)`.
    """
    n = len(h)
    orders = np.minimum(order, np.arange(1, n + 1))
    for i in range(n):
        # Each previous step used must be finite (a step from zero SNR is not).
        finite_before = 0
        while finite_before < i and np.isfinite(h[i - 1 - finite_before]):
            finite_before += 1
        orders[i] = min(orders[i], finite_before + 1)
        if not np.isfinite(h[i]):
            orders[i] = 1
    if n < few_steps:
        orders[-1] = 1
        if n >= 2:
            orders[-2] = min(orders[-2], 2)
    return orders


def path_steps(alphas, sigmas, order, few_steps=FEW_STEPS):
    """The steps along a path of levels: `(alphas, sigmas, e^{-h}, h, orders)`, float64.

    `e^{-h}` is the ratio `alpha_i sigma_{i+1} / (sigma_i alpha_{i+1})`: 0,
    not NaN, for a step from zero SNR or to the data (`h` infinite there).
    """
    alphas, sigmas = np.asarray(alphas, np.float64), np.asarray(sigmas, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        exp_neg_h = alphas[:-1] * sigmas[1:] / (sigmas[:-1] * alphas[1:])
        h = -np.log(exp_neg_h)
    return alphas, sigmas, exp_neg_h, h, step_orders(h, order, few_steps)


def dpmpp_coefficients(alphas, sigmas, order=2, stochastic=False, few_steps=FEW_STEPS):
    """The per-step coefficients of DPM-Solver++ along a path of noise levels, in float64.

    Args:
        alphas: Float array `(n + 1,)`, `sqrt(ab)` at each point, noisiest
            first.
        sigmas: Float array `(n + 1,)`, `sqrt(1 - ab)` at each point.
        order: `1`, `2` or `3`. Defaults to `2`.
        stochastic: Boolean, the SDE variant (orders 1 and 2). Defaults to
            `False`.
        few_steps: Integer, see `step_orders`. Defaults to `15`.

    Returns:
        A dict of float64 arrays `(n,)`: `a`, `c0`, `c1`, `c2`, `noise`
        (see the module docstring) and the int array `order`.

    Example:

    >>> ab = np.linspace(0.01, 0.99, 11)
    >>> c = dpmpp_coefficients(np.sqrt(ab), np.sqrt(1 - ab), order=2)
    """
    if order not in (1, 2, 3) or (stochastic and order == 3):
        raise ValueError(f"order must be 1, 2 or 3 (1 or 2 for the SDE solver). Received: order={order!r}")
    alphas, sigmas, exp_neg_h, h, orders = path_steps(alphas, sigmas, order, few_steps)
    n = len(h)
    names = ("a", "c0", "c1", "c2", "noise")
    table = {name: np.zeros(n) for name in names}
    for i in range(n):
        if stochastic:
            table["a"][i] = sigmas[i + 1] / sigmas[i] * exp_neg_h[i]
            data = alphas[i + 1] * (1.0 - exp_neg_h[i] ** 2)
            table["noise"][i] = sigmas[i + 1] * np.sqrt(1.0 - exp_neg_h[i] ** 2)
        else:
            table["a"][i] = sigmas[i + 1] / sigmas[i]
            data = alphas[i + 1] * (1.0 - exp_neg_h[i])
        weights = _history_weights(orders[i], data, alphas[i + 1], h, i)
        table["c0"][i], table["c1"][i], table["c2"][i] = weights
    table["order"] = orders
    return table


def _history_weights(order, data, alpha_next, h, i):
    """The weights of `(m_i, m_{i-1}, m_{i-2})` in step `i`; `data` is the first-order weight."""
    if order == 1:
        return data, 0.0, 0.0
    inverse_r0 = h[i] / h[i - 1]
    if order == 2:
        # D = m0 + (m0 - m1) / (2 r0)
        return data * (1.0 + 0.5 * inverse_r0), -0.5 * data * inverse_r0, 0.0
    r0, r1 = h[i - 1] / h[i], h[i - 2] / h[i]
    expm1 = np.expm1(-h[i])
    d1_coef = alpha_next * (expm1 / h[i] + 1.0)
    # The m'' term of the integral is alpha * int_0^h e^{-(h - u)} u^2 / 2 du * m''
    # = -alpha h^2 phi_3 m''; with D2 ~ h^2 m'' / 2 its weight is -2 alpha phi_3.
    d2_coef = 2.0 * alpha_next * ((expm1 + h[i]) / h[i] ** 2 - 0.5)

    def combine(m0, m1, m2):
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return data * m0 + d1_coef * d1 - d2_coef * d2

    return combine(1.0, 0.0, 0.0), combine(0.0, 1.0, 0.0), combine(0.0, 0.0, 1.0)


def path_levels(diffusion):
    """`(alphas, sigmas)` along a sampler's path: the steps of `diffusion` from the last down, then the data."""
    alphas_cumprod = np.append(diffusion.terms_float64["alphas_cumprod"][::-1], 1.0)
    return np.sqrt(alphas_cumprod), np.sqrt(1.0 - alphas_cumprod)


def dpmpp_chain(context, order=2, stochastic=False):
    """DPM-Solver++ over every step of `context.diffusion`; see the module docstring.

    The state is `(x, m_{i-1}, m_{i-2})`; each step calls the network once.
    """
    denoise, last = context.denoiser(), context.num_steps - 1
    table = dpmpp_coefficients(*path_levels(context.diffusion), order=order, stochastic=stochastic)

    def init(x_T):
        return x_T, ops.zeros_like(x_T), ops.zeros_like(x_T)

    def step(i, state):
        x, previous, before = state
        x_start, _ = denoise(x, batch_steps(x, last - i))
        x_next = (
            gather_scalar(table["a"], i) * x
            + gather_scalar(table["c0"], i) * x_start
            + gather_scalar(table["c1"], i) * previous
            + gather_scalar(table["c2"], i) * before
        )
        if stochastic:
            x_next = x_next + gather_scalar(table["noise"], i) * context.noise_fn(ops.shape(x), i)
        return x_next, x_start, previous

    return Chain(init, step, context.num_steps)
