"""A run directory of `ddpm-keras train`: what a fresh run refuses, what a resumed run keeps, and its record.

A run directory holds `model.keras` (the whole training state of the last
finished epoch), `log.csv`, `run.json`, `samples/`, with `--fid-every`
`quality.csv` and `quality.png`, and with `--tensorboard` `tensorboard/`.
A fresh run never writes into a folder that holds any of them; a resumed
run takes the model and its data shape from the folder and refuses an
option that would change them, while the options that may change (epochs,
learning rate, batch size, plot cadence, ...) take effect and are recorded:
`run.json` keeps, beside the options in force, the list of every launch.
"""

import datetime
import json
import os

from ddpm_keras.cli.common import CLIError
from ddpm_keras.options import OPTIONS
from ddpm_keras.training.checkpoint import LOG_FILE
from ddpm_keras.training.checkpoint import MODEL_FILE
from ddpm_keras.training.checkpoint import QUALITY_LOG_FILE
from ddpm_keras.training.checkpoint import QUALITY_PLOT_FILE
from ddpm_keras.training.checkpoint import SAMPLES_DIR
from ddpm_keras.training.checkpoint import resume_log
from ddpm_keras.utils import files

RUN_RECORD = "run.json"
# The folder of the TensorBoard events of `--tensorboard`.
TENSORBOARD_DIR = "tensorboard"
# The files of a run directory: a fresh run refuses a folder holding any of them.
RUN_FILES = (MODEL_FILE, LOG_FILE, RUN_RECORD, QUALITY_LOG_FILE, QUALITY_PLOT_FILE, SAMPLES_DIR, TENSORBOARD_DIR)
# Files written through a temporary (`.tmp-PID-NAME`) that a kill can leave behind.
ATOMIC_FILES = (MODEL_FILE, LOG_FILE, RUN_RECORD, QUALITY_LOG_FILE, QUALITY_PLOT_FILE)
# The options a resumed run takes from run.json when they are not given: the run goes on as it was.
RESUMED_OPTIONS = ("dataset", "split", "data_dir", "batch_size", "epochs", "steps_per_epoch", "plot_every", "seed",
                   "precision", "posthoc_ema_every")
# The options a launch may change, recorded for each launch.
LAUNCH_OPTIONS = ("epochs", "learning_rate", "batch_size", "steps_per_epoch", "plot_every", "dataset", "split",
                  "seed", "fid_every", "jit_compile", "tensorboard", "posthoc_ema_every")

_ADVICE = "Drop the option, or start a new run with --out DIR."


