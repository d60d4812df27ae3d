"""`ddpm-keras evaluate`, and the quality monitor of `ddpm-keras train --fid-every`."""

import argparse
import contextlib
import json
import os
import time

import keras

from ddpm_keras.cli.common import CLIError
from ddpm_keras.cli.common import add_extractor_args
from ddpm_keras.cli.common import add_overwrite_arg
from ddpm_keras.cli.common import add_sampler_arguments
from ddpm_keras.cli.common import check_output
from ddpm_keras.cli.common import load_keras_file
from ddpm_keras.cli.common import load_model
from ddpm_keras.cli.common import register
from ddpm_keras.cli.common import sampling_options
from ddpm_keras.cli.types import positive_int
from ddpm_keras.cli.types import seed as seed_type
from ddpm_keras.data import load_dataset
from ddpm_keras.metrics import InceptionScore
from ddpm_keras.metrics import inception_classifier
from ddpm_keras.metrics import inception_features
from ddpm_keras.metrics import reference_statistics
from ddpm_keras.metrics import sample_distances
from ddpm_keras.training.callbacks import QualityMonitor
from ddpm_keras.training.callbacks import describe_sampling
from ddpm_keras.utils import files
from ddpm_keras.utils.distribute import STRATEGIES
from ddpm_keras.utils.distribute import is_chief
from ddpm_keras.utils.distribute import strategy_scope
from ddpm_keras.utils.distribute import worker_of

EVALUATE_METRICS = ("fid", "kid", "is", "bpd", "bpd-ode")
ODE_SOLVERS = ("rk45", "rk4")


def add_evaluate_parser(commands, formatter):
    """Adds `ddpm-keras evaluate` and its options to the sub-parsers `commands`."""
    evaluate = commands.add_parser(
        "evaluate",
        help="measure sample quality (FID, KID, Inception Score) and bits/dim of a checkpoint",
        formatter_class=formatter,
        description="Generate --num-samples images with the EMA network and compare them with the real images of "
        "--dataset (FID, KID), score them (Inception Score), and compute the negative log-likelihood of real "
        "images in bits per dimension (bpd: the variational bound; bpd-ode: the likelihood of the probability-flow "
        "ODE, with its number of network evaluations). Prints a table; --out writes JSON. The real images' features are "
        "cached (--cache-dir) and recomputed when the images change.",
    )
    evaluate.add_argument("--checkpoint", required=True,
                          help="a model.keras file, a run directory holding one, or a folder of .keras files (the "
                          "output of `ema`): each is evaluated and the best by FID named")
    evaluate.add_argument("--dataset", default=None,
                          help="oxford_flowers102, synthetic or PATH to a folder of images. Default: the run's "
                          "(its run.json)")
    evaluate.add_argument("--split", default=None, help="tfds split. Default: the run's, else train")
    evaluate.add_argument("--data-dir", default=None, help="tfds data directory")
    evaluate.add_argument("--metrics", default="fid,kid", type=_metric_list,
                          help=f"comma-separated, from {','.join(EVALUATE_METRICS)}")
    evaluate.add_argument("--num-samples", type=positive_int, default=1000, help="generated images for fid, kid, is")
    evaluate.add_argument("--seed", type=seed_type, default=0, help="seed of the samples and of bpd's noise")
    add_sampler_arguments(evaluate)
    evaluate.add_argument("--batch-size", type=positive_int, default=128, help="images per compiled sampling call")
    add_extractor_args(evaluate)
    evaluate.add_argument("--classifier", default=None,
                          help="a .keras model images -> class probabilities for is. Default: InceptionV3")
    evaluate.add_argument("--kid-subset-size", type=positive_int, default=1000, help="images per KID subset")
    evaluate.add_argument("--is-splits", type=positive_int, default=10, help="Inception Score splits")
    evaluate.add_argument("--bpd-images", type=positive_int, default=256, help="real images for bpd (the first ones)")
    evaluate.add_argument("--bpd-steps", type=positive_int, default=None,
                          help="timesteps for bpd: all T (exact) or fewer (a stratified estimate)")
    evaluate.add_argument("--ode-solver", default="rk45", choices=ODE_SOLVERS,
                          help="bpd-ode's solver: adaptive Dormand-Prince or fixed-step RK4")
    evaluate.add_argument("--ode-steps", type=positive_int, default=100, help="bpd-ode's RK4 steps")
    evaluate.add_argument("--ode-tolerance", type=float, default=1e-5, help="bpd-ode's RK45 rtol and atol")
    evaluate.add_argument("--ode-probes", type=positive_int, default=1,
                          help="bpd-ode's Skilling-Hutchinson probes per image (Rademacher)")
    evaluate.add_argument("--out", default=None, help="also write the results to this JSON file")
    add_overwrite_arg(evaluate)
    evaluate.add_argument("--strategy", default="none", choices=STRATEGIES,
                          help="mirrored: split the sampling over this machine's GPUs; multiworker: over the "
                          "processes of TF_CONFIG or srun (on JAX KERAS_DISTRIBUTION_*), each running this command; "
                          "the chief writes --out. Chunks of --batch-size go to the replicas in turn: the same "
                          "images as one process")


