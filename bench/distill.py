"""Distillation of a shipped preset: FD of its students at 1-8 calls against the teacher's samplers.

Usage: python bench/distill.py --out DIR [--method progressive|consistency] [--teacher synthetic_flowers32_cond]
       [--steps-per-round 500] [--start-steps 64] [--target-steps 1] [--steps 3000] [--num-discretization-steps 18]
       [--batch-size 32] [--learning-rate 2e-4] [--num-samples 256] [--seeds 0,1,2]
       [--grid docs/distillation.png] [--skip-ddpm] [--skip-teacher] [--teacher-rows ddpm:50,unipc]
       [--speed-batch 32] [--load]

Distils the preset (its EMA network, v-prediction), or a `.keras` model
(`--teacher student_16.keras --start-steps 16`: more rounds from a student
of an earlier run; `--guidance-scale` then defaults to 1.0), one epoch of
`--steps-per-round` optimizer steps at a time on as many fresh synthetic
flowers (labelled for a conditional preset):

- progressive (`ProgressiveDistillation`): from `--start-steps` DDIM steps
  down to `--target-steps`, one round per epoch, each round's student written to
  `DIR/student_N.keras` (N: its DDIM steps);
- consistency (`ConsistencyDistillation`): `--steps` optimizer steps on a
  grid of `--num-discretization-steps`, the student written to
  `DIR/consistency.keras` after each epoch, and measured at 4, 2 and 1
  consistency steps.

`--load` measures the students a previous run wrote. Then, in the shipped flower features
(`metrics.flower_features`), against 4,096 real flowers, at the preset's
recommended guidance: FD (mean +- std over `--seeds`, `--num-samples` samples
each), class accuracy for a conditional preset, and seconds per 1,000 images,
for the teacher's DDPM-1000, its ODE (DDIM-50, DPM-Solver++(2M)-20), its best
few-call solvers, and the students. `--grid` writes the teacher at 1,000
calls beside the students at 4, 2 and 1 call(s), from the same noise.
`--speed-batch N` times, side by side at one batch of N, the teacher's
DDPM-1000, `DEFAULT_SAMPLING` and each student (seconds per 1,000 images).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import ConsistencyDistillation  # noqa: E402
from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import ProgressiveDistillation  # noqa: E402
from ddpm_keras import hub  # noqa: E402
from ddpm_keras.data import synthetic_class_of  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import frechet_distance  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.samplers import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402

REFERENCE_SEED, DATA_SEED = 9001, 7000

TEACHER_ROWS = (
    ("DDPM", {"sampler": "ddpm"}),
    ("DDPM, respaced", {"sampler": "ddpm", "num_steps": 50}),
    ("DPM-Solver++(2M) SDE, Karras", {"sampler": "dpmpp_2m_sde", "num_steps": 50, "timestep_spacing": "karras"}),
    ("DDIM", {"sampler": "ddim", "num_steps": 50}),
    ("DPM-Solver++(2M)", {"sampler": "dpmpp_2m", "num_steps": 20}),
    ("DPM-Solver++(2M) SDE, Karras", {"sampler": "dpmpp_2m_sde", "num_steps": 20, "timestep_spacing": "karras"}),
    ("DDIM", {"sampler": "ddim", "num_steps": 4}),
    ("DPM-Solver++(2M)", {"sampler": "dpmpp_2m", "num_steps": 4}),
    ("DPM-Solver++(2M) SDE, Karras", {"sampler": "dpmpp_2m_sde", "num_steps": 4, "timestep_spacing": "karras"}),
    ("UniPC", {"sampler": "unipc", "num_steps": 4}),
)


class SaveStudent(keras.callbacks.Callback):
    """Writes the student after each epoch: `DIR/student_N.keras` (progressive: one epoch is one round), or
    `DIR/consistency.keras`."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def on_epoch_end(self, epoch, logs=None):
        student = self.model.student
        name = "consistency" if self.model.method == "consistency" else f"student_{self.model.student_steps}"
        path = os.path.join(self.out, f"{name}.keras")
        student.save(path)
        print(f"epoch {epoch + 1}: loss {logs['loss']:.4f}, {path}", flush=True)


