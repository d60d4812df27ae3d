"""Training objectives: prediction targets, min-SNR weights, zero terminal SNR, EMA warm-up, saved options.

Every number is compared with a closed form computed here in float64 NumPy,
independently of `ddpm_keras` (the schedules are rebuilt from their
formulas, the targets and weights from `alphas_cumprod`).
"""

import json
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras.diffusion import likelihood
from ddpm_keras.diffusion.objectives import min_snr_weights
from ddpm_keras.diffusion.schedules import get_beta_schedule

T = 10
BETA_END = 0.2
SIZE = 8
GAMMA = 5.0
MODEL_OPTIONS = ("prediction_type", "loss_weighting", "snr_gamma", "ema_warmup")


def reference_alphas_cumprod(timesteps=T, beta_end=BETA_END, zero_terminal_snr=False):
    """`alphas_cumprod` of the linear schedule, rescaled as Lin et al. 2023, Algorithm 1 when asked."""
    alphas_cumprod = np.cumprod(1.0 - np.linspace(1e-4, beta_end, timesteps))
    if not zero_terminal_snr:
        return alphas_cumprod
    root = np.sqrt(alphas_cumprod)
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root**2


def reference_target(prediction_type, x_0, noise, alphas_cumprod):
    """What a network of `prediction_type` must output; `alphas_cumprod` shaped to broadcast."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "x0":
        return x_0
    return np.sqrt(alphas_cumprod) * noise - np.sqrt(1.0 - alphas_cumprod) * x_0


def reference_min_snr(prediction_type, alphas_cumprod, gamma=GAMMA):
    """Hang et al. 2023's weights, element by element in Python floats."""
    weights = []
    for ab in alphas_cumprod:
        snr = ab / (1.0 - ab)
        if prediction_type == "epsilon":
            weights.append(1.0 if snr == 0.0 else min(snr, gamma) / snr)
        elif prediction_type == "x0":
            weights.append(min(snr, gamma))
        else:
            weights.append(min(snr, gamma) / (snr + 1.0))
    return np.array(weights)


def linear_network(img_size=SIZE, timesteps=T):
    """A small network with a known form: a 1x1 convolution of `x_t` plus a learned vector per timestep."""
    images = keras.Input((img_size, img_size, 3))
    t = keras.Input((), dtype="int32")
    per_step = keras.layers.Reshape((1, 1, 3))(keras.layers.Embedding(timesteps, 3)(t))
    outputs = keras.layers.Add()([keras.layers.Conv2D(3, 1)(images), per_step])
    return keras.Model([images, t], outputs)


def images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, SIZE, SIZE, 3)).astype("float32")


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def build(prediction_type="epsilon", zero_terminal_snr=False, **kwargs):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END, rescale_zero_terminal_snr=zero_terminal_snr)
    return DiffusionModel(linear_network(), diffusion, prediction_type=prediction_type, seed=3, **kwargs)


