"""How classifier-free guidance trades diversity for class fidelity, on labelled synthetic flowers.

Usage: python bench/conditional.py [--preset tiny_cond] [--epochs 40] [--img-size 16] [--num-samples 1000]
       [--seeds 0,1,2] [--scales 0,1,1.5,2,3,5] [--sampler dpmpp_2m_sde] [--out DIR] [--load DIR]

1. Trains the preset's class-conditional model (`tiny_cond`: the tiny UNet with a class embedding,
   v-prediction, min-SNR, label dropout 0.1) on 2,048 labelled synthetic flowers (4 classes, each a
   petal colour family and a petal count).
2. Takes the shipped flower features (`metrics.flower_features`, or `--extractor`).
3. For each guidance scale and sampling seed: `--num-samples` samples, a quarter per class, drawn
   with `presets.DEFAULT_SAMPLING`. Reports
   - class accuracy: the fraction of samples whose flower `synthetic_class_of` (the hue of the
     saturated pixels) puts in the requested class, per class and overall;
   - FD: the Frechet distance of the samples' features to 4,096 real labelled flowers (balanced),
     in the extractor's space, and the mean per-class FD;
   - diversity: the mean over classes of the per-feature standard deviation of the samples'
     features, relative to the real flowers' (1.0: as varied as the data).
   Mean +- std over seeds. `--out DIR` saves the models, a grid per scale (seed 0, one row per
   class) and `results.json`; `--load DIR` reuses the models.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras.data import SYNTHETIC_CLASS_NAMES  # noqa: E402
from ddpm_keras.data import load_synthetic  # noqa: E402
from ddpm_keras.data import synthetic_class_of  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.data import synthetic_labels  # noqa: E402
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import frechet_distance  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402


def train_conditional(preset, img_size, epochs):
    config = get_preset(preset)
    model = DiffusionModel.from_preset(preset, img_size=img_size, class_names=list(SYNTHETIC_CLASS_NAMES), seed=0)
    data = load_synthetic(2048, img_size=img_size, batch_size=config["training"]["batch_size"], seed=0,
                          with_labels=True)
    start = time.perf_counter()
    history = model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return model, history.history["loss"][-1], time.perf_counter() - start


def statistics(features):
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def measure(model, extractor, reference, scale, seed, num_samples):
    """Class accuracy (overall and per class), FD (overall, mean per class) and diversity of one run."""
    labels = np.arange(num_samples) % len(SYNTHETIC_CLASS_NAMES)
    images = model.generate_images(num_samples, seed=seed, labels=labels, guidance_scale=scale, batch_size=500,
                                   verbose=0, **DEFAULT_SAMPLING)
    predicted = synthetic_class_of(images)
    features = extract_features(extractor, images)
    per_class_accuracy = [float(np.mean(predicted[labels == k] == k)) for k in range(len(SYNTHETIC_CLASS_NAMES))]
    per_class_fd = [frechet_distance(*statistics(features[labels == k]), *reference["classes"][k])
                    for k in range(len(SYNTHETIC_CLASS_NAMES))]
    diversity = np.mean([features[labels == k].std(axis=0).mean() / reference["class_std"][k]
                         for k in range(len(SYNTHETIC_CLASS_NAMES))])
    return {
        "accuracy": float(np.mean(predicted == labels)), "per_class_accuracy": per_class_accuracy,
        "fd": float(frechet_distance(*statistics(features), *reference["all"])),
        "class_fd": float(np.mean(per_class_fd)), "diversity": float(diversity),
    }, images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny_cond")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scales", default="0,1,1.5,2,3,5")
    parser.add_argument("--out", default=None)
    parser.add_argument("--load", default=None, help="use model.keras of an earlier --out")
    parser.add_argument("--extractor", default=None,
                        help="a .keras feature extractor. Default: the shipped flower_features")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    keras.utils.set_random_seed(0)

    extractor = flower_features(args.extractor)
    if args.load:
        model = keras.saving.load_model(os.path.join(args.load, "model.keras"))
        args.img_size = model.image_shape[0]
    else:
        model, loss, seconds = train_conditional(args.preset, args.img_size, args.epochs)
        print(f"{args.preset}: {model.network.count_params():,} parameters, {args.epochs} epochs of 2,048 labelled "
              f"{args.img_size}-px flowers in {seconds:.0f} s, final loss {loss:.4f}")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            model.save(os.path.join(args.out, "model.keras"))

    real_labels = synthetic_labels(4096, seed=1)
    real = synthetic_flowers(4096, args.img_size, seed=1, labels=real_labels)
    real_features = extract_features(extractor, real)
    reference = {
        "all": statistics(real_features),
        "classes": [statistics(real_features[real_labels == k]) for k in range(len(SYNTHETIC_CLASS_NAMES))],
        "class_std": [real_features[real_labels == k].std(axis=0).mean() for k in range(len(SYNTHETIC_CLASS_NAMES))],
    }
    real_accuracy = float(np.mean(synthetic_class_of(real) == real_labels))
    print(f"real flowers: class accuracy {real_accuracy:.4f} (the classifier's own error)")

    rows = []
    for scale in scales:
        runs = []
        for seed in seeds:
            result, images, labels = measure(model, extractor, reference, scale, seed, args.num_samples)
            runs.append(result)
            if args.out and seed == seeds[0]:
                order = np.argsort(labels, kind="stable")
                per_row = args.num_samples // len(SYNTHETIC_CLASS_NAMES)
                grid = np.concatenate([images[order][k * per_row : k * per_row + 12]
                                       for k in range(len(SYNTHETIC_CLASS_NAMES))])
                save_image_grid(grid, os.path.join(args.out, f"guidance-{scale:g}.png"), ncols=12, scale=4)
        row = {"scale": scale, "runs": runs}
        rows.append(row)
        accuracy = [r["accuracy"] for r in runs]
        fd = [r["fd"] for r in runs]
        print(f"  s={scale:g}: accuracy {np.mean(accuracy):.3f} +- {np.std(accuracy):.3f}, "
              f"FD {np.mean(fd):.2f} +- {np.std(fd):.2f}", flush=True)

    print(f"\n{args.num_samples} samples per seed ({', '.join(SYNTHETIC_CLASS_NAMES)}: a quarter each), seeds {seeds}, "
          f"{DEFAULT_SAMPLING['sampler']} {DEFAULT_SAMPLING['num_steps']} steps; mean +- std over seeds\n")
    print("| guidance s | class accuracy | per class | FD (all) | FD (per class, mean) | diversity |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        runs = row["runs"]

        def stat(key, runs=runs):
            values = [r[key] for r in runs]
            return f"{np.mean(values):.3f} +- {np.std(values):.3f}"

        per_class = " / ".join(f"{np.mean([r['per_class_accuracy'][k] for r in runs]):.2f}"
                               for k in range(len(SYNTHETIC_CLASS_NAMES)))
        print(f"| {row['scale']:g} | {stat('accuracy')} | {per_class} | {stat('fd')} | {stat('class_fd')} "
              f"| {stat('diversity')} |")
    if args.out:
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"rows": rows, "real_accuracy": real_accuracy, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
