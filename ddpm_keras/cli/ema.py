"""`ddpm-keras ema`: post-hoc EMAs of chosen widths from a run's snapshots (EDM2), one `.keras` file each.

    ddpm-keras train --posthoc-ema-every 1000 --out RUN_DIR
    ddpm-keras ema --checkpoint RUN_DIR --std 0.05,0.1,0.15 --out emas   # emas/ema_0.050.keras, ...
    ddpm-keras evaluate --checkpoint emas --metrics fid                   # each, and the best by FID
"""

import argparse
import os

from ddpm_keras.cli.common import register

EMA_FILE = "ema_{std:.3f}.keras"


def add_ema_parser(commands, formatter):
    """Adds the `ema` command to the `ddpm-keras` sub-parsers."""
    from ddpm_keras.cli.common import add_overwrite_arg
    from ddpm_keras.cli.types import positive_int

    ema = commands.add_parser(
        "ema",
        help="make the EMA of chosen widths from a run's post-hoc EMA snapshots (train --posthoc-ema-every)",
        formatter_class=formatter,
        description="Reconstruct, from the power-function EMA snapshots of a run trained with --posthoc-ema-every "
        "(RUN_DIR/posthoc_ema/), the EMA of each relative std of --std at the last snapshot's step (or --step), by "
        "the least squares of Karras et al. 2024 (EDM2, Appendix C.2), and write the run's model with that EMA "
        "network to --out/ema_STD.keras, with the run's run.json beside them. `evaluate --checkpoint DIR` then "
        "measures each and names the best by FID.",
    )
    ema.add_argument("--checkpoint", required=True, help="a run directory trained with --posthoc-ema-every")
    ema.add_argument("--std", required=True, type=std_list, metavar="STD[,STD...]",
                     help="relative standard deviations of the EMA profile, comma-separated (EDM2 sweeps 0.05 to "
                     "0.2; the snapshots represent well the stds near the tracked 0.05 and 0.10)")
    ema.add_argument("--step", type=positive_int, default=None,
                     help="the optimizer step of the EMAs. Default: the last snapshot's")
    ema.add_argument("--out", required=True,
                     help="the folder to write ema_STD.keras files and run.json into (created if missing)")
    add_overwrite_arg(ema, "a file")
    return ema


def std_list(text):
    """`"0.05,0.1"` as `[0.05, 0.1]`: an `ArgumentTypeError` for a value that is not a std of a power-function EMA."""
    from ddpm_keras.training.power_ema import STD_MAX

    values = []
    for item in (part.strip() for part in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not 0 < value <= STD_MAX:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a relative std in (0, {STD_MAX:.3f}]: pass numbers such as 0.05,0.1,0.15")
        values.append(value)
    return list(dict.fromkeys(values))


def ema(args):
    """Runs `ddpm-keras ema`."""
    from ddpm_keras.cli.common import CLIError
    from ddpm_keras.cli.common import check_output
    from ddpm_keras.cli.common import load_model
    from ddpm_keras.cli.runs import RUN_RECORD
    from ddpm_keras.cli.runs import read_record
    from ddpm_keras.posthoc_ema import posthoc_coefficients
    from ddpm_keras.posthoc_ema import reconstruct
    from ddpm_keras.posthoc_ema import set_ema_weights
    from ddpm_keras.training.checkpoint import MODEL_FILE
    from ddpm_keras.training.checkpoint import save_atomically
    from ddpm_keras.utils import files

    run_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(args.checkpoint) or "."
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a file: name a folder for the .keras files.")
    if os.path.exists(os.path.join(args.out, MODEL_FILE)):
        raise CLIError(f"--out {args.out} holds a run ({MODEL_FILE}): name another folder for the .keras files.")
    paths = {std: os.path.join(args.out, EMA_FILE.format(std=std)) for std in args.std}
    if len(set(paths.values())) < len(paths):
        raise CLIError(f"--std {','.join(f'{s:g}' for s in args.std)} names the same file twice ({EMA_FILE}): "
                       "pass stds that differ in the third decimal.")
    # Before any computation: every std's coefficients (an unreachable std fails at once), then the outputs.
    infos = {std: posthoc_coefficients(run_dir, std, step=args.step) for std in args.std}
    for path in [*paths.values(), os.path.join(args.out, RUN_RECORD)]:
        check_output(path, "--out", overwrite=args.overwrite)
    model = load_model(args.checkpoint)
    for std, path in paths.items():
        set_ema_weights(model, reconstruct(run_dir, std, step=args.step), run_dir)
        save_atomically(model, path)
        info = infos[std]
        print(f"Wrote {path}: the EMA of std {std:g} at step {info['step']} from {len(set(info['files']))} "
              f"snapshots (profile error {info['residual']:.2g})")
    record = read_record(run_dir)
    record.pop(files.JSON_MARK_KEY, None)
    files.write_json(os.path.join(args.out, RUN_RECORD), {
        **record, "posthoc_ema": {"checkpoint": args.checkpoint, "step": infos[args.std[0]]["step"],
                                  "files": {os.path.basename(path): std for std, path in paths.items()}},
    })
    print(f"Pick the best: ddpm-keras evaluate --checkpoint {args.out} --metrics fid")


register("ema", add_ema_parser, ema)
