"""The shipped presets' quality, its spread over sampling seeds, and what breaks it.

Usage: python bench/pretrained.py [--num-samples 256] [--seeds 0,1,2,3,4] [--presets NAME,...]
       [--raw NAME=RUN_DIR ...] [--breaks]

For each preset (default: every shipped one), with its recommended sampling
(`metadata.json`'s `sampling`, `DEFAULT_SAMPLING` otherwise), in the shipped
flower features (`metrics.flower_features`):

- FD of `--num-samples` samples against 4,096 real synthetic flowers (for a
  conditional preset: labelled ones, the samples a quarter per class), mean
  and spread over `--seeds`, beside the floor: as many other real flowers;
- for a conditional preset, the class accuracy (`synthetic_class_of`), the
  intra-class FD (each class against its own real flowers) and its ratio to
  the intra-class FD of the same noise sampled without guidance: what the
  recommended guidance gains, 1.0 exactly when guidance does nothing;
- seconds per sample.

With `--breaks`, the same figures for deliberate faults, which the quality
test (tests/test_pretrained.py) must catch: each coefficient of the
recommended sampler 10% off (the ancestral step's `x_0` and `x_t` weights
in the posterior mean and its noise; DPM-Solver++(2M) SDE's `a`, `c0` and
`noise`); guidance off (s = 1) for a conditional preset; and with
`--raw NAME=RUN_DIR`, the run's raw (not EMA) network in place of the EMA
one.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import hub  # noqa: E402
from ddpm_keras.data import synthetic_class_of  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.diffusion import gaussian  # noqa: E402
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import frechet_distance  # noqa: E402
from ddpm_keras.metrics import intra_class_frechet_distance  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.metrics import sample_distances  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.samplers import dpm_solver  # noqa: E402

REFERENCE_SEED, FLOOR_SEED = 9001, 9002


def balanced_labels(num_images, num_classes):
    return np.arange(num_images) % num_classes


def real_flowers(num_images, size, num_classes, seed):
    labels = None if num_classes is None else balanced_labels(num_images, num_classes)
    return synthetic_flowers(num_images, size, seed=seed, labels=labels)


def references(model, extractor, num_samples):
    """`(reference, real, floor)` for `model`'s size and classes: the statistics of 4,096 real flowers, their
    features and labels (`None` for an unconditional model), and the FD of `num_samples` other real flowers."""
    size, classes = model.image_shape[0], model.num_classes
    real_images = real_flowers(4096, size, classes, REFERENCE_SEED)
    reference = reference_statistics(real_images, extractor, cache_dir=False, verbose=0)
    real = None if classes is None else (extract_features(extractor, real_images), balanced_labels(4096, classes))
    floor = sample_distances(real_flowers(num_samples, size, classes, FLOOR_SEED), reference, extractor,
                             metrics=("fid",))["fid"]
    return reference, real, floor


def sampling_of(name):
    return {**DEFAULT_SAMPLING, **hub.read_metadata(name).get("sampling", {})}


def measure(model, sampling, reference, extractor, num_samples, seeds, real=None):
    """FDs over seeds and seconds per sample; for a conditional model, class accuracies and intra-class FDs.

    `real`: `(features, labels)` of labelled real flowers, for the intra-class
    FD and its ratio to the unguided one (the same seed at guidance 1).
    """
    fds, seconds, accuracies, intra, ratios = [], [], [], [], []
    sampling = dict(sampling)
    guidance = sampling.pop("guidance_scale", 1.0)
    for seed in seeds:
        conditioning = {}
        if model.num_classes:
            labels = balanced_labels(num_samples, model.num_classes)
            conditioning = {"labels": labels, "guidance_scale": guidance}
        start = time.perf_counter()
        images = np.asarray(model.generate_images(num_samples, seed=seed, verbose=0, **sampling, **conditioning))
        seconds.append((time.perf_counter() - start) / num_samples)
        features = np.asarray(extract_features(extractor, images), np.float64)
        fds.append(frechet_distance(features.mean(0), np.cov(features, rowvar=False), reference.mean,
                                    reference.covariance))
        if model.num_classes:
            accuracies.append(float(np.mean(synthetic_class_of(images) == labels)))
            unguided = features if guidance == 1.0 else extract_features(extractor, model.generate_images(
                num_samples, seed=seed, verbose=0, **sampling, labels=labels, guidance_scale=1.0))
            guided_fd, unguided_fd = (intra_class_frechet_distance(x, labels, *real) for x in (features, unguided))
            intra.append(guided_fd)
            ratios.append(guided_fd / unguided_fd)
    return fds, seconds, accuracies, intra, ratios


def spread(values, digits=2):
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in values)})"


def row(label, fds, seconds, accuracies, intra, ratios):
    conditional = (f" {np.mean(accuracies):.3f} +- {np.std(accuracies):.3f} | {spread(intra, 1)} | {spread(ratios, 3)} |"
                   if accuracies else "")
    print(f"| {label} | {spread(fds, 1)} |{conditional} {1000 * np.median(seconds):.1f} |", flush=True)


# Per sampler: the function that makes its coefficient tables, and each coefficient's key in them.
# The ancestral step's posterior mean is `coef1 x_0 + coef2 x_t`; its noise `exp(0.5 log_variance)`.
COEFFICIENTS = {
    "ddpm": (gaussian, "compute_terms", {"x_0": "posterior_mean_coef1", "x_t": "posterior_mean_coef2",
                                         "noise": "posterior_log_variance_clipped"}),
    "dpmpp_2m_sde": (dpm_solver, "dpmpp_coefficients", {"a": "a", "c0": "c0", "noise": "noise"}),
}


def with_coefficient_off(sampler, name, factor):
    """Patches `sampler`'s coefficient `name` by `factor` in every table made until `restore()`; returns `restore`."""
    module, function, keys = COEFFICIENTS[sampler]
    original, key = getattr(module, function), keys[name]

    def broken(*args, **kwargs):
        table = original(*args, **kwargs)
        # A log-variance moves by log(factor^2) to scale the noise's standard deviation by `factor`.
        table[key] = table[key] + 2 * np.log(factor) if key.startswith("posterior_log") else table[key] * factor
        return table

    setattr(module, function, broken)
    return lambda: setattr(module, function, original)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--presets", default=None)
    parser.add_argument("--raw", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--breaks", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.presets.split(",") if args.presets else sorted(hub.shipped_presets())
    raw = dict(item.split("=", 1) for item in args.raw)
    extractor = flower_features()
    for name in names:
        model = DiffusionModel.from_preset(name, compile=False)
        metadata, sampling = hub.read_metadata(name), sampling_of(name)
        size, classes = model.image_shape[0], model.num_classes
        reference, real, floor = references(model, extractor, args.num_samples)
        print(f"\n{name}: {metadata['parameter_count']:,} parameters, {size} px, classes {model.class_names}, "
              f"sampling {sampling}; real-data floor FD {floor:.2f} ({args.num_samples} vs 4,096)")
        print("| configuration | FD | class accuracy | intra-class FD | its ratio to unguided | ms per sample |\n"
              "|---|---|---|---|---|---|" if classes else "| configuration | FD | ms per sample |\n|---|---|---|")
        row("as shipped", *measure(model, sampling, reference, extractor, args.num_samples, seeds, real))
        if not args.breaks:
            continue
        for coefficient in COEFFICIENTS[sampling["sampler"]][2]:
            restore = with_coefficient_off(sampling["sampler"], coefficient, 1.1)
            try:
                fresh = DiffusionModel.from_preset(name, compile=False)  # no compiled chain of the right one
                row(f"{coefficient} x 1.1", *measure(fresh, sampling, reference, extractor, args.num_samples, seeds, real))
            finally:
                restore()
        if classes:
            row("guidance off (s = 1)", *measure(model, {**sampling, "guidance_scale": 1.0}, reference, extractor,
                                                 args.num_samples, seeds, real))
        if name in raw:
            run = keras.saving.load_model(os.path.join(raw[name], "model.keras"), compile=False)
            model.ema_network.set_weights(run.network.get_weights())
            row("raw weights, not the EMA", *measure(model, sampling, reference, extractor, args.num_samples, seeds, real))


if __name__ == "__main__":
    main()
