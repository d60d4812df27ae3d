"""Post-hoc EMA (EDM2, Karras et al. 2024, §3): two power-function EMAs tracked in training, snapshotted for later.

`PostHocEMA` keeps, beside the network, power-function EMAs of its weights
(`power_ema.py`) and writes them every `snapshot_every` optimizer steps to
`RUN_DIR/posthoc_ema/snapshot_00001000.npz`, ... From these snapshots
`ddpm_keras.posthoc_ema.reconstruct` finds, after training, the EMA of any
width in between at any snapshot's step, without training again.

A snapshot is a `.npz` holding `written_by` (`"ddpm_keras"`), `step`, `stds`,
`gammas`, `names` (the network's weight paths) and, for profile `p` and
weight `i`, the array `profile{p}_{i:05d}`. It is also the state the profiles
continue from when the run resumes; `state_00001050.npz` files, of the same
form, hold that state at the end of each epoch (the last two are kept), so a
run resumed from its last epoch's `model.keras` continues the profiles
exactly.
"""

import os
import re
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from ddpm_keras.training.finite import NonFiniteError
from ddpm_keras.training.power_ema import power_ema_beta
from ddpm_keras.training.power_ema import std_to_exp
from ddpm_keras.utils import files
from ddpm_keras.utils.checks import check_positive_int

SNAPSHOT_DIR = "posthoc_ema"
_FILE = re.compile(r"^(snapshot|state)_(\d{8,})\.npz$")
_KEPT_STATES = 2


