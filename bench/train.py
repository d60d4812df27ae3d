"""Images/s of a DiffusionModel training step per backend, with and without XLA, against the example's way.

Usage:
    python bench/train.py [--presets tiny,flowers64] [--backends tensorflow,jax,torch]
                          [--steps 8] [--flowers-steps 4] [--batch-size N]

Each configuration runs in its own interpreter (KERAS_BACKEND is fixed at
import). A callback times each `fit` batch; the table reports the median
from the third step on (the first traces the step, and `fit`'s own total
includes the tf.data teardown). "example" is the keras.io example's model on
the same network: its `train_step` (`tf.GradientTape`, a Python loop of
`assign`s for the EMA, no XLA) run by `fit`, as the example does. FLOPs are counted analytically from the
network's layers (convolutions, dense layers, attention einsums); a
training step is taken as 3x the forward pass. "% peak" is the step's
FLOP rate over a large float32 matmul measured in the same run.
Random images stand in for the data: the step's cost does not depend on them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------- worker


def _build(preset):
    from ddpm_keras import build_unet
    from ddpm_keras.presets import get_preset

    config = get_preset(preset)
    return config, build_unet(**config["unet"])


def forward_flops(network):
    """Multiply-adds x 2 of one image's forward pass: convs, dense layers, attention."""
    import keras
    import numpy as np

    from ddpm_keras.layers import AttentionBlock

    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            total += 2 * out[1] * out[2] * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            positions = int(np.prod(layer.output.shape[1:-1] or [1]))
            total += 2 * positions * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, AttentionBlock):
            _, height, width, channels = layer.output.shape
            pixels = height * width
            total += 4 * 2 * pixels * channels * channels + 2 * 2 * pixels * pixels * channels
    return total


def matmul_gflops(n=4096, repeats=5):
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def _images(config, batch_size, steps):
    import numpy as np

    size = config["unet"]["img_size"]
    channels = config["unet"]["img_channels"]
    return np.random.default_rng(0).uniform(-1, 1, (batch_size * steps, size, size, channels)).astype("float32")


class StepTimer:
    """A `keras.callbacks.Callback` timing each `fit` batch (built lazily: Keras imports late)."""

    def __new__(cls):
        import keras

        class _StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.durations = []

            def on_train_batch_begin(self, batch, logs=None):
                self._start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # Waits for the step (JAX dispatches asynchronously).
                self.durations.append(time.perf_counter() - self._start)

        return _StepTimer()


def _fit_durations(model, config, batch_size, steps):
    timer = StepTimer()
    model.fit(_images(config, batch_size, steps), batch_size=batch_size, epochs=1, callbacks=[timer],
              verbose=0, shuffle=False)
    return timer.durations


def time_fit(preset, batch_size, steps, jit_compile, precision="float32"):
    import keras

    from ddpm_keras import DiffusionModel
    from ddpm_keras import GaussianDiffusion
    from ddpm_keras.distribute import set_precision
    from ddpm_keras.presets import model_options

    set_precision(precision)
    config, network = _build(preset)
    model = DiffusionModel(network, GaussianDiffusion(**config["diffusion"]), **model_options(config), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(config["training"]["learning_rate"]), jit_compile=jit_compile)
    return network, _fit_durations(model, config, batch_size, steps)


def time_example_way(preset, batch_size, steps):
    """The keras.io example's model on the same network: its `train_step`, run by `fit` as the example does."""
    import keras
    import tensorflow as tf

    from ddpm_keras import GaussianDiffusion

    config, network = _build(preset)
    diffusion = GaussianDiffusion(**config["diffusion"])

    class ExampleDiffusionModel(keras.Model):
        def __init__(self, network, ema_network, timesteps, gdf_util, ema=0.999):
            super().__init__()
            self.network, self.ema_network = network, ema_network
            self.timesteps, self.gdf_util, self.ema = timesteps, gdf_util, ema
            self.loss_tracker = keras.metrics.Mean(name="loss")  # Keras 3 needs one to report the loss

        @property
        def metrics(self):
            return [self.loss_tracker]

        def train_step(self, images):
            batch_size = tf.shape(images)[0]
            t = tf.random.uniform(minval=0, maxval=self.timesteps, shape=(batch_size,), dtype=tf.int64)
            with tf.GradientTape() as tape:
                noise = tf.random.normal(shape=tf.shape(images), dtype=images.dtype)
                images_t = self.gdf_util.q_sample(images, t, noise)
                pred_noise = self.network([images_t, t], training=True)
                loss = self.loss(noise, pred_noise)
            gradients = tape.gradient(loss, self.network.trainable_weights)
            self.optimizer.apply_gradients(zip(gradients, self.network.trainable_weights))
            for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
                ema_weight.assign(self.ema * ema_weight + (1 - self.ema) * weight)
            self.loss_tracker.update_state(loss)
            return {"loss": self.loss_tracker.result()}

    ema_network = keras.models.clone_model(network)
    ema_network.set_weights(network.get_weights())
    model = ExampleDiffusionModel(network, ema_network, diffusion.num_timesteps, diffusion, config["training"]["ema"])
    model.compile(loss=keras.losses.MeanSquaredError(), jit_compile=False,
                  optimizer=keras.optimizers.Adam(config["training"]["learning_rate"]))
    return network, _fit_durations(model, config, batch_size, steps)