def distil(args, teacher):
    """Trains every epoch; returns the seconds it took."""
    if args.method == "progressive":
        distiller = ProgressiveDistillation(teacher, target_steps=args.target_steps, start_steps=args.start_steps,
                                            steps_per_round=args.steps_per_round, seed=0)
        epochs = distiller.num_rounds
    else:
        distiller = ConsistencyDistillation(teacher, target_steps=1, seed=0,
                                            num_discretization_steps=args.num_discretization_steps)
        epochs = -(-args.steps // args.steps_per_round)
    distiller.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    per_epoch = args.steps_per_round * args.batch_size
    size = teacher.image_shape[0]
    start = time.perf_counter()
    for epoch in range(epochs):  # fresh flowers each epoch, of steps_per_round steps
        labels = None if teacher.num_classes is None else np.arange(per_epoch) % teacher.num_classes
        images = synthetic_flowers(per_epoch, size, seed=DATA_SEED + epoch, labels=labels)
        distiller.fit(images, labels, batch_size=args.batch_size, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                      callbacks=[SaveStudent(args.out)])
    return time.perf_counter() - start


def students_in(folder):
    """`{calls: (path, sampling)}` of the students a run wrote."""
    found = {}
    for name in os.listdir(folder):
        if name.startswith("student_") and name.endswith(".keras"):
            found[int(name[len("student_"):-len(".keras")])] = (os.path.join(folder, name), {})
        if name == "consistency.keras":
            found.update({k: (os.path.join(folder, name), {"num_steps": k}) for k in (4, 2, 1)})
    return found


def measure(model, sampling, reference, extractor, args, guidance):
    fds, accuracies, seconds = [], [], []
    for seed in args.seeds:
        conditioning = {}
        if model.num_classes:
            labels = np.arange(args.num_samples) % model.num_classes
            conditioning = {"labels": labels, "guidance_scale": guidance}
        start = time.perf_counter()
        images = np.asarray(model.generate_images(args.num_samples, seed=seed, verbose=0, **sampling, **conditioning))
        seconds.append((time.perf_counter() - start) / args.num_samples * 1000)
        features = np.asarray(extract_features(extractor, images), np.float64)
        fds.append(frechet_distance(features.mean(0), np.cov(features, rowvar=False), reference.mean,
                                    reference.covariance))
        if model.num_classes:
            accuracies.append(float(np.mean(synthetic_class_of(images) == labels)))
    return fds, accuracies, seconds


def seconds_per_1000(model, batch, sampling, guidance, warm=True):
    """Seconds per 1,000 images of one `generate_images(batch)`, after a call that traces it (`warm`)."""
    conditioning = {}
    if model.num_classes:
        conditioning = {"labels": np.arange(batch) % model.num_classes, "guidance_scale": guidance}
    if warm:
        model.generate_images(batch, seed=0, verbose=0, **sampling, **conditioning)
    start = time.perf_counter()
    model.generate_images(batch, seed=1, verbose=0, **sampling, **conditioning)
    return (time.perf_counter() - start) / batch * 1000


def row(label, calls, fds, accuracies, seconds):
    accuracy = f" {np.mean(accuracies):.3f} |" if accuracies else " - |"
    print(f"| {label} | {calls} | {np.mean(fds):.1f} +- {np.std(fds):.1f} ({', '.join(f'{v:.1f}' for v in fds)}) |"
          f"{accuracy} {np.median(seconds[1:] or seconds):.0f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="synthetic_flowers32_cond")
    parser.add_argument("--method", default="progressive", choices=("progressive", "consistency"))
    parser.add_argument("--steps", type=int, default=3000, help="consistency: optimizer steps")
    parser.add_argument("--num-discretization-steps", type=int, default=18)
    parser.add_argument("--out", required=True, help="folder of the students (new, or --load)")
    parser.add_argument("--load", action="store_true", help="measure the students already in --out")
    parser.add_argument("--steps-per-round", type=int, default=500)
    parser.add_argument("--start-steps", type=int, default=64)
    parser.add_argument("--target-steps", type=int, default=1, help="progressive: the last student's steps")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="of a conditional teacher's samples; defaults to the preset's recommended (1.0 for a file)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", default=None, help="PNG: teacher DDPM-1000 beside the students at 4, 2, 1")
    parser.add_argument("--skip-ddpm", action="store_true", help="leave out the teacher's 1,000-call row")
    parser.add_argument("--skip-teacher", action="store_true", help="leave out every teacher row: the students only")
    parser.add_argument("--speed-batch", type=int, default=None, help="time the samplers side by side at this batch")
    parser.add_argument("--teacher-rows", default=None,
                        help="comma-separated SAMPLER or SAMPLER:CALLS: only these teacher rows (ddpm:1000 is DDPM-1000)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.teacher.endswith(".keras"):
        teacher, recommended = keras.saving.load_model(args.teacher, compile=False), 1.0
    else:
        teacher = DiffusionModel.from_preset(args.teacher, compile=False)
        recommended = hub.read_metadata(args.teacher).get("sampling", {}).get("guidance_scale", 1.0)
    guidance = recommended if args.guidance_scale is None else args.guidance_scale
    if not args.load:
        if os.path.exists(args.out) and os.listdir(args.out):
            parser.error(f"--out {args.out} is not empty: name a new folder, or pass --load to measure it")
        os.makedirs(args.out, exist_ok=True)
        seconds = distil(args, teacher)
        print(f"{args.method} distillation: {seconds / 60:.1f} min, {args.steps_per_round} steps per epoch, batch "
              f"{args.batch_size}", flush=True)
    students = students_in(args.out)
    extractor = flower_features()
    size, classes = teacher.image_shape[0], teacher.num_classes
    real_labels = None if classes is None else np.arange(4096) % classes
    reference = reference_statistics(synthetic_flowers(4096, size, seed=REFERENCE_SEED, labels=real_labels),
                                     extractor, cache_dir=False, verbose=0)
    print(f"\n{args.teacher}, guidance {guidance}, {args.num_samples} samples, seeds {args.seeds}")
    print("| sampler | network calls | FD | class accuracy | ms per image |\n|---|---|---|---|---|")
    for label, sampling in TEACHER_ROWS:
        calls = sampling.get("num_steps", teacher.diffusion.num_timesteps)
        if args.skip_teacher or (args.skip_ddpm and sampling["sampler"] == "ddpm" and "num_steps" not in sampling):
            continue
        if args.teacher_rows and not {sampling["sampler"], f"{sampling['sampler']}:{calls}"} & set(
                args.teacher_rows.split(",")):
            continue
        row(f"teacher, {label}", calls, *measure(teacher, sampling, reference, extractor, args, guidance))
    for steps in sorted(students, reverse=True):
        path, sampling = students[steps]
        student = keras.saving.load_model(path, compile=False)
        label = f"{args.method} student, {student.default_sampling['sampler']}"
        row(label, steps, *measure(student, sampling, reference, extractor, args, guidance))
    if args.grid:
        noise = np.random.default_rng(0).standard_normal((8,) + teacher.image_shape).astype("float32")
        labels = None if classes is None else np.arange(8) % classes
        conditioning = {} if classes is None else {"labels": labels, "guidance_scale": guidance}
        rows = [teacher.generate_images(initial_noise=noise, seed=0, sampler="ddpm", verbose=0, **conditioning)]
        for steps in [k for k in (4, 2, 1) if k in students]:
            path, sampling = students[steps]
            student = keras.saving.load_model(path, compile=False)
            rows.append(student.generate_images(initial_noise=noise, seed=0, verbose=0, **sampling, **conditioning))
        save_image_grid(np.concatenate(rows), args.grid, ncols=8, scale=3)
        print(f"grid: {args.grid} (rows: teacher DDPM-1000, then the students at 4, 2, 1 calls that the run has)")
    if args.speed_batch:
        timed = {"teacher, DDPM-1000": seconds_per_1000(teacher, args.speed_batch, {"sampler": "ddpm"}, guidance,
                                                        warm=False),  # its trace: seconds of its minutes
                 "teacher, DEFAULT_SAMPLING": seconds_per_1000(teacher, args.speed_batch, DEFAULT_SAMPLING, guidance)}
        for steps in sorted(students, reverse=True):
            path, sampling = students[steps]
            student = keras.saving.load_model(path, compile=False)
            timed[f"student, {steps} calls"] = seconds_per_1000(student, args.speed_batch, sampling, guidance)
        chain = timed["teacher, DDPM-1000"]
        print(f"\nbatch {args.speed_batch}, guidance {guidance}\n| sampler | s per 1,000 images | speed-up over DDPM-1000 |"
              "\n|---|---|---|")
        for label, seconds in timed.items():
            print(f"| {label} | {seconds:.1f} | {chain / seconds:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