# ------------------------------------------------------------ targets and their inverse


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_prediction_target_is_the_closed_form(prediction_type, zero_terminal_snr):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END, rescale_zero_terminal_snr=zero_terminal_snr)
    rng = np.random.default_rng(0)
    x_0, noise = rng.uniform(-1, 1, (T, 4, 4, 3)), rng.normal(size=(T, 4, 4, 3))
    t = np.arange(T)  # every timestep, T - 1 (zero SNR when rescaled) included
    target = diffusion.prediction_target(
        ops.convert_to_tensor(x_0, "float32"), ops.convert_to_tensor(noise, "float32"),
        ops.convert_to_tensor(t, "int32"), prediction_type,
    )
    ab = reference_alphas_cumprod(zero_terminal_snr=zero_terminal_snr)[:, None, None, None]
    np.testing.assert_allclose(to_numpy(target), reference_target(prediction_type, x_0, noise, ab), atol=2e-6)
    if prediction_type == "v" and zero_terminal_snr:
        np.testing.assert_allclose(to_numpy(target)[-1], -x_0[-1], atol=1e-6)  # v = -x_0 at zero SNR


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_split_prediction_recovers_x0_and_noise(prediction_type, zero_terminal_snr):
    if prediction_type == "epsilon" and zero_terminal_snr:
        pytest.skip("x_0 cannot be read from the noise at zero SNR: epsilon is refused there")
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END, rescale_zero_terminal_snr=zero_terminal_snr)
    rng = np.random.default_rng(1)
    x_0, noise = rng.uniform(-1, 1, (T, 4, 4, 3)), rng.normal(size=(T, 4, 4, 3))
    ab = reference_alphas_cumprod(zero_terminal_snr=zero_terminal_snr)[:, None, None, None]
    x_t = np.sqrt(ab) * x_0 + np.sqrt(1.0 - ab) * noise
    output = reference_target(prediction_type, x_0, noise, ab)
    x_0_pred, noise_pred = diffusion.split_prediction(
        ops.convert_to_tensor(output, "float32"), ops.convert_to_tensor(x_t, "float32"),
        ops.convert_to_tensor(np.arange(T), "int32"), prediction_type,
    )
    # At small t, x_0 from the noise divides by sqrt(ab) ~ 1 but the noise from x_0 divides by
    # sqrt(1 - ab) ~ 0.01: float32 inputs give an error of ~1e-7 / 0.01 there.
    np.testing.assert_allclose(to_numpy(x_0_pred), x_0, atol=1e-5)
    np.testing.assert_allclose(to_numpy(noise_pred), noise, atol=2e-4 if prediction_type == "x0" else 1e-5)


def test_likelihood_reads_the_output_as_its_prediction_type():
    """The exact prediction of each type gives the same terms of the bound; a v read as a noise does not."""
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END)
    rng = np.random.default_rng(2)
    x_0 = rng.uniform(-0.9, 0.9, (T, 4, 4, 3))
    noise = rng.normal(size=x_0.shape)
    ab = reference_alphas_cumprod()[:, None, None, None]
    x_t = np.sqrt(ab) * x_0 + np.sqrt(1.0 - ab) * noise
    t = ops.convert_to_tensor(np.arange(T), "int32")

    def terms(output, prediction_type):
        return to_numpy(likelihood.vb_terms_bpd(
            diffusion, ops.convert_to_tensor(output, "float32"), ops.convert_to_tensor(x_0, "float32"),
            ops.convert_to_tensor(x_t, "float32"), t, clip_denoised=False, prediction_type=prediction_type,
        ))

    reference = terms(noise, "epsilon")
    for prediction_type in ("v", "x0"):
        np.testing.assert_allclose(terms(reference_target(prediction_type, x_0, noise, ab), prediction_type),
                                   reference, rtol=2e-3, atol=2e-4)
    assert np.abs(terms(reference_target("v", x_0, noise, ab), "epsilon") - reference).max() > 0.1


# ------------------------------------------------------------------------ min-SNR


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_min_snr_weights_are_hang_et_al(prediction_type, zero_terminal_snr):
    diffusion = GaussianDiffusion(timesteps=T, beta_end=BETA_END, rescale_zero_terminal_snr=zero_terminal_snr)
    weights = min_snr_weights(diffusion.snr(), prediction_type, GAMMA)
    assert weights.dtype == np.float64 and weights.shape == (T,)
    expected = reference_min_snr(prediction_type, reference_alphas_cumprod(zero_terminal_snr=zero_terminal_snr))
    np.testing.assert_allclose(weights, expected, rtol=1e-12, atol=1e-15)
    # The clamp bites at low t (SNR > 5) and not at high t, so both branches are checked.
    snr = diffusion.snr()
    assert snr[0] > GAMMA > snr[-1]
    if zero_terminal_snr:
        assert weights[-1] == {"epsilon": 1.0, "v": 0.0, "x0": 0.0}[prediction_type]


