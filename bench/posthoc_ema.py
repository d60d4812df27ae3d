"""Post-hoc EMA: FD against the EMA's width, from one run, beside the run's fixed EMA and its raw weights.

Usage: python bench/posthoc_ema.py --out DIR [--img-size 16] [--epochs 30] [--snapshot-every 64]
       [--stds 0.03,0.05,0.075,0.1,0.15,0.2] [--num-samples 500] [--seeds 0,1] [--load]

Trains the `tiny` preset (its fixed EMA: `ema` and `ema_warmup` of the preset) on
2,048 synthetic flowers at `--img-size` with `PostHocEMA` (stds 0.05 and 0.10,
a snapshot every `--snapshot-every` steps) into `DIR` (`--load`: the run
already there), then, for each std of `--stds`, reconstructs the EMA of that
width at the last step (`posthoc_ema.reconstruct`) and measures the FD of
`--num-samples` samples (`DEFAULT_SAMPLING`) in the shipped flower features
against 4,096 real flowers, mean +- std over `--seeds`; the same for the
fixed EMA and for the raw network.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras.callbacks import PostHocEMA  # noqa: E402
from ddpm_keras.callbacks import RunCheckpoint  # noqa: E402
from ddpm_keras.data import load_synthetic  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.metrics import sample_distances  # noqa: E402
from ddpm_keras.posthoc_ema import posthoc_coefficients  # noqa: E402
from ddpm_keras.posthoc_ema import reconstruct  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402


def train(args):
    model = DiffusionModel.from_preset("tiny", img_size=args.img_size, seed=0)
    data = load_synthetic(2048, img_size=args.img_size, batch_size=get_preset("tiny")["training"]["batch_size"],
                          seed=0)
    start = time.perf_counter()
    model.fit(data, epochs=args.epochs, verbose=0, shuffle=False,
              callbacks=[PostHocEMA(args.out, snapshot_every=args.snapshot_every), RunCheckpoint(args.out)])
    print(f"trained {int(model.optimizer.iterations)} steps in {time.perf_counter() - start:.0f} s "
          f"(fixed EMA {model.ema}, warm-up {model.ema_warmup})", flush=True)


def fds(model, reference, extractor, args):
    values = []
    for seed in args.seeds:
        images = model.generate_images(args.num_samples, seed=seed, verbose=0, **DEFAULT_SAMPLING)
        values.append(sample_distances(images, reference, extractor, metrics=("fid",))["fid"])
    return values


def row(label, values):
    print(f"| {label} | {np.mean(values):.2f} +- {np.std(values):.2f} ({', '.join(f'{v:.2f}' for v in values)}) |",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--load", action="store_true", help="measure the run already in --out")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--snapshot-every", type=int, default=64)
    parser.add_argument("--stds", default="0.03,0.05,0.075,0.1,0.15,0.2")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.load:
        if os.path.exists(args.out) and os.listdir(args.out):
            parser.error(f"--out {args.out} is not empty: name a new folder, or pass --load to measure it")
        train(args)
    model = keras.saving.load_model(os.path.join(args.out, "model.keras"))
    extractor = flower_features()
    reference = reference_statistics(synthetic_flowers(4096, model.image_shape[0], seed=1), extractor,
                                     cache_dir=False, verbose=0)
    fixed = model.ema_network.get_weights()
    print(f"\n{args.num_samples} samples ({DEFAULT_SAMPLING}), seeds {args.seeds}, step "
          f"{int(model.optimizer.iterations)}\n| EMA | FD |\n|---|---|")
    row(f"fixed: ema {model.ema}" + (" with warm-up" if model.ema_warmup else ""), fds(model, reference, extractor,
                                                                                      args))
    for std in (float(s) for s in args.stds.split(",")):
        try:
            residual = posthoc_coefficients(args.out, std)["residual"]
            model.ema_network.set_weights(reconstruct(args.out, std))
        except ValueError as error:
            print(f"| post-hoc std {std:g} | refused: {error} |")
            continue
        row(f"post-hoc std {std:g} (profile error {residual:.1g})", fds(model, reference, extractor, args))
    model.ema_network.set_weights(model.network.get_weights())
    row("raw weights (no EMA)", fds(model, reference, extractor, args))
    model.ema_network.set_weights(fixed)


if __name__ == "__main__":
    main()
