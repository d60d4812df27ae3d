"""`ddpm-keras distill`: a student that samples in a few network calls, from a trained model, in a run directory.

    ddpm-keras distill --teacher checkpoints/tiny-synthetic --target-steps 4 --out checkpoints/tiny-4steps
    ddpm-keras distill --teacher synthetic_flowers32_cond --steps-per-round 1000 --out runs/flowers-4steps
    ddpm-keras distill --out runs/flowers-4steps --resume

One epoch is one round of `ProgressiveDistillation` (`--steps-per-round`
optimizer steps): after each, `RUN_DIR/model.keras` holds the whole state
(student, its EMA, the round's teacher, the optimizer), `log.csv` the
round's loss, `samples/epoch_NNNN.png` the teacher above the student from
the same noise. At the end `RUN_DIR/student.keras` is the student, which
`ddpm-keras sample --checkpoint RUN_DIR/student.keras` samples with its own
sampler and step count.
"""

import os
import sys

from ddpm_keras.cli.common import CLIError
from ddpm_keras.cli.common import check_output
from ddpm_keras.cli.common import load_model
from ddpm_keras.cli.common import register
from ddpm_keras.cli.types import non_negative_int
from ddpm_keras.cli.types import positive_float
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import seed as seed_type

METHODS = ("progressive",)
STUDENT_FILE = "student.keras"
# The options a resumed distillation takes from run.json when they are not given.
RESUMED = ("teacher", "method", "target_steps", "start_steps", "steps_per_round", "dataset", "split", "data_dir",
           "batch_size", "seed", "plot_every", "guidance_scale")


def add_distill_parser(commands, formatter):
    distill = commands.add_parser(
        "distill", help="distil a trained model into a student of a few sampling steps", formatter_class=formatter,
        description="Progressive distillation (Salimans & Ho 2022): each round halves the student's deterministic "
        "DDIM steps, from --start-steps to --target-steps. One epoch is one round; RUN_DIR/model.keras is written "
        "after each (atomically), with log.csv and a grid of the teacher above the student; RUN_DIR/student.keras "
        "at the end.",
    )
    distill.add_argument("--teacher", default=None,
                         help="the trained model: a run directory, a model.keras file, or a preset (a shipped name, "
                         "a preset folder, hf://...). Required unless --resume")
    distill.add_argument("--method", default=None, choices=METHODS, help="Default: progressive")
    distill.add_argument("--target-steps", type=positive_int, default=None, help="the student's steps. Default: 4")
    distill.add_argument("--start-steps", type=positive_int, default=None,
                         help="the teacher's DDIM steps in the first round: target-steps times a power of two. "
                         "Default: the one nearest to 64, at most the diffusion's T")
    distill.add_argument("--steps-per-round", type=positive_int, default=None,
                         help="optimizer steps per round (one epoch). Default: 2000")
    distill.add_argument("--out", required=True, help="the run directory (new, or with --resume)")
    distill.add_argument("--resume", action="store_true",
                         help="continue the run in --out at its next round; options not given are the run's")
    distill.add_argument("--dataset", default=None,
                         help="the teacher's data: oxford_flowers102, synthetic or PATH. Default: the teacher run's "
                         "(run.json), else synthetic")
    distill.add_argument("--split", default=None, help="tfds split. Default: the teacher run's, else train")
    distill.add_argument("--data-dir", default=None, help="tfds data directory")
    distill.add_argument("--batch-size", type=positive_int, default=None, help="Default: 32")
    distill.add_argument("--learning-rate", type=positive_float, default=None,
                         help="Adam's learning rate. Default: 1e-4; with --resume, the run's")
    distill.add_argument("--seed", type=seed_type, default=None, help="seed of the data, the draws and the grids. "
                         "Default: 0")
    distill.add_argument("--plot-every", type=non_negative_int, default=None,
                         help="rounds between grids (0: never). Default: 1")
    distill.add_argument("--guidance-scale", type=float, default=None,
                         help="classifier-free guidance of a conditional model's grids. Default: 1")