class PostHocEMA(keras.callbacks.Callback):
    """Tracks power-function EMAs of `model.network`'s weights and snapshots them for post-hoc reconstruction.

    After optimizer step `t` (`model.optimizer.iterations`, 1-based after
    the update) each profile moves as
    `ema = beta_t * ema + (1 - beta_t) * w`, `beta_t = (1 - 1 / t) ** (gamma + 1)`,
    with the exponent `gamma` of its relative std (`std_to_exp`; EDM2
    Eq. 3). With `update_every=k` the EMA moves once every `k` steps with
    the decay of the `k` steps merged, `(1 - k / t) ** (gamma + 1)`
    (`power_ema_beta`): the older weights keep exactly their share, and the
    weights of the `k` steps are represented by the last of them.

    The EMAs live on the device, one flat Keras variable per profile, and
    are updated there by one compiled function (TensorFlow, JAX; torch runs
    it eagerly); only a snapshot copies them to the host. On JAX `fit`
    keeps the weights out of the variables between epochs: the callback
    calls `model.jax_state_sync()` before it reads them. Each update reads
    the step count (one scalar) from the device. Tested on TensorFlow (a
    `MirroredStrategy` too), JAX and PyTorch.

    Every `snapshot_every` steps both profiles are written to
    `<run_dir>/posthoc_ema/snapshot_{step:08d}.npz` atomically (a temporary
    file and a rename): a kill leaves whole files only. Non-finite EMAs
    are never written: the callback raises `NonFiniteError`. At each
    epoch's end the profiles' state is written too (`state_*.npz`), so
    that a run resumed from `model.keras` continues them: at the start of
    `fit` with `optimizer.iterations > 0` the state of that step is
    loaded, and snapshots of later steps (written after the checkpoint,
    then lost with it) are removed. Place the callback before
    `RunCheckpoint`, so that each checkpoint has its state.

    Args:
        run_dir: String, the run directory; files go to its `posthoc_ema/`.
        snapshot_every: Integer, the optimizer steps between snapshots
            (EDM2: about 1/200 of the run's steps or fewer).
        stds: Floats, the relative standard deviations of the profiles
            tracked. Defaults to `(0.05, 0.10)`, EDM2's.
        update_every: Integer, the optimizer steps between updates of the
            EMAs; must divide `snapshot_every`. Defaults to `1`.

    Example:

    >>> model.fit(images, epochs=100, callbacks=[PostHocEMA("runs/flowers", snapshot_every=1000),
    ...                                         RunCheckpoint("runs/flowers")])
    >>> from ddpm_keras.posthoc_ema import reconstruct_model
    >>> model = reconstruct_model("runs/flowers", std=0.08)  # its ema_network: the EMA of std 0.08
    """

    def __init__(self, run_dir, snapshot_every, stds=(0.05, 0.10), update_every=1):
        super().__init__()
        self.run_dir = os.fspath(run_dir)
        self.snapshot_every = check_positive_int("snapshot_every", snapshot_every)
        self.update_every = check_positive_int("update_every", update_every)
        if self.snapshot_every % self.update_every:
            raise ValueError(f"update_every must divide snapshot_every. Received: update_every={update_every}, "
                             f"snapshot_every={snapshot_every}")
        try:
            self.stds = tuple(float(std) for std in stds)
        except (TypeError, ValueError):
            raise ValueError(f"stds must be a sequence of numbers. Received: stds={stds!r}") from None
        if not self.stds or len(set(self.stds)) != len(self.stds):
            raise ValueError(f"stds must be one or more distinct numbers. Received: stds={stds!r}")
        self.gammas = tuple(float(std_to_exp(std)) for std in self.stds)
        self._emas = None
        self._last_t = 0
        self._epoch_t = 0
        self._epoch = 0

    @property
    def folder(self):
        return os.path.join(self.run_dir, SNAPSHOT_DIR)

    # ------------------------------------------------------------------------- fit's hooks

    def on_train_begin(self, logs=None):
        self._sync()
        network = getattr(self.model, "network", None)
        if network is None:
            raise ValueError(f"PostHocEMA tracks the `network` of a DiffusionModel. Received: a "
                             f"{type(self.model).__name__}, without one.")
        t0 = self._iterations()
        if self._emas is not None and self._network is network and self._last_t == t0:
            return  # the same run goes on in this process: the variables are current
        self._network, self._weights = network, list(network.weights)
        self._names = [weight.path for weight in self._weights]
        # The floating weights of each dtype, flattened into one vector: one variable per profile and dtype.
        groups = {}
        for i, weight in enumerate(self._weights):
            if _is_float(weight.dtype):
                groups.setdefault(keras.backend.standardize_dtype(weight.dtype), []).append(i)
        self._groups = list(groups.items())
        state, self._last_t = self._resume_state(t0)
        current = None if state else [ops.convert_to_numpy(w.value) for w in self._weights]
        self._emas = [
            [keras.Variable(np.concatenate([(state[p] if state else current)[i].reshape(-1) for i in indices]),
                            dtype=dtype, trainable=False, name=f"posthoc_ema_{p}_{dtype}")
             for dtype, indices in self._groups]
            for p in range(len(self.stds))
        ]
        weights = [[self._weights[i] for i in indices] for _, indices in self._groups]
        self._update = _compile_update(self._emas, weights)
        if self._last_t < t0:
            self._advance(t0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._sync()
        self._epoch_t = self._iterations()

    def on_train_batch_end(self, batch, logs=None):
        expected = self._epoch_t + batch + 1  # without skipped steps (loss scaling) and accumulation
        if expected // self.update_every <= self._last_t // self.update_every:
            return
        self._sync()
        t = self._iterations()
        if t <= self._last_t:
            return
        before = self._last_t
        self._advance(t)
        if t // self.snapshot_every > before // self.snapshot_every:
            self._write(snapshot_name(t), t, step=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._sync()
        t = self._iterations()
        if t > self._last_t:
            before = self._last_t
            self._advance(t)
            if t // self.snapshot_every > before // self.snapshot_every:
                self._write(snapshot_name(t), t)
        if t and not os.path.exists(os.path.join(self.folder, snapshot_name(t))):
            self._write(state_name(t), t)
        for found in list_files(self.folder, kinds=("state",))[:-_KEPT_STATES]:
            os.remove(found.path)

    # ------------------------------------------------------------------------- the profiles

    def _advance(self, t):
        """Moves every profile from step `self._last_t` to step `t` in one update."""
        k = t - self._last_t
        coefficients = [1.0 - float(power_ema_beta(gamma, t, k)) for gamma in self.gammas]
        self._update(ops.convert_to_tensor(np.asarray(coefficients, dtype="float32")))
        self._last_t = t

    def profiles(self):
        """The profiles' weights now, as NumPy arrays: one list per std, in `model.network.weights` order.

        One copy to the host per profile (and dtype): the flat vector, split here.
        """
        grouped = {i for _, indices in self._groups for i in indices}
        others = {i: ops.convert_to_numpy(w.value) for i, w in enumerate(self._weights) if i not in grouped}
        result = []
        for emas in self._emas:
            arrays = dict(others)
            for (_, indices), ema in zip(self._groups, emas):
                flat, offset = ops.convert_to_numpy(ema.value), 0
                for i in indices:
                    shape = tuple(self._weights[i].shape)
                    size = int(np.prod(shape))
                    arrays[i] = flat[offset : offset + size].reshape(shape)
                    offset += size
            result.append([arrays[i] for i in range(len(self._weights))])
        return result

    def _write(self, name, t, step=None):
        profiles = self.profiles()
        bad = [self._names[i] for arrays in profiles for i, a in enumerate(arrays)
               if _is_float(a.dtype) and not np.all(np.isfinite(a))]
        path = os.path.join(self.folder, name)
        if bad:
            raise NonFiniteError(
                f"the post-hoc EMA became NaN or Inf at optimizer step {t} ({len(bad)} arrays, such as {bad[0]}): "
                f"{path} was not written.", epoch=self._epoch + 1, step=step,
            )
        write_profiles(path, t, self.stds, self.gammas, self._names, profiles)

    def _resume_state(self, t0):
        """`(profiles, step)` to continue from at optimizer step `t0`: `(None, 0)` for a new run."""
        for orphan in _orphan_names(self.folder):
            files.remove_orphan_temporaries(self.folder, orphan)
        found = list_files(self.folder)
        if t0 == 0:
            if found:
                raise ValueError(f"{self.folder} holds post-hoc EMA files of another run "
                                 f"({os.path.basename(found[0].path)}, ...) but the model has not trained yet: train "
                                 "into a new run directory, or move that folder away.")
            return None, 0
        later = [f for f in found if f.step > t0]
        for stale in later:
            os.remove(stale.path)
        if later:
            print(f"Note: removed {len(later)} post-hoc EMA file(s) of steps after {t0} from {self.folder}: they were "
                  "written after the checkpoint this run resumes from.")
        usable = [f for f in found if f.step <= t0]
        if not usable:
            raise ValueError(f"{self.folder} holds no post-hoc EMA snapshot at or before step {t0}, where the model "
                             "resumes: its profiles cannot be continued. Resume without post-hoc EMA, or start a new "
                             "run with it.")
        last = usable[-1]
        profiles = [read_profile(last.path, p) for p in range(len(last.stds))]
        shapes = [tuple(w.shape) for w in self._weights]
        if last.stds != self.stds or [[a.shape for a in arrays] for arrays in profiles] != [shapes] * len(profiles):
            raise ValueError(f"{last.path} tracks stds {last.stds} of {len(last.names)} weights, not stds "
                             f"{self.stds} of this network's {len(shapes)} (or their shapes differ): continue it "
                             "with the same stds and network, or start a new run.")
        if last.step < t0:
            print(f"Note: the post-hoc EMA resumes from {os.path.basename(last.path)}; the {t0 - last.step} steps "
                  f"after it, to {t0}, enter the profiles as the weights of step {t0}.")
        return profiles, last.step

    def _sync(self):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _iterations(self):
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))


