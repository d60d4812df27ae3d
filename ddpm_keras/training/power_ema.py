"""The power-function EMA of EDM2 (Karras et al. 2024, §3 and Appendix C): its exponent, decay and profiles.

After optimizer step `t` the power-function EMA is
`ema_t = beta_t * ema_{t-1} + (1 - beta_t) * w_t` with
`beta_t = (1 - 1 / t) ** (gamma + 1)`. Unrolled, `ema_t` weighs the weights
of step `s` by `(s ** (gamma + 1) - (s - 1) ** (gamma + 1)) / t ** (gamma + 1)`,
which is exactly the integral over `(s - 1, s]` of the profile
`p_t(u) = (gamma + 1) * u ** gamma / t ** (gamma + 1)` on `[0, t]`: holding
the weights constant within each step, the discrete EMA *is* the continuous
profile of EDM2's Appendix C.2, and the least squares of
`solve_posthoc_coefficients` hold without approximation.

The width of a profile is given as its relative standard deviation
`sigma_rel = sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))` (EDM2
Eq. 3): `std_to_exp` inverts it (Algorithm 2), `exp_to_std` computes it.
Everything here is NumPy in float64.
"""

import numpy as np

# The largest relative std a power-function profile has: at gamma = (sqrt(5) - 3) / 2 (about -0.382).
STD_MAX = float(np.sqrt((np.sqrt(5) - 1) / 2 / ((np.sqrt(5) + 1) / 2) ** 2 / ((np.sqrt(5) + 3) / 2)))


def exp_to_std(gamma):
    """The relative standard deviation of the power-function profile of exponent `gamma` (EDM2 Eq. 3).

    Args:
        gamma: Float or array, the exponent, greater than `-1`.

    Returns:
        `sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))`, a float64
        of `gamma`'s shape.

    Example:

    >>> round(float(exp_to_std(6.94)), 3)
    0.1
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    if np.any(~(gamma > -1)):
        raise ValueError(f"gamma must be greater than -1. Received: gamma={gamma.tolist()!r}")
    std = np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
    return std if std.ndim else float(std)


def std_to_exp(std):
    """The exponent `gamma` of the power-function EMA whose profile has relative std `std` (EDM2 Algorithm 2).

    `std ** 2 = (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))` is the cubic
    `gamma ** 3 + 7 gamma ** 2 + (16 - std ** -2) gamma + (12 - std ** -2) = 0`;
    its largest real root is the exponent (`numpy.roots`).

    Args:
        std: Float or array, the relative standard deviation, in
            `(0, STD_MAX]` (`STD_MAX` is about `0.3003`, the widest profile).

    Returns:
        The exponent, a float64 of `std`'s shape (`0.10` gives about `6.94`,
        `0.05` about `16.97`).

    Example:

    >>> round(float(std_to_exp(0.10)), 2)
    6.94
    """
    values = np.asarray(std, dtype=np.float64)
    bad = values[~((values > 0) & (values <= STD_MAX))]
    if bad.size:
        raise ValueError(f"std must be in (0, {STD_MAX:.4f}] (the relative std of a power-function EMA). "
                         f"Received: std={float(bad[0])!r}")
    gammas = []
    for value in values.reshape(-1):
        tmp = value ** -2
        roots = np.roots([1.0, 7.0, 16.0 - tmp, 12.0 - tmp])
        gammas.append(roots[np.abs(roots.imag) < 1e-6 * np.maximum(1.0, np.abs(roots))].real.max())
    gamma = np.asarray(gammas, dtype=np.float64).reshape(values.shape)
    return gamma if gamma.ndim else float(gamma)


def power_ema_beta(gamma, t, k=1):
    """The decay that takes a power-function EMA of exponent `gamma` from step `t - k` to step `t` in one update.

    `(1 - k / t) ** (gamma + 1)`, the product of the `k` one-step decays
    `(1 - 1 / s) ** (gamma + 1)` for `s` in `(t - k, t]`. The old EMA keeps
    exactly the weight `k` one-step updates would leave it; the weights of
    the `k` steps are represented by those of step `t` alone, with their
    total weight `1 - beta` (exact when the weights stay the same over the
    `k` steps, which `update_every=1` makes true). `k = t` gives `0`: the
    EMA restarts at the current weights.

    Args:
        gamma: Float or array, the exponent.
        t: Integer, the step after the update (1-based).
        k: Integer, the steps the update covers, `1 <= k <= t`.
    """
    if not 1 <= k <= t:
        raise ValueError(f"The steps merged must be in [1, t]. Received: k={k}, t={t}")
    return (1.0 - k / t) ** (np.asarray(gamma, dtype=np.float64) + 1.0)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """`<p_a, p_b>`, the integral of the product of two power-function profiles (EDM2 Algorithm 3, `p_dot_p`).

    `p(u) = (gamma + 1) * u ** gamma / t ** (gamma + 1)` on `[0, t]`, so the
    integral is over `[0, min(t_a, t_b)]`:
    `(gamma_a + 1) (gamma_b + 1) / (gamma_a + gamma_b + 1) * (t_a / t_b) ** e / max(t_a, t_b)`
    with `e = gamma_b` if `t_a < t_b` else `-gamma_a`. Broadcasts.
    """
    t_a, gamma_a, t_b, gamma_b = (np.asarray(x, dtype=np.float64) for x in (t_a, gamma_a, t_b, gamma_b))
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    numerator = (gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** exponent
    return numerator / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_posthoc_coefficients(steps, gammas, step, gamma):
    """The least-squares coefficients of snapshots' profiles for a target profile (EDM2 Algorithm 3).

    Solves `A x = b` with `A` the Gram matrix of the snapshots' profiles
    and `b` their inner products with the target's, then scales `x` to sum
    to 1, as EDM2 does (a constant sequence of weights is kept exactly).

    Args:
        steps: Array, the step of each snapshot profile.
        gammas: Array, the exponent of each.
        step: Integer, the target's step.
        gamma: Float, the target's exponent.

    Returns:
        `(x, residual)`: the coefficients (float64) and the relative L2 norm
        `||sum_i x_i p_i - p|| / ||p||` of what the combination misses of
        the target profile (`0` when the target is one of the snapshots).
    """
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    gammas = np.asarray(gammas, dtype=np.float64).reshape(-1)
    gram = profile_inner_product(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    target = profile_inner_product(steps, gammas, step, gamma)
    try:
        x = np.linalg.solve(gram, target)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(gram, target, rcond=None)[0]
    x = x / np.sum(x)
    norm = profile_inner_product(step, gamma, step, gamma)
    residual = x @ gram @ x - 2.0 * x @ target + norm
    return x, float(np.sqrt(max(residual, 0.0) / norm))
