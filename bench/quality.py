"""Sample quality (FID, KID) per sampler and step count, on a model trained here, with an offline extractor.

Usage: python bench/quality.py [--img-size 16] [--epochs 40] [--num-samples 1000] [--seeds 0,1,2]
       [--configs ddpm:1000,ddpm:50,ddim:250,dpmpp_2m:20,dpmpp_2m_sde@karras:20,dpmpp_2m_sde@karras/bfloat16:20,
        heun:10,heun+s_churn=40+s_tmin=0.05+s_tmax=50:10,...] [--out DIR] [--load DIR]

What it does, all on data the project draws itself (no download):

1. The feature space is the shipped flower extractor
   (`ddpm_keras.metrics.flower_features`, 128 features, trained on clean
   flowers and on the faults generated images have; its recipe is
   examples/train_flower_extractor.py), or `--extractor FILE`.
2. Trains a small DiffusionModel (the `tiny` preset's UNet at `--img-size`,
   T = 1000, linear betas) on 2,048 synthetic flowers for `--epochs`.
3. Reference statistics from 4,096 other synthetic flowers; the "data"
   row is the FID of `--num-samples` further real images against them: the
   floor that sampling error alone gives at this sample count.
4. For each sampler config (`name[+option=value...][@spacing][/dtype]:steps`;
   `ddim1` is DDIM with eta = 1, `+option=value` a sampler option such as
   heun's `+s_churn=40`, `@logsnr`, `@karras` and `@trailing` a timestep
   spacing other than the sampler's own (karras for heun, else trailing),
   `/bfloat16` and `/float16` the network in reduced precision) and each
   sampling seed: `--num-samples` images from the EMA network, their FID
   and KID. Prints mean and standard deviation over seeds, the network
   calls (`2 n - 1` for heun's `n` steps), and the sampling time per 1,000
   images.
5. Seconds per 1,000 images of feature extraction: the small extractor and
   InceptionV3 at 299x299 (random weights: the cost does not depend on them).

`--out DIR` saves the models, a PNG grid per config (seed 0, first 64
samples) and `results.json`; `--load DIR` takes the models saved there
instead of training them, so that more configs can be measured later on
the same network and features.
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
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import inception_features  # noqa: E402
from ddpm_keras.metrics import reference_statistics  # noqa: E402
from ddpm_keras.metrics import sample_distances  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402
from ddpm_keras.visualize import save_image_grid  # noqa: E402



def parse_configs(text):
    """`name[+option=value...][@spacing][/dtype]:steps,...`: `ddim1` is DDIM with eta = 1, `+s_churn=40` a sampler
    option, `@logsnr`, `@karras` or `@trailing` the timestep spacing (default: the sampler's own), `/bfloat16` or
    `/float16` the precision the network computes in."""
    configs = []
    for item in text.split(","):
        spec, steps = item.split(":")
        name, _, dtype = spec.partition("/")
        name, _, spacing = name.partition("@")
        name, *options = name.split("+")
        sampler, eta = ("ddim", 1.0) if name == "ddim1" else (name, 0.0)
        options = {key: float(value) for key, value in (option.split("=") for option in options)}
        label = f"{spec}-{steps}"
        configs.append({"label": label, "sampler": sampler, "num_steps": int(steps), "eta": eta,
                        "timestep_spacing": spacing or None, "dtype": dtype or None, "options": options})
    return configs


def network_calls(config):
    """The network calls of a config's `n` steps: `n`; `2 n - 1` for heun and `n + (n - 1) corrector_steps` for pc
    (neither corrects on the last step)."""
    steps = config["num_steps"]
    if config["sampler"] == "heun":
        return 2 * steps - 1
    if config["sampler"] == "pc":
        return steps + (steps - 1) * int(config["options"].get("corrector_steps", 1))
    return steps


def train_diffusion(img_size, epochs):
    config = get_preset("tiny")
    model = DiffusionModel.from_preset("tiny", img_size=img_size, seed=0)
    data = load_synthetic(2048, img_size=img_size, batch_size=config["training"]["batch_size"], seed=0)
    start = time.perf_counter()
    history = model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return model, history.history["loss"][-1], time.perf_counter() - start


def seconds_per_1000(extractor, images):
    extract_features(extractor, images[:64])  # traces
    start = time.perf_counter()
    extract_features(extractor, images)
    return 1000.0 * (time.perf_counter() - start) / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", default="ddpm:1000,ddpm:50,ddpm:20,ddim:250,ddim:20,dpmpp_2m:20,dpmpp_3m:20,"
                        "unipc:20,dpmpp_2m_sde:10,dpmpp_2m_sde:20,dpmpp_2m_sde:50,dpmpp_2m_sde@karras:20,heun:10,"
                        "heun+s_churn=40+s_tmin=0.05+s_tmax=50:10")
    parser.add_argument("--batch-size", type=int, default=500, help="images per compiled sampling call")
    parser.add_argument("--out", default=None)
    parser.add_argument("--load", default=None, help="use model.keras of an earlier --out")
    parser.add_argument("--extractor", default=None,
                        help="a .keras feature extractor. Default: the shipped flower_features")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = parse_configs(args.configs)
    keras.utils.set_random_seed(0)

    extractor = flower_features(args.extractor)
    if args.load:
        model = keras.saving.load_model(os.path.join(args.load, "model.keras"))
        args.img_size = model.image_shape[0]
        print(f"Loaded the model of {args.load}")
    else:
        model, loss, train_seconds = train_diffusion(args.img_size, args.epochs)
        print(f"diffusion model: {model.network.count_params():,} parameters, {args.epochs} epochs of 2,048 "
              f"{args.img_size}-px flowers in {train_seconds:.0f} s, final loss {loss:.4f}")
    reference = reference_statistics(synthetic_flowers(4096, args.img_size, seed=1), extractor,
                                     cache_dir=False, verbose=0)
    rows = []
    data_fids = [sample_distances(synthetic_flowers(args.num_samples, args.img_size, seed=10 + s), reference,
                                  extractor)["fid"] for s in seeds]
    rows.append({"label": "data", "network_calls": 0, "fid": data_fids, "kid": [], "seconds": 0.0})
    for config in configs:
        fids, kids, seconds = [], [], []
        for seed in seeds:
            start = time.perf_counter()
            images = model.generate_images(args.num_samples, seed=seed, batch_size=args.batch_size, verbose=0,
                                           sampler=config["sampler"], num_steps=config["num_steps"], eta=config["eta"],
                                           timestep_spacing=config["timestep_spacing"], dtype=config["dtype"],
                                           **config["options"])
            seconds.append(time.perf_counter() - start)
            values = sample_distances(images, reference, extractor)
            fids.append(values["fid"])
            kids.append(values["kid"])
            if args.out and seed == seeds[0]:
                save_image_grid(images[:64], os.path.join(args.out, f"{config['label']}.png"), scale=4)
        rows.append({"label": config["label"], "network_calls": network_calls(config), "fid": fids, "kid": kids,
                     "seconds": 1000.0 * float(np.median(seconds)) / args.num_samples})
        print(f"  {config['label']}: FID {np.mean(fids):.4f} +- {np.std(fids):.4f}", flush=True)

    print(f"\n{args.num_samples} samples per seed, seeds {seeds}; mean +- std over seeds\n")
    print("| sampler | network calls | FID | KID x 1e3 | s / 1,000 images |")
    print("|---|---|---|---|---|")
    for row in rows:
        kid = f"{1e3 * np.mean(row['kid']):.3f} +- {1e3 * np.std(row['kid']):.3f}" if row["kid"] else "-"
        print(f"| {row['label']} | {row['network_calls']} | {np.mean(row['fid']):.4f} +- {np.std(row['fid']):.4f} "
              f"| {kid} | {row['seconds']:.1f} |")

    probe = synthetic_flowers(512, args.img_size, seed=20)
    small = seconds_per_1000(extractor, probe)
    inception = seconds_per_1000(inception_features(weights=None), probe[:128])
    print("\n| feature extraction | s / 1,000 images |\n|---|---|")
    print(f"| flower_features ({args.img_size} px, {extractor.output_shape[-1]} features) | {small:.2f} |")
    print(f"| InceptionV3 (resized to 299 px, 2,048 features) | {inception:.1f} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"rows": rows, "extraction_s_per_1000":
                       {"flower_features": small, "inception_v3": inception}, "args": vars(args)}, f, indent=2)
        if not args.load:
            model.save(os.path.join(args.out, "model.keras"))


if __name__ == "__main__":
    main()