def _is_float(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def _compile_update(emas, weights):
    """`update(coefficients)`: `ema += c[p] * (w - ema)` for each profile `p`, compiled where the backend allows.

    `emas[p][g]` is profile `p`'s flat vector of the weights `weights[g]`
    (one group per dtype): each update is one concatenation and one
    interpolation per profile and group, whatever the number of weights.
    """

    def flat(group):
        return ops.concatenate([ops.reshape(w, [-1]) for w in group])

    if keras.backend.backend() == "jax":
        import jax

        @jax.jit
        def step(values, current, coefficients):
            current = [flat(group) for group in current]
            return [[e + coefficients[p] * (w - e) for e, w in zip(es, current)] for p, es in enumerate(values)]

        def update(coefficients):
            new = step([[e.value for e in es] for es in emas], [[w.value for w in group] for group in weights],
                       coefficients)
            for es, values in zip(emas, new):
                for e, value in zip(es, values):
                    e.assign(value)

        return update

    def update(coefficients):
        for g, group in enumerate(weights):
            current = flat([w.value for w in group])
            for p, es in enumerate(emas):
                es[g].assign(es[g].value + coefficients[p] * (current - es[g].value))

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(update, autograph=False)
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()(update)
    return update


# ----------------------------------------------------------------------------- the files


class ProfileFile(NamedTuple):
    """The header of a snapshot or state file: where it is, its step, its profiles' stds and exponents, weight names."""

    path: str
    step: int
    stds: tuple
    gammas: tuple
    names: tuple


def snapshot_name(step):
    return f"snapshot_{step:08d}.npz"


def state_name(step):
    return f"state_{step:08d}.npz"


def write_profiles(path, step, stds, gammas, names, profiles):
    """Writes a snapshot (or state) file atomically: each profile's weights, its std and exponent, the step."""
    arrays = {"written_by": np.array(files.WRITER), "step": np.int64(step), "stds": np.float64(stds),
              "gammas": np.float64(gammas), "names": np.array(list(names), dtype=str)}
    for p, weights in enumerate(profiles):
        arrays.update({f"profile{p}_{i:05d}": np.asarray(w) for i, w in enumerate(weights)})
    return files.atomic_write(path, lambda f: np.savez(f, **arrays))


def read_header(path):
    """The `ProfileFile` of a snapshot or state file; a `ValueError` naming it when it is not one ddpm_keras wrote."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["written_by"]) != files.WRITER:
                raise KeyError("written_by")
            return ProfileFile(path, int(data["step"]), tuple(data["stds"].tolist()), tuple(data["gammas"].tolist()),
                               tuple(data["names"].tolist()))
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(f"{path} is not a post-hoc EMA snapshot written by ddpm_keras ({type(error).__name__}): "
                         "move it out of the folder.") from None


def read_profile(path, p):
    """Profile `p`'s weights in a snapshot or state file, as a list of NumPy arrays."""
    with np.load(path, allow_pickle=False) as data:
        keys = sorted(key for key in data.files if key.startswith(f"profile{p}_"))
        return [data[key] for key in keys]


def list_files(folder, kinds=("snapshot", "state")):
    """The headers of the snapshot and/or state files in `folder`, by step (snapshots first at a step)."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    matches = sorted((int(m.group(2)), m.group(1) == "state", name)
                     for name in entries if (m := _FILE.match(name)) and m.group(1) in kinds)
    return [read_header(os.path.join(folder, name)) for _, _, name in matches]


def _orphan_names(folder):
    """The target names of temporaries (`.tmp-PID-snapshot_*.npz`) in `folder`."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    names = {entry.split("-", 2)[-1] for entry in entries if entry.startswith(files.TMP_PREFIX)}
    return sorted(name for name in names if _FILE.match(name))