def read_record(run_dir):
    """The run's `run.json` as a dict; `{}` when there is none."""
    path = os.path.join(run_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise CLIError(f"Cannot read {path} ({error}): it is not the record of a run.") from None
    return record if isinstance(record, dict) else {}


def check_fresh(run_dir):
    """Refuses a fresh run into `run_dir` when it is a file or holds a run's files; removes orphan temporaries.

    A folder whose only run file is the `run.json` of launches that saved
    nothing (their loss diverged in the first epoch, or they were stopped)
    takes the new run; its record is returned, to keep their history.
    """
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise CLIError(f"--out {run_dir} is a file: name a folder for the run.")
    model_path = os.path.join(run_dir, MODEL_FILE)
    if os.path.exists(model_path):
        raise CLIError(f"{model_path} exists: pass --resume to continue that run, or --out DIR for a new one.")
    found = [name for name in RUN_FILES if os.path.lexists(os.path.join(run_dir, name))]
    record = {}
    if found == [RUN_RECORD] and files.written_by_toolkit(os.path.join(run_dir, RUN_RECORD)):
        record, found = read_record(run_dir), []
    if found:
        raise CLIError(
            f"{run_dir} already holds a run's files ({', '.join(found)}) but no {MODEL_FILE}: pass --resume only "
            "if it has one; otherwise choose a new --out DIR (nothing there is replaced)."
        )
    remove_temporaries(run_dir)
    files.check_writable_folder(run_dir)
    return record


def remove_temporaries(run_dir):
    """Removes what killed writes of the run's files left (`.tmp-PID-model.keras`, ...), saying so."""
    removed = [name for target in ATOMIC_FILES for name in files.remove_orphan_temporaries(run_dir, target)]
    if removed:
        print(f"Removed {len(removed)} temporary file(s) of an interrupted save from {run_dir}: {', '.join(removed)}")
    return removed


def resolve_resumed_options(args, record):
    """Fills the options not given (`None`) from the run's record, in place: a resumed run goes on as it was."""
    for name in RESUMED_OPTIONS:
        if getattr(args, name, None) is None and record.get(name) is not None:
            setattr(args, name, record[name])
    return args


def check_resumed(args, record, model, model_path):
    """Raises a `CLIError` for an option given with `--resume` that would change the model or its data's shape."""
    _check_model_options(args, model, model_path)
    recorded_preset = record.get("preset")
    if args.preset is not None and recorded_preset is not None and args.preset != recorded_preset:
        raise CLIError(f"--preset {args.preset} differs from the run's {recorded_preset!r} ({model_path}): a resumed "
                       f"run keeps its model. {_ADVICE}")
    if args.img_size is not None and (args.img_size, args.img_size) != tuple(model.image_shape[:2]):
        height, width = model.image_shape[:2]
        raise CLIError(f"--img-size {args.img_size} differs from the resumed model's {height}x{width} "
                       f"({model_path}): a resumed run keeps its image size. {_ADVICE}")
    recorded_precision = record.get("precision") or "float32"
    if args.precision is not None and args.precision != recorded_precision:
        raise CLIError(f"--precision {args.precision} differs from the run's {recorded_precision!r} ({model_path}): "
                       f"the saved layers keep the precision they were built with. {_ADVICE}")
    if model.num_classes is not None and model.class_names and args.dataset != record.get("dataset"):
        from ddpm_keras.data import dataset_class_names

        names = list(dataset_class_names(args.dataset, data_dir=args.data_dir))
        if names != list(model.class_names):
            raise CLIError(f"--dataset {args.dataset} has other classes than the resumed model's {len(model.class_names)} "
                           f"({model_path}): a conditional model trains on the classes it was built for. {_ADVICE}")


def reconcile_log(run_dir, completed):
    """Trims `log.csv` to the checkpoint's `completed` epochs and says which epochs have no row."""
    missing = resume_log(run_dir, completed)
    if missing:
        shown = ", ".join(str(epoch) for epoch in missing[:10]) + (", ..." if len(missing) > 10 else "")
        print(f"Note: {os.path.join(run_dir, LOG_FILE)} has no row for epoch(s) {shown} of the checkpoint's "
              f"{completed} (the process stopped between a save and the log's append); the model holds them.")
    return missing


def write_record(run_dir, record, options, launch):
    """Writes `run.json`: `options` in force, `launch` appended to the record's `launches`."""
    launches = list(record.get("launches") or [])
    if record and not launches:  # a record of an earlier version: its one launch, as far as it says
        launches.append({"started": None, **{k: record.get(k) for k in LAUNCH_OPTIONS if k in record}})
    launches.append({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **launch})
    return files.write_json(os.path.join(run_dir, RUN_RECORD), {**options, "launches": launches})


def model_record(model):
    """The options of `model` (`options.OPTIONS`) for run.json: what the run actually trains."""
    config = model.get_config()
    record = {option.name: option.saved(config) for option in OPTIONS if option.part == "training"}
    record.update(diffusion=config["diffusion"], num_classes=model.num_classes, inpainting=model.inpainting)
    for option in OPTIONS:
        if (option.conditional and not model.num_classes) or (option.inpainting and not model.inpainting):
            record[option.name] = None
    return record


def _check_model_options(args, model, model_path):
    """Raises a `CLIError` where a model option given with `--resume` differs from the saved model's."""
    if args.class_conditional and model.num_classes is None:
        raise CLIError(
            f"--class-conditional, but the resumed model ({model_path}) is unconditional: a resumed run keeps "
            f"its network. {_ADVICE}"
        )
    if getattr(args, "inpainting", False) and not model.inpainting:
        raise CLIError(
            f"--inpainting, but the resumed model ({model_path}) is not an inpainting model: a resumed run keeps "
            f"its network; start a new run with --inpainting --init-from {os.path.dirname(model_path) or model_path}."
        )
    config = model.get_config()
    for option in OPTIONS:
        given = getattr(args, option.name, None)
        value = option.saved(config)
        if option.flag is not None and given is not None and option.from_flag(given) != value:
            flag = option.flag
            given_text = flag if given is True else "--no-" + flag[2:] if given is False else f"{flag} {given}"
            raise CLIError(
                f"{given_text} differs from the resumed model's {value!r} ({model_path}): a resumed run "
                f"keeps its model's options. {_ADVICE}"
            )


def raise_with_state(error, model, model_path):
    """Re-raises a non-finite loss or an operating-system error with where the last finished epoch is."""
    import keras

    from ddpm_keras.training.finite import NonFiniteError

    if not isinstance(error, (NonFiniteError, OSError)) or isinstance(error, FileNotFoundError):
        return
    saved = int(keras.ops.convert_to_numpy(model.epoch))
    if saved and os.path.isfile(model_path):
        kept, then = f"The last finished and finite state, epoch {saved}, is still in {model_path}", "then --resume"
    else:
        kept, then = "Nothing was saved", "then run again"
    if isinstance(error, NonFiniteError):
        raise NonFiniteError(f"{error.message} {kept}.", error.epoch, error.step) from None
    raise CLIError(f"{files.describe_os_error(error)}. {kept}: mend that, {then}.") from None
