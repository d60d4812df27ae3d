"""`ddpm-keras train`: its options, how they override the preset or must agree with a resumed model, and the run.

Under `--strategy multiworker` every worker runs the same command; the
chief (worker 0) writes the run directory, the others `--worker-dir`.
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile

from ddpm_keras.cli.common import CHECKPOINTS_DIR
from ddpm_keras.cli.common import EXIT_WORKER_LOST
from ddpm_keras.cli.common import PROG
from ddpm_keras.cli.common import CLIError
from ddpm_keras.cli.common import WorkerLostError
from ddpm_keras.cli.common import add_extractor_args
from ddpm_keras.cli.common import load_model
from ddpm_keras.cli.common import register
from ddpm_keras.cli.common import slug
from ddpm_keras.cli.common import value_type
from ddpm_keras.cli.inpainting import add_inpainting_arguments
from ddpm_keras.cli.inpainting import apply_inpainting
from ddpm_keras.cli.inpainting import init_from
from ddpm_keras.cli.inpainting import inpainting_source
from ddpm_keras.cli.inpainting import keyed_value
from ddpm_keras.cli.types import non_negative_int
from ddpm_keras.cli.types import positive_float
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import seed as seed_type
from ddpm_keras.options import OPTIONS
from ddpm_keras.presets import PRESETS
from ddpm_keras.presets import get_preset
from ddpm_keras.utils.distribute import PRECISIONS
from ddpm_keras.utils.distribute import STRATEGIES

DEFAULT_PRESET = "flowers64"


def add_train_parser(commands, formatter):
    """Adds `ddpm-keras train` and its options to the sub-parsers `commands`."""
    train = commands.add_parser(
        "train",
        help="train a model (and resume it)",
        formatter_class=formatter,
        description="Train a DiffusionModel with model.fit. Each epoch writes RUN_DIR/model.keras "
        "(network, EMA, optimizer, epoch; atomically), appends to RUN_DIR/log.csv and, every "
        "--plot-every epochs, writes a grid of samples to RUN_DIR/samples/.",
    )

    train.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help=f"model and training defaults. Default: {DEFAULT_PRESET}; with --resume, the run's")
    train.add_argument(
        "--dataset",
        default=None,
        help="oxford_flowers102 (tfds), synthetic (procedural flowers, no download) or PATH to a "
        "folder of images. Default: the preset's (flowers64: oxford_flowers102, tiny: synthetic)",
    )
    train.add_argument("--split", default=None,
                       help="tfds split of oxford_flowers102, e.g. train+validation+test. Default: train")
    train.add_argument("--data-dir", default=None, help="tfds data directory (default: ~/tensorflow_datasets)")
    train.add_argument("--epochs", type=positive_int, default=None, help="total epochs to reach. Default: the preset's")
    train.add_argument(
        "--steps-per-epoch", type=positive_int, default=None, help="batches per epoch (the data repeats). Default: one pass"
    )
    train.add_argument("--batch-size", type=positive_int, default=None, help="Default: the preset's")
    train.add_argument("--learning-rate", type=positive_float, default=None,
                       help="Adam learning rate. Default: the preset's; with --resume, the run's")
    train.add_argument("--img-size", type=positive_int, default=None, help="image size in pixels. Default: the preset's")
    _add_objective_arguments(train)
    train.add_argument("--out", default=None,
                       help="run directory. Default: checkpoints/PRESET-DATASET (-inpainting with --inpainting)")
    train.add_argument("--resume", action="store_true",
                       help="continue from RUN_DIR/model.keras at the next epoch. Options not given are the run's; "
                       "one that changes the model or its data's shape (--preset, --img-size, --precision, the "
                       "objective, the classes) is refused; the others take effect and run.json records them")
    train.add_argument("--plot-every", type=non_negative_int, default=None, help="epochs between sample grids (0: never). Default: the preset's")
    train.add_argument("--seed", type=seed_type, default=None,
                       help="seed of the data order, noise and sample grids. Default: 0")
    train.add_argument("--precision", default=None, choices=PRECISIONS,
                       help="mixed_bfloat16 for recent GPUs, TPUs and AVX512_BF16 CPUs; mixed_float16 adds loss "
                       "scaling for older GPUs. Weights, EMA and samples stay float32. Default: float32")
    train.add_argument("--strategy", default="none", choices=STRATEGIES,
                       help="mirrored: every GPU of this machine; multiworker: several processes or machines "
                       "(TF_CONFIG or srun; on JAX KERAS_DISTRIBUTION_*), each running this command. "
                       "--batch-size is the global batch")
    train.add_argument("--worker-timeout", type=positive_float, default=600.0, metavar="SECONDS",
                       help="multiworker: how long a worker waits for the others to join at the start (then it "
                       "stops, SIGALRM), and how long training may go without a finished step before it exits 75, "
                       "or is stopped by SIGALRM 15 s later (a lost or stalled worker; keep it above the epoch-end "
                       "pause of checkpoints, grids and FID)")
    train.add_argument("--worker-dir", default=None,
                       help="multiworker: where a worker other than the chief writes its checkpoints (equal to "
                       "the chief's). Default: a temporary directory, deleted at the end")
    train.add_argument("--jit-compile", action="store_true",
                       help="compile the training step with XLA (pays for small models and on GPUs)")
    train.add_argument("--fid-every", type=non_negative_int, default=0,
                       help="epochs between FID/KID measurements of EMA samples against the training images "
                       "(0: never); they go into log.csv, quality.csv and quality.png")
    train.add_argument("--fid-samples", type=positive_int, default=1000, help="samples per FID/KID measurement")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard events to RUN_DIR/tensorboard/: the loss of each epoch, the "
                       "quality metrics of --fid-every and the sample grids; view them with: "
                       "tensorboard --logdir RUN_DIR")
    train.add_argument("--posthoc-ema-every", type=non_negative_int, default=None, metavar="STEPS",
                       help="optimizer steps between snapshots of power-function EMAs (EDM2; stds 0.05, 0.10) "
                       "in RUN_DIR/posthoc_ema/, for `ema` to make the EMA of any std. Default: 0 (never); the run's")
    add_extractor_args(train)


def _add_objective_arguments(train):
    """The model's options (`options.OPTIONS`, those with a flag): each overrides the preset; a resume keeps its model's."""
    for option in OPTIONS:
        if option.flag is None:
            continue
        if option.boolean:
            kind = {"action": argparse.BooleanOptionalAction}
        elif option.keys:
            kind = {"type": keyed_value(option), "nargs": "+"}
        else:
            kind = {"choices": option.choices} if option.choices else {"type": value_type(option.range)}
        train.add_argument(option.flag, dest=option.name, default=None, metavar=option.metavar, help=option.help,
                           **kind)
    train.add_argument("--class-conditional", action="store_true",
                       help="train on the dataset's labels (sub-folders, tfds labels, synthetic classes) with a "
                       "class embedding, for classifier-free guidance. Conditional presets: flowers64_cond, "
                       "tiny_cond, quickstart, synthetic_flowers32_cond")
    add_inpainting_arguments(train)


def apply_model_flags(config, args):
    """Writes the model options given on the command line into the preset `config` (in place)."""
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is not None:
            config[option.part][option.argument] = option.from_flag(value)
    return config


def class_conditioning(args, config, dataset_name):
    """The class names of a conditional run (and `config`'s `num_classes` set from them), or `None`.

    A run is conditional with `--class-conditional` or a preset whose UNet
    has `num_classes`; the names come from the dataset (its sub-folders,
    tfds's label names, or the synthetic classes) and must number the
    preset's `num_classes`.
    """
    from ddpm_keras.data import dataset_class_names

    preset_classes = config["unet"].get("num_classes")
    if not (args.class_conditional or preset_classes):
        if args.cond_drop_prob is not None:
            raise CLIError("--cond-drop-prob applies to class-conditional runs: add --class-conditional.")
        return None
    names = dataset_class_names(dataset_name, data_dir=args.data_dir)
    if preset_classes and preset_classes != len(names):
        raise CLIError(
            f"The preset's network has {preset_classes} classes but {dataset_name} has {len(names)}: "
            "pass --class-conditional with an unconditional preset to size the network from the data."
        )
    config["unet"]["num_classes"] = len(names)
    return list(names)


def train(args):
    """`ddpm-keras train`: builds or resumes a model and fits it, checkpointing each epoch."""
    from ddpm_keras.cli import runs

    source_record = inpainting_source(args)
    if args.preset is None and source_record.get("preset"):
        args.preset = source_record["preset"]  # the run's preset: its network and objective
    run_dir = args.out or os.path.join(
        CHECKPOINTS_DIR, f"{args.preset or DEFAULT_PRESET}-{slug(args.dataset or _preset_dataset(args.preset))}"
        + ("-inpainting" if args.inpainting else "")
    )
    record = runs.read_record(run_dir) if args.resume else {}
    if args.resume:
        runs.resolve_resumed_options(args, record)
    preset = args.preset or record.get("preset") or DEFAULT_PRESET
    config = get_preset(preset)
    if source_record.get("preset_config") and source_record.get("preset") == preset:
        for part, values in source_record["preset_config"].items():  # the source run's network and options
            config.setdefault(part, {}).update(values)
    config = apply_inpainting(args, apply_model_flags(config, args))
    training = config["training"]
    dataset_name = args.dataset or training["dataset"]
    args.dataset, args.split, args.seed = dataset_name, args.split or "train", args.seed or 0
    args.precision = args.precision or "float32"
    class_names = None if args.resume else class_conditioning(args, config, dataset_name)
    epochs = args.epochs or training["epochs"]
    batch_size = args.batch_size or training["batch_size"]
    plot_every = training["plot_every"] if args.plot_every is None else args.plot_every
    if args.img_size:
        config["unet"]["img_size"] = args.img_size
    if args.worker_dir is not None and args.strategy != "multiworker":
        raise CLIError(f"--worker-dir applies to --strategy multiworker. Received: --strategy {args.strategy}")

    import keras

    from ddpm_keras.data import load_dataset
    from ddpm_keras.data.by_name import SYNTHETIC_IMAGES
    from ddpm_keras.utils.distribute import is_chief
    from ddpm_keras.utils.distribute import set_precision
    from ddpm_keras.utils.distribute import strategy_scope
    from ddpm_keras.utils.distribute import worker_of

    set_precision(args.precision)
    model_path = os.path.join(run_dir, "model.keras")
    # JAX keeps its distribution set for `fit`; the strategy's collectives start with it.
    with _join_deadline(args) as joined, strategy_scope(args.strategy) as strategy, contextlib.ExitStack() as cleanup:
        joined()
        keras.utils.set_random_seed(args.seed)
        worker, workers = worker_of(strategy)
        # Every worker saves (collective ops), only the chief into the run directory.
        write_dir = run_dir if is_chief(strategy) else (
            args.worker_dir or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ddpm-keras-worker-"))
        )
        if write_dir == run_dir and not args.resume:
            record = runs.check_fresh(run_dir)  # before anything long
        model, completed = _build_or_resume(args, config, model_path, epochs, write_dir, class_names, workers, record)
        if args.jit_compile:
            model.jit_compile = True
        height, width = model.image_shape[:2]
        dataset = load_dataset(
            dataset_name, split=args.split, img_size=(height, width), batch_size=batch_size,
            data_dir=args.data_dir, seed=args.seed, with_labels=model.num_classes is not None,
            num_synthetic=training.get("synthetic_images", SYNTHETIC_IMAGES),
        )
        if args.steps_per_epoch:
            dataset = dataset.repeat()
        if workers > 1:
            dataset = _shard_by_data(dataset)
        if write_dir == run_dir:
            _write_record(args, run_dir, record, model, completed, preset=preset, epochs=epochs,
                          batch_size=batch_size, plot_every=plot_every, preset_config=config)
        callbacks, plotter, watchdog = _callbacks(args, model, write_dir, run_dir, dataset_name, plot_every, worker, workers,
                                                  guidance=training.get("plot_guidance", 1.0))
        classes = (f", {model.num_classes} classes" if model.num_classes else "") + (
            ", inpainting" if model.inpainting else "")
        where = f"worker {worker} of {workers}, " if workers > 1 else ""
        print(f"Training {model.network.count_params():,} parameters on {dataset_name} "
              f"({where}{height}x{width}, batch {batch_size}{classes}) into {write_dir}/", flush=True)
        try:
            model.fit(
                dataset, epochs=epochs, initial_epoch=completed, steps_per_epoch=args.steps_per_epoch,
                callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
                shuffle=False,  # the pipeline shuffles examples before batching
            )
        except Exception as error:  # noqa: BLE001 - a lost worker, a NaN, a full disk: one line each
            _raise_if_worker_lost(error, workers, run_dir)
            runs.raise_with_state(error, model, os.path.join(write_dir, "model.keras"))
            raise
        finally:
            watchdog.stop()
    if write_dir != run_dir:
        print(f"Done: worker {worker} of {workers}; the chief wrote {model_path}"
              + (f" (this worker's copy: {args.worker_dir}/)" if args.worker_dir else ""))
        return
    grids = os.path.dirname(plotter.last_path) + "/" if plotter and plotter.last_path else None
    print(f"Done: {model_path}, {os.path.join(run_dir, 'log.csv')}" + (f", {grids}" if grids else ""))


def _write_record(args, run_dir, record, model, completed, preset_config, **resolved):
    """Writes run.json: the options in force (`args` with the `resolved` ones), the model's, this launch."""
    import keras

    from ddpm_keras.cli import runs

    learning_rate = float(f"{float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)):.7g}")
    options = {**vars(args), **resolved, "learning_rate": learning_rate}
    launch = {"resume": bool(args.resume), "from_epoch": completed, **{k: options[k] for k in runs.LAUNCH_OPTIONS}}
    runs.write_record(
        run_dir, record, {**options, "preset_config": preset_config, "model": runs.model_record(model)}, launch
    )


def _callbacks(args, model, write_dir, run_dir, dataset_name, plot_every, worker, workers, guidance=1.0):
    """The callbacks of `fit`, in order; returns `(callbacks, plotter or None, watchdog)`."""
    import keras

    from ddpm_keras.cli.runs import TENSORBOARD_DIR
    from ddpm_keras.training.callbacks import NonFiniteGuard
    from ddpm_keras.training.callbacks import RunCheckpoint
    from ddpm_keras.training.callbacks import SamplePlotter
    from ddpm_keras.training.callbacks import StallWatchdog
    from ddpm_keras.training.callbacks import TensorBoardLogger
    from ddpm_keras.training.callbacks import WorkerShare

    # The guard first: a non-finite loss stops the epoch before any callback saves it. The quality
    # monitor before the checkpoint: the checkpoint's log.csv then records its figures. TensorBoard after
    # both: it logs the figures too, and only epochs that were saved (a resumed run does not repeat one).
    callbacks = [NonFiniteGuard()]
    if args.fid_every:
        from ddpm_keras.cli.evaluate import quality_monitor

        callbacks.append(quality_monitor(args, dataset_name, model.image_shape[:2], write_dir))
    if args.posthoc_ema_every:  # before the checkpoint: each checkpoint then has the profiles' state
        from ddpm_keras.training.posthoc_ema import PostHocEMA
        callbacks.append(PostHocEMA(write_dir, args.posthoc_ema_every))
    callbacks.append(RunCheckpoint(write_dir))
    tensorboard = None
    if args.tensorboard and write_dir == run_dir:  # under several workers, the chief's events only
        tensorboard = TensorBoardLogger(os.path.join(run_dir, TENSORBOARD_DIR))
        callbacks.append(tensorboard)
    plotter = SamplePlotter(write_dir, every=plot_every, seed=args.seed, guidance_scale=guidance,
                            tensorboard=tensorboard) if plot_every else None
    callbacks += [plotter] if plotter else []
    if workers > 1 and keras.backend.backend() == "tensorflow":
        callbacks.append(WorkerShare(worker, workers))
    # A bound on the wait for a lost worker, however TensorFlow or JAX notices it (or not).
    watchdog = StallWatchdog(
        args.worker_timeout, f"{PROG}: error: another worker was lost or stalled: no training step "
        f"finished for {args.worker_timeout:g} s (--worker-timeout). {_resume_advice(run_dir)}",
        EXIT_WORKER_LOST, alarm=True,
    )
    if workers > 1:
        callbacks.append(watchdog)
    return callbacks, plotter, watchdog


def _preset_dataset(preset):
    return PRESETS[preset or DEFAULT_PRESET]["training"]["dataset"]


@contextlib.contextmanager
def _join_deadline(args):
    """Bounds the wait for the other workers at the start; yields the function to call once they have joined.

    TensorFlow waits for every worker without a bound, inside a call that
    holds the interpreter (no Python thread or handler can run): after
    `--worker-timeout` s `SIGALRM`, left to its default action, ends the
    process (status 142 in a shell), after the line printed here.
    """
    if args.strategy != "multiworker" or not hasattr(signal, "alarm"):
        yield lambda: None
        return
    print(f"Waiting up to {args.worker_timeout:g} s (--worker-timeout) for the other workers to join; "
          "a worker left alone then stops (SIGALRM).", flush=True)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, round(args.worker_timeout)))
    try:
        yield lambda: signal.alarm(0)
    finally:
        signal.alarm(0)


