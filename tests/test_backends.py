"""DiffusionModel trains, samples and loads `.keras` files on TensorFlow, JAX and PyTorch.

Each backend runs in its own interpreter (KERAS_BACKEND is fixed at import);
a backend whose package is missing is skipped with the reason printed.
"""

import numpy as np
import pytest
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

# Subprocesses on every backend: in `-m slow` (CI runs it).
pytestmark = pytest.mark.slow

BACKENDS = ["tensorflow", "jax", "torch"]

TRAIN = """
model = tiny_model(timesteps=10, ema=0.75, seed=0)
# Start the shadow away from the network so one update is visible.
for e in model.ema_network.weights:
    e.assign(np.full(e.shape, 0.5, "float32"))
before = [to_numpy(e) for e in model.ema_network.weights]
first = model.fit(tiny_images(8), batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]
ema_error = max(
    float(np.abs(to_numpy(e) - (0.75 * old + 0.25 * to_numpy(w))).max())
    for w, e, old in zip(model.network.weights, model.ema_network.weights, before)
)
more = model.fit(tiny_images(16), batch_size=8, epochs=2, verbose=0, shuffle=False).history["loss"]
a = model.generate_images(num_images=2, seed=3)
b = model.generate_images(num_images=2, seed=3)
c = model.generate_images(num_images=2, seed=4)
val = [model.evaluate(tiny_images(8), batch_size=8, verbose=0) for _ in range(2)]
"""

# v-prediction, min-SNR weights, zero terminal SNR and the EMA warm-up, in the same interpreter.
# The first step's loss is compared with a float64 NumPy computation on the same draws (made by
# hand from a generator seeded as the model's) and the weights before the step; the EMA after
# each of two steps with the warm-up's decay min(ema, (1 + n) / (10 + n)), n = 1, 2.
OBJECTIVE = """
from ddpm_keras import DiffusionModel, GaussianDiffusion

v_model = DiffusionModel(
    tiny_unet(), GaussianDiffusion(timesteps=10, beta_end=0.2, rescale_zero_terminal_snr=True), ema=0.9, seed=5,
    prediction_type="v", loss_weighting="min_snr", ema_warmup=True,
)
v_model.compile(optimizer=keras.optimizers.Adam(1e-3))
for e in v_model.ema_network.weights:
    e.assign(np.full(e.shape, 0.5, "float32"))
v_images = tiny_images(8)
x_t, t, noise = v_model.noisy_batch(ops.convert_to_tensor(v_images), keras.random.SeedGenerator(5))
prediction = to_numpy(v_model.network([x_t, t])).astype("float64")
t, noise, x_0 = to_numpy(t).astype(int), to_numpy(noise).astype("float64"), v_images.astype("float64")
root = np.sqrt(np.cumprod(1.0 - np.linspace(1e-4, 0.2, 10)))
ab = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2  # Lin et al. 2023, Algorithm 1
snr = ab / (1.0 - ab)
ab_t = ab[t][:, None, None, None]
target = np.sqrt(ab_t) * noise - np.sqrt(1.0 - ab_t) * x_0
weights = (np.minimum(snr, 5.0) / (snr + 1.0))[t]
v_expected = float(np.mean(weights * np.mean((prediction - target) ** 2, axis=(1, 2, 3))))
shadow = [np.full(e.shape, 0.5) for e in v_model.ema_network.weights]
v_losses, v_ema_errors = [], []
for n in (1, 2):
    v_losses += v_model.fit(v_images, batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"]
    decay = min(0.9, (1.0 + n) / (10.0 + n))
    shadow = [decay * e + (1.0 - decay) * to_numpy(w) for e, w in zip(shadow, v_model.network.weights)]
    v_ema_errors.append(max(
        float(np.abs(to_numpy(e) - s).max()) for e, s in zip(v_model.ema_network.weights, shadow)
    ))
"""

RESULTS = """
emit(
    losses=first + more, ema_error=ema_error, iterations=int(model.optimizer.iterations),
    sample_dtype=str(a.dtype), sample_shape=list(a.shape), same_seed=float(np.abs(a - b).max()),
    other_seed=float(np.abs(a - c).mean()), finite=bool(np.isfinite(a).all()), val=val,
    v_losses=v_losses, v_expected=v_expected, v_timesteps=sorted(set(t.tolist())), v_ema_errors=v_ema_errors,
    v_iterations=int(to_numpy(v_model.optimizer.iterations)),
)
"""

