"""Progressive distillation: the target against its closed form, a student that converges to it, the rounds."""

import csv
import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_model
from gaussian_exact import MU
from gaussian_exact import S
from gaussian_exact import T
from gaussian_exact import affine_student
from gaussian_exact import exact_x0
from gaussian_exact import make_model
from keras import ops
from subprocess_json import run_snippet
from subprocess_json import skip_unless_installed

from ddpm_keras import DiffusionModel
from ddpm_keras import GaussianDiffusion
from ddpm_keras import ProgressiveDistillation
from ddpm_keras import samplers


def gaussian_images(n, seed=0):
    return (MU + S * np.random.default_rng(seed).standard_normal((n, 4, 4, 1))).astype("float32")


def ddim(x, ab_from, ab_to):
    """One DDIM step of the exact Gaussian denoiser, float64: x_0 and the noise it implies, taken to ab_to."""
    x_start = exact_x0(x, ab_from)
    noise = (x - np.sqrt(ab_from) * x_start) / np.sqrt(1.0 - ab_from)
    return np.sqrt(ab_to) * x_start + np.sqrt(1.0 - ab_to) * noise


def closed_form_target(x_t, t, alphas_cumprod, teacher_steps, steps_taken=2):
    """The x_0 whose one DDIM step from t reaches where `steps_taken` teacher steps go, per example (float64).

    The teacher walks the trailing grid of `teacher_steps`; the student's step from t ends
    two teacher steps down (the data below the grid's first point).
    """
    grid = samplers.spaced_timesteps(T, teacher_steps)
    levels = np.concatenate([[1.0], alphas_cumprod[grid]])  # level of grid index j = 0 (data), 1, ..., 2N
    out = np.empty_like(x_t, dtype=np.float64)
    for k, (x, step) in enumerate(zip(x_t.astype(np.float64), t)):
        j = int(np.flatnonzero(grid == step)[0]) + 1
        assert j % 2 == 0, "the student starts its steps on every other point of the teacher's grid"
        x_next = x
        for level in range(j, j - steps_taken, -1):
            x_next = ddim(x_next, levels[level], levels[level - 1])
        ab_t, ab_s = levels[j], levels[j - 2]
        ratio = np.sqrt(1 - ab_s) / np.sqrt(1 - ab_t)
        out[k] = (x_next - ratio * x) / (np.sqrt(ab_s) - ratio * np.sqrt(ab_t))
    return out


def as_prediction(x_tilde, x_t, ab, prediction_type):
    noise = (x_t - np.sqrt(ab) * x_tilde) / np.sqrt(1 - ab)
    return {"x0": x_tilde, "epsilon": noise, "v": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x_tilde}[prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "x0"])
def test_the_target_is_two_ddim_steps_of_the_teacher_in_closed_form(prediction_type):
    teacher, diffusion = make_model(prediction_type)
    distiller = ProgressiveDistillation(teacher, target_steps=2, start_steps=8, steps_per_round=5, seed=0)
    (x_t, t), target, weights = distiller.training_batch(
        ops.convert_to_tensor(gaussian_images(64)), keras.random.SeedGenerator(3)
    )
    x_t, t, target, weights = (np.asarray(ops.convert_to_numpy(v), np.float64) for v in (x_t, t, target, weights))
    t = t.astype(int)
    ab = diffusion.terms_float64["alphas_cumprod"]
    assert set(t) == set(samplers.spaced_timesteps(T, 4)), "round 0: the student of 4 steps, every step drawn"
    ab_t = ab[t].reshape(-1, 1, 1, 1)
    expected = as_prediction(closed_form_target(x_t, t, ab, teacher_steps=8), x_t, ab_t, prediction_type)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(target, expected, atol=2e-4 * scale)
    # One teacher step instead of two is a different target, far outside the tolerance.
    one_step = as_prediction(closed_form_target(x_t, t, ab, 8, steps_taken=1), x_t, ab_t, prediction_type)
    assert np.abs(one_step - expected).max() > 50 * 2e-4 * scale
    snr = ab[t] / (1 - ab[t])
    in_x0 = {"x0": 1.0, "v": 1.0 + snr, "epsilon": snr}[prediction_type]  # |error|^2 of the output per |error in x_0|^2
    np.testing.assert_allclose(weights * in_x0, np.maximum(snr, 1.0), rtol=1e-5)


