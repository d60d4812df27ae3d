"""UniPC (Zhao et al. 2023), variant `bh2`, in data prediction: a multistep predictor-corrector.

Along a path of noise levels `(alpha_k, sigma_k)`, `k = 0..n` (point 0 the
noisiest, point `n` the data), with `lambda = log(alpha / sigma)`,
`h_j = lambda_{j+1} - lambda_j` and `m_k` the network's predicted `x_0` at
point `k`, the predictor UniP-p moves `x_j` to point `j + 1`:

    x~_{j+1} = (sigma_{j+1} / sigma_j) x_j + alpha_{j+1} (1 - e^{-h}) m_j
               - alpha_{j+1} B(h) sum_k rho_k (m_{j-k} - m_j) / r_k,

with `r_k = (lambda_{j-k} - lambda_j) / h`, `B(h) = expm1(-h)` (`bh2`), and
`rho = 1/2` at order 2 (then the step is DPM-Solver++(2M)). The network is
called once at the new point, `m_{j+1} = x0(x~_{j+1})`, and the corrector
UniC-p redoes the step with it:

    x_{j+1} = (sigma_{j+1} / sigma_j) x_j + alpha_{j+1} (1 - e^{-h}) m_j
              - alpha_{j+1} B(h) (sum_k rho^c_k (m_{j-k} - m_j) / r_k
                                  + rho^c_p (m_{j+1} - m_j)),

where `rho^c` solves `R rho^c = b`, `R[i, k] = r_k^i` (`i, k = 0..p-1`,
`r_p = 1`), `b_i = i! (-h) phi_{i+1}(-h) / B(h)` (`i = 1..p`, `phi_k` the
exponential-integrator functions) and `rho^c = 1/2` at order 1; UniP of
order 3 solves the same system without its last row and column. The
corrector raises the order from `p` to `p + 1` at no extra call: `m_{j+1}`
is also the next predictor's input (it is not re-evaluated at the
corrected point). The last step, to the data, has no corrector. This is
the default `UniPCMultistepScheduler` of diffusers (`solver_type="bh2"`,
`predict_x0=True`, `disable_corrector=[]`), except that at order 3 the
step before the last keeps order 3 in runs of 15 steps or more.

Both updates share `(sigma_{j+1} / sigma_j) x_j`, so the correction is
linear in the predictions alone and one chain step `i` is

    x_i = x~_i + c0_i m_i + c1_i m_{i-1} + c2_i m_{i-2} + c3_i m_{i-3}   (UniC)
    x~_{i+1} = a_i x_i + p0_i m_i + p1_i m_{i-1} + p2_i m_{i-2}            (UniP)

with coefficients that depend only on the path, computed once in float64
NumPy (`unipc_coefficients`) and gathered inside the compiled loop. Step
orders follow DPM-Solver++ (`dpm_solver.step_orders`): warm-up from 1,
order 1 across an infinite step (from zero SNR, or to the data, where the
step returns `m_i`, the predicted `x_0` at the smallest kept timestep),
and runs of fewer than 15 steps lower the last two. `e^{-h}` is the ratio
`alpha_j sigma_{j+1} / (sigma_j alpha_{j+1})`, so such steps stay finite.
"""

import math

import numpy as np
from keras import ops

from ddpm_keras.samplers.common import Chain
from ddpm_keras.samplers.common import batch_steps
from ddpm_keras.samplers.common import gather_scalar
from ddpm_keras.samplers.dpm_solver import FEW_STEPS
from ddpm_keras.samplers.dpm_solver import path_levels
from ddpm_keras.samplers.dpm_solver import path_steps

UNIPC_ORDERS = (1, 2, 3)