@pytest.mark.parametrize(
    "prediction_type, loss_weighting, compiled_loss, zero_terminal_snr",
    [
        ("v", "min_snr", None, True),
        ("x0", "min_snr", None, True),
        ("epsilon", "min_snr", None, False),
        ("v", None, None, False),
        ("v", "min_snr", "mean_absolute_error", True),
    ],
)
def test_training_and_validation_loss_are_the_weighted_error(
    prediction_type, loss_weighting, compiled_loss, zero_terminal_snr
):
    """The loss of one step (learning rate 0) and of evaluate() against NumPy, from the same draws."""
    model = build(prediction_type, zero_terminal_snr, loss_weighting=loss_weighting)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=compiled_loss)
    batch = images(16)
    train_loss = model.fit(batch, batch_size=16, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    val_loss = model.evaluate(batch, batch_size=16, verbose=0)
    # Both steps' first draw comes from a generator seeded with the model's seed (3).
    x_t, t, noise = model.noisy_batch(ops.convert_to_tensor(batch), keras.random.SeedGenerator(3))
    prediction, t, noise = to_numpy(model.network([x_t, t])), to_numpy(t).astype(int), to_numpy(noise)
    ab = reference_alphas_cumprod(zero_terminal_snr=zero_terminal_snr)
    target = reference_target(prediction_type, batch.astype(np.float64), noise, ab[t][:, None, None, None])
    weights = reference_min_snr(prediction_type, ab)[t] if loss_weighting else np.ones(len(t))
    error = np.abs(prediction - target) if compiled_loss else (prediction - target) ** 2
    expected = np.mean(weights * error.mean(axis=(1, 2, 3)))
    assert len(set(t)) > 4  # several timesteps, so a wrong weight table shows
    assert train_loss == pytest.approx(expected, rel=1e-5)
    assert val_loss == pytest.approx(expected, rel=1e-5)


def test_a_loss_without_reduction_is_refused_in_one_line():
    model = build("v", loss_weighting="min_snr")
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError(reduction=None))
    with pytest.raises(ValueError, match=r"reduction=None") as error:
        model.fit(images(4), batch_size=4, epochs=1, verbose=0)
    assert "sum_over_batch_size" in str(error.value) and len(str(error.value).splitlines()) == 1


# ------------------------------------------------------------- schedules and timesteps


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_step(schedule):
    plain = GaussianDiffusion(timesteps=50, beta_schedule=schedule)
    rescaled = GaussianDiffusion(timesteps=50, beta_schedule=schedule, rescale_zero_terminal_snr=True)
    alphas_cumprod = rescaled.terms_float64["alphas_cumprod"]
    assert alphas_cumprod[-1] == 0.0 and rescaled.zero_terminal_snr and not plain.zero_terminal_snr
    assert alphas_cumprod[0] == pytest.approx(plain.terms_float64["alphas_cumprod"][0], rel=1e-12)
    assert np.all(np.diff(alphas_cumprod) < 0.0)
    assert rescaled.snr()[-1] == 0.0
    # Lin et al.'s rescaling of sqrt(alphas_cumprod), done here from the plain schedule.
    root = np.sqrt(plain.terms_float64["alphas_cumprod"])
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    np.testing.assert_allclose(alphas_cumprod, expected, rtol=1e-9, atol=1e-300)


def test_sigmoid_schedule_is_its_formula():
    betas = get_beta_schedule("sigmoid", 100, 1e-4, 0.02)
    x = [-6.0 + 12.0 * i / 99 for i in range(100)]
    expected = [1e-4 + (0.02 - 1e-4) / (1.0 + np.exp(-xi)) for xi in x]
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert np.all(np.diff(betas) > 0) and betas.dtype == np.float64


def test_training_timesteps_cover_both_ends_uniformly():
    model = build()
    _, t, _ = model.noisy_batch(ops.zeros((5000, SIZE, SIZE, 3)), keras.random.SeedGenerator(0))
    counts = np.bincount(to_numpy(t).astype(int), minlength=T)
    assert len(counts) == T  # nothing at or above T
    assert counts[0] > 0 and counts[T - 1] > 0
    # 500 expected per timestep, standard deviation 21.
    assert counts.min() > 400 and counts.max() < 600


# ------------------------------------------------------------------------- checks


