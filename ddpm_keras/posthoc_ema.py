"""Post-hoc EMA reconstruction (EDM2, Karras et al. 2024, Appendix C.2): the EMA of any width, after training.

A run trained with `ddpm_keras.training.posthoc_ema.PostHocEMA` (or
`ddpm-keras train --posthoc-ema-every N`) holds snapshots of two
power-function EMAs (relative stds 0.05 and 0.10 by default) every `N`
steps. `reconstruct` combines them into the EMA of another std: each
snapshot is the integral of the training weights against its profile
`p_i`; the least-squares combination `sum_i x_i p_i` of the snapshots'
profiles nearest (in L2) the wanted profile `p` gives the weights
`sum_i x_i snapshot_i` (`solve_posthoc_coefficients`, EDM2 Algorithm 3).

Example:

>>> from ddpm_keras.posthoc_ema import reconstruct_model
>>> model = reconstruct_model("runs/flowers", std=0.08)
>>> images = model.generate_images(16, seed=0)  # from the EMA of std 0.08
"""

import os

import numpy as np

from ddpm_keras.training.checkpoint import MODEL_FILE
from ddpm_keras.training.posthoc_ema import SNAPSHOT_DIR
from ddpm_keras.training.posthoc_ema import list_files
from ddpm_keras.training.posthoc_ema import read_profile
from ddpm_keras.training.power_ema import STD_MAX
from ddpm_keras.training.power_ema import exp_to_std
from ddpm_keras.training.power_ema import solve_posthoc_coefficients
from ddpm_keras.training.power_ema import std_to_exp

__all__ = ["MAX_RESIDUAL", "exp_to_std", "posthoc_coefficients", "reconstruct", "reconstruct_model", "set_ema_weights",
           "snapshot_steps", "std_to_exp"]

# The largest relative L2 error of the reconstructed profile that `reconstruct` accepts: past it the
# snapshots do not represent the std asked for (too far from the tracked ones, or too few snapshots).
MAX_RESIDUAL = 0.05


def snapshot_steps(run_dir):
    """The optimizer steps of the post-hoc EMA snapshots in `run_dir` (`RUN_DIR/posthoc_ema/`), ascending."""
    return [found.step for found in _snapshots(run_dir)]


def posthoc_coefficients(run_dir, std, step=None, max_residual=MAX_RESIDUAL):
    """The least-squares coefficients of a run's snapshot profiles for the EMA of `std` at `step`, without the weights.

    Every profile of every snapshot at or before `step` enters the least
    squares; the error of the profile found, relative to the wanted one,
    must be at most `max_residual` (it is 0 for a std and step that were
    snapshotted, about 0.002 between the tracked stds with 20 snapshots
    of each, 0.0001 with 100, and it grows outside them).

    Args:
        run_dir: String, the run directory (or its `posthoc_ema/` folder).
        std: Float, the relative standard deviation wanted, in
            `(0, 0.3]`.
        step: Integer, the optimizer step. Defaults to the last
            snapshot's.
        max_residual: Float, the largest relative L2 error of the profile
            accepted. Defaults to `MAX_RESIDUAL` (`0.05`).

    Returns:
        A dict: `step`, `coefficients` (one per snapshot profile), `files`
        and `profiles` (the snapshot and the index of the profile in it,
        for each coefficient), `steps`, `stds`, and `residual`.
    """
    std = _check_std(std)
    snapshots = _snapshots(run_dir)
    step = snapshots[-1].step if step is None else step
    used = [found for found in snapshots if found.step <= step]
    if not used:
        raise ValueError(f"{_folder(run_dir)} has no snapshot at or before step {step} (the first is at step "
                         f"{snapshots[0].step}): pass a later step.")
    profiles = [(found, p) for found in used for p in range(len(found.stds))]
    steps = [found.step for found, _ in profiles]
    x, residual = solve_posthoc_coefficients(steps, [found.gammas[p] for found, p in profiles], step, std_to_exp(std))
    if residual > max_residual:
        tracked = sorted({s for found in used for s in found.stds})
        raise ValueError(
            f"std {std:g} at step {step} is outside what the {len(used)} snapshots of stds "
            f"{', '.join(f'{s:g}' for s in tracked)} can represent (the profile's relative error is {residual:.3f}, "
            f"over {max_residual:g}): choose a std nearer those, or a step with more snapshots before it."
        )
    return {"step": step, "coefficients": x.tolist(), "files": [found.path for found, _ in profiles],
            "profiles": [p for _, p in profiles], "steps": steps, "stds": [found.stds[p] for found, p in profiles],
            "residual": residual}


