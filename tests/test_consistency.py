"""Consistency distillation and sampling: the boundary condition, the target and the samples against closed forms.

For Gaussian data N(MU, S^2) per pixel (gaussian_exact) the teacher's DDIM step, its x_0 and the
probability-flow map are closed forms, so the distiller's target and the sampler's output are
checked pointwise or by their exact moments. Moments within 4.5 standard errors, as test_sampling.
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_model
from gaussian_exact import CLASS_MEANS
from gaussian_exact import MU
from gaussian_exact import S
from gaussian_exact import T
from gaussian_exact import UNCONDITIONAL_MEAN
from gaussian_exact import affine_student
from gaussian_exact import exact_flow
from gaussian_exact import exact_x0
from gaussian_exact import make_class_model
from gaussian_exact import make_model
from keras import ops
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

from ddpm_keras import ConsistencyDistillation
from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import samplers
from ddpm_keras.distillation.consistency_network import consistency_network


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def gaussian_images(n, seed=0):
    return (MU + S * np.random.default_rng(seed).standard_normal((n, 4, 4, 1))).astype("float32")


def ddim(x, ab_from, ab_to, mu=MU):
    """One DDIM step of the exact Gaussian denoiser, float64."""
    x_start = mu + np.sqrt(ab_from) * S**2 * (x - np.sqrt(ab_from) * mu) / (ab_from * S**2 + 1.0 - ab_from)
    noise = (x - np.sqrt(ab_from) * x_start) / np.sqrt(1.0 - ab_from)
    return np.sqrt(ab_to) * x_start + np.sqrt(1.0 - ab_to) * noise


def skip_and_out(alphas_cumprod, t):
    """(c_skip, c_out) at timesteps t, from c = (sigma_0 / sigma_t)^2 with sigma^2 = (1 - ab) / ab (float64)."""
    sigma_squared = (1.0 - alphas_cumprod) / alphas_cumprod
    c = sigma_squared[0] / sigma_squared[t]
    return c / np.sqrt(alphas_cumprod[t]), 1.0 - c


@keras.saving.register_keras_serializable(package="ddpm_keras_tests")
class ExactConsistency(keras.layers.Layer):
    """The exact consistency function of N(MU, S^2): the probability-flow map from t to timestep 0, over sqrt(ab_0)."""

    def __init__(self, alphas_cumprod, **kwargs):
        super().__init__(**kwargs)
        self.alphas_cumprod = list(alphas_cumprod)

    def call(self, inputs):
        x, t = inputs
        ab = ops.take(ops.convert_to_tensor(self.alphas_cumprod, "float32"), t)[:, None, None, None]
        ab_min = self.alphas_cumprod[0]
        v, v_min = ab * S**2 + 1.0 - ab, ab_min * S**2 + 1.0 - ab_min
        return MU + ops.sqrt(v_min / v) * (x - ops.sqrt(ab) * MU) / np.sqrt(ab_min)

    def get_config(self):
        return {**super().get_config(), "alphas_cumprod": self.alphas_cumprod}


def affine_model(prediction_type="v", shape=(4, 4, 1), timesteps=T, scale=0.1):
    """A DiffusionModel whose network is `affine_student()` with random weights (fast to trace)."""
    network = affine_student(shape, timesteps)
    rng = np.random.default_rng(0)
    network.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in network.weights])
    diffusion = GaussianDiffusion(timesteps=timesteps, beta_end=0.2, clip_min=-10.0, clip_max=10.0)
    return DiffusionModel(network, diffusion, prediction_type=prediction_type)


# ---------------------------------------------------------------- the consistency function


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
def test_the_boundary_condition_holds_whatever_the_network_outputs(prediction_type):
    teacher = affine_model(prediction_type, scale=3.0)  # large random outputs
    ab = teacher.diffusion.terms_float64["alphas_cumprod"]
    f = consistency_network(teacher.network, ab, prediction_type)
    x = np.random.default_rng(1).normal(0, 2, (4, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(to_numpy(f([x, np.zeros(4, "int32")])), x / np.sqrt(ab[0]), rtol=1e-6, atol=1e-6)
    # Above t_min: c_skip x + c_out x0_hat, x0_hat read from the raw output of the prediction type.
    t = np.array([1, 5, 50, 99], "int32")
    raw, ab_t = to_numpy(teacher.network([x, t])), ab[t].reshape(-1, 1, 1, 1)
    x0_hat = {"v": np.sqrt(ab_t) * x - np.sqrt(1 - ab_t) * raw,
              "epsilon": (x - np.sqrt(1 - ab_t) * raw) / np.sqrt(ab_t)}[prediction_type]
    c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in skip_and_out(ab, t))
    expected = c_skip * x + c_out * x0_hat
    np.testing.assert_allclose(to_numpy(f([x, t])), expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())
    assert np.abs(expected[3] - x[3] / np.sqrt(ab[99])).max() > 1.0  # the network's output counts there


# ---------------------------------------------------------------- the target


@pytest.mark.parametrize("prediction_type", ["v", "epsilon"])
def test_the_target_is_one_teacher_ddim_step_then_the_target_consistency_function(prediction_type):
    teacher, diffusion = make_model(prediction_type)
    exact_student = make_model("x0")[0].network  # the target network: x0_hat = the exact x_0
    distiller = ConsistencyDistillation(teacher, num_discretization_steps=10, student_network=exact_student,
                                        student_prediction_type="x0", seed=0)
    grid = distiller.discretization
    assert grid[0] == 0 and grid[-1] == T - 1 and len(grid) == 10
    (x_next, t_next), target, weights = distiller.training_batch(
        ops.convert_to_tensor(gaussian_images(128)), keras.random.SeedGenerator(3)
    )
    assert weights is None
    x_next, t_next, target = to_numpy(x_next), to_numpy(t_next).astype(int), to_numpy(target)
    assert set(t_next) == set(grid[1:]), "every n in {0..N-2} drawn"
    ab = diffusion.terms_float64["alphas_cumprod"]
    t_n = grid[np.searchsorted(grid, t_next) - 1]
    ab_next, ab_n = ab[t_next].reshape(-1, 1, 1, 1), ab[t_n].reshape(-1, 1, 1, 1)
    x_hat = ddim(x_next, ab_next, ab_n)
    c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in skip_and_out(ab, t_n))
    expected = c_skip * x_hat + c_out * exact_x0(x_hat, ab_n)
    tolerance = 2e-5 * np.abs(expected).max()
    np.testing.assert_allclose(target, expected, atol=tolerance)
    # The wrong targets are far outside the tolerance: no teacher step, or the student's own point.
    c_skip_next, c_out_next = (c.reshape(-1, 1, 1, 1) for c in skip_and_out(ab, t_next))
    no_step = c_skip * x_next + c_out * exact_x0(x_next, ab_n)
    own_point = c_skip_next * x_next + c_out_next * exact_x0(x_next, ab_next)
    for wrong in (no_step, own_point):
        assert np.abs(wrong - expected).max() > 100 * tolerance


def test_the_exact_consistency_function_is_self_consistent_along_the_ddim_step_to_first_order():
    # F(x, t) = exact_flow(x, ab_t, ab_min) / sqrt(ab_min) is what the target trains towards. Along one
    # DDIM step of the grid it is consistent up to DDIM's local error, O(h^2); summed over the grid, O(h):
    # doubling N divides the largest residual by ~4 and the sum by ~2. Without the teacher's step
    # (F(x_{t_{n+1}}, t_n) against F(x_{t_{n+1}}, t_{n+1})) the sum does not shrink. (T = 1000, where
    # the grid of 40 points still has distinct timesteps.)
    diffusion = GaussianDiffusion(timesteps=1000)
    ab = diffusion.terms_float64["alphas_cumprod"]

    def consistency(x, ab_t):
        return exact_flow(x, ab_t, ab[0]) / np.sqrt(ab[0])

    def rms(values):
        return np.sqrt(np.mean(values**2))

    z = np.random.default_rng(0).standard_normal(4000)
    largest, total, without_step = [], [], []
    for n_points in (10, 20, 40):
        grid = samplers.sampling_timesteps(diffusion, n_points, "karras")
        residuals, skipped = [], []
        for lower, upper in zip(ab[grid[:-1]], ab[grid[1:]]):
            x = np.sqrt(upper) * MU + np.sqrt(upper * S**2 + 1 - upper) * z  # the marginal at t_{n+1}
            residuals.append(rms(consistency(ddim(x, upper, lower), lower) - consistency(x, upper)))
            skipped.append(rms(consistency(x, lower) - consistency(x, upper)))
        largest.append(max(residuals))
        total.append(sum(residuals))
        without_step.append(sum(skipped))
    assert largest[0] / largest[1] > 3.5 and largest[1] / largest[2] > 3.5, largest
    for coarse, fine in zip(total, total[1:]):
        assert 1.8 < coarse / fine < 2.2, total
    assert total[1] < 0.15 * without_step[1] and without_step[1] / without_step[2] < 1.3, without_step


# ---------------------------------------------------------------- the sampler


def exact_consistency_model():
    _, diffusion = make_model("x0")
    x, t = keras.Input((4, 4, 1)), keras.Input((), dtype="int32")
    network = keras.Model([x, t], ExactConsistency(diffusion.terms_float64["alphas_cumprod"])([x, t]))
    return DiffusionModel(network, diffusion, prediction_type="x0"), diffusion


def consistency_moments(alphas_cumprod, kept):
    """Mean and variance of consistency sampling with the exact consistency function, from x_T ~ N(0, 1), float64."""
    ab_min = alphas_cumprod[0]
    v_min = ab_min * S**2 + 1 - ab_min
    mean, var = 0.0, 1.0
    for j in range(len(kept) - 1, -1, -1):
        ab = alphas_cumprod[kept[j]]
        gain = np.sqrt(v_min / (ab * S**2 + 1 - ab)) / np.sqrt(ab_min)  # F(x) = MU + gain (x - sqrt(ab) MU)
        mean, var = MU + gain * (mean - np.sqrt(ab) * MU), gain**2 * var
        if j:
            ab_prev = alphas_cumprod[kept[j - 1]]
            mean, var = np.sqrt(ab_prev) * mean, ab_prev * var + 1 - ab_prev
    return mean, var


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_consistency_sampling_of_the_exact_consistency_function_has_the_datas_moments(num_steps):
    # From one step on, F's output is N(MU, S^2 + sigma_min^2) for x_t of the right marginal; re-noised it is
    # the marginal at the next level plus ab_prev sigma_min^2, which F maps back to S^2 + sigma_min^2 plus that
    # excess shrunk by v_min / v (below 1e-4 relative). Only x_T ~ N(0, 1) differs from the marginal, by ab_T.
    model, diffusion = exact_consistency_model()
    ab = diffusion.terms_float64["alphas_cumprod"]
    mean, var = consistency_moments(ab, samplers.spaced_timesteps(T, num_steps))
    sigma_min_squared = (1 - ab[0]) / ab[0]
    assert mean == pytest.approx(MU, abs=1e-4) and var == pytest.approx(S**2 + sigma_min_squared, rel=1e-3)
    images = model.generate_images(2000, seed=0, sampler="consistency", num_steps=num_steps, verbose=0)
    n = images.size  # pixels are independent under the per-pixel maps
    assert abs(images.mean() - mean) < 4.5 * np.sqrt(var / n)
    assert abs(images.var() - var) < 4.5 * var * np.sqrt(2 / n)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_one_consistency_step_is_the_models_x0_at_the_top(prediction_type):
    model, diffusion = make_model(prediction_type)
    assert samplers.SamplerOptions("consistency").resolved(T).num_steps == 1
    x_T = np.random.default_rng(0).standard_normal((8, 4, 4, 1)).astype("float32")
    images = model.generate_images(initial_noise=x_T, seed=0, sampler="consistency", verbose=0)
    expected = exact_x0(x_T.astype(np.float64), diffusion.terms_float64["alphas_cumprod"][T - 1])
    # epsilon: x_0 = (x - sigma eps) / alpha magnifies float32 rounding by 1 / alpha ~ 180 at T - 1.
    np.testing.assert_allclose(images, expected, atol=1e-4 if prediction_type == "epsilon" else 2e-5)


def test_the_consistency_chain_is_its_numpy_loop_given_the_same_noise():
    model, diffusion = make_model("x0")
    num_steps, rng = 4, np.random.default_rng(0)
    x_T = rng.standard_normal((8, 4, 4, 1))
    noises = rng.standard_normal((num_steps, 8, 4, 4, 1))
    table = ops.convert_to_tensor(noises.astype("float32"))
    chain = samplers.build_chain(
        lambda x, t: model.network([x, t]), lambda shape, step: ops.take(table, step, axis=0), diffusion,
        "consistency", num_steps, prediction_type="x0",
    )
    sample = to_numpy(samplers.run_chain(chain, ops.convert_to_tensor(x_T.astype("float32"))))
    kept = diffusion.terms_float64["alphas_cumprod"][samplers.spaced_timesteps(T, num_steps)]
    x = x_T
    for i in range(num_steps):
        j = num_steps - 1 - i
        ab_prev = kept[j - 1] if j else 1.0
        x = np.sqrt(ab_prev) * exact_x0(x, kept[j]) + np.sqrt(1 - ab_prev) * noises[i]
    np.testing.assert_allclose(sample, x, atol=1e-5)


# ---------------------------------------------------------------- training and saving


class Weights(keras.callbacks.Callback):
    """The network's and the EMA network's weights after every optimizer step."""

    def __init__(self):
        super().__init__()
        self.network, self.ema = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.network.append([np.array(w) for w in self.model.network.weights])
        self.ema.append([np.array(w) for w in self.model.ema_network.weights])


def test_fit_trains_against_the_ema_target_and_the_student_and_distiller_round_trip(tmp_path):
    teacher = affine_model("v")
    distiller = ConsistencyDistillation(teacher, target_steps=2, num_discretization_steps=5, seed=0)
    assert distiller.prediction_type == "x0" and distiller.ema == 0.95
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    recorder = Weights()
    history = distiller.fit(gaussian_images(32), batch_size=8, epochs=1, verbose=0, callbacks=[recorder])  # 4 steps
    assert np.isfinite(history.history["loss"]).all()
    for k in range(1, 4):  # theta^- <- mu theta^- + (1 - mu) theta after every step
        for ema, previous, weight in zip(recorder.ema[k], recorder.ema[k - 1], recorder.network[k]):
            np.testing.assert_allclose(ema, 0.95 * previous + 0.05 * weight, rtol=1e-5, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(recorder.network[-1], recorder.ema[-1])) > 1e-4

    student = distiller.student
    assert type(student) is DiffusionModel and student.prediction_type == "x0"
    assert student.default_sampling == {"sampler": "consistency", "num_steps": 2}
    student.save(tmp_path / "student.keras")
    loaded = keras.saving.load_model(tmp_path / "student.keras")
    assert loaded.default_sampling == student.default_sampling
    images = loaded.generate_images(4, seed=0, verbose=0)
    np.testing.assert_array_equal(images, student.generate_images(4, seed=0, verbose=0))
    np.testing.assert_array_equal(images, distiller.generate_images(4, seed=0, verbose=0))

    batch = ops.convert_to_tensor(gaussian_images(8))
    _, target, _ = distiller.training_batch(batch, keras.random.SeedGenerator(5))
    distiller.save(tmp_path / "distiller.keras")
    resumed = keras.saving.load_model(tmp_path / "distiller.keras")
    assert type(resumed) is ConsistencyDistillation and int(resumed.optimizer.iterations) == 4
    assert (resumed.target_steps, resumed.num_discretization_steps, resumed.teacher_prediction_type) == (2, 5, "v")
    _, resumed_target, _ = resumed.training_batch(batch, keras.random.SeedGenerator(5))
    np.testing.assert_array_equal(to_numpy(resumed_target), to_numpy(target))
    # The target is the EMA network's: the trained network does not enter it.
    distiller.network.set_weights([np.zeros_like(w) for w in distiller.network.get_weights()])
    np.testing.assert_array_equal(to_numpy(distiller.training_batch(batch, keras.random.SeedGenerator(5))[1]),
                                  to_numpy(target))
    distiller.ema_network.set_weights([w + 0.1 for w in distiller.ema_network.get_weights()])
    assert np.abs(to_numpy(distiller.training_batch(batch, keras.random.SeedGenerator(5))[1])
                  - to_numpy(target)).max() > 1e-3


def test_a_conditional_teacher_gives_a_conditional_student_whose_target_sees_the_dropped_labels():
    teacher = make_class_model()
    distiller = ConsistencyDistillation(teacher, num_discretization_steps=6, seed=0)
    assert distiller.num_classes == 3 and distiller.student.num_classes == 3
    labels = np.arange(64) % 3
    (x_next, t_next, dropped), target, _ = distiller.training_batch(
        ops.convert_to_tensor(gaussian_images(64)), keras.random.SeedGenerator(3), ops.convert_to_tensor(labels)
    )
    dropped = to_numpy(dropped).astype(int)
    assert 0 < (dropped == 3).sum() < 20 and np.array_equal(dropped[dropped < 3], labels[dropped < 3])
    # The copied exact epsilon teacher, its label's mean in the teacher's step and in the target network.
    mu = np.asarray(CLASS_MEANS + (UNCONDITIONAL_MEAN,))[dropped].reshape(-1, 1, 1, 1)
    ab = teacher.diffusion.terms_float64["alphas_cumprod"]
    grid, t_next = distiller.discretization, to_numpy(t_next).astype(int)
    t_n = grid[np.searchsorted(grid, t_next) - 1]
    ab_n = ab[t_n].reshape(-1, 1, 1, 1)
    x_hat = ddim(to_numpy(x_next), ab[t_next].reshape(-1, 1, 1, 1), ab_n, mu)
    x0 = mu + np.sqrt(ab_n) * S**2 * (x_hat - np.sqrt(ab_n) * mu) / (ab_n * S**2 + 1 - ab_n)
    c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in skip_and_out(ab, t_n))
    expected = c_skip * x_hat + c_out * x0
    # An epsilon student: its x0_hat = (x - sigma eps) / alpha magnifies float32 rounding at the top of the grid.
    np.testing.assert_allclose(to_numpy(target), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_steps": 0}, r"target_steps must be an integer in \[1, 100\].*Received: target_steps=0"),
        ({"target_steps": 101}, "target_steps=101"),
        ({"num_discretization_steps": 1}, r"num_discretization_steps must be an integer in \[2, 100\].*=1$"),
        ({"num_discretization_steps": 101}, "num_discretization_steps=101"),
        ({"target_steps": 2.5}, "target_steps=2.5"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        ConsistencyDistillation(affine_model(), **kwargs)
    assert "\n" not in str(error.value)


def test_the_teacher_must_be_a_generative_diffusion_model():
    with pytest.raises(TypeError, match="teacher must be a trained DiffusionModel"):
        ConsistencyDistillation("teacher.keras")
    with pytest.raises(ValueError, match="inpainting"):
        ConsistencyDistillation(tiny_model(timesteps=32, img_size=8).to_inpainting())


# ---------------------------------------------------------------- the command line


def test_the_distill_command_runs_consistency_epochs_resumes_and_writes_a_consistency_student(
    tmp_path, monkeypatch, capsys
):
    from ddpm_keras.cli import main
    from ddpm_keras.distillation.callbacks import TeacherStudentGrid

    teacher_path, out = str(tmp_path / "teacher.keras"), str(tmp_path / "cd-run")
    network = affine_student((8, 8, 3), timesteps=16)  # quick to trace; the synthetic flowers at 8 px
    DiffusionModel(network, GaussianDiffusion(timesteps=16), prediction_type="x0").save(teacher_path)
    argv = ["distill", "--method", "consistency", "--teacher", teacher_path, "--target-steps", "2", "--steps", "3",
            "--steps-per-round", "2", "--num-discretization-steps", "5", "--batch-size", "4", "--out", out]
    assert main(argv[:-2] + ["--start-steps", "4", "--out", out]) == 2
    assert "--start-steps is an option of --method progressive" in capsys.readouterr().err
    grid = TeacherStudentGrid.on_epoch_end

    def interrupted(self, epoch, logs=None):  # a Ctrl-C once epoch 1 is saved and drawn
        grid(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(TeacherStudentGrid, "on_epoch_end", interrupted)
    assert main(argv) == 130
    monkeypatch.setattr(TeacherStudentGrid, "on_epoch_end", grid)
    assert main(["distill", "--out", out, "--resume"]) == 0
    assert "Resuming" in capsys.readouterr().out
    record = json.load(open(os.path.join(out, "run.json")))
    assert (record["method"], record["steps"], record["steps_per_round"], record["num_discretization_steps"]) == (
        "consistency", 3, 2, 5)
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["epoch_0001.png", "epoch_0002.png"]
    resumed = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert int(resumed.optimizer.iterations) == 4  # 3 steps rounded up to whole epochs of 2
    student = keras.saving.load_model(os.path.join(out, "student.keras"))
    assert student.default_sampling == {"sampler": "consistency", "num_steps": 2}
    assert main(["sample", "--checkpoint", os.path.join(out, "student.keras"), "--out", str(tmp_path / "s.png"),
                 "--num-images", "2"]) == 0
    assert "samples (consistency)" in capsys.readouterr().out
    assert main(["distill", "--out", out, "--resume"]) == 2 and "finished its 2 epochs" in capsys.readouterr().err


# ---------------------------------------------------------------- other backends

BACKEND_RUN = """
from gaussian_exact import affine_student
from gaussian_exact import make_model
from ddpm_keras import ConsistencyDistillation
teacher, diffusion = make_model("v")
exact = ConsistencyDistillation(teacher, num_discretization_steps=10, student_network=make_model("x0")[0].network,
                                student_prediction_type="x0", seed=0)
