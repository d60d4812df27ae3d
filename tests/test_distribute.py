"""MirroredStrategy on two logical CPUs: per-replica noise, one EMA on every replica, the unscaled loss."""

import pytest
from subprocess_json import run_snippet

from ddpm_keras.utils.distribute import get_strategy
from ddpm_keras.utils.distribute import strategy_scope

# Logical devices must be set before TensorFlow initialises: a fresh interpreter.
MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ddpm_keras.training import steps as train_steps
from ddpm_keras.utils.distribute import get_strategy

strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = tiny_model(timesteps=10, ema=0.75, seed=0)
for e in model.ema_network.weights:
    e.assign(np.full(e.shape, 0.5, "float32"))
before = [to_numpy(e) for e in model.ema_network.weights]
losses = model.fit(tiny_images(8), batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]

def copies(variable):
    return [v.numpy() for v in variable.value.values]

ema_error, replica_spread, network_spread = 0.0, 0.0, 0.0
for w, e, old in zip(model.network.weights, model.ema_network.weights, before):
    network = copies(w)
    expected = 0.75 * old + 0.25 * network[0]
    for copy in copies(e):
        ema_error = max(ema_error, float(np.abs(copy - expected).max()))
    replica_spread = max(replica_spread, float(np.abs(copies(e)[0] - copies(e)[1]).max()))
    network_spread = max(network_spread, float(np.abs(network[0] - network[1]).max()))

# The training draws of each replica, from the same seed generator state.
images = tf.constant(tiny_images(4))
@tf.function
def draw():
    def replica_fn():
        _, t, noise = model.noisy_batch(images, train_steps._tf_replica_seed(model.seed_generator))
        return noise
    return strategy.run(replica_fn)
noises = [n.numpy() for n in strategy.experimental_local_results(draw())]
a = model.generate_images(num_images=2, seed=5)
b = model.generate_images(num_images=2, seed=5)

# The NaN guard under the strategy: a batch holding NaN stops fit before the checkpoint is replaced.
import hashlib, tempfile
from ddpm_keras.training.callbacks import RunCheckpoint
from ddpm_keras.training.finite import NonFiniteError, NonFiniteGuard
run_dir = tempfile.mkdtemp()
guarded = lambda: [NonFiniteGuard(), RunCheckpoint(run_dir)]
with strategy.scope():
    g_model = tiny_model(timesteps=10, seed=0)
g_model.fit(tiny_images(16), batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=guarded())
digest = lambda: hashlib.sha256(open(os.path.join(run_dir, "model.keras"), "rb").read()).hexdigest()
saved, poisoned = digest(), tiny_images(16)
poisoned[9] = np.nan
try:
    g_model.fit(poisoned, batch_size=8, epochs=3, initial_epoch=2, verbose=0, shuffle=False, callbacks=guarded())
    guard = None
except NonFiniteError as error:
    guard = [error.epoch, error.step, digest() == saved]

# v-prediction with min-SNR weights and the EMA warm-up: the decay of the cross-replica update
# after the first step is min(ema, 2 / 11).
from ddpm_keras import DiffusionModel, GaussianDiffusion
with strategy.scope():
    v_model = DiffusionModel(
        tiny_unet(), GaussianDiffusion(timesteps=10, beta_end=0.2, rescale_zero_terminal_snr=True), ema=0.9,
        seed=0, prediction_type="v", loss_weighting="min_snr", ema_warmup=True,
    )
    v_model.compile(optimizer=keras.optimizers.Adam(1e-3))
for e in v_model.ema_network.weights:
    e.assign(np.full(e.shape, 0.5, "float32"))
v_losses = v_model.fit(tiny_images(8), batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]
v_ema_error, v_replica_spread = 0.0, 0.0
for w, e in zip(v_model.network.weights, v_model.ema_network.weights):
    expected = (2.0 / 11.0) * 0.5 + (9.0 / 11.0) * copies(w)[0]
    v_ema_error = max([v_ema_error] + [float(np.abs(c - expected).max()) for c in copies(e)])
    v_replica_spread = max(v_replica_spread, float(np.abs(copies(e)[0] - copies(e)[1]).max()))

# A class-conditional model on (images, labels): one step, and each replica's label dropout.
from ddpm_keras import build_unet
with strategy.scope():
    c_model = DiffusionModel(
        build_unet(16, 3, [8, 16], [False, True], num_res_blocks=1, first_conv_channels=8, num_classes=4),
        GaussianDiffusion(timesteps=10, beta_end=0.2), ema=0.75, seed=0, cond_drop_prob=0.5,
    )
    c_model.compile(optimizer=keras.optimizers.Adam(1e-3))
c_losses = c_model.fit(
    tiny_images(8), np.arange(8) % 4, batch_size=8, epochs=1, verbose=0, shuffle=False
).history["loss"]
c_replica_spread = max(
    float(np.abs(copies(e)[0] - copies(e)[1]).max()) for e in c_model.ema_network.weights
)
zeros = tf.zeros((256,), "int32")
@tf.function
def drop():
    return strategy.run(lambda: c_model.drop_labels(zeros, train_steps._tf_replica_seed(c_model.seed_generator)))
c_drops = [d.numpy() for d in strategy.experimental_local_results(drop())]

