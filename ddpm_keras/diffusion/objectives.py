"""Per-timestep weights of the denoising loss, computed once in float64 with NumPy.

The network is trained to output `GaussianDiffusion.prediction_target` (the
noise, the velocity `v` or `x_0`); each example's squared error is weighted
by a function of its timestep's signal-to-noise ratio
`SNR(t) = ab_t / (1 - ab_t)`. Every weighting here is a float64 table `(T,)`
that the training step gathers per example. Math only: no training imports.
"""

import numbers

import numpy as np

from ddpm_keras.diffusion.gaussian import check_prediction_type

# `None`: every timestep alike (the "simple" loss of Ho et al. 2020);
# `"min_snr"`: min-SNR-gamma (Hang et al. 2023).
LOSS_WEIGHTINGS = (None, "min_snr")


def check_loss_weighting(loss_weighting):
    """Raises a `ValueError` unless `loss_weighting` is one of `LOSS_WEIGHTINGS`."""
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"Unknown loss_weighting: {loss_weighting!r}. Expected one of {LOSS_WEIGHTINGS} "
            "(None: every timestep alike; 'min_snr': min-SNR-gamma, Hang et al. 2023)."
        )


def check_snr_gamma(snr_gamma):
    """`snr_gamma` as a float, or a `ValueError` unless it is a positive finite number (not a boolean)."""
    if (
        isinstance(snr_gamma, bool)
        or not isinstance(snr_gamma, numbers.Real)
        or not np.isfinite(snr_gamma)
        or not snr_gamma > 0
    ):
        raise ValueError(f"snr_gamma must be a positive float, e.g. 5.0. Received: snr_gamma={snr_gamma!r}")
    return float(snr_gamma)


def min_snr_weights(snr, prediction_type="epsilon", gamma=5.0):
    """The min-SNR-gamma loss weight of each timestep (Hang et al. 2023, eq. 12 and its v form).

    Min-SNR clamps the SNR weighting of the `x_0` loss at `gamma`, then
    expresses it for the quantity the network predicts: since
    `||eps - eps'||^2 = SNR ||x_0 - x_0'||^2` and
    `||v - v'||^2 = (SNR + 1) ||x_0 - x_0'||^2`,

    - `"epsilon"`: `min(SNR, gamma) / SNR`, computed as `min(1, gamma / SNR)`
      (1 where `SNR = 0`);
    - `"x0"`: `min(SNR, gamma)`;
    - `"v"`: `min(SNR, gamma) / (SNR + 1)`.

    Args:
        snr: 1-D array, the signal-to-noise ratio of each timestep
            (`GaussianDiffusion.snr()`), each `>= 0` (`inf` allowed).
        prediction_type: One of `ddpm_keras.diffusion.PREDICTION_TYPES`.
            Defaults to `"epsilon"`.
        gamma: Float > 0, the clamp. Defaults to `5.0`.

    Returns:
        A float64 NumPy array shaped as `snr`.

    Example:

    >>> weights = min_snr_weights(diffusion.snr(), "v", gamma=5.0)  # (T,)
    """
    check_prediction_type(prediction_type)
    gamma = check_snr_gamma(gamma)
    snr = np.asarray(snr, dtype=np.float64)
    if snr.ndim != 1 or not np.all(snr >= 0.0):
        raise ValueError(f"snr must be a 1-D array of values >= 0. Received: snr={snr!r}")
    clamped = np.minimum(snr, gamma)
    if prediction_type == "epsilon":
        with np.errstate(divide="ignore"):
            return np.minimum(1.0, gamma / snr)
    if prediction_type == "x0":
        return clamped
    return clamped / (snr + 1.0)


def timestep_weights(diffusion, prediction_type="epsilon", loss_weighting=None, snr_gamma=5.0):
    """The loss weight of each timestep of `diffusion`, or `None` when every timestep weighs the same.

    Args:
        diffusion: A `GaussianDiffusion`.
        prediction_type: One of `PREDICTION_TYPES`. Defaults to
            `"epsilon"`.
        loss_weighting: One of `LOSS_WEIGHTINGS`. Defaults to `None`.
        snr_gamma: Float > 0, min-SNR's `gamma`. Defaults to `5.0`.

    Returns:
        `None`, or a float64 NumPy array `(T,)`.

    Example:

    >>> table = timestep_weights(diffusion, "v", "min_snr")  # min(SNR, 5) / (SNR + 1)
    """
    check_loss_weighting(loss_weighting)
    if loss_weighting is None:
        return None
    return min_snr_weights(diffusion.snr(), prediction_type, snr_gamma)