def test_a_student_trained_with_fit_converges_to_the_closed_form_one_step_map():
    teacher, diffusion = make_model("x0")
    distiller = ProgressiveDistillation(
        teacher, target_steps=2, start_steps=4, steps_per_round=10_000, student_network=affine_student(), ema=0.0,
        seed=0,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.05))
    distiller.fit(gaussian_images(512), batch_size=128, epochs=60, verbose=0)
    ab = diffusion.terms_float64["alphas_cumprod"]
    a_table, b_table = (np.asarray(w)[:, 0] for w in distiller.network.weights)
    for step in samplers.spaced_timesteps(T, 2):
        x = np.array([0.0, 1.0]).reshape(2, 1, 1, 1)
        b, a_plus_b = closed_form_target(x, [step, step], ab, teacher_steps=4).reshape(2)
        assert a_table[step] == pytest.approx(a_plus_b - b, abs=3e-3), step
        assert b_table[step] == pytest.approx(b, abs=3e-3), step


class EmaAt(keras.callbacks.Callback):
    """Records the student's EMA weights after optimizer step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step, self.weights = step, None

    def on_train_batch_end(self, batch, logs=None):
        if int(ops.convert_to_numpy(self.model.optimizer.iterations)) == self.step:
            self.weights = [np.array(w) for w in self.model.ema_network.weights]


def affine_model():
    """A DiffusionModel of x_0 whose network is `affine_student()` with random weights (fast to trace)."""
    network = affine_student()
    rng = np.random.default_rng(0)
    network.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in network.weights])
    _, diffusion = make_model("x0")
    return DiffusionModel(network, diffusion, prediction_type="x0")


def test_rounds_hand_the_ema_to_the_teacher_and_the_student_saves_its_sampler(tmp_path):
    teacher = affine_model()
    distiller = ProgressiveDistillation(teacher, target_steps=1, start_steps=4, steps_per_round=2, seed=0)
    assert (distiller.num_rounds, distiller.total_steps, distiller.student_steps) == (2, 4, 4)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    recorder = EmaAt(2)
    distiller.fit(gaussian_images(40), batch_size=8, epochs=1, verbose=0, callbacks=[recorder])  # 5 steps
    # After step 2 the EMA became the teacher; step 4 ended the last round, which does not hand over.
    assert int(distiller.distill_round) == 1 and distiller.student_steps == 1
    for theirs, mine in zip(recorder.weights, distiller.teacher_network.weights):
        np.testing.assert_array_equal(theirs, np.asarray(mine))
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
               for a, b in zip(teacher.ema_network.weights, distiller.teacher_network.weights)) > 1e-4
    student = distiller.student
    assert isinstance(student, DiffusionModel) and not isinstance(student, ProgressiveDistillation)
    assert student.default_sampling == {"sampler": "ddim", "num_steps": 1, "timestep_spacing": "trailing"}
    student.save(tmp_path / "student.keras")
    loaded = keras.saving.load_model(tmp_path / "student.keras")
    np.testing.assert_array_equal(loaded.generate_images(2, seed=0),
                                  student.generate_images(2, seed=0, sampler="ddim", num_steps=1))
    distiller.save(tmp_path / "distiller.keras")
    resumed = keras.saving.load_model(tmp_path / "distiller.keras")
    assert type(resumed) is ProgressiveDistillation and int(resumed.distill_round) == 1
    assert (resumed.start_steps, resumed.target_steps, resumed.steps_per_round) == (4, 1, 2)
    for a, b in zip(resumed.teacher_network.weights, distiller.teacher_network.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(resumed.optimizer.iterations) == 5 and resumed.student_steps == 1


def test_the_default_start_is_a_power_of_two_multiple_near_64_within_the_schedule():
    assert ProgressiveDistillation(affine_model(), target_steps=4).start_steps == 64  # T = 100
    assert ProgressiveDistillation(affine_model(), target_steps=3).start_steps == 48  # 3 * 16: log2(64 / 3) = 4.4
    assert ProgressiveDistillation(tiny_model(timesteps=32), target_steps=4).start_steps == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_steps": 0}, "target_steps=0"),
        ({"start_steps": 12}, "start_steps=12"),
        ({"start_steps": 4}, "start_steps=4"),  # no round: 4 = target_steps
        ({"start_steps": 128}, "start_steps=128"),  # more than T = 100
        ({"steps_per_round": 0}, "steps_per_round=0"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveDistillation(affine_model(), **{"target_steps": 4, **kwargs})


def test_the_teacher_must_be_a_generative_diffusion_model():
    with pytest.raises(TypeError, match="teacher must be a trained DiffusionModel"):
        ProgressiveDistillation("teacher.keras")
    with pytest.raises(ValueError, match="inpainting"):
        ProgressiveDistillation(tiny_model(timesteps=32).to_inpainting())


def test_the_distill_command_runs_rounds_resumes_and_writes_a_student_that_samples_with_its_steps(
    tmp_path, monkeypatch, capsys
):
    from ddpm_keras.cli import main
    from ddpm_keras.distillation.callbacks import TeacherStudentGrid

    teacher_path, out = str(tmp_path / "teacher.keras"), str(tmp_path / "student-run")
    network = affine_student((8, 8, 3), timesteps=16)  # quick to trace; the synthetic flowers at 8 px
    DiffusionModel(network, GaussianDiffusion(timesteps=16), prediction_type="x0").save(teacher_path)
    argv = ["distill", "--teacher", teacher_path, "--target-steps", "1", "--start-steps", "4", "--steps-per-round",
            "2", "--batch-size", "4", "--out", out]
    grid = TeacherStudentGrid.on_epoch_end

    def interrupted(self, epoch, logs=None):  # a Ctrl-C once round 1 is saved and drawn
        grid(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(TeacherStudentGrid, "on_epoch_end", interrupted)
    assert main(argv) == 130
    monkeypatch.setattr(TeacherStudentGrid, "on_epoch_end", grid)
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err  # nothing of the run is replaced
    assert main(["distill", "--out", out, "--resume"]) == 0
    assert "Resuming" in capsys.readouterr().out
    with open(os.path.join(out, "log.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["epoch_0001.png", "epoch_0002.png"]
    record = json.load(open(os.path.join(out, "run.json")))
    assert [launch["resume"] for launch in record["launches"]] == [False, True] and record["start_steps"] == 4
    student = keras.saving.load_model(os.path.join(out, "student.keras"))
    assert student.default_sampling == {"sampler": "ddim", "num_steps": 1, "timestep_spacing": "trailing"}
    assert main(["sample", "--checkpoint", os.path.join(out, "student.keras"), "--out", str(tmp_path / "s.png"),
                 "--num-images", "2"]) == 0
    assert "samples (ddim)" in capsys.readouterr().out
    assert main(["distill", "--out", out, "--resume"]) == 2 and "finished its 2 rounds" in capsys.readouterr().err


BACKEND_RUN = """
from gaussian_exact import make_model
from ddpm_keras import ProgressiveDistillation
from gaussian_exact import affine_student
teacher, diffusion = make_model("v")
distiller = ProgressiveDistillation(teacher, target_steps=1, start_steps=4, steps_per_round=2, seed=0,
                                    student_network=affine_student())
distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
images = (0.1 + 0.2 * np.random.default_rng(0).standard_normal((24, 4, 4, 1))).astype("float32")
before = distiller.training_batch(ops.convert_to_tensor(images), keras.random.SeedGenerator(3))
history = distiller.fit(images, batch_size=8, epochs=1, verbose=0)
emit(x_t=to_numpy(before[0][0]).tolist(), t=to_numpy(before[0][1]).tolist(), target=to_numpy(before[1]).tolist(),
     loss=history.history["loss"], rounds=int(to_numpy(distiller.distill_round)),
     steps=distiller.student_steps, images=distiller.student.generate_images(2, seed=0).tolist())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_progressive_distillation_on_every_backend(backend):
    # The target (in the v parameterisation) against the closed form, and a fit whose rounds advance.
    skip_unless_installed(backend)
    result = run_snippet(BACKEND_RUN, backend)
    _, diffusion = make_model("v")
    ab = diffusion.terms_float64["alphas_cumprod"]
    x_t, t = np.array(result["x_t"]), np.array(result["t"], int)
    expected = as_prediction(closed_form_target(x_t, t, ab, 4), x_t, ab[t].reshape(-1, 1, 1, 1), "v")
    np.testing.assert_allclose(np.array(result["target"]), expected, atol=2e-4 * np.abs(expected).max())
    assert np.isfinite(result["loss"]).all() and result["rounds"] == 1 and result["steps"] == 1
    assert np.isfinite(result["images"]).all()