def test_epsilon_with_zero_terminal_snr_is_refused():
    with pytest.raises(ValueError, match="prediction_type='v'") as error:
        build("epsilon", zero_terminal_snr=True)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction_type": "noise"}, "'noise'"),
        ({"loss_weighting": "snr"}, "'snr'"),
        ({"loss_weighting": "none"}, "'none'"),
        ({"snr_gamma": 0.0}, "snr_gamma=0.0"),
        ({"snr_gamma": -1}, "snr_gamma=-1"),
        ({"snr_gamma": True}, "snr_gamma=True"),
        ({"snr_gamma": "5"}, "snr_gamma='5'"),
        ({"snr_gamma": float("nan")}, "snr_gamma=nan"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        build(**{"prediction_type": "v", **kwargs})
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("kwargs", [{"prediction_type": "eps"}, {"gamma": 0}, {"gamma": True}])
def test_min_snr_weights_check_their_arguments(kwargs):
    with pytest.raises(ValueError, match=repr(next(iter(kwargs.values())))):
        min_snr_weights(np.ones(3), **kwargs)


# --------------------------------------------------------------------- EMA warm-up


class NetworkWeights(keras.callbacks.Callback):
    """The network's weights after each training batch."""

    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        self.history.append([to_numpy(w) for w in self.model.network.weights])


@pytest.mark.parametrize("ema, warmup", [(0.9, True), (0.3, True), (0.9, False)])
def test_ema_follows_the_warmup_decay(ema, warmup):
    model = build("v", loss_weighting="min_snr", ema=ema, ema_warmup=warmup)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    for e in model.ema_network.weights:
        e.assign(ops.full(e.shape, 0.5))
    shadow = [to_numpy(e) for e in model.ema_network.weights]
    recorder = NetworkWeights()
    model.fit(images(32), batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    assert len(recorder.history) == 4 and int(model.optimizer.iterations) == 4
    # Replay: after update n (n = 1, 2, ...) the decay is min(ema, (1 + n) / (10 + n)).
    for n, weights in enumerate(recorder.history, start=1):
        decay = min(ema, (1.0 + n) / (10.0 + n)) if warmup else ema
        shadow = [decay * e + (1.0 - decay) * w for e, w in zip(shadow, weights)]
    for e, expected in zip(model.ema_network.weights, shadow):
        np.testing.assert_allclose(to_numpy(e), expected, rtol=1e-5, atol=1e-6)
    assert float(model.ema_decay()) == pytest.approx(min(ema, 5.0 / 14.0) if warmup else ema, rel=1e-6)


# ---------------------------------------------------------------------- saving


def test_keras_file_keeps_the_training_options(tmp_path):
    model = build("v", zero_terminal_snr=True, loss_weighting="min_snr", snr_gamma=3.0, ema_warmup=True)
    path = tmp_path / "v.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert {name: getattr(loaded, name) for name in MODEL_OPTIONS} == {
        "prediction_type": "v", "loss_weighting": "min_snr", "snr_gamma": 3.0, "ema_warmup": True
    }
    assert loaded.diffusion.rescale_zero_terminal_snr and loaded.diffusion.zero_terminal_snr
    t = ops.convert_to_tensor(np.arange(T), "int32")
    np.testing.assert_array_equal(to_numpy(loaded.timestep_weights(t)), to_numpy(model.timestep_weights(t)))


def test_a_file_saved_before_the_options_existed_loads_as_epsilon_unweighted(tmp_path):
    model = build("epsilon")
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(new)
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                for name in MODEL_OPTIONS + ("cond_drop_prob", "class_names"):
                    del config["config"][name]
                del config["config"]["diffusion"]["rescale_zero_terminal_snr"]
                data = json.dumps(config).encode()
            target.writestr(item, data)
    loaded = keras.saving.load_model(old)
    assert {name: getattr(loaded, name) for name in MODEL_OPTIONS} == {
        "prediction_type": "epsilon", "loss_weighting": None, "snr_gamma": 5.0, "ema_warmup": False
    }
    assert (loaded.num_classes, loaded.class_names, loaded.cond_drop_prob) == (None, None, 0.1)
    assert not loaded.diffusion.rescale_zero_terminal_snr
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