def _metric_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVALUATE_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric {', '.join(unknown) or repr(text)}: choose from {','.join(EVALUATE_METRICS)}"
        )
    return list(dict.fromkeys(names))


def evaluate(args):
    """`ddpm-keras evaluate`: FID, KID, Inception Score of samples and bits/dim of real images; a table and JSON.

    A `--checkpoint` folder of `.keras` files without a `model.keras` (the
    output of `ddpm-keras ema`) has each file evaluated in turn, with the
    same samples' seed, and the one of lowest FID named.
    """
    folder = args.checkpoint
    if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, "model.keras")):
        return _evaluate_one(args)
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".keras"))
    if not paths:
        return _evaluate_one(args)  # its one-line error: no model.keras
    if args.strategy == "multiworker":
        raise CLIError(f"--strategy multiworker evaluates one checkpoint at a time: pass one of the files of {folder}.")
    if args.out:  # before any computation
        check_output(args.out, "--out", ".json", args.overwrite)
    results = {}
    for path in paths:
        print(f"== {path}")
        results[path] = _evaluate_one(argparse.Namespace(**{**vars(args), "checkpoint": path, "out": None}))
    best = min(paths, key=lambda path: results[path]["fid"]) if "fid" in args.metrics else None
    for path in paths:
        print(f"{path}: " + ", ".join(f"{key} {value:.5g}" for key, value in results[path].items())
              + ("  <- best by FID" if path == best else ""))
    if args.out:
        files.write_json(args.out, {"checkpoints": results, "best_by_fid": best, "num_samples": args.num_samples,
                                    "seed": args.seed})
        print(f"Wrote {args.out}")
    return results


