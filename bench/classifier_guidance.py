"""How classifier guidance trades diversity for class fidelity, and what it costs per step, on synthetic flowers.

Usage: python bench/classifier_guidance.py [--preset tiny] [--epochs 40] [--classifier-epochs 20] [--img-size 16]
       [--classifier-width 0.25] [--num-samples 500] [--seeds 0,1,2] [--scales 0,1,3,10] [--out DIR] [--load DIR]

1. Trains the preset's unconditional model on 2,048 synthetic flowers (labels unused) and a
   `NoisyClassifier` (`build_classifier`: the preset UNet's encoder at `--classifier-width` times its
   widths, one residual block per level) on the same flowers with their 4 classes (a petal colour
   family and a petal count each), on the model's diffusion. Prints the classifier's accuracy by
   noise level on held-out flowers.
2. Takes the shipped flower features (`metrics.flower_features`, or `--extractor`).
3. For each classifier scale and sampling seed: `--num-samples` samples, a quarter per class, drawn
   with `presets.DEFAULT_SAMPLING` and `classifier_scale=s` (scale 0: the unguided model). Reports
   - class accuracy: the fraction of samples that `synthetic_class_of` (the hue of the saturated
     pixels, a rule independent of the guiding classifier) puts in the requested class;
   - FD: the Frechet distance of the samples' features to 4,096 real labelled flowers, and the
     mean per-class FD; diversity as in `bench/conditional.py`.
   Mean +- std over seeds.
4. The cost: seconds per sampling step of a batch of 100 with and without the classifier (the
   median of 3 timed runs after a warm-up), and their ratio.

`--out DIR` saves the models, a grid per scale (seed 0, one row per class) and `results.json`;
`--load DIR` reuses the models (and trains the classifier if DIR has none).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conditional import statistics  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import NoisyClassifier  # noqa: E402
from ddpm_keras import build_classifier  # noqa: E402
from ddpm_keras.data import SYNTHETIC_CLASS_NAMES  # noqa: E402
from ddpm_keras.data import synthetic_class_of  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.data import synthetic_labels  # noqa: E402
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import frechet_distance  # noqa: E402
from ddpm_keras.nn.classifier import encoder_config  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402

NUM_CLASSES = len(SYNTHETIC_CLASS_NAMES)


def training_flowers(img_size):
    labels = synthetic_labels(2048, seed=0)
    return synthetic_flowers(2048, img_size, seed=0, labels=labels), labels


def train_model(preset, img_size, epochs):
    """The unconditional model, trained on 2,048 flowers (their labels unused)."""
    images, _ = training_flowers(img_size)
    model = DiffusionModel.from_preset(preset, img_size=img_size, seed=0)
    start = time.perf_counter()
    model.fit(images, batch_size=get_preset(preset)["training"]["batch_size"], epochs=epochs, verbose=0)
    print(f"{preset}: {model.network.count_params():,} parameters, {epochs} epochs in "
          f"{time.perf_counter() - start:.0f} s")
    return model


def train_classifier(model, preset, width, epochs):
    """A noise-aware classifier on the model's diffusion: the preset UNet's encoder at `width` times its widths."""
    images, labels = training_flowers(model.image_shape[0])
    config = encoder_config(get_preset(preset)["unet"], width)
    network = build_classifier(model.image_shape[0], 3, NUM_CLASSES, **config)
    classifier = NoisyClassifier(network, model.diffusion, seed=0, class_names=list(SYNTHETIC_CLASS_NAMES))
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    classifier.fit(images, labels, batch_size=64, epochs=epochs, verbose=0)
    print(f"classifier: widths {config['widths']}, {network.count_params():,} parameters, {epochs} epochs in "
          f"{time.perf_counter() - start:.0f} s")
    return classifier


def measure(model, classifier, extractor, reference, scale, seed, num_samples):
    """Class accuracy, FD (overall, mean per class) and diversity of one run at classifier scale `scale`."""
    labels = np.arange(num_samples) % NUM_CLASSES
    guidance = {"classifier": classifier, "classifier_scale": scale} if scale else {}
    images = model.generate_images(num_samples, seed=seed, labels=labels if scale else None, batch_size=250,
                                   verbose=0, **guidance, **DEFAULT_SAMPLING)
    predicted = synthetic_class_of(images)
    features = extract_features(extractor, images)
    per_class_fd = [frechet_distance(*statistics(features[labels == k]), *reference["classes"][k])
                    for k in range(NUM_CLASSES)]
    diversity = np.mean([features[labels == k].std(axis=0).mean() / reference["class_std"][k]
                         for k in range(NUM_CLASSES)])
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "fd": float(frechet_distance(*statistics(features), *reference["all"])),
        "class_fd": float(np.mean(per_class_fd)), "diversity": float(diversity),
    }, images, labels


def seconds_per_step(model, classifier=None, batch=100, repeats=3):
    """The median seconds per sampling step of `batch` images, after a warm-up call that compiles."""
    steps = DEFAULT_SAMPLING["num_steps"]
    guidance = {"classifier": classifier, "labels": 0, "classifier_scale": 3.0} if classifier else {}

    def run():
        model.generate_images(batch, seed=0, verbose=0, segment_steps=None, **guidance, **DEFAULT_SAMPLING)

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--classifier-epochs", type=int, default=20)
    parser.add_argument("--classifier-width", type=float, default=0.25,
                        help="the classifier's widths as a fraction of the UNet's")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scales", default="0,1,3,10")
    parser.add_argument("--out", default=None)
    parser.add_argument("--load", default=None, help="use the .keras files of an earlier --out")
    parser.add_argument("--extractor", default=None,
                        help="a .keras feature extractor. Default: the shipped flower_features")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    keras.utils.set_random_seed(0)

    classifier, extractor = None, flower_features(args.extractor)
    if args.load:
        load = lambda name: keras.saving.load_model(os.path.join(args.load, name))  # noqa: E731
        model = load("model.keras")
        if os.path.exists(os.path.join(args.load, "classifier.keras")):
            classifier = load("classifier.keras")
        args.img_size = model.image_shape[0]
    else:
        model = train_model(args.preset, args.img_size, args.epochs)
    if classifier is None:
        classifier = train_classifier(model, args.preset, args.classifier_width, args.classifier_epochs)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, item in (("model", model), ("classifier", classifier)):
            item.save(os.path.join(args.out, f"{name}.keras"))

    held_out = synthetic_labels(1000, seed=2)
    by_level = classifier.accuracy_by_noise_level(synthetic_flowers(1000, args.img_size, seed=2, labels=held_out),
                                                  held_out)
    print("classifier accuracy on held-out flowers by timestep: "
          + ", ".join(f"t={t}: {a:.2f}" for t, a in by_level.items()))
    real_labels = synthetic_labels(4096, seed=1)
    real = synthetic_flowers(4096, args.img_size, seed=1, labels=real_labels)
    real_features = extract_features(extractor, real)
    reference = {
        "all": statistics(real_features),
        "classes": [statistics(real_features[real_labels == k]) for k in range(NUM_CLASSES)],
        "class_std": [real_features[real_labels == k].std(axis=0).mean() for k in range(NUM_CLASSES)],
    }
    real_accuracy = float(np.mean(synthetic_class_of(real) == real_labels))
    print(f"real flowers: class accuracy {real_accuracy:.4f} (the rule's own error)")

    rows = []
    for scale in scales:
        runs = []
        for seed in seeds:
            result, images, labels = measure(model, classifier, extractor, reference, scale, seed, args.num_samples)
            runs.append(result)
            if args.out and seed == seeds[0]:
                order = np.argsort(labels, kind="stable")
                per_row = args.num_samples // NUM_CLASSES
                grid = np.concatenate([images[order][k * per_row : k * per_row + 12] for k in range(NUM_CLASSES)])
                save_image_grid(grid, os.path.join(args.out, f"classifier-{scale:g}.png"), ncols=12, scale=4)
        rows.append({"scale": scale, "runs": runs})
        print(f"  s={scale:g}: accuracy {np.mean([r['accuracy'] for r in runs]):.3f}, "
              f"FD {np.mean([r['fd'] for r in runs]):.2f}", flush=True)

    unguided, guided = seconds_per_step(model), seconds_per_step(model, classifier)
    print(f"\n{args.num_samples} samples per seed (a quarter per class), seeds {seeds}, {DEFAULT_SAMPLING['sampler']} "
          f"{DEFAULT_SAMPLING['num_steps']} steps; mean +- std over seeds; scale 0 is the unguided model\n")
    print("| classifier scale | class accuracy | FD (all) | FD (per class, mean) | diversity |")
    print("|---|---|---|---|---|")
    for row in rows:
        def stat(key, runs=row["runs"]):
            values = [r[key] for r in runs]
            return f"{np.mean(values):.3f} +- {np.std(values):.3f}"

        print(f"| {row['scale']:g} | {stat('accuracy')} | {stat('fd')} | {stat('class_fd')} | {stat('diversity')} |")
    print(f"\nseconds per step, batch of 100: unguided {unguided:.4f}, guided {guided:.4f}: "
          f"{guided / unguided:.2f}x (target: at most 2.5x)")
    if args.out:
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"rows": rows, "real_accuracy": real_accuracy, "classifier_by_level": by_level,
                       "seconds_per_step": {"unguided": unguided, "guided": guided}, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
