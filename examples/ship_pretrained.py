"""Writes the runs of examples/train_pretrained.sh as the package's pretrained presets.

Usage: python examples/ship_pretrained.py RUNS_DIR [--out ddpm_keras/pretrained]

For each of `synthetic_flowers32` and `synthetic_flowers32_cond`, reads
`RUNS_DIR/NAME/model.keras` and its `log.csv`, and writes the EMA network as
the preset folder `OUT/NAME` (`DiffusionModel.save_to_preset`), with what it
was trained on, for how long, and the sampling it is best drawn with.
"""

import argparse
import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from ddpm_keras import hub  # noqa: E402
from ddpm_keras.presets import DEFAULT_SAMPLING  # noqa: E402
from ddpm_keras.presets import get_preset  # noqa: E402

PRESETS = {
    "synthetic_flowers32": {
        "description": "Synthetic flowers at 32 px, unconditional: the tiny UNet (690 k parameters), v-prediction",
        "sampling": dict(DEFAULT_SAMPLING),
    },
    "synthetic_flowers32_cond": {
        "description": "Synthetic flowers at 32 px in 4 classes (red-5, yellow-8, blue-6, purple-4 petals), "
                       "with classifier-free guidance: the tiny UNet (690 k parameters), v-prediction",
        "sampling": {**DEFAULT_SAMPLING, "guidance_scale": 1.5},
    },
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs")
    parser.add_argument("--out", default=hub.PRETRAINED_DIR)
    args = parser.parse_args()
    for name, description in PRESETS.items():
        run = os.path.join(args.runs, name)
        model = keras.saving.load_model(os.path.join(run, "model.keras"))
        with open(os.path.join(run, "log.csv")) as handle:
            epochs = len(list(csv.DictReader(handle)))
        training = get_preset(name)["training"]
        steps = int(model.optimizer.iterations.numpy())
        classes = " --class-conditional" if model.num_classes else ""
        record = {
            "preset": name, "epochs": epochs, "steps": steps, "batch_size": training["batch_size"],
            "learning_rate": training["learning_rate"], "ema": training["ema"], "ema_warmup": training["ema_warmup"],
            "loss_weighting": training["loss_weighting"], "precision": "float32",
            "command": f"ddpm-keras train --preset {name} --dataset synthetic{classes} --seed 0 --epochs {epochs}",
            "hardware": "a 2-core CPU, two runs side by side",
        }
        folder = model.save_to_preset(
            os.path.join(args.out, name), description=description["description"],
            trained_on=f"{training['synthetic_images']:,} synthetic flowers (ddpm_keras.data.synthetic_flowers, "
                       "seed 0), flipped at random", training=record, sampling=description["sampling"],
        )
        print(f"{name}: {steps} steps ({epochs} epochs) -> {folder}")


if __name__ == "__main__":
    main()