def _evaluate_one(args):
    """Evaluates the one checkpoint `args.checkpoint`; returns its metrics as a dict."""
    metrics = args.metrics
    for name, needed in (("fid", 2), ("kid", 2), ("is", args.is_splits)):
        if name in metrics and args.num_samples < needed:
            raise CLIError(f"--num-samples {args.num_samples} is too few for {name}: it needs at least {needed}"
                           + (" (one per --is-splits)." if name == "is" else "."))
    if "bpd-ode" in metrics:
        _ode_options(args)  # its errors before any computation
    if args.out:  # before any computation
        check_output(args.out, "--out", ".json", args.overwrite)
    # Under a strategy the model is built on its replicas: generate_images deals its chunks to them
    # (`ddpm_keras.inference.chunks`). The feature extractors stay outside, on one device.
    if args.strategy != "none" and keras.backend.backend() != "tensorflow":
        raise CLIError(f"evaluate --strategy {args.strategy} needs KERAS_BACKEND=tensorflow. Received: "
                       f"KERAS_BACKEND={keras.backend.backend()!r}.")
    with _strategy_scope(args.strategy) as strategy:
        model = load_model(args.checkpoint)
    run = _run_info(args.checkpoint)
    dataset_name = args.dataset or run.get("dataset")
    split = args.split or run.get("split") or "train"
    needs_real = bool({"fid", "kid", "bpd", "bpd-ode"} & set(metrics))
    if needs_real and dataset_name is None:
        raise CLIError("Pass --dataset: the checkpoint has no run.json saying what it was trained on.")
    real = _real_images(dataset_name, split, model.image_shape[:2], args.data_dir, run.get("seed", 0)) if needs_real else None
    sampling = sampling_options(args, model.diffusion.num_timesteps, model.default_sampling)
    results, seconds = {}, {}
    start = time.perf_counter()
    # The extractors first: a missing weights file fails before minutes of sampling.
    extractor = _feature_extractor(args) if {"fid", "kid"} & set(metrics) else None
    classifier = _classifier(args) if "is" in metrics else None
    if extractor is not None:
        reference = reference_statistics(
            real, extractor, dataset_name=dataset_name, split=split, keep_features="kid" in metrics,
            cache_dir=args.cache_dir,
        )
    seconds["reference"] = time.perf_counter() - start
    if {"fid", "kid", "is"} & set(metrics):
        tic = time.perf_counter()
        print(f"Generating {args.num_samples} samples ({describe_sampling(sampling)})")
        if args.strategy != "none":
            _note_unsplit_sampling(args, strategy)
        images = model.generate_images(args.num_samples, seed=args.seed, batch_size=args.batch_size, **sampling)
        seconds["sampling"] = time.perf_counter() - tic
    if extractor is not None:
        tic = time.perf_counter()
        print(f"Features of the {args.num_samples} samples ({extractor.name})")
        results.update(sample_distances(images, reference, extractor, [m for m in metrics if m in ("fid", "kid")],
                                        kid_subset_size=args.kid_subset_size, verbose=1))
        seconds["features"] = time.perf_counter() - tic
    if classifier is not None:
        tic = time.perf_counter()
        score = InceptionScore(classifier, splits=args.is_splits, verbose=1)
        score.update_state(images)
        results["is"], results["is_std"] = score.result(return_std=True)
        seconds["inception_score"] = time.perf_counter() - tic
    if "bpd" in metrics:
        tic = time.perf_counter()
        print(f"Bits per dimension of {args.bpd_images} real images ("
              + (f"{args.bpd_steps} of {model.diffusion.num_timesteps} timesteps, stratified)" if args.bpd_steps
                 else f"all {model.diffusion.num_timesteps} timesteps)"))
        results["bpd"] = model.bits_per_dim(
            real.unbatch().take(args.bpd_images).batch(args.batch_size), num_steps=args.bpd_steps, seed=args.seed,
        )
        seconds["bpd"] = time.perf_counter() - tic
    if "bpd-ode" in metrics:
        tic = time.perf_counter()
        ode = _ode_options(args)
        print(f"Bits per dimension of {args.bpd_images} real images by the probability-flow ODE ("
              + ", ".join(f"{k}={v}" for k, v in ode.items()) + ")")
        result = model.bits_per_dim(
            real.unbatch().take(args.bpd_images).batch(args.batch_size), method="ode", seed=args.seed,
            return_terms=True, **ode,
        )
        results["bpd-ode"], results["bpd-ode_nfe"] = result["bpd"], result["nfe"]
        seconds["bpd-ode"] = time.perf_counter() - tic
    seconds["total"] = time.perf_counter() - start
    _print_table(results)
    # Every worker of a multi-worker run measures the same images; only the chief writes them down.
    chief = args.strategy != "multiworker" or is_chief(strategy)
    if args.out and not chief:
        worker, workers = worker_of(strategy)
        print(f"Worker {worker} of {workers}: not writing {args.out} (the chief writes it)")
    elif args.out:
        files.write_json(args.out, {
            "checkpoint": args.checkpoint, "dataset": dataset_name, "split": split, "metrics": results,
            "num_samples": args.num_samples, "sampling": sampling, "seed": args.seed,
            "feature_extractor": None if extractor is None else extractor.name,
            "bpd_images": args.bpd_images if {"bpd", "bpd-ode"} & set(metrics) else None, "bpd_steps": args.bpd_steps,
            "bpd_ode": _ode_options(args) if "bpd-ode" in metrics else None,
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
        })
        print(f"Wrote {args.out}")
    return results


