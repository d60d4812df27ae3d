"""Post-hoc EMA (EDM2): the exponent of a std, the profiles' inner product, tracking, snapshots, reconstruction, CLI.

The reconstruction is checked against a third profile tracked directly
beside the two snapshotted ones, on a synthetic sequence of weights fed to
the real callback through a stand-in model (no training: fast), and the
callback inside `fit` against a float64 NumPy recomputation from the
network's weights recorded after each step.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras.cli import main
from ddpm_keras.posthoc_ema import reconstruct
from ddpm_keras.posthoc_ema import reconstruct_model
from ddpm_keras.posthoc_ema import snapshot_steps
from ddpm_keras.training.callbacks import PostHocEMA
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.finite import NonFiniteError
from ddpm_keras.training.posthoc_ema import list_files
from ddpm_keras.training.posthoc_ema import read_profile
from ddpm_keras.training.power_ema import STD_MAX
from ddpm_keras.training.power_ema import exp_to_std
from ddpm_keras.training.power_ema import power_ema_beta
from ddpm_keras.training.power_ema import profile_inner_product
from ddpm_keras.training.power_ema import std_to_exp

# ----------------------------------------------------------------------------- the math


def test_std_to_exp_inverts_exp_to_std_and_gives_edm2s_exponents():
    stds = np.linspace(0.01, 0.28, 28)
    gammas = std_to_exp(stds)
    np.testing.assert_allclose(exp_to_std(gammas), stds, rtol=1e-12)
    # EDM2 Eq. 3, written out here: sigma_rel ** 2 = (gamma + 1) / ((gamma + 2) ** 2 (gamma + 3)).
    np.testing.assert_allclose((gammas + 1) / ((gammas + 2) ** 2 * (gammas + 3)), stds ** 2, rtol=1e-12)
    assert abs(std_to_exp(0.10) - 6.94) < 0.005  # EDM2, §3: "sigma_rel = 0.10 ... gamma = 6.94"
    # The std falls as gamma grows (gamma >= 0): bisection on that branch finds each exponent independently.
    for std in (0.05, 0.075, 0.2):
        low, high = 0.0, 1e4
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if exp_to_std(mid) > std else (low, mid)
        assert abs(std_to_exp(std) - low) < 1e-9
    assert abs(std_to_exp(0.05) - 16.97) < 0.005
    for bad in (0.0, -0.1, STD_MAX * 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"std must be in \(0, 0.3003\] .*Received: std="):
            std_to_exp(bad)


@pytest.mark.parametrize("t_a, gamma_a, t_b, gamma_b", [
    (1000, 16.97, 1000, 6.94), (400, 6.94, 1000, 16.97), (1000, 6.94, 250, 10.3), (50, 0.5, 80, 2.0),
])
def test_the_profiles_inner_product_is_the_integral_of_their_product(t_a, gamma_a, t_b, gamma_b):
    u = np.linspace(0.0, min(t_a, t_b), 2_000_001)  # the support of the product

    def profile(t, gamma):
        return np.where(u <= t, (gamma + 1) * u ** gamma / t ** (gamma + 1), 0.0)

    numerical = np.trapezoid(profile(t_a, gamma_a) * profile(t_b, gamma_b), u)
    assert profile_inner_product(t_a, gamma_a, t_b, gamma_b) == pytest.approx(numerical, rel=1e-6)
    assert profile_inner_product(t_b, gamma_b, t_a, gamma_a) == pytest.approx(numerical, rel=1e-6)


def test_a_merged_update_decays_the_ema_as_its_steps_would():
    gamma = std_to_exp(0.1)
    for t, k in ((10, 1), (10, 4), (1000, 7), (5, 5)):
        one_by_one = np.prod([power_ema_beta(gamma, s) for s in range(t - k + 1, t + 1)])
        assert power_ema_beta(gamma, t, k) == pytest.approx(one_by_one, rel=1e-12)
    assert power_ema_beta(gamma, 1) == 0.0  # the first step starts the EMA at the weights


# ----------------------------------------------------------------------------- the callback on given weights


def stand_in():
    """What `PostHocEMA` reads of a model: `network` (12 + 4 + 4 weights) and `optimizer.iterations`."""
    network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1, use_bias=False)])
    iterations = keras.Variable(0, dtype="int64", trainable=False)
    return types.SimpleNamespace(network=network, optimizer=types.SimpleNamespace(iterations=iterations))


def weight_sequence(shapes, steps, seed=0):
    """A drifting random walk with an oscillation: weights whose EMAs of different widths differ clearly."""
    rng = np.random.default_rng(seed)
    walk = [rng.normal(size=shape) for shape in shapes]
    sequence = []
    for t in range(1, steps + 1):
        walk = [w + 0.1 * rng.normal(size=w.shape) + 0.01 for w in walk]
        sequence.append([(w + np.sin(t / 50)).astype("float32") for w in walk])
    return sequence


def drive(model, callbacks, sequence):
    """Feeds the weights of each step to the callbacks as `fit` would after each optimizer step."""
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
    for batch, weights in enumerate(sequence):
        model.network.set_weights(weights)
        model.optimizer.iterations.assign(batch + 1)
        for callback in callbacks:
            callback.on_train_batch_end(batch)


def power_ema(sequence, std):
    """The power-function EMA of `sequence` (the weights after steps 1, 2, ...) in float64, one step at a time."""
    gamma, ema = std_to_exp(std), None
    for t, weights in enumerate(sequence, 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = [w.astype(np.float64) for w in weights] if ema is None else [
            beta * e + (1 - beta) * w for e, w in zip(ema, weights)]
    return ema


def max_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """400 steps of synthetic weights: stds 0.05, 0.10 snapshotted every 4 steps; 0.075 tracked directly."""
    folder = tmp_path_factory.mktemp("tracked")
    model = stand_in()
    sequence = weight_sequence([tuple(w.shape) for w in model.network.weights], 400)
    snapshotting = PostHocEMA(folder / "run", snapshot_every=4)
    direct = PostHocEMA(folder / "direct", snapshot_every=400, stds=(0.075,))
    drive(model, [snapshotting, direct], sequence)
    return {"run": str(folder / "run"), "sequence": sequence, "direct": direct.profiles()[0]}


def test_the_callback_tracks_the_power_ema_and_snapshots_every_n_steps(tracked):
    assert snapshot_steps(tracked["run"]) == list(range(4, 401, 4))
    sequence = tracked["sequence"]
    for step in (4, 200, 400):
        path = os.path.join(tracked["run"], "posthoc_ema", f"snapshot_{step:08d}.npz")
        for p, std in enumerate((0.05, 0.10)):
            assert max_difference(read_profile(path, p), power_ema(sequence[:step], std)) < 5e-6
    assert max_difference(tracked["direct"], power_ema(sequence, 0.075)) < 5e-6  # measured 1.1e-6 (float32)


def test_reconstruction_gives_a_profile_tracked_directly(tracked):
    """EDM2's least squares over 2 x 100 snapshots: the std-0.075 EMA as tracked, to about float32's precision."""
    sequence = tracked["sequence"]
    scale = max_difference(power_ema(sequence, 0.05), power_ema(sequence, 0.10))  # about 1: what the std changes
    weights, info = reconstruct(tracked["run"], 0.075, return_info=True)
    error = max_difference(weights, tracked["direct"])
    # Measured: 2.5e-6 (the profile's relative error 9e-5). Broken on purpose: beta_t = (1 - 1 / t) ** gamma in
    # the callback gives 0.056; t_b / t_a for t_a / t_b in the inner product, a profile error of 7e3 (refused).
    assert error < 2e-5 * scale, (error, scale, info["residual"])
    assert info["residual"] < 2e-4 and abs(sum(info["coefficients"]) - 1) < 1e-9
    # A tracked std at a snapshot's step is that snapshot's profile, whatever the other snapshots.
    path = os.path.join(tracked["run"], "posthoc_ema", "snapshot_00000400.npz")
    assert max_difference(reconstruct(tracked["run"], 0.05), read_profile(path, 0)) < 1e-5
    path = os.path.join(tracked["run"], "posthoc_ema", "snapshot_00000200.npz")
    assert max_difference(reconstruct(tracked["run"], 0.10, step=200), read_profile(path, 1)) < 1e-5


def test_reconstruction_refuses_what_the_snapshots_cannot_represent(tracked, tmp_path):
    with pytest.raises(ValueError, match=r"std 0.28 at step 400 is outside what the 100 snapshots of stds 0.05, 0.1 "
                                         r"can represent \(the profile's relative error is 0\.\d+, over 0.05\)"):
        reconstruct(tracked["run"], 0.28)
    with pytest.raises(ValueError, match=r"std must be a relative standard deviation in \(0, 0.300\].*"
                                         r"Received: std=0"):
        reconstruct(tracked["run"], 0)
    with pytest.raises(FileNotFoundError, match=r"No post-hoc EMA snapshot in .*posthoc_ema: train the run with "
                                                r"PostHocEMA"):
        reconstruct(str(tmp_path), 0.1)
    with pytest.raises(ValueError, match="no snapshot at or before step 3"):
        reconstruct(tracked["run"], 0.1, step=3)


def test_update_every_k_steps_is_exact_for_weights_constant_over_the_k_steps(tmp_path):
    model = stand_in()
    windows = weight_sequence([tuple(w.shape) for w in model.network.weights], 30)
    sequence = [windows[(t - 1) // 5] for t in range(1, 151)]  # the weights change every 5 steps
    every_step, merged = PostHocEMA(tmp_path / "a", 50), PostHocEMA(tmp_path / "b", 50, update_every=5)
    drive(model, [every_step, merged], sequence)
    assert merged._last_t == 150 and snapshot_steps(tmp_path / "b") == [50, 100, 150]
    for a, b in zip(every_step.profiles(), merged.profiles()):
        assert max_difference(a, b) < 1e-5
    with pytest.raises(ValueError, match="update_every must divide snapshot_every. Received: update_every=3"):
        PostHocEMA(tmp_path, 10, update_every=3)


def test_non_finite_profiles_are_never_written(tmp_path):
    model = stand_in()
    sequence = weight_sequence([tuple(w.shape) for w in model.network.weights], 6)
    sequence[4][0][0, 0] = np.nan
    callback = PostHocEMA(tmp_path, 3)
    with pytest.raises(NonFiniteError, match=r"post-hoc EMA became NaN or Inf at optimizer step 6 \(2 arrays, such "
                                             r"as .*kernel\): .*snapshot_00000006.npz was not written") as info:
        drive(model, [callback], sequence)
    assert info.value.step == 6
    assert sorted(os.listdir(tmp_path / "posthoc_ema")) == ["snapshot_00000003.npz"]


def test_a_resumed_model_without_snapshots_and_a_new_one_among_old_snapshots_are_one_line_errors(tmp_path):
    model = stand_in()
    model.optimizer.iterations.assign(100)
    with pytest.raises(ValueError, match=r"posthoc_ema holds no post-hoc EMA snapshot at or before step 100, where "
                                         r"the model resumes: .* Resume without post-hoc EMA, or start a new run"):
        drive(model, [PostHocEMA(tmp_path, 10)], [])
    drive(stand_in(), [PostHocEMA(tmp_path, 1)], weight_sequence([tuple(w.shape) for w in model.network.weights], 2))
    with pytest.raises(ValueError, match=r"holds post-hoc EMA files of another run \(snapshot_00000001.npz, ...\) "
                                         r"but the model has not trained yet"):
        drive(stand_in(), [PostHocEMA(tmp_path, 10)], [])


# ----------------------------------------------------------------------------- inside fit


class WeightRecorder(keras.callbacks.Callback):
    """The network's weights after each optimizer step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([ops.convert_to_numpy(w.value) for w in self.model.network.weights])