# Progressive distillation: the round's hand-over (teacher <- the student's EMA) in cross-replica context.
from gaussian_exact import affine_student, make_model
from ddpm_keras import ProgressiveDistillation
_, gaussian = make_model("x0")
with strategy.scope():
    d_teacher = DiffusionModel(affine_student(), gaussian, prediction_type="x0")
    for w in d_teacher.ema_network.weights:
        w.assign(np.full(w.shape, 0.3, "float32"))
    distiller = ProgressiveDistillation(d_teacher, target_steps=1, start_steps=4, steps_per_round=2, seed=0, ema=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
gaussian_images = (0.1 + 0.2 * np.random.default_rng(0).standard_normal((32, 4, 4, 1))).astype("float32")
d_losses = distiller.fit(gaussian_images, batch_size=8, epochs=1, verbose=0).history["loss"]
d_teacher_spread = max(float(np.abs(copies(w)[0] - copies(w)[1]).max()) for w in distiller.teacher_network.weights)
d_teacher_moved = max(float(np.abs(copies(w)[0] - 0.3).max()) for w in distiller.teacher_network.weights)
emit(
    d_losses=d_losses, d_round=int(to_numpy(distiller.distill_round)), d_teacher_spread=d_teacher_spread,
    d_teacher_moved=d_teacher_moved,
    c_losses=c_losses, c_iterations=int(to_numpy(c_model.optimizer.iterations)), c_replica_spread=c_replica_spread,
    c_null_fractions=[float(np.mean(d == 4)) for d in c_drops],
    c_drop_difference=float(np.mean(c_drops[0] != c_drops[1])),
    replicas=strategy.num_replicas_in_sync, losses=losses, ema_error=ema_error,
    replica_spread=replica_spread, network_spread=network_spread,
    noise_difference=float(np.abs(noises[0] - noises[1]).mean()),
    noise_std=[float(n.std()) for n in noises],
    iterations=int(to_numpy(model.optimizer.iterations)), same_seed=float(np.abs(a - b).max()),
    samples_finite=bool(np.isfinite(a).all()), guard=guard,
    v_losses=v_losses, v_ema_error=v_ema_error, v_replica_spread=v_replica_spread,
    v_iterations=int(to_numpy(v_model.optimizer.iterations)),
)
"""


@pytest.fixture(scope="module")
def mirrored():
    """The results of the MIRRORED snippet, run once in its own interpreter."""
    return run_snippet(MIRRORED, timeout=600)


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus(mirrored):
    result = mirrored
    assert result["replicas"] == 2
    assert result["iterations"] == 1
    # The tracker reports the global mean loss (~1), not a replica's half share.
    assert 0.7 < result["losses"][0] < 1.5
    assert result["network_spread"] == 0.0
    # One EMA update, the same on both copies: ema * old + (1 - ema) * new.
    assert result["replica_spread"] == 0.0
    assert result["ema_error"] < 1e-6
    # Each replica draws its own noise.
    assert all(0.8 < s < 1.2 for s in result["noise_std"])
    assert result["noise_difference"] > 0.5
    assert result["same_seed"] == 0.0 and result["samples_finite"]


@pytest.mark.slow
def test_the_nan_guard_under_mirrored_strategy(mirrored):
    # Epoch 3, its second step (the batch holding image 9): stopped, and the epoch-2 file unchanged.
    assert mirrored["guard"] == [3, 2, True]


@pytest.mark.slow
def test_v_prediction_with_min_snr_and_ema_warmup_on_two_cpus(mirrored):
    result = mirrored
    assert result["v_iterations"] == 1
    # The weighted v loss of an untrained UNet (~0 output): mean weight x mean squared v, below 1.
    assert len(result["v_losses"]) == 1 and 0.01 < result["v_losses"][0] < 1.5
    # The cross-replica EMA update used the warm-up's decay, on both copies alike.
    assert result["v_replica_spread"] == 0.0
    assert result["v_ema_error"] < 1e-6


@pytest.mark.slow
def test_class_conditional_training_on_two_cpus(mirrored):
    result = mirrored
    assert result["c_iterations"] == 1
    assert len(result["c_losses"]) == 1 and 0.7 < result["c_losses"][0] < 1.5
    assert result["c_replica_spread"] == 0.0
    # Each replica drops its own labels, at the rate asked (p = 0.5 over 256: a spread of 0.03).
    assert all(abs(f - 0.5) < 0.125 for f in result["c_null_fractions"])
    assert result["c_drop_difference"] > 0.25


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="Unknown strategy: 'tpu'.*mirrored"):
        get_strategy("tpu")
    with pytest.raises(ValueError, match="Unknown strategy"):
        with strategy_scope("gpus"):
            pass


def test_devices_only_for_mirrored():
    with pytest.raises(ValueError, match="devices applies to 'mirrored' only"):
        get_strategy("none", devices=["/cpu:0"])


def test_default_strategy_is_one_replica():
    with strategy_scope("none") as strategy:
        assert strategy.num_replicas_in_sync == 1


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ],
)
def test_only_the_chief_writes_the_run_directory(tf_config, chief, monkeypatch):
    import json

    from ddpm_keras.utils.distribute import is_chief

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief


@pytest.mark.slow
def test_progressive_distillation_hands_over_on_every_replica(mirrored):
    # Four steps of two per round: one hand-over, written to both copies of every teacher weight.
    assert mirrored["d_round"] == 1 and all(0 <= loss < 10 for loss in mirrored["d_losses"])
    assert mirrored["d_teacher_spread"] == 0.0 and mirrored["d_teacher_moved"] > 1e-3
