"""Inpainting: a model trained for the task against the replacement method and RePaint on the unconditional model.

Usage: python bench/inpainting.py [--img-size 16] [--epochs 15] [--finetune-epochs 300] [--num-images 256]
       [--steps 50] [--seeds 0,1] [--grid docs/inpainting.png] [--no-fd] [--out DIR] [--load DIR]
       [--longer-base-epochs 65] [--sampler ddpm] [--trained-sampler dpmpp_2m] [--schedule cosine]
       [--inpainting-loss hole]

What it does, all on data the project draws itself (no download):

1. Trains an unconditional DiffusionModel (the `quick` preset at
   `--img-size`) on 2,048 synthetic flowers for `--epochs`.
2. Starts an inpainting model from it (`DiffusionModel.to_inpainting`, what
   `train --inpainting --init-from RUN` does: its weights, the mask's input
   channels zero; checked to predict exactly as the unconditional model
   before training) and fine-tunes it for `--finetune-epochs` on the same
   images with random masks (the default `mask_rates`), the base
   model's min-SNR weighting (`--finetune-weighting none` weighs every
   timestep alike instead) and the loss on every pixel
   (`--inpainting-loss hole`: on the pixels to fill). With ddpm at 50
   calls and the loss on every pixel, the seam was 0.168 after 48 epochs
   unweighted, 0.138 after 63 with min-SNR and 0.124 after 150; with
   the loss on the hole, 0.125 after 63.
3. On `--num-images` held-out flowers, each with one mask (a box, a half or a
   stroke, drawn once from a fixed seed and the same for every method),
   fills in the masked region with: the replacement method (`--sampler`,
   `--steps` steps), RePaint (`--sampler` with 5 resamplings per step) at
   equal network calls (`--steps / 5` steps) and at 5x (`--steps` steps),
   and the trained model (`--trained-sampler`, `--steps` steps, and at 5x).
4. Per method, over `--seeds` sampling seeds (mean +- std): the root mean
   squared error on the masked pixels against the real images; the
   Frechet distance of the completed images to 4,096 other flowers in the
   shipped flower features (`metrics.flower_features`; unless
   `--no-fd`); the seam, the mean absolute difference between neighbouring
   pixels across the mask's border (one known, one filled), beside the
   real images' on the same pairs; and seconds.
5. Saves a grid (`--grid`): per row an original, the masked input, the
   mask, then the replacement method, RePaint at 5x and the trained model.
6. With `--longer-base-epochs N`, trains the unconditional model N epochs
   more and compares the replacement method and RePaint on it too: the
   trained model had `--epochs` + `--finetune-epochs` in all, and a
   longer-trained base improves RePaint as well.

`--out DIR` keeps the run there, so that a run cut short resumes where it
stopped when the same command is given again: the unconditional model
(`base.keras`, saved once trained), the fine-tuning and the longer
training of the base (`finetune/` and `longer_base/`, each epoch's
checkpoint and log, `training.RunCheckpoint`), the inpainting model
(`inpainting.keras`) and results.json. `--load DIR` takes the models another
run saved there (the unconditional one alone: the inpainting model is
fine-tuned from it).
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras.data import load_synthetic  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.metrics import sample_distances  # noqa: E402
from ddpm_keras.training.checkpoint import MODEL_FILE  # noqa: E402
from ddpm_keras.training.checkpoint import RunCheckpoint  # noqa: E402
from ddpm_keras.training.checkpoint import save_atomically  # noqa: E402
from ddpm_keras.training.masks import INPAINTING_LOSSES  # noqa: E402
from ddpm_keras.training.masks import random_masks  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402


RESAMPLE = 5
NUM_IMAGES, BATCH_SIZE = 2048, 32
EVAL_MASKS = {"box": 0.4, "half": 0.3, "stroke": 0.3}


def train_base(img_size, epochs):
    return train_more(DiffusionModel.from_preset("quick", img_size=img_size, seed=0), img_size, epochs)


def train_more(model, img_size, epochs, run_dir=None):
    """`model` trained `epochs` epochs (more) on the same images, in place; `(model, final loss, seconds)`.

    With `run_dir`, each epoch is checkpointed there, and a model that
    `run_dir` already holds is taken up instead of `model` and trained
    for the epochs it lacks of `epochs`.
    """
    done, callbacks = 0, []
    if run_dir:
        path = os.path.join(run_dir, MODEL_FILE)
        if os.path.isfile(path):
            model = keras.saving.load_model(path)
            done = int(keras.ops.convert_to_numpy(model.epoch))
            print(f"Resuming {path} after epoch {done} of {epochs}", flush=True)
        callbacks = [RunCheckpoint(run_dir)]
    data = load_synthetic(NUM_IMAGES, img_size=img_size, batch_size=BATCH_SIZE, seed=0)
    start = time.perf_counter()
    history = model.fit(data, initial_epoch=done, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
    return model, history.history.get("loss", [float("nan")])[-1], time.perf_counter() - start


def finetune(base, img_size, epochs, learning_rate, options, schedule, run_dir=None):
    model = base.to_inpainting(**options)
    check_start(base, model, img_size)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_of(learning_rate, schedule, epochs)))
    model.epoch.assign(0)
    return train_more(model, img_size, epochs, run_dir)


def learning_rate_of(learning_rate, schedule, epochs):
    """`learning_rate` held (`"constant"`) or decayed to 0 over `epochs` of the 2,048 images (`"cosine"`)."""
    if schedule == "constant":
        return learning_rate
    return keras.optimizers.schedules.CosineDecay(learning_rate, epochs * (NUM_IMAGES // BATCH_SIZE))


def check_start(base, inpainter, img_size):
    """The zero-initialised inpainting model predicts exactly as the unconditional one, whatever the mask."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, img_size, img_size, 3)).astype("float32")
    t = np.array([10, 200, 500, 990], "int32")
    mask = keras.ops.convert_to_numpy(random_masks(4, img_size, img_size, EVAL_MASKS, 3))
    expected = keras.ops.convert_to_numpy(base.ema_network([x, t]))
    got = keras.ops.convert_to_numpy(inpainter.ema_network([x, t, x * mask, mask]))
    assert np.array_equal(expected, got), np.abs(expected - got).max()


