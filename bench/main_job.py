"""The main job's model as the README reports it: its FD under its grids' guidance and without, per sampler.

Usage: python bench/main_job.py [--run checkpoints/quickstart-synthetic] [--num-samples 256] [--seeds 0,1]

After `ddpm-keras train --preset quickstart`, the run's EMA network draws
`--num-samples` samples a quarter per class with `DEFAULT_SAMPLING` and
with `dpmpp_2m_sde` in 20 steps on the Karras grid, under the preset's grid
guidance (`plot_guidance`) and without guidance; each row is measured as
`bench/pretrained.py` measures the shipped presets (FD in the shipped flower
features against 4,096 real flowers of the run's size, mean and spread over
`--seeds`, class accuracy, the intra-class FD and its ratio to the unguided
one), beside the floor: as many other real flowers.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from pretrained import measure  # noqa: E402
from pretrained import references  # noqa: E402
from pretrained import row  # noqa: E402

from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402

SAMPLINGS = {
    "DEFAULT_SAMPLING": DEFAULT_SAMPLING,
    "dpmpp_2m_sde, Karras, 20": {"sampler": "dpmpp_2m_sde", "num_steps": 20, "timestep_spacing": "karras"},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=os.path.join("checkpoints", "quickstart-synthetic"))
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    model_file = os.path.join(args.run, "model.keras")
    if not os.path.isfile(model_file):
        parser.error(f"--run {args.run} holds no model.keras: run `ddpm-keras train --preset quickstart` first")
    seeds = [int(s) for s in args.seeds.split(",")]
    with open(os.path.join(args.run, "run.json")) as f:
        guidance = get_preset(json.load(f).get("preset", "quickstart"))["training"]["plot_guidance"]
    model = keras.saving.load_model(model_file, compile=False)
    size, classes = model.image_shape[0], model.num_classes
    extractor = flower_features()
    reference, real, floor = references(model, extractor, args.num_samples)
    print(f"\n{model_file}: {size} px, classes {model.class_names}; real-data floor FD {floor:.2f} "
          f"({args.num_samples} vs 4,096)")
    columns = ["sampling", "guidance", "FD"] + (["class accuracy", "intra-class FD", "its ratio to unguided"]
                                               if classes else []) + ["ms per sample"]
    print(f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    for label, sampling in SAMPLINGS.items():
        for scale in (guidance, 1.0) if classes else (1.0,):
            conditioning = {"guidance_scale": scale} if classes else {}
            fds, seconds, accuracies, intra, ratios = measure(
                model, {**sampling, **conditioning}, reference, extractor, args.num_samples, seeds, real)
            row(f"{label} | {scale:g}", fds, seconds, accuracies, intra, ratios)


if __name__ == "__main__":
    main()