def small_model():
    """A DiffusionModel of 8-px images on a one-level U-Net (74 weights): the fastest `fit` to trace."""
    from ddpm_keras import DiffusionModel
    from ddpm_keras import GaussianDiffusion
    from ddpm_keras import build_unet

    network = build_unet(8, 3, widths=[8], has_attention=[False], num_res_blocks=1, first_conv_channels=8)
    model = DiffusionModel(network, GaussianDiffusion(timesteps=20, beta_end=0.2), ema=0.9, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def training_state(model):
    return [ops.convert_to_numpy(v.value) for v in model.variables + model.optimizer.variables]


def restore(model, state):
    for variable, value in zip(model.variables + model.optimizer.variables, state):
        variable.assign(value)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small model fit 2 epochs of 4 steps with snapshots every 3 steps, then a third epoch without checkpoint."""
    from conftest import tiny_images

    keras.utils.set_random_seed(1234)
    run = str(tmp_path_factory.mktemp("fitted") / "run")
    model, recorder, images = small_model(), WeightRecorder(), tiny_images(16, img_size=8)
    posthoc = PostHocEMA(run, snapshot_every=3)
    model.fit(images, batch_size=4, epochs=2, verbose=0, shuffle=False,
              callbacks=[recorder, posthoc, RunCheckpoint(run)])
    files_after_two = sorted(os.listdir(os.path.join(run, "posthoc_ema")))
    at_checkpoint = training_state(model)
    # A third epoch whose checkpoint is lost (a kill after its snapshots): model.keras stays at step 8.
    model.fit(images, batch_size=4, epochs=3, initial_epoch=2, verbose=0, shuffle=False,
              callbacks=[recorder, posthoc])
    return {"run": run, "steps": recorder.steps, "files_after_two": files_after_two, "images": images,
            "files_after_three": sorted(os.listdir(os.path.join(run, "posthoc_ema"))), "model": model,
            "at_checkpoint": at_checkpoint}


def test_in_fit_the_snapshots_are_the_power_ema_of_the_weights_after_each_step(fitted):
    assert fitted["files_after_two"] == ["snapshot_00000003.npz", "snapshot_00000006.npz", "state_00000004.npz",
                                         "state_00000008.npz"]
    assert fitted["files_after_three"] == ["snapshot_00000003.npz", "snapshot_00000006.npz", "snapshot_00000009.npz",
                                           "snapshot_00000012.npz", "state_00000004.npz", "state_00000008.npz"]
    folder = os.path.join(fitted["run"], "posthoc_ema")
    for name in fitted["files_after_three"]:
        step, path = int(name.split("_")[1][:8]), os.path.join(folder, name)
        for p, std in enumerate((0.05, 0.10)):  # measured: 1.3e-7; 2e-5 with beta_t = (1 - 1 / t) ** gamma
            assert max_difference(read_profile(path, p), power_ema(fitted["steps"][:step], std)) < 1e-6


def test_a_resumed_fit_continues_the_profiles_from_its_checkpoint(fitted, tmp_path, capsys):
    """The model back at its checkpoint's step 8 (as `model.keras` holds it), fit again by a new callback."""
    run = str(tmp_path / "run")
    shutil.copytree(fitted["run"], run)
    model, recorder = fitted["model"], WeightRecorder()
    restore(model, fitted["at_checkpoint"])
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 8
    capsys.readouterr()
    model.fit(fitted["images"][::-1], batch_size=4, epochs=3, initial_epoch=2, verbose=0, shuffle=False,
              callbacks=[recorder, PostHocEMA(run, snapshot_every=3)])  # other batches than the lost epoch's
    # The lost epoch's snapshots (steps 9, 12) were removed at the start, then written anew from the resumed steps.
    assert "removed 2 post-hoc EMA file(s) of steps after 8" in capsys.readouterr().out
    steps = fitted["steps"][:8] + recorder.steps
    assert max_difference(steps[8], fitted["steps"][8]) > 0  # the resumed steps differ from the lost ones
    for step in (9, 12):
        path = os.path.join(run, "posthoc_ema", f"snapshot_{step:08d}.npz")
        for p, std in enumerate((0.05, 0.10)):
            assert max_difference(read_profile(path, p), power_ema(steps[:step], std)) < 1e-6


BACKEND_SNIPPET = """
import tempfile
from ddpm_keras.training.callbacks import PostHocEMA
from ddpm_keras.training.posthoc_ema import read_profile
from test_posthoc_ema import WeightRecorder, max_difference, power_ema, small_model
run, recorder = tempfile.mkdtemp(), WeightRecorder()
small_model().fit(tiny_images(16, img_size=8), batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[recorder, PostHocEMA(run, 3)])
path = os.path.join(run, "posthoc_ema", "snapshot_00000006.npz")
errors = [max_difference(read_profile(path, p), power_ema(recorder.steps[:6], std))
          for p, std in enumerate((0.05, 0.1))]
emit(files=sorted(os.listdir(os.path.join(run, "posthoc_ema"))), errors=errors,
     moved=max_difference(recorder.steps[0], recorder.steps[-1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_callback_in_fit_on_other_backends(backend):
    """On JAX `fit` hands callbacks stale variables unless synced (`jax_state_sync`); torch updates eagerly."""
    from subprocess_json import run_snippet
    from subprocess_json import skip_unless_installed

    skip_unless_installed(backend)
    result = run_snippet(BACKEND_SNIPPET, backend=backend)
    assert result["files"] == ["snapshot_00000003.npz", "snapshot_00000006.npz", "state_00000004.npz",
                               "state_00000008.npz"]
    assert result["moved"] > 1e-3 and max(result["errors"]) < 1e-6, result


# ----------------------------------------------------------------------------- a kill


KILLED_SNIPPET = """
from ddpm_keras.training.callbacks import PostHocEMA
from test_posthoc_ema import small_model
model = small_model()
model.fit(tiny_images(16, img_size=8), batch_size=4, epochs=1000, verbose=0, callbacks=[PostHocEMA(sys.argv[1], 1)])
"""


@pytest.mark.slow
def test_kill_9_while_snapshotting_leaves_whole_snapshots(tmp_path):
    from subprocess_json import PREAMBLE
    from subprocess_json import ROOT

    run = str(tmp_path / "run")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    process = subprocess.Popen([sys.executable, "-c", PREAMBLE + KILLED_SNIPPET, run], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        folder = os.path.join(run, "posthoc_ema")
        while time.time() < deadline and not (
                os.path.isdir(folder) and len([n for n in os.listdir(folder) if n.startswith("snapshot_")]) >= 30):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    steps = snapshot_steps(run)  # every header reads; a temporary the kill left (`.tmp-PID-snapshot_*`) is ignored
    assert len(steps) >= 30 and steps == list(range(1, len(steps) + 1))
    for found in list_files(os.path.join(run, "posthoc_ema")):
        for p in (0, 1):
            assert all(np.all(np.isfinite(a)) for a in read_profile(found.path, p))
    last = os.path.join(run, "posthoc_ema", f"snapshot_{steps[-1]:08d}.npz")
    assert max_difference(reconstruct(run, 0.05), read_profile(last, 0)) < 1e-5
    assert all(np.all(np.isfinite(a)) for a in reconstruct(run, 0.075))


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_run(fitted, tmp_path_factory):
    """The fitted run (8 steps in model.keras, 4 snapshots) and the `ema` command's folder of std 0.05 and 0.1."""
    out = str(tmp_path_factory.mktemp("emas") / "emas")
    assert main(["ema", "--checkpoint", fitted["run"], "--std", "0.05,0.1", "--step", "6", "--out", out]) == 0
    return {"run": fitted["run"], "out": out}


def test_ema_writes_one_model_per_std_holding_the_reconstruction(cli_run):
    out = cli_run["out"]
    assert sorted(os.listdir(out)) == ["ema_0.050.keras", "ema_0.100.keras", "run.json"]
    for std in (0.05, 0.1):
        model = keras.saving.load_model(os.path.join(out, f"ema_{std:.3f}.keras"))
        expected = reconstruct(cli_run["run"], std, step=6)
        assert max_difference(model.ema_network.get_weights(), expected) == 0
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["posthoc_ema"]["files"] == {"ema_0.050.keras": 0.05, "ema_0.100.keras": 0.1}
    model = reconstruct_model(cli_run["run"], 0.1, step=6)  # the same in Python
    assert max_difference(model.ema_network.get_weights(), expected) == 0


def test_ema_refuses_a_users_file_and_bad_values_in_one_line(cli_run, tmp_path, capsys):
    users = tmp_path / "out"
    users.mkdir()
    (users / "ema_0.050.keras").write_bytes(b"mine")
    cases = [
        (["--checkpoint", cli_run["run"], "--std", "0.05", "--out", str(users)],
         f"--out {users / 'ema_0.050.keras'} is a file ddpm_keras did not write: choose a new path, or pass "
         "--overwrite"),
        (["--checkpoint", str(tmp_path), "--std", "0.05", "--out", str(tmp_path / "o")],
         "No post-hoc EMA snapshot in"),
        (["--checkpoint", cli_run["run"], "--std", "0.05,0.4", "--out", str(tmp_path / "o")],
         "argument --std: '0.4' is not a relative std in (0, 0.300]"),
        (["--checkpoint", cli_run["run"], "--std", "0.05,0.25", "--out", str(tmp_path / "o")],
         "std 0.25 at step 12 is outside what the 4 snapshots"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        try:
            status = main(["ema", *argv])
        except SystemExit as exit_:
            status = exit_.code
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and message in err[-1], (argv, err)
    assert (users / "ema_0.050.keras").read_bytes() == b"mine" and not (tmp_path / "o").exists()


def test_evaluate_names_the_best_of_a_folder_of_emas(cli_run, tmp_path, capsys, monkeypatch):
    from ddpm_keras.cli import evaluate

    fids = {"ema_0.050.keras": 7.0, "ema_0.100.keras": 5.0}
    monkeypatch.setattr(evaluate, "_evaluate_one", lambda args: {"fid": fids[os.path.basename(args.checkpoint)]})
    out = str(tmp_path / "best.json")
    assert main(["evaluate", "--checkpoint", cli_run["out"], "--metrics", "fid", "--out", out]) == 0
    assert "ema_0.100.keras: fid 5  <- best by FID" in capsys.readouterr().out
    with open(out) as f:
        assert json.load(f)["best_by_fid"] == os.path.join(cli_run["out"], "ema_0.100.keras")


def test_train_posthoc_ema_every_adds_the_callback_before_the_checkpoint(tmp_path):
    from ddpm_keras.cli import build_parser
    from ddpm_keras.cli import train as train_command

    args = build_parser().parse_args(["train", "--posthoc-ema-every", "500"])
    model = types.SimpleNamespace(image_shape=(16, 16, 3))
    callbacks, _, _ = train_command._callbacks(args, model, str(tmp_path), str(tmp_path), "synthetic", plot_every=0,
                                                worker=0, workers=1)
    kinds = [type(c) for c in callbacks]
    assert kinds.index(PostHocEMA) + 1 == kinds.index(RunCheckpoint)
    assert callbacks[kinds.index(PostHocEMA)].snapshot_every == 500


def test_a_file_the_toolkit_did_not_write_is_never_removed(tmp_path):
    # Resuming and the epoch-end clean-up remove only the files list_files returns; a user's file named like a
    # snapshot or a state is an error naming it, and stays as it was.
    import hashlib

    folder = tmp_path / "posthoc_ema"
    folder.mkdir()
    paths = [folder / "snapshot_00000005.npz", folder / "state_00000007.npz"]
    for path in paths:
        np.savez(path, weights=np.arange(3.0))  # an .npz without ddpm_keras's mark
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    with pytest.raises(ValueError, match="not a post-hoc EMA snapshot written by ddpm_keras"):
        list_files(str(folder))
    callback = PostHocEMA(str(tmp_path), snapshot_every=2)
    with pytest.raises(ValueError, match="not a post-hoc EMA snapshot written by ddpm_keras"):
        callback._resume_state(9)  # what a resumed run at step 9 does first
    assert [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths] == digests
