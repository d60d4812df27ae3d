"""Seconds per reverse step of the compiled sampler against a `predict()`-per-step loop.

Usage: python bench/sampling.py [--presets tiny flowers64] [--num-images 16]
       [--tiny-steps 20] [--flowers64-steps 3] [--skip-full]
       [--sections speed segments precision] [--precision-presets flowers64] [--load FILE]

For each preset (random weights: a step's cost does not depend on them):

- compiled: `DiffusionModel.generate_images` (the whole chain in one XLA
  `fori_loop`) run for `k` respaced DDPM steps; the first call traces and
  compiles, the second is timed, per step. Compile time = first - second.
- predict loop: the keras.io example's way, `ema_network.predict([x, t])`
  once per step plus a NumPy `p_sample`, timed over `k` steps after a
  warm-up step.
- DDIM-50 vs DDPM-1000 wall time for the same images: run for real at
  `tiny` (unless `--skip-full`), extrapolated from per-step times at
  `flowers64` (labelled "extrap.").
- segments: `--segment-steps-total` DDPM steps at `tiny` run as one
  compiled call against segments of 50 and of 10 steps (what a progress bar
  between segments costs), each timed after a first call that compiles,
  the best of `--repeats`.
- precision: `--precision-steps` DDIM steps at each of `--precision-presets`
  with the network computing in float32, bfloat16 and float16
  (`generate_images(dtype=...)`), the best of `--repeats` after a compile
  run, and the mean absolute difference of the samples from float32's for
  the same seed, in units of the data range [-1, 1]. Random weights are
  perturbed (N(0, 0.02)) so that every layer matters; `--load FILE` uses a
  trained `.keras` model instead of the presets.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras import DiffusionModel  # noqa: E402
from ddpm_keras.precision import INFERENCE_DTYPES  # noqa: E402


def build_model(preset):
    return DiffusionModel.from_preset(preset, compile=False, seed=0)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compiled_seconds(model, num_images, sampler, num_steps):
    """(first call incl. compile, steady call) seconds of `num_steps` compiled steps."""
    run = lambda: model.generate_images(num_images, seed=0, sampler=sampler, num_steps=num_steps, verbose=0)  # noqa: E731
    return timed(run), timed(run)


def predict_loop_seconds_per_step(model, num_images, num_steps):
    """Seconds per step of `predict()` + NumPy p_sample, over `num_steps` steps after one warm-up."""
    diffusion = model.diffusion
    terms = diffusion.terms_float64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((num_images,) + model.image_shape).astype("float32")

    def p_sample(x, t):
        t_batch = np.full((num_images,), t, dtype="int32")
        pred_noise = model.ema_network.predict([x, t_batch], verbose=0, batch_size=num_images)
        x_recon = np.clip(terms["sqrt_recip_alphas_cumprod"][t] * x - terms["sqrt_recipm1_alphas_cumprod"][t] * pred_noise, -1, 1)
        mean = terms["posterior_mean_coef1"][t] * x_recon + terms["posterior_mean_coef2"][t] * x
        noise = rng.standard_normal(x.shape) if t > 0 else 0.0
        return (mean + np.exp(0.5 * terms["posterior_log_variance_clipped"][t]) * noise).astype("float32")

    top = diffusion.num_timesteps - 1
    x = p_sample(x, top)  # warm-up: builds predict's function
    start = time.perf_counter()
    for i in range(num_steps):
        x = p_sample(x, top - 1 - i)
    return (time.perf_counter() - start) / num_steps


def segment_seconds_per_step(model, num_images, num_steps, segment_steps, repeats):
    """Best seconds per step over `repeats` timed runs of `num_steps` DDPM steps in segments (after a compile run)."""
    def run():
        model.generate_images(num_images, seed=0, sampler="ddpm", num_steps=num_steps, verbose=0,
                              segment_steps=segment_steps)

    run()
    return min(timed(run) for _ in range(repeats)) / num_steps


def bench_preset(preset, num_images, steps, run_full):
    keras.backend.clear_session()
    model = build_model(preset)
    T = model.diffusion.num_timesteps
    first, steady = compiled_seconds(model, num_images, "ddpm", steps)
    compiled_step = steady / steps
    predict_step = predict_loop_seconds_per_step(model, num_images, steps)
    rows = [(
        preset, f"{model.network.count_params():,}", steps, compiled_step, num_images / compiled_step,
        predict_step, num_images / predict_step, predict_step / compiled_step, first - steady,
    )]
    ddim_first, ddim_steady = compiled_seconds(model, num_images, "ddim", 50) if run_full else (None, None)
    if run_full:
        ddpm_first, ddpm_steady = compiled_seconds(model, num_images, "ddpm", None)
        walls = (ddim_steady, ddpm_steady, "measured", ddim_first - ddim_steady, ddpm_first - ddpm_steady)
    else:
        walls = (50 * compiled_step, T * compiled_step, "extrap.", None, None)
    return rows, walls


def precision_rows(model, num_images, num_steps, repeats):
    """(dtype, s/step, mean |samples - float32 samples|) for DDIM at each inference dtype."""
    options = {"num_images": num_images, "seed": 0, "sampler": "ddim", "num_steps": num_steps, "verbose": 0}
    rows, reference = [], None
    for dtype in INFERENCE_DTYPES:
        images = model.generate_images(dtype=dtype, **options)  # Compiles.
        seconds = min(timed(lambda: model.generate_images(dtype=dtype, **options)) for _ in range(repeats))
        reference = images if reference is None else reference
        rows.append((dtype, seconds / num_steps, float(np.abs(images - reference).mean())))
    return rows


def perturbed(model, scale=0.02, seed=0):
    """`model` with N(0, scale) added to every EMA weight (random networks output ~0: their last layers start at 0)."""
    rng = np.random.default_rng(seed)
    for weight in model.ema_network.weights:
        weight.assign(keras.ops.convert_to_numpy(weight) + rng.normal(0.0, scale, weight.shape).astype("float32"))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "flowers64"])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--flowers64-steps", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true", help="extrapolate DDPM-1000/DDIM-50 at tiny too")
    parser.add_argument("--segment-steps-total", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["speed", "segments", "precision"],
                        choices=["speed", "segments", "precision"])
    parser.add_argument("--precision-presets", nargs="+", default=["flowers64"])
    parser.add_argument("--precision-steps", type=int, default=5)
    parser.add_argument("--load", default=None, help="a trained .keras model for the precision section")
    args = parser.parse_args()
    if "speed" in args.sections:
        speed(args)
    if "segments" in args.sections:
        segments(args)
    if "precision" in args.sections:
        precision(args)


def precision(args):
    models = [(os.path.basename(args.load), lambda: keras.saving.load_model(args.load))] if args.load else [
        (preset, lambda preset=preset: perturbed(build_model(preset))) for preset in args.precision_presets
    ]
    print(f"\nPrecision: DDIM-{args.precision_steps}, {args.num_images} images, best of {args.repeats} "
          "(the network in dtype, the chain in float32)")
    header = f"{'model':<16}{'dtype':<10}{'s/step':>10}{'vs float32':>12}{'mean |x - x_f32|':>18}"
    print(header)
    print("-" * len(header))
    for name, make in models:
        keras.backend.clear_session()
        rows = precision_rows(make(), args.num_images, args.precision_steps, args.repeats)
        for dtype, seconds, difference in rows:
            print(f"{name:<16}{dtype:<10}{seconds:>10.4f}{seconds / rows[0][1]:>11.2f}x{difference:>18.5f}")


def speed(args):
    per_step, wall = [], []
    for preset in args.presets:
        steps = args.tiny_steps if preset == "tiny" else args.flowers64_steps
        rows, walls = bench_preset(preset, args.num_images, steps, run_full=(preset == "tiny" and not args.skip_full))
        per_step += rows
        wall.append((preset,) + walls)

    print(f"\nPer reverse step, {args.num_images} images, keras {keras.__version__} "
          f"backend={keras.backend.backend()} (compile/trace time excluded, shown apart)")
    header = f"{'preset':<10}{'params':>12}{'steps':>7}{'compiled s/step':>17}{'img/s':>9}" \
             f"{'predict s/step':>16}{'img/s':>9}{'speedup':>9}{'compile s':>11}"
    print(header)
    print("-" * len(header))
    for p, params, k, cs, cips, ps, pips, speedup, comp in per_step:
        print(f"{p:<10}{params:>12}{k:>7}{cs:>17.4f}{cips:>9.1f}{ps:>16.4f}{pips:>9.1f}{speedup:>8.1f}x{comp:>11.1f}")

    print(f"\nWall time for {args.num_images} images, compiled (extrap. = per-step time x steps)")
    header = f"{'preset':<10}{'DDIM-50 s':>12}{'DDPM-1000 s':>14}{'ratio':>9}{'how':>10}{'compile s (ddim/ddpm)':>24}"
    print(header)
    print("-" * len(header))
    for p, ddim, ddpm, how, ddim_compile, ddpm_compile in wall:
        compile_text = "-" if ddim_compile is None else f"{ddim_compile:.1f} / {ddpm_compile:.1f}"
        print(f"{p:<10}{ddim:>12.2f}{ddpm:>14.2f}{ddpm / ddim:>8.1f}x{how:>10}{compile_text:>24}")


def segments(args):
    keras.backend.clear_session()
    model = build_model("tiny")
    total = args.segment_steps_total
    whole = segment_seconds_per_step(model, args.num_images, total, None, args.repeats)
    print(f"\nSegments: {total} DDPM steps at tiny, {args.num_images} images, best of {args.repeats}")
    print(f"{'segment steps':<16}{'s/step':>10}{'vs one call':>13}")
    print(f"{'one call':<16}{whole:>10.5f}{'1.000':>13}")
    for size in (50, 10):
        seconds = segment_seconds_per_step(model, args.num_images, total, size, args.repeats)
        print(f"{size:<16}{seconds:>10.5f}{seconds / whole:>13.3f}")


if __name__ == "__main__":
    main()
