"""The likelihood of the probability-flow ODE against the variational bound, on one small trained model.

Usage: python bench/likelihood.py [--img-size 8] [--epochs 40] [--num-images 16] [--exact-images 2] [--seed 0]

Trains a small UNet (widths 16, 32, attention at the lower level, one
residual block; T = 1000 linear betas, epsilon prediction, EMA 0.99) on
1,024 synthetic flowers quantised to 8 bits, then measures on
`--num-images` other flowers, with the EMA network:

- the variational bound (`method="vlb"`, all T timesteps, Ho et al.'s
  fixed small variance);
- the ODE's bits/dim (`method="ode"`, uniform dequantisation, +7 bits to
  8-bit dimensions) with RK45 at two tolerances and RK4 at two step
  counts, the divergence by one Rademacher probe per image;
- the same with the exact trace (all H * W * C unit vectors: that many
  copies of each image per network call), on the first `--exact-images`
  images, with the bound and the Hutchinson estimate on those images
  beside it.

Prints one row per measurement: bits/dim (mean over images, and for the
ODE the standard error of that mean from the spread over images),
function evaluations (network calls per chunk; for the ODE each carries a
vector-Jacobian product), the seconds of a compiled call and of the first
call (which compiles: most of it, on a CPU, for the ODE's loops; the
exact-trace rows run once, so their two columns are the same call).
"""

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras import GaussianDiffusion  # noqa: E402
from ddpm_keras import build_unet  # noqa: E402
from ddpm_keras.data import synthetic_flowers  # noqa: E402


def quantised_flowers(num_images, img_size, seed):
    """Synthetic flowers in [-1, 1] on the 256 levels of 8-bit data."""
    images = np.asarray(synthetic_flowers(num_images, img_size=img_size, seed=seed), np.float64)
    return (np.clip(np.round((images + 1.0) * 127.5), 0, 255) / 127.5 - 1.0).astype("float32")


def train(img_size, epochs, seed):
    keras.utils.set_random_seed(seed)
    network = build_unet(img_size, 3, widths=[16, 32], has_attention=[False, True], num_res_blocks=1,
                         first_conv_channels=16)
    model = DiffusionModel(network, GaussianDiffusion(timesteps=1000), ema=0.99, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    tic = time.perf_counter()
    history = model.fit(quantised_flowers(1024, img_size, seed), batch_size=64, epochs=epochs, verbose=0)
    print(f"Trained {epochs} epochs in {time.perf_counter() - tic:.0f} s, last loss "
          f"{history.history['loss'][-1]:.4f}")
    return model


def measure(model, images, label, rows, repeat=True, **kwargs):
    tic = time.perf_counter()
    result = model.bits_per_dim(images, return_terms=True, verbose=0, **kwargs)
    first = seconds = time.perf_counter() - tic
    if repeat:  # compiled now: the cost of the integration alone
        tic = time.perf_counter()
        result = model.bits_per_dim(images, return_terms=True, verbose=0, **kwargs)
        seconds = time.perf_counter() - tic
    if kwargs.get("method") == "ode":
        per_image, nfe = result["image_bpd"], result["nfe"]
        se = per_image.std(ddof=1) / math.sqrt(len(per_image)) if len(per_image) > 1 else float("nan")
    else:  # one draw of noise per term: no per-image spread to report
        se, nfe = float("nan"), len(result["timesteps"])
    rows.append((label, len(images), result["bpd"], se, nfe, seconds, first))
    print(f"{label:<42} {len(images):>6} {result['bpd']:>9.4f} {se:>8.4f} {nfe:>7.0f} {seconds:>8.1f} {first:>9.1f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--exact-images", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = train(args.img_size, args.epochs, args.seed)
    images = quantised_flowers(args.num_images, args.img_size, seed=args.seed + 1)
    print(f"{args.img_size}x{args.img_size}x3 images, T = 1000, backend {keras.backend.backend()}")
    print(f"{'method':<42} {'images':>6} {'bits/dim':>9} {'s.e.':>8} {'NFE':>7} {'seconds':>8} {'1st call':>9}")
    rows = []
    measure(model, images, "VLB (all 1000 timesteps)", rows)
    for tolerance in (1e-3, 1e-5):
        measure(model, images, f"ODE RK45 tol {tolerance:g}, 1 probe", rows, method="ode", rtol=tolerance,
                atol=tolerance)
    for steps in (10, 25):
        measure(model, images, f"ODE RK4 {steps} steps, 1 probe", rows, method="ode", solver="rk4", num_steps=steps)
    few = images[: args.exact_images]
    dims = args.img_size * args.img_size * 3
    measure(model, few, "VLB (all 1000 timesteps), exact subset", rows)
    measure(model, few, "ODE RK45 tol 0.001, 1 probe, exact subset", rows, method="ode", rtol=1e-3, atol=1e-3)
    measure(model, few, f"ODE RK45 tol 0.001, exact trace ({dims} vjps)", rows, repeat=False, method="ode",
            rtol=1e-3, atol=1e-3, exact_trace=True)
    measure(model, few, "ODE RK4 25 steps, 1 probe, exact subset", rows, method="ode", solver="rk4", num_steps=25)
    measure(model, few, f"ODE RK4 25 steps, exact trace ({dims} vjps)", rows, repeat=False, method="ode",
            solver="rk4", num_steps=25, exact_trace=True)


if __name__ == "__main__":
    main()