images = (0.1 + 0.2 * np.random.default_rng(0).standard_normal((32, 4, 4, 1))).astype("float32")
(x_next, t_next), target, _ = exact.training_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(3))
distiller = ConsistencyDistillation(teacher, target_steps=2, num_discretization_steps=5, seed=0,
                                    student_network=affine_student(), student_prediction_type="x0")
distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
history = distiller.fit(images, batch_size=8, epochs=1, verbose=0)
moved = max(float(np.abs(to_numpy(w)).max()) for w in distiller.ema_network.weights)  # from zeros
emit(x_next=to_numpy(x_next).tolist(), t_next=to_numpy(t_next).tolist(), target=to_numpy(target).tolist(),
     grid=exact.discretization.tolist(), loss=history.history["loss"], moved=moved,
     steps=int(to_numpy(distiller.optimizer.iterations)),
     images=distiller.student.generate_images(2, seed=0, verbose=0).tolist())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_consistency_distillation_on_every_backend(backend):
    # The target against the closed form (as above), and a fit whose EMA target moves.
    skip_unless_installed(backend)
    result = run_snippet(BACKEND_RUN, backend)
    _, diffusion = make_model("v")
    ab = diffusion.terms_float64["alphas_cumprod"]
    grid, x_next, t_next = np.array(result["grid"]), np.array(result["x_next"]), np.array(result["t_next"], int)
    t_n = grid[np.searchsorted(grid, t_next) - 1]
    ab_n = ab[t_n].reshape(-1, 1, 1, 1)
    x_hat = ddim(x_next, ab[t_next].reshape(-1, 1, 1, 1), ab_n)
    c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in skip_and_out(ab, t_n))
    expected = c_skip * x_hat + c_out * exact_x0(x_hat, ab_n)
    np.testing.assert_allclose(np.array(result["target"]), expected, atol=2e-5 * np.abs(expected).max())
    assert np.isfinite(result["loss"]).all() and result["steps"] == 4 and result["moved"] > 0
    assert np.isfinite(result["images"]).all()
