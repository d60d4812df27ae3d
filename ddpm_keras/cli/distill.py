"""`ddpm-keras distill`: a student that samples in a few network calls, from a trained model, in a run directory.

    ddpm-keras distill --teacher checkpoints/tiny-synthetic --target-steps 4 --out checkpoints/tiny-4steps
    ddpm-keras distill --teacher synthetic_flowers32_cond --steps-per-round 1000 --out runs/flowers-4steps
    ddpm-keras distill --out runs/flowers-4steps --resume
    ddpm-keras distill --method consistency --teacher checkpoints/tiny-synthetic --steps 20000 --out runs/tiny-cd

`--method progressive` (`ProgressiveDistillation`): one epoch is one round
(`--steps-per-round` optimizer steps). `--method consistency`
(`ConsistencyDistillation`): `--steps` optimizer steps in epochs of
`--steps-per-round` (default 1,000, at most `--steps`; the last epoch is
whole, so the steps are rounded up to a multiple of it). After each epoch
`RUN_DIR/model.keras` holds the whole state (student, its EMA, the teacher,
the optimizer), `log.csv` the epoch's loss, `samples/epoch_NNNN.png` the
teacher above the student from the same noise (consistency: the teacher's
DDIM over the distillation grid). At the end `RUN_DIR/student.keras` is the
student, which `ddpm-keras sample --checkpoint RUN_DIR/student.keras`
samples with its own sampler and step count.
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

METHODS = ("progressive", "consistency")
STUDENT_FILE = "student.keras"
CONSISTENCY_STEPS = 10_000  # --steps of --method consistency
CONSISTENCY_EPOCH_STEPS = 1000  # its --steps-per-round: optimizer steps between checkpoints
# The options a resumed distillation takes from run.json when they are not given.
RESUMED = ("teacher", "method", "target_steps", "start_steps", "steps_per_round", "steps", "num_discretization_steps",
           "dataset", "split", "data_dir", "batch_size", "seed", "plot_every", "guidance_scale")
# The flags of one method only.
METHOD_FLAGS = {"progressive": ("start_steps",), "consistency": ("steps", "num_discretization_steps")}


def add_distill_parser(commands, formatter):
    distill = commands.add_parser(
        "distill", help="distil a trained model into a student of a few sampling steps", formatter_class=formatter,
        description="Progressive distillation (Salimans & Ho 2022): each round halves the student's deterministic "
        "DDIM steps, from --start-steps to --target-steps; one epoch is one round. Consistency distillation (Song et "
        "al. 2023, --method consistency): a consistency model of --target-steps sampling steps, trained for --steps "
        "optimizer steps in epochs of --steps-per-round. RUN_DIR/model.keras is written after each epoch "
        "(atomically), with log.csv and a grid of the teacher above the student; RUN_DIR/student.keras at the end.",
    )
    distill.add_argument("--teacher", default=None,
                         help="the trained model: a run directory, a model.keras file, or a preset (a shipped name, "
                         "a preset folder, hf://...). Required unless --resume")
    distill.add_argument("--method", default=None, choices=METHODS, help="Default: progressive")
    distill.add_argument("--steps", type=positive_int, default=None,
                         help=f"consistency: optimizer steps in all. Default: {CONSISTENCY_STEPS}")
    distill.add_argument("--num-discretization-steps", type=positive_int, default=None,
                         help="consistency: N, the timesteps of the teacher's grid (Karras et al.'s spacing, from "
                         "0 to T - 1), at least 2. Default: 18")
    distill.add_argument("--target-steps", type=positive_int, default=None, help="the student's steps. Default: 4")
    distill.add_argument("--start-steps", type=positive_int, default=None,
                         help="progressive: the teacher's DDIM steps in the first round: target-steps times a power "
                         "of two. Default: the one nearest to 64, at most the diffusion's T")
    distill.add_argument("--steps-per-round", type=positive_int, default=None,
                         help="optimizer steps per epoch: progressive's rounds (default 2000); consistency's "
                         f"checkpoints (default {CONSISTENCY_EPOCH_STEPS}, at most --steps)")
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
    for method, names in METHOD_FLAGS.items():
        given = [name for name in names if getattr(args, name) is not None]
        if method != args.method and given:
            raise CLIError(f"--{given[0].replace('_', '-')} is an option of --method {method}. Received: "
                           f"--method {args.method}")
    args.dataset = args.dataset or teacher_record.get("dataset") or "synthetic"
    args.split = args.split or teacher_record.get("split") or "train"
    args.batch_size, args.seed = args.batch_size or 32, args.seed or 0
    args.plot_every = 1 if args.plot_every is None else args.plot_every
    args.guidance_scale = 1.0 if args.guidance_scale is None else args.guidance_scale

    import keras

    from ddpm_keras.data import load_dataset

    keras.utils.set_random_seed(args.seed)
    model, completed, epochs = _build_or_resume(args, teacher, run_dir)
    height, width = model.image_shape[:2]
    dataset = load_dataset(args.dataset, split=args.split, img_size=(height, width), batch_size=args.batch_size,
                           data_dir=args.data_dir, seed=args.seed, with_labels=model.num_classes is not None).repeat()
    learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    runs.write_record(run_dir, record, {**vars(args), "learning_rate": learning_rate},
                      {"resume": bool(args.resume), "from_epoch": completed})
    if args.method == "progressive":
        plan = (f"{model.target_steps} DDIM steps: {epochs} round(s) of {args.steps_per_round} optimizer steps from "
                f"{model.start_steps}")
    else:
        plan = (f"a consistency model of {model.target_steps} step(s): {epochs} epoch(s) of {args.steps_per_round} "
                f"optimizer steps on a grid of {model.num_discretization_steps} timesteps")
    print(f"Distilling {args.teacher} into {plan}, on {args.dataset} (batch {args.batch_size}), into {run_dir}/",
          flush=True)
    try:
        model.fit(dataset, epochs=epochs, initial_epoch=completed, steps_per_epoch=args.steps_per_round,
                  callbacks=_callbacks(args, model, teacher, run_dir), verbose=1 if sys.stdout.isatty() else 2,
                  shuffle=False)  # the pipeline shuffles
    except Exception as error:  # noqa: BLE001 - a NaN, a full disk: one line each
        runs.raise_with_state(error, model, os.path.join(run_dir, "model.keras"))
        raise
    save_atomically(model.student, student_path)
    sampling = model.default_sampling
    print(f"Done: {student_path} samples with {sampling} (ddpm-keras sample --checkpoint {student_path} "
          f"--sampler {sampling['sampler']} --steps {sampling['num_steps']})")


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
    """`(distiller, epochs completed, epochs in all)`: the run's, resumed, or a new one of `args.method`."""
    import keras

    from ddpm_keras import ConsistencyDistillation
    from ddpm_keras import ProgressiveDistillation
    from ddpm_keras.cli import runs

    model_path = os.path.join(run_dir, "model.keras")
    if args.resume:
        runs.remove_temporaries(run_dir)
        model = load_model(model_path)
        if not isinstance(model, (ProgressiveDistillation, ConsistencyDistillation)):
            raise CLIError(f"{model_path} is a {type(model).__name__}, not a distillation run: resume it with "
                           "ddpm-keras train --resume.")
        args.method = model.method
        epochs = _plan(args, model)
        unit = "rounds" if args.method == "progressive" else "epochs"
        completed = int(keras.ops.convert_to_numpy(model.epoch))
        if completed >= epochs:
            raise CLIError(f"{model_path} has finished its {epochs} {unit}; {run_dir}/{STUDENT_FILE} is the student.")
        if args.learning_rate is not None:
            model.optimizer.learning_rate = args.learning_rate
        runs.reconcile_log(run_dir, completed)
        print(f"Resuming {model_path} at {unit[:-1]} {completed + 1} of {epochs}.")
        return model, completed, epochs
    if args.method == "consistency":
        model = ConsistencyDistillation(
            teacher, target_steps=args.target_steps or 4, seed=args.seed,
            **({} if args.num_discretization_steps is None else
               {"num_discretization_steps": args.num_discretization_steps}),
        )
    else:
        model = ProgressiveDistillation(
            teacher, target_steps=args.target_steps or 4, start_steps=args.start_steps,
            steps_per_round=args.steps_per_round, seed=args.seed,
        )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate or 1e-4))
    return model, 0, _plan(args, model)


def _plan(args, model):
    """The epochs of the run, its options in `args` set to the model's (what run.json records)."""
    if args.method == "progressive":
        args.start_steps, args.steps_per_round = model.start_steps, model.steps_per_round
        return model.num_rounds
    args.steps = args.steps or CONSISTENCY_STEPS
    args.steps_per_round = min(args.steps_per_round or CONSISTENCY_EPOCH_STEPS, args.steps)
    args.num_discretization_steps = model.num_discretization_steps
    return -(-args.steps // args.steps_per_round)


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