# The TensorFlow run saves its model and what a loader must reproduce: the
# EMA weights and the EMA network's output on fixed inputs.
SAVE = """
model.save(os.environ["DDPM_PATH"])
x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
t = np.array([3, 17], "int32")
np.savez(os.environ["DDPM_PATH"] + ".npz", x=x, t=t,
         eps=to_numpy(model.ema_network([x, t])), *[to_numpy(w) for w in model.ema_network.weights])
"""

LOAD = """
reference = np.load(os.environ["DDPM_PATH"] + ".npz")
loaded = keras.saving.load_model(os.environ["DDPM_PATH"])
weights = [to_numpy(w) for w in loaded.ema_network.weights]
weight_error = max(float(np.abs(w - reference[f"arr_{i}"]).max()) for i, w in enumerate(weights))
eps = to_numpy(loaded.ema_network([reference["x"], reference["t"]]))
images = loaded.generate_images(num_images=2, seed=1)
# The deterministic solvers from one x_T: the same weights give the same images on every backend.
start = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype("float32")
solved = {name: loaded.generate_images(sampler=name, num_steps=6, initial_noise=start, verbose=0).tolist()
          for name in ("dpmpp_2m", "dpmpp_3m", "unipc")}
# A stochastic solver run in segments draws the same noise as in one piece.
whole = loaded.generate_images(2, seed=3, sampler="dpmpp_2m_sde", num_steps=6, segment_steps=None, verbose=0)
parts = loaded.generate_images(2, seed=3, sampler="dpmpp_2m_sde", num_steps=6, segment_steps=4, verbose=0)
emit(
    kind=type(loaded).__name__, weight_error=weight_error,
    eps_error=float(np.abs(eps - reference["eps"]).max()), iterations=int(loaded.optimizer.iterations),
    images_finite=bool(np.isfinite(images).all()), images_spread=float(images.std()),
    solved=solved, segment_error=float(np.abs(whole - parts).max()), sde_spread=float(whole.std()),
)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per backend, the results of training and of loading the file saved under TensorFlow (run first)."""
    path = str(tmp_path_factory.mktemp("cross") / "model.keras")
    cache = {}

    def run(backend):
        if "tensorflow" not in cache:
            cache["tensorflow"] = _train_and_load("tensorflow", path, save=True)
        if backend not in cache:
            cache[backend] = _train_and_load(backend, path)
        return cache[backend]

    return run