def seam(images, mask):
    """The mean |difference| of neighbouring pixels across the border of `mask` (one known, one not)."""
    known = mask[..., 0] > 0.5
    values = []
    for axis in (1, 2):
        across = np.logical_xor(np.take(known, range(1, known.shape[axis]), axis=axis),
                                np.take(known, range(known.shape[axis] - 1), axis=axis))
        diff = np.abs(np.diff(images, axis=axis)).mean(axis=-1)
        values.append(diff[across])
    values = np.concatenate(values)
    return float(values.mean()) if values.size else float("nan")


def methods(steps):
    """`(label, which model, inpaint options, network calls)` of each method compared."""
    few = max(1, steps // RESAMPLE)
    return [
        ("replacement", "base", {"num_steps": steps}, steps),
        ("RePaint r=5", "base", {"num_steps": few, "resample": RESAMPLE}, few * RESAMPLE),
        ("trained", "inpainting", {"num_steps": steps}, steps),
        ("replacement", "base", {"num_steps": steps * RESAMPLE}, steps * RESAMPLE),
        ("RePaint r=5", "base", {"num_steps": steps, "resample": RESAMPLE}, steps * RESAMPLE),
        ("trained", "inpainting", {"num_steps": steps * RESAMPLE}, steps * RESAMPLE),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="of the fine-tuning")
    parser.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                        help="the learning rate of the fine-tuning, and of --longer-base-epochs")
    parser.add_argument("--finetune-weighting", default="min_snr", choices=["none", "min_snr"],
                        help="the fine-tuning's loss weighting (min_snr: the base model's, quick's)")
    parser.add_argument("--inpainting-loss", default="all", choices=INPAINTING_LOSSES,
                        help="the pixels the fine-tuning's loss counts: all, or hole (those to fill)")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"],
                        help="of the replacement method and RePaint (which resamples between its steps)")
    parser.add_argument("--trained-sampler", default=None, help="of the trained model (any). Default: --sampler")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--grid", default="docs/inpainting.png")
    parser.add_argument("--no-fd", action="store_true", help="skip the extractor and the Frechet distance")
    parser.add_argument("--out", default=None)
    parser.add_argument("--load", default=None)
    parser.add_argument("--longer-base-epochs", type=int, default=0,
                        help="then train the unconditional model this many epochs more and compare the replacement "
                        "method and RePaint on it too (the inpainting model trained --epochs + --finetune-epochs)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    keras.utils.set_random_seed(0)
    size = args.img_size

    saved = args.load or args.out
    loaded = {name: os.path.join(saved or "", f"{name}.keras") for name in ("base", "inpainting")}
    if saved and os.path.isfile(loaded["base"]):
        base = keras.saving.load_model(loaded["base"])
        print(f"Loaded {loaded['base']}")
    else:
        base, loss, seconds = train_base(size, args.epochs)
        print(f"unconditional model: {base.network.count_params():,} parameters, {args.epochs} epochs of 2,048 "
              f"{size}-px flowers in {seconds:.0f} s, final loss {loss:.4f}", flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            save_atomically(base, loaded["base"])
    if args.load and os.path.isfile(loaded["inpainting"]):
        inpainter = keras.saving.load_model(loaded["inpainting"])
        print(f"Loaded {loaded['inpainting']}")
    else:
        options = {"loss_weighting": None if args.finetune_weighting == "none" else args.finetune_weighting,
                   "inpainting_loss": args.inpainting_loss}
        inpainter, loss, seconds = finetune(base, size, args.finetune_epochs, args.learning_rate, options,
                                            args.schedule, args.out and os.path.join(args.out, "finetune"))
        print(f"inpainting model: started from it (the same predictions, checked), {args.finetune_epochs} epochs "
              f"with random masks in {seconds:.0f} s, final loss {loss:.4f}", flush=True)
    if args.out:
        save_atomically(inpainter, os.path.join(args.out, "inpainting.keras"))
    models = {"base": base, "inpainting": inpainter}

    images = synthetic_flowers(args.num_images, size, seed=50)
    masks = np.asarray(keras.ops.convert_to_numpy(random_masks(args.num_images, size, size, EVAL_MASKS, 7)))
    holes = masks[..., 0] < 0.5
    real_seam = seam(images, masks)
    extractor = reference = None
    if not args.no_fd:
        extractor = flower_features()
        reference = reference_statistics(synthetic_flowers(4096, size, seed=1), extractor, cache_dir=False, verbose=0)
        real_fd = sample_distances(images, reference, extractor)["fid"]

    rows, grid_columns = [], {}
    compared = methods(args.steps)
    if args.longer_base_epochs:
        longer = f" (base {args.epochs + args.longer_base_epochs} epochs)"
        compared += [None] + [(label + longer, *rest) for label, *rest in compared if rest[0] == "base"]
    for method in compared:
        if method is None:
            if args.schedule != "constant":
                rate = float(keras.ops.convert_to_numpy(base.optimizer.learning_rate))
                schedule = learning_rate_of(rate, args.schedule, args.longer_base_epochs)
                base.compile(optimizer=keras.optimizers.Adam(schedule))
            base, loss, seconds = train_more(base, size, args.longer_base_epochs,
                                             args.out and os.path.join(args.out, "longer_base"))
            models["base"] = base
            print(f"unconditional model: {args.longer_base_epochs} epochs more in {seconds:.0f} s, final loss "
                  f"{loss:.4f}", flush=True)
            continue
        label, which, options, calls = method
        errors, fds, seams, seconds = [], [], [], []
        sampler = args.sampler if which == "base" else args.trained_sampler or args.sampler
        for seed in seeds:
            start = time.perf_counter()
            filled = models[which].inpaint(images, masks, seed=seed, sampler=sampler, verbose=0, **options)
            seconds.append(time.perf_counter() - start)
            errors.append(float(np.sqrt(np.mean(np.square(filled - images)[holes]))))
            seams.append(seam(filled, masks))
            if extractor is not None:
                fds.append(sample_distances(filled, reference, extractor)["fid"])
            if seed == seeds[0]:
                grid_columns[(label, calls)] = filled
        rows.append({"method": label, "network_calls": calls, "masked_rmse": errors, "fd": fds, "seam": seams,
                     "seconds": float(np.median(seconds))})
        print(f"  {label} {calls} calls: RMSE {np.mean(errors):.4f}, seam {np.mean(seams):.4f}", flush=True)

    def cell(values, digits=4):
        return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}" if values else "-"

    print(f"\n{args.num_images} held-out {size}-px flowers, one mask each (box 0.4, half 0.3, stroke 0.3 of them), "
          f"seeds {seeds}; mean +- std over seeds. Real images: seam {real_seam:.4f}"
          + ("" if extractor is None else f", FD {real_fd:.4f}") + "\n")
    print("| method | network calls | masked RMSE | FD | seam (real " f"{real_seam:.3f}) | s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['network_calls']} | {cell(row['masked_rmse'])} | {cell(row['fd'])} "
              f"| {cell(row['seam'])} | {row['seconds']:.1f} |")

    if args.grid:
        shown = 8
        masked = np.where(masks[:shown] > 0.5, images[:shown], 0.0)
        mask_image = np.broadcast_to(2.0 * masks[:shown] - 1.0, masked.shape)
        columns = [images[:shown], masked, mask_image, grid_columns[("replacement", args.steps)][:shown],
                   grid_columns[("RePaint r=5", args.steps * RESAMPLE)][:shown],
                   grid_columns[("trained", args.steps)][:shown]]
        grid = np.stack(columns, axis=1).reshape((-1,) + images.shape[1:])
        os.makedirs(os.path.dirname(args.grid) or ".", exist_ok=True)
        save_image_grid(grid, args.grid, ncols=len(columns), scale=4)
        print(f"\nWrote {args.grid}: per row the original, the masked input, the mask, the replacement method "
              f"({args.steps} calls), RePaint ({args.steps * RESAMPLE} calls), the trained model ({args.steps} calls).")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"rows": rows, "real_seam": real_seam, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