def worker(args):
    if args.way == "example":
        network, durations = time_example_way(args.preset, args.batch_size, args.steps)
    else:
        network, durations = time_fit(args.preset, args.batch_size, args.steps, bool(args.jit), args.precision)
    result = {
        "step_s": statistics.median(durations[2:]),
        "first_s": durations[0],
        "params": network.count_params(),
        "flops": forward_flops(network),
    }
    if args.matmul:
        result["matmul_gflops"] = matmul_gflops()
    print("JSON:" + json.dumps(result), flush=True)


# ----------------------------------------------------------------------- main


def _run(preset, backend, way, jit, batch_size, steps, matmul=False, precision="float32"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", "--preset", preset, "--way", way,
        "--jit", str(int(jit)), "--batch-size", str(batch_size), "--steps", str(steps), "--precision", precision,
    ] + (["--matmul"] if matmul else [])
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in process.stdout.splitlines() if line.startswith("JSON:")]
    if process.returncode or not lines:
        print(f"  {preset} {backend} {way} jit={jit}: failed\n{process.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][5:])


# (jit_compile, precision) per backend. JAX's fit is always jitted (XLA);
# PyTorch has no XLA path here. bfloat16 is this kind of CPU's fast path
# (AVX512_BF16, AMX) and that of recent GPUs.
VARIANTS = {
    "tensorflow": [(False, "float32"), (True, "float32"), (False, "mixed_bfloat16")],
    "jax": [(True, "float32")],
    "torch": [(False, "float32")],
}


def _available(backend):
    import importlib.util

    return importlib.util.find_spec({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]) is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,flowers64")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=8, help="fit steps at tiny (the first two are not timed)")
    parser.add_argument("--flowers-steps", type=int, default=4, help="fit steps at flowers64")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--way", default="keras", help=argparse.SUPPRESS)
    parser.add_argument("--jit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if min(args.steps, args.flowers_steps) < 3:
        parser.error("--steps and --flowers-steps must be at least 3 (two warm-up steps).")

    from ddpm_keras.presets import get_preset

    rows = []
    matmul = None
    for preset in args.presets.split(","):
        batch_size = args.batch_size or get_preset(preset)["training"]["batch_size"]
        steps = args.flowers_steps if preset == "flowers64" else args.steps
        example = _run(preset, "tensorflow", "example", False, batch_size, steps, matmul=matmul is None)
        if example is None:
            continue
        matmul = matmul or example.get("matmul_gflops")
        configs = [("example (tf, no XLA)", example)]
        for backend in args.backends.split(","):
            if not _available(backend):
                print(f"skipping {backend}: not installed", file=sys.stderr)
                continue
            for jit, precision in VARIANTS[backend]:
                result = _run(preset, backend, "keras", jit, batch_size, steps, precision=precision)
                if result:
                    label = backend + (" XLA" if jit else "") + ("" if precision == "float32" else f" {precision}")
                    configs.append((label, result))
        for name, result in configs:
            images_per_s = batch_size / result["step_s"]
            achieved = 3 * result["flops"] * images_per_s / 1e9
            rows.append((preset, batch_size, name, result["step_s"], images_per_s,
                         images_per_s / (batch_size / example["step_s"]), result["first_s"],
                         result["flops"] / 1e9, 100 * achieved / matmul))

    print(f"\nfloat32 matmul (4096^3, TensorFlow): {matmul:.0f} GFLOP/s")
    print("| preset | batch | step | s/step | images/s | vs example | first step s | fwd GFLOP/img | % of matmul rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, batch, name, step_s, ips, ratio, first, gflop, peak in rows:
        print(f"| {preset} | {batch} | {name} | {step_s:.3f} | {ips:.1f} | {ratio:.2f}x | {first:.1f} | {gflop:.2f} | {peak:.0f}% |")


if __name__ == "__main__":
    main()