def reconstruct(run_dir, std, step=None, max_residual=MAX_RESIDUAL, return_info=False):
    """The weights of the power-function EMA of relative std `std` at `step`, from a run's snapshots.

    The sum of the snapshots' weights with the coefficients of
    `posthoc_coefficients` (EDM2 Algorithm 3), accumulated in float64 one
    snapshot at a time.

    Args:
        run_dir: String, the run directory (or its `posthoc_ema/` folder).
        std: Float, the relative standard deviation wanted, in
            `(0, 0.3]`.
        step: Integer, the optimizer step. Defaults to the last
            snapshot's.
        max_residual: Float, the largest relative L2 error of the profile
            accepted (see `posthoc_coefficients`). Defaults to `0.05`.
        return_info: Boolean, also return `posthoc_coefficients`' dict.
            Defaults to `False`.

    Returns:
        The weights as a list of NumPy arrays (of the network's dtypes), in
        `model.network.weights` order; with `return_info`,
        `(weights, info)`.

    Example:

    >>> weights = reconstruct("runs/flowers", std=0.08)
    >>> model.ema_network.set_weights(weights)
    """
    info = posthoc_coefficients(run_dir, std, step=step, max_residual=max_residual)
    weights = dtypes = None
    for path, p, coefficient in zip(info["files"], info["profiles"], info["coefficients"]):
        arrays = read_profile(path, p)
        if weights is None:
            weights = [np.zeros(a.shape, np.float64) if _is_float(a) else a for a in arrays]
            dtypes = [a.dtype for a in arrays]
        for i, a in enumerate(arrays):
            if _is_float(a):
                weights[i] += coefficient * a
            else:
                weights[i] = a  # a counter or a seed: the last snapshot's
    weights = [w.astype(dtype) for w, dtype in zip(weights, dtypes)]
    return (weights, info) if return_info else weights


def reconstruct_model(run_dir, std, step=None, max_residual=MAX_RESIDUAL):
    """The run's `DiffusionModel` (`RUN_DIR/model.keras`) with its `ema_network` set to `reconstruct`'s weights.

    Args:
        run_dir: String, the run directory.
        std: Float, the relative standard deviation of the EMA.
        step: Integer, the optimizer step. Defaults to the last snapshot's.
        max_residual: Float, see `reconstruct`.

    Returns:
        The `DiffusionModel`; its `network` and optimizer are the
        checkpoint's, its `ema_network` the reconstructed EMA.
    """
    import keras

    from ddpm_keras.model import DiffusionModel
    from ddpm_keras.training.finite import check_finite_model

    path = os.path.join(os.fspath(run_dir), MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}: pass the run directory that holds {MODEL_FILE} and "
                                f"{SNAPSHOT_DIR}/.")
    weights = reconstruct(run_dir, std, step=step, max_residual=max_residual)
    model = keras.saving.load_model(path)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a DiffusionModel.")
    check_finite_model(model, path)
    return set_ema_weights(model, weights, _folder(run_dir))


def set_ema_weights(model, weights, source="the snapshots"):
    """Sets `model.ema_network`'s weights to `weights` (from `reconstruct`); a `ValueError` if they do not fit."""
    shapes = [tuple(w.shape) for w in model.ema_network.weights]
    if shapes != [tuple(a.shape) for a in weights]:
        raise ValueError(f"The post-hoc EMA of {source} has {len(weights)} arrays that do not match the "
                         f"{len(shapes)} weights of the model's network: the snapshots are of another run.")
    model.ema_network.set_weights(weights)
    return model


def _check_std(std):
    try:
        value = float(std)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(std, bool) or not 0 < value <= STD_MAX:
        raise ValueError(f"std must be a relative standard deviation in (0, {STD_MAX:.3f}] (EDM2's are 0.05 to "
                         f"0.2). Received: std={std!r}")
    return value


def _folder(run_dir):
    run_dir = os.fspath(run_dir)
    return run_dir if os.path.basename(os.path.normpath(run_dir)) == SNAPSHOT_DIR else os.path.join(run_dir,
                                                                                                     SNAPSHOT_DIR)


def _snapshots(run_dir):
    folder = _folder(run_dir)
    snapshots = list_files(folder, kinds=("snapshot",))
    if not snapshots:
        raise FileNotFoundError(
            f"No post-hoc EMA snapshot in {folder}: train the run with PostHocEMA (ddpm-keras train "
            "--posthoc-ema-every N) first."
        )
    return snapshots


def _is_float(array):
    return np.issubdtype(array.dtype, np.floating)
