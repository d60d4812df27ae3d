"""Training objectives compared: sample quality (FID) against training steps, per prediction type and weighting.

Usage: python bench/objectives.py [--extractor FILE.keras] [--epochs 40] [--eval-epochs 5,10,20,40]
       [--recipes epsilon:none,v:min_snr] [--sampler dpmpp_2m_sde@karras:20] [--num-samples 1000] [--seeds 0,1]
       [--out DIR]

Each recipe (`prediction_type:loss_weighting`) trains the same small
DiffusionModel as `bench/quality.py` (the `tiny` preset's UNet at 16 px,
T = 1000, linear betas, the preset's learning rate and EMA, seed 0) on the
same 2,048 synthetic flowers, one after the other; at each of
`--eval-epochs` it measures the Frechet distance of `--num-samples` images
from `--sampler` against 4,096 other synthetic flowers, in the feature
space of the shipped flower features (`metrics.flower_features`, or the
`.keras` extractor `--extractor` names), for each sampling seed. Prints one row
per recipe and evaluation point (mean +- std over seeds) and, per recipe,
the first evaluation at which it reaches the first recipe's final FID.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from quality import parse_configs  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras.data import load_synthetic  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.metrics import sample_distances  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402

NUM_IMAGES = 2048


def build_model(img_size, prediction_type, loss_weighting):
    model = DiffusionModel.from_preset(
        "tiny", img_size=img_size, seed=0, prediction_type=prediction_type, loss_weighting=loss_weighting
    )
    return model, get_preset("tiny")["training"]["batch_size"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--extractor", default=None,
                        help="a .keras feature extractor. Default: the shipped flower_features")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-epochs", default="5,10,20,40")
    parser.add_argument("--recipes", default="epsilon:none,v:min_snr")
    parser.add_argument("--sampler", default="dpmpp_2m_sde@karras:20",
                        help="name[@spacing]:steps of the sampler FID is measured with (as bench/quality.py)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_epochs = sorted(int(e) for e in args.eval_epochs.split(","))
    (sampling,) = parse_configs(args.sampler)
    keras.utils.set_random_seed(0)
    extractor = flower_features(args.extractor)
    reference = reference_statistics(synthetic_flowers(4096, args.img_size, seed=1), extractor,
                                     cache_dir=False, verbose=0)
    rows = []
    for recipe in args.recipes.split(","):
        prediction_type, weighting = recipe.split(":")
        model, batch_size = build_model(args.img_size, prediction_type, None if weighting == "none" else weighting)
        data = load_synthetic(NUM_IMAGES, img_size=args.img_size, batch_size=batch_size, seed=0)
        done, train_seconds = 0, 0.0
        for epoch in eval_epochs:
            start = time.perf_counter()
            history = model.fit(data, epochs=epoch, initial_epoch=done, verbose=0, shuffle=False)
            train_seconds += time.perf_counter() - start
            done = epoch
            fids = []
            for seed in seeds:
                images = model.generate_images(
                    args.num_samples, seed=seed, batch_size=500, verbose=0, sampler=sampling["sampler"],
                    num_steps=sampling["num_steps"], eta=sampling["eta"], timestep_spacing=sampling["timestep_spacing"],
                    **sampling["options"],
                )
                fids.append(sample_distances(images, reference, extractor)["fid"])
                if args.out and seed == seeds[0]:
                    os.makedirs(args.out, exist_ok=True)
                    save_image_grid(images[:64], os.path.join(args.out, f"{recipe.replace(':', '-')}-{epoch}.png"),
                                    scale=4)
            row = {"recipe": recipe, "epochs": epoch, "steps": epoch * (NUM_IMAGES // batch_size),
                   "loss": float(history.history["loss"][-1]), "fid": fids, "train_seconds": train_seconds}
            rows.append(row)
            print(f"  {recipe} epoch {epoch}: FID {np.mean(fids):.3f} +- {np.std(fids):.3f} "
                  f"(loss {row['loss']:.4f}, {train_seconds:.0f} s)", flush=True)

    print(f"\nFID of {args.num_samples} samples ({args.sampler}) per seed, seeds {seeds}; mean +- std over seeds\n")
    print("| recipe | epochs | training steps | FID | training s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['recipe']} | {row['epochs']} | {row['steps']} | {np.mean(row['fid']):.3f} +- "
              f"{np.std(row['fid']):.3f} | {row['train_seconds']:.0f} |")
    baseline = [r for r in rows if r["recipe"] == rows[0]["recipe"]][-1]
    target = np.mean(baseline["fid"])
    print(f"\nSteps to reach {baseline['recipe']}'s final FID ({target:.3f} at {baseline['steps']} steps):")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        reached = [r for r in rows if r["recipe"] == recipe and np.mean(r["fid"]) <= target]
        print(f"  {recipe}: {reached[0]['steps'] if reached else 'not within ' + str(args.epochs) + ' epochs'}")
    if args.out:
        with open(os.path.join(args.out, "objectives.json"), "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