def _shard_by_data(dataset):
    """`dataset` split between workers by example: each reads the same (seeded) stream and keeps its share."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _raise_if_worker_lost(error, workers, run_dir):
    if workers < 2:
        return
    from ddpm_keras.utils.distribute import is_worker_lost

    if is_worker_lost(error):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "aborted" in line), lines[0] if lines else type(error).__name__)
        raise WorkerLostError(f"another worker was lost ({reason}). {_resume_advice(run_dir)}") from None


def _resume_advice(run_dir):
    return f"{run_dir}/model.keras holds the last finished epoch: relaunch every worker with --resume."


def _build_or_resume(args, config, model_path, epochs, write_dir, class_names=None, workers=1, record=None):
    """The model to train and its completed epochs: loaded with `--resume`, else built from the preset."""
    import keras

    from ddpm_keras.cli import runs

    if args.resume:
        if workers > 1 and not os.path.isfile(model_path):
            raise CLIError(
                f"No checkpoint at {model_path} on this worker: every worker resumes from the chief's run "
                "directory, which must be shared between the machines (or copied to each) before --resume."
            )
        if write_dir == os.path.dirname(model_path):
            runs.remove_temporaries(write_dir)
        model = load_model(model_path)
        runs.check_resumed(args, record or {}, model, model_path)
        completed = int(keras.ops.convert_to_numpy(model.epoch))  # a MirroredVariable under a strategy
        if completed >= epochs:
            raise CLIError(
                f"{model_path} has already trained {completed} epochs; pass --epochs larger than {completed} to continue."
            )
        if args.learning_rate is not None:
            model.optimizer.learning_rate = args.learning_rate
        runs.reconcile_log(write_dir, completed)
        print(f"Resuming {model_path} at epoch {completed + 1} of {epochs}.")
        return model, completed
    model = _build_model(config, args.learning_rate, args.seed, class_names)
    return (model if args.init_from is None else init_from(model, args.init_from)), 0


def _build_model(config, learning_rate, seed, class_names=None):
    from ddpm_keras import DiffusionModel
    from ddpm_keras.preset_builder import model_from_config

    if learning_rate is not None:
        config["training"]["learning_rate"] = learning_rate
    return model_from_config(DiffusionModel, config, seed=seed, class_names=class_names)


register("train", add_train_parser, train)