def distill(args):
    from ddpm_keras.cli import runs
    from ddpm_keras.training.checkpoint import save_atomically

    run_dir = args.out
    record = runs.read_record(run_dir) if args.resume else {}
    if args.resume:
        for name in RESUMED:
            if getattr(args, name) is None:
                setattr(args, name, record.get(name))
    elif args.teacher is None:
        raise CLIError("--teacher is required: the trained model to distil (a run directory, a model.keras file "
                       "or a preset).")
    student_path = os.path.join(run_dir, STUDENT_FILE)
    if not args.resume:
        record = runs.check_fresh(run_dir)  # before anything long
    check_output(student_path, "--out", overwrite=False)
    teacher, teacher_record = _teacher(args.teacher)
    args.method = args.method or "progressive"
    args.dataset = args.dataset or teacher_record.get("dataset") or "synthetic"
    args.split = args.split or teacher_record.get("split") or "train"
    args.batch_size, args.seed = args.batch_size or 32, args.seed or 0
    args.plot_every = 1 if args.plot_every is None else args.plot_every
    args.guidance_scale = 1.0 if args.guidance_scale is None else args.guidance_scale

    import keras

    from ddpm_keras.data import load_dataset

    keras.utils.set_random_seed(args.seed)
    model, completed = _build_or_resume(args, teacher, run_dir)
    height, width = model.image_shape[:2]
    dataset = load_dataset(args.dataset, split=args.split, img_size=(height, width), batch_size=args.batch_size,
                           data_dir=args.data_dir, seed=args.seed, with_labels=model.num_classes is not None).repeat()
    learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    runs.write_record(run_dir, record, {**vars(args), "start_steps": model.start_steps,
                                        "steps_per_round": model.steps_per_round, "learning_rate": learning_rate},
                      {"resume": bool(args.resume), "from_epoch": completed})
    print(f"Distilling {args.teacher} into {model.target_steps} DDIM steps: {model.num_rounds} round(s) of "
          f"{model.steps_per_round} optimizer steps from {model.start_steps}, on {args.dataset} (batch {args.batch_size}), "
          f"into {run_dir}/", flush=True)
    try:
        model.fit(dataset, epochs=model.num_rounds, initial_epoch=completed, steps_per_epoch=model.steps_per_round,
                  callbacks=_callbacks(args, model, teacher, run_dir), verbose=1 if sys.stdout.isatty() else 2,
                  shuffle=False)  # the pipeline shuffles
    except Exception as error:  # noqa: BLE001 - a NaN, a full disk: one line each
        runs.raise_with_state(error, model, os.path.join(run_dir, "model.keras"))
        raise
    save_atomically(model.student, student_path)
    print(f"Done: {student_path} samples with {model.default_sampling} "
          f"(ddpm-keras sample --checkpoint {student_path} --sampler ddim --steps {model.student_steps})")


def _teacher(handle):
    """`(teacher model, its run's record)`: a run directory, a `.keras` file, or a preset handle."""
    from ddpm_keras import DiffusionModel
    from ddpm_keras.cli import runs

    if os.path.exists(handle):
        if os.path.isdir(handle) and not os.path.isfile(os.path.join(handle, "model.keras")):
            return DiffusionModel.from_preset(handle, compile=False), {}
        record = runs.read_record(handle) if os.path.isdir(handle) else {}
        return load_model(handle), record
    return DiffusionModel.from_preset(handle, compile=False), {}


def _build_or_resume(args, teacher, run_dir):
    import keras

    from ddpm_keras import ProgressiveDistillation
    from ddpm_keras.cli import runs

    model_path = os.path.join(run_dir, "model.keras")
    if args.resume:
        runs.remove_temporaries(run_dir)
        model = load_model(model_path)
        if not isinstance(model, ProgressiveDistillation):
            raise CLIError(f"{model_path} is a {type(model).__name__}, not a distillation run: resume it with "
                           "ddpm-keras train --resume.")
        completed = int(keras.ops.convert_to_numpy(model.epoch))
        if completed >= model.num_rounds:
            raise CLIError(f"{model_path} has finished its {model.num_rounds} rounds; {run_dir}/{STUDENT_FILE} is "
                           "the student.")
        if args.learning_rate is not None:
            model.optimizer.learning_rate = args.learning_rate
        runs.reconcile_log(run_dir, completed)
        print(f"Resuming {model_path} at round {completed + 1} of {model.num_rounds}.")
        return model, completed
    model = ProgressiveDistillation(
        teacher, target_steps=args.target_steps or 4, start_steps=args.start_steps,
        steps_per_round=args.steps_per_round, seed=args.seed,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate or 1e-4))
    return model, 0


def _callbacks(args, model, teacher, run_dir):
    from ddpm_keras.distillation.callbacks import TeacherStudentGrid
    from ddpm_keras.training.callbacks import NonFiniteGuard
    from ddpm_keras.training.callbacks import RunCheckpoint

    callbacks = [NonFiniteGuard(), RunCheckpoint(run_dir)]
    if args.plot_every:
        callbacks.append(TeacherStudentGrid(run_dir, teacher, seed=args.seed, every=args.plot_every,
                                            guidance_scale=args.guidance_scale))
    return callbacks


register("distill", add_distill_parser, distill)