def _train_and_load(backend, path, save=False):
    code = TRAIN + OBJECTIVE + RESULTS.replace("emit(", "trained = dict(") + (SAVE if save else "")
    code += LOAD.replace("emit(", "emit(trained=trained, ")
    return run_snippet(code, backend, env={"DDPM_PATH": path}, timeout=600)  # JAX: 264 s on a loaded 2-core CPU


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_ema_and_sampling(backend, runs):
    skip_unless_installed(backend)
    result = runs(backend)["trained"]
    losses = result["losses"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # Unit-variance noise against an untrained UNet's ~0 prediction.
    assert 0.7 < losses[0] < 1.5
    assert result["iterations"] == 5
    # ema * old + (1 - ema) * new network weights, to float32 rounding.
    assert result["ema_error"] < 1e-6
    assert result["sample_dtype"] == "float32" and result["sample_shape"] == [2, 16, 16, 3]
    assert result["finite"]
    assert result["same_seed"] == 0.0
    assert result["other_seed"] > 1e-3
    # The validation noise restarts from its seed at each evaluate().
    assert result["val"][0] == result["val"][1] and 0.3 < result["val"][0] < 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_v_prediction_min_snr_loss_and_ema_warmup(backend, runs):
    skip_unless_installed(backend)
    result = runs(backend)["trained"]
    assert len(result["v_losses"]) == 2 and all(np.isfinite(result["v_losses"]))
    assert len(result["v_timesteps"]) >= 4  # several timesteps: a wrong weight would show
    # The step's weighted loss is NumPy's on the same draws, to float32 rounding.
    assert result["v_losses"][0] == pytest.approx(result["v_expected"], rel=1e-5)
    # The warm-up's decay after updates 1 and 2 (2/11, 3/12): the step count is read on every backend.
    assert result["v_iterations"] == 2
    assert max(result["v_ema_errors"]) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_saved_under_tensorflow_loads(backend, runs):
    skip_unless_installed(backend)
    result = runs(backend)
    assert result["kind"] == "DiffusionModel"
    assert result["weight_error"] == 0.0
    assert result["eps_error"] < 1e-4
    assert result["iterations"] == 5
    assert result["images_finite"] and result["images_spread"] > 0.05
    for name, images in result["solved"].items():
        np.testing.assert_allclose(images, runs("tensorflow")["solved"][name], atol=1e-4, err_msg=name)
    assert result["segment_error"] < 1e-6 and result["sde_spread"] > 0.05


# The likelihood bound of one set of weights on every backend. bits_per_dim draws its noise
# from the backend's generator (a SeedGenerator on TensorFlow and PyTorch, jax.random on JAX),
# so its values differ between backends by their Monte Carlo error (about 1% per seed for this
# model: the noise of one draw per image and timestep). The exact comparison is of the terms
# t by t with one shared noise array, through the same compiled path (`model.runner.compiled`) and
# the same chain (`likelihood.vb_terms_loop`): everything backend-specific (the network, erfc,
# the loop, the compilation) must agree to float32 rounding. bits_per_dim itself is then
# checked to be deterministic per seed and to agree with TensorFlow's within its Monte Carlo
# error, estimated from four seeds on each side.

BPD_SAVE = """
model = tiny_model(timesteps=10, seed=0)
# Move the EMA network off its near-zero head, so its prediction depends on x_t and t.
rng = np.random.default_rng(0)
for w in model.ema_network.weights:
    w.assign(to_numpy(w) + rng.normal(0.0, 0.02, w.shape).astype("float32"))
model.save(os.environ["DDPM_PATH"])
"""

BPD = """
from ddpm_keras.diffusion import likelihood

model = keras.saving.load_model(os.environ["DDPM_PATH"])
images = tiny_images(8)
noise = np.random.default_rng(1).standard_normal((10,) + images.shape).astype("float32")

def chain(eps_fn, noise_fn, x_0, timesteps, noise):
    shared = lambda shape, step: ops.take(noise, step, axis=0)
    return likelihood.vb_terms_loop(eps_fn, shared, model.diffusion, x_0, timesteps)

run = model.runner.compiled(("shared_noise",), chain)
timesteps = ops.convert_to_tensor(np.arange(10), "int32")
terms = run(0, ops.convert_to_tensor(images), timesteps, ops.convert_to_tensor(noise))
emit(
    terms=to_numpy(terms).tolist(), prior=to_numpy(likelihood.prior_bpd(model.diffusion, images)).tolist(),
    bpd=[model.bits_per_dim(images, seed=s, verbose=0) for s in range(4)],
    again=model.bits_per_dim(images, seed=0, verbose=0),
)
"""


@pytest.fixture(scope="module")
def bpd_runs(tmp_path_factory):
    """Per backend, the bound of the model that TensorFlow (run first) built and saved."""
    path = str(tmp_path_factory.mktemp("bpd") / "model.keras")
    cache = {}

    def run(backend):
        if "tensorflow" not in cache:
            cache["tensorflow"] = run_snippet(BPD_SAVE + BPD, "tensorflow", env={"DDPM_PATH": path})
        if backend not in cache:
            cache[backend] = run_snippet(BPD, backend, env={"DDPM_PATH": path})
        return cache[backend]

    return run


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bits_per_dim_agrees_with_tensorflow(backend, bpd_runs):
    skip_unless_installed(backend)
    reference, result = bpd_runs("tensorflow"), bpd_runs(backend)
    terms, reference_terms = np.array(result["terms"]), np.array(reference["terms"])
    assert terms.shape == (10, 8) and np.isfinite(terms).all()
    # Same weights, same noise: the same terms to float32 rounding.
    np.testing.assert_allclose(terms, reference_terms, rtol=1e-5)
    np.testing.assert_allclose(result["prior"], reference["prior"], rtol=1e-5)
    # Different noise: the same bound within the Monte Carlo error of 4 + 4 seeds.
    bpd, reference_bpd = np.array(result["bpd"]), np.array(reference["bpd"])
    assert result["again"] == bpd[0] and len(set(bpd)) == 4
    standard_error = np.sqrt((bpd.var(ddof=1) + reference_bpd.var(ddof=1)) / 4)
    assert abs(bpd.mean() - reference_bpd.mean()) < 6 * standard_error
    # ...which is a few percent at most: the terms are the ones that make up the bound.
    assert bpd.mean() == pytest.approx(reference_terms.sum(axis=0).mean() + np.mean(reference["prior"]), rel=0.05)


# A class-conditional model: the first step's loss is the squared error on the labels dropped by
# hand with a generator seeded as the model's (after t and the noise), not on the labels as given;
# the dropout's rate and seeding; validation on the labels as given; a missing label caught while
# the backend's step is traced; the bound with the null label.
CONDITIONAL = """
from ddpm_keras import DiffusionModel, GaussianDiffusion, build_unet

network = build_unet(16, 3, [8, 16], [False, True], num_res_blocks=1, first_conv_channels=8, num_classes=4)
rng = np.random.default_rng(0)
for w in network.weights:  # so that the labels reach the output
    w.assign(to_numpy(w) + rng.normal(0.0, 0.05, w.shape).astype("float32"))
model = DiffusionModel(network, GaussianDiffusion(timesteps=10, beta_end=0.2), seed=7, cond_drop_prob=0.5)
model.compile(optimizer=keras.optimizers.Adam(1e-3))
images, labels = tiny_images(8), np.arange(8) % 4
generator = keras.random.SeedGenerator(7)
x_t, t, noise = model.noisy_batch(ops.convert_to_tensor(images), generator)
dropped = model.drop_labels(ops.convert_to_tensor(labels), seed=generator)

def squared_error(batch_labels):
    prediction = to_numpy(model.network([x_t, t, batch_labels])).astype("float64")
    return float(np.mean((prediction - to_numpy(noise)) ** 2))

expected, undropped = squared_error(dropped), squared_error(ops.convert_to_tensor(labels, "int32"))
many = ops.convert_to_tensor(np.zeros(4000), "int32")
draws = [to_numpy(model.drop_labels(many, seed=keras.random.SeedGenerator(s))) for s in (0, 0, 1)]
losses = model.fit(images, labels, batch_size=8, epochs=2, verbose=0, shuffle=False).history["loss"]
val = [model.evaluate(images, labels, batch_size=8, verbose=0) for _ in range(2)]
bpd = model.bits_per_dim(images[:2], num_steps=2, verbose=0)

def images_only():
    while True:
        yield (images,)

try:  # a generator is not checked before fit: the backend's step says it
    model.fit(images_only(), steps_per_epoch=1, epochs=1, verbose=0)
    missing = ""
except ValueError as error:
    missing = str(error)
emit(
    losses=losses, expected=expected, undropped=undropped, num_dropped=int(np.sum(to_numpy(dropped) == 4)),
    null_fraction=float(np.mean(draws[0] == 4)), same_seed=bool((draws[0] == draws[1]).all()),
    other_seed=float(np.mean(draws[0] != draws[2])), val=val, bpd=bpd, missing=missing,
)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_conditional_training_drops_labels_from_the_seed(backend):
    skip_unless_installed(backend)
    result = run_snippet(CONDITIONAL, backend)
    assert 0 < result["num_dropped"] < 8
    assert abs(result["expected"] - result["undropped"]) > 1e-4 * result["expected"]
    assert result["losses"][0] == pytest.approx(result["expected"], rel=1e-5)
    assert np.isfinite(result["losses"]).all()
    # p = 0.5 over 4,000 labels: the binomial spread is 0.008.
    assert abs(result["null_fraction"] - 0.5) < 0.032
    assert result["same_seed"] and result["other_seed"] > 0.3
    assert result["val"][0] == result["val"][1] and np.isfinite(result["val"][0])
    assert np.isfinite(result["bpd"])
    assert "class-conditional (num_classes=4)" in result["missing"] and "\n" not in result["missing"]