def _ode_options(args):
    """`bits_per_dim(method="ode")`'s options from `--ode-*`."""
    if not args.ode_tolerance > 0:
        raise CLIError(f"--ode-tolerance must be > 0. Received: {args.ode_tolerance}")
    if args.ode_solver == "rk4":
        return {"solver": "rk4", "num_steps": args.ode_steps, "num_probes": args.ode_probes}
    return {"solver": "rk45", "rtol": args.ode_tolerance, "atol": args.ode_tolerance, "num_probes": args.ode_probes}


def _strategy_scope(name):
    """`strategy_scope(name)`, or no scope at all (yielding `None`) for `"none"`."""
    if name == "none":
        return contextlib.nullcontext()
    return strategy_scope(name)


def _note_unsplit_sampling(args, strategy):
    """One line when --batch-size leaves too few chunks to deal one to every replica of `strategy`."""
    chunks = -(-args.num_samples // args.batch_size)
    replicas = strategy.num_replicas_in_sync
    if chunks < max(2, replicas):
        print(f"Note: --batch-size decides the chunks dealt to the {replicas} replica(s) of --strategy "
              f"{args.strategy}: {args.num_samples} samples in batches of {args.batch_size} make {chunks} "
              f"chunk(s), so the sampling is not split across all of them; lower --batch-size to split it.")


def _print_table(results):
    labels = {"fid": "FID", "kid": "KID", "is": "Inception Score", "bpd": "bits/dim", "bpd-ode": "bits/dim (ODE)",
              "bpd-ode_nfe": "ODE evaluations"}
    print(f"{'metric':<16} {'value':>12} {'std':>10}")
    for key, label in labels.items():
        if key in results:
            std = results.get(f"{key}_std")
            print(f"{label:<16} {results[key]:>12.5g} {'' if std is None else format(std, '.3g'):>10}")


def _real_images(dataset_name, split, size, data_dir, seed):
    """The real images, unshuffled and unaugmented, every one of them, in batches of 64."""
    dataset = load_dataset(dataset_name, split=split, img_size=size, batch_size=1, data_dir=data_dir,
                           shuffle=False, augment=False, seed=seed)
    return dataset.unbatch().batch(64)


def _feature_extractor(args):
    if args.feature_extractor:
        return _load_keras_model(args.feature_extractor, "--feature-extractor")
    return inception_features(weights=args.inception_weights)


def _classifier(args):
    if args.classifier:
        return _load_keras_model(args.classifier, "--classifier")
    return inception_classifier()


def _load_keras_model(path, option):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path} ({option}): expected a .keras file.")
    return load_keras_file(path, option)


def quality_monitor(args, dataset_name, size, run_dir):
    """The `QualityMonitor` of `train --fid-every`: the training images as the reference, cached."""
    extractor = _feature_extractor(args)
    real = _real_images(dataset_name, args.split, size, args.data_dir, args.seed)
    reference = reference_statistics(real, extractor, dataset_name=dataset_name, split=args.split,
                                     cache_dir=args.cache_dir)
    return QualityMonitor(reference, every=args.fid_every, num_samples=args.fid_samples,
                          feature_extractor=extractor, run_dir=run_dir, seed=args.seed)


def _run_info(checkpoint):
    """The run.json beside a checkpoint, or `{}`."""
    run_dir = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


register("evaluate", add_evaluate_parser, evaluate)