def unipc_coefficients(alphas, sigmas, order=2, few_steps=FEW_STEPS):
    """The per-step predictor and corrector weights of UniPC-`bh2` along a path of noise levels, in float64.

    Args:
        alphas: Float array `(n + 1,)`, `sqrt(ab)` at each point, noisiest
            first.
        sigmas: Float array `(n + 1,)`, `sqrt(1 - ab)` at each point.
        order: `1`, `2` or `3`, the predictor's order `p` (UniPC-p is
            accurate to order `p + 1`). Defaults to `2`.
        few_steps: Integer, see `dpm_solver.step_orders`. Defaults to `15`.

    Returns:
        A dict of float64 arrays `(n,)`: the predictor's `a`, `p0`, `p1`,
        `p2` and the corrector's `c0`, `c1`, `c2`, `c3` (see the module
        docstring; step 0 has no corrector), and the int arrays `order`
        (the predictor's) and `corrector_order` (`0`: none).

    Example:

    >>> ab = np.linspace(0.01, 0.99, 11)
    >>> c = unipc_coefficients(np.sqrt(ab), np.sqrt(1 - ab), order=2)
    """
    if order not in UNIPC_ORDERS:
        raise ValueError(f"order must be one of {UNIPC_ORDERS}. Received: order={order!r}")
    alphas, sigmas, exp_neg_h, h, orders = path_steps(alphas, sigmas, order, few_steps)
    n = len(h)
    table = {name: np.zeros(n) for name in ("a", "p0", "p1", "p2", "c0", "c1", "c2", "c3")}
    table["a"] = sigmas[1:] / sigmas[:-1]
    for j in range(n):
        # Step j: point j -> j + 1. `data` is DDIM's weight of m_j; `scale` = -alpha_{j+1} B(h),
        # the same number for bh2's B(h) = expm1(-h).
        data = alphas[j + 1] * (1.0 - exp_neg_h[j])
        scale = data
        inverse_r = [-h[j] / np.sum(h[j - k : j]) for k in range(1, orders[j])]
        rho = _predictor_rho(orders[j], h[j], inverse_r)
        # Weights of (m_j, m_{j-1}, m_{j-2}).
        predictor = [data - scale * np.dot(rho, inverse_r)] + [scale * w for w in np.multiply(rho, inverse_r)]
        for k, weight in enumerate(predictor):
            table[f"p{k}"][j] = weight
        if j + 1 == n:
            break
        # The corrector of step j runs in chain step j + 1, once m_{j+1} is known.
        rho_c = _corrector_rho(orders[j], h[j], inverse_r)
        history = np.multiply(rho_c[:-1], inverse_r)
        # Weights of (m_{j+1}, m_j, m_{j-1}, m_{j-2}), less the predictor's.
        corrector = [scale * rho_c[-1], data - scale * (np.sum(history) + rho_c[-1])]
        corrector += [scale * w for w in history]
        for k, weight in enumerate(corrector):
            table[f"c{k}"][j + 1] = weight - (predictor[k - 1] if k >= 1 else 0.0)
    table["order"] = orders
    table["corrector_order"] = np.append(0, orders[:-1])
    return table


def _predictor_rho(order, h, inverse_r):
    """UniP's `rho` of its `order - 1` differences: none, `1/2` (bh2's order 2), or the solve."""
    if order == 1:
        return np.zeros(0)
    if order == 2:
        return np.array([0.5])
    r = 1.0 / np.asarray(inverse_r)
    return np.linalg.solve(np.vander(r, increasing=True).T, _b(order - 1, h))


def _corrector_rho(order, h, inverse_r):
    """UniC's `rho^c` of its `order` differences (the last one `m_{j+1} - m_j`): `1/2` at order 1, else the solve."""
    if order == 1:
        return np.array([0.5])
    r = np.append(1.0 / np.asarray(inverse_r), 1.0)
    return np.linalg.solve(np.vander(r, increasing=True).T, _b(order, h))


def _b(order, h):
    """`b_i = i! (-h) phi_{i+1}(-h) / B(h)`, `i = 1..order`, `B(h) = expm1(-h)` (bh2)."""
    return np.array([math.factorial(i) * -h * _phi(i + 1, -h) for i in range(1, order + 1)]) / np.expm1(-h)


def _phi(k, z):
    """`phi_k(z) = sum_m z^m / (m + k)!` (`phi_0 = e^z`, `phi_{k+1} = (phi_k - 1/k!) / z`), stable for small `z`."""
    if abs(z) < 1.0:
        return sum(z**m / math.factorial(m + k) for m in range(30))
    phi = math.exp(z)
    for i in range(k):
        phi = (phi - 1.0 / math.factorial(i)) / z
    return phi


def unipc_chain(context, order=2):
    """UniPC-`bh2` over every step of `context.diffusion`; see the module docstring.

    The state is `(x~_i, m_{i-1}, ..., m_{i-order})`; each step calls the
    network once, corrects `x~_i` with the new prediction (from step 1 on),
    then predicts `x~_{i+1}`.
    """
    denoise, last = context.denoiser(), context.num_steps - 1
    table = unipc_coefficients(*path_levels(context.diffusion), order=order)

    def init(x_T):
        return (x_T,) + tuple(ops.zeros_like(x_T) for _ in range(order))

    def step(i, state):
        x, history = state[0], state[1:]
        x_start, _ = denoise(x, batch_steps(x, last - i))
        predictions = (x_start,) + history
        x = x + sum(gather_scalar(table[f"c{k}"], i) * m for k, m in enumerate(predictions))
        x_next = gather_scalar(table["a"], i) * x + sum(
            gather_scalar(table[f"p{k}"], i) * m for k, m in enumerate(predictions[:order])
        )
        return (x_next,) + predictions[:order]

    return Chain(init, step, context.num_steps)
