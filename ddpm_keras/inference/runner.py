"""`ChainRunner`: how a `DiffusionModel` runs a sampler chain, compiled, in segments, with a progress bar.

One compiled function draws `x_T` (or takes it) and sets up the chain's
state, another runs `segment_steps` steps of it from any position (compiled
once, the position an argument), and a progress bar moves between
segments. The backend-specific compilation is in
`ddpm_keras.inference.compiled.compile_chain`. Generation, editing and the
likelihood (`generate.py`, `edit.py`, `likelihood.py`) run through it.
"""

import threading

import keras
import numpy as np
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.inference.compiled import compile_chain
from ddpm_keras.inference.masked import with_free_inputs
from ddpm_keras.inference.precision import check_inference_dtype
from ddpm_keras.inference.precision import inference_network
from ddpm_keras.utils.progress import progress_bar
from ddpm_keras.utils.seeds import random_seed

SEGMENT_STEPS = 50
DETERMINISTIC_SAMPLERS = tuple(name for name, spec in samplers.REGISTRY.items() if not spec.stochastic)


class ChainRunner:
    """Runs sampler chains with a model's EMA network, compiled once per key and cached.

    A `DiffusionModel` holds one (`model.runner`); the functions of
    `ddpm_keras.inference` run their chains through it. It reads the model's
    public attributes only: `ema_network` (whose current weights every run
    uses) and `diffusion`.

    Args:
        model: A `DiffusionModel`.
    """

    def __init__(self, model):
        self.model = model
        self._compiled = {}
        self._networks = {}

    def inference_network(self, dtype=None):
        """The EMA network, or a copy of it computing in `dtype` (made once, run with the EMA weights)."""
        dtype = check_inference_dtype(dtype)
        if dtype == "float32":
            return self.model.ema_network
        if dtype not in self._networks:
            self._networks[dtype] = inference_network(self.model.ema_network, dtype)
        return self._networks[dtype]

    def compiled(self, key, chain, dtype="float32", classifier=None):
        """The compiled form of `chain`, built once per `key` and cached.

        `chain(model_fn, noise_fn, *inputs) -> outputs` is written in
        `keras.ops`; the result is `run(seed, *inputs) -> outputs` (the same
        seed gives the same outputs): on TensorFlow one
        `tf.function(jit_compile=True)`, on JAX `jax.jit` with the EMA
        weights as arguments and noise from a key folded with each draw's
        step, on PyTorch eager code under `torch.no_grad()`
        (`ddpm_keras.inference.compiled.compile_chain`). With a
        `classifier`, `chain` also gets `classifier_fn=` (classifier
        guidance); `key` must tell classifiers apart.
        """
        key = key + (dtype,)
        if key not in self._compiled:
            network = self.inference_network(dtype)
            chain = with_free_inputs(chain, getattr(self.model, "inpainting", False))  # an inpainting network's mask, when none is given
            self._compiled[key] = compile_chain(self.model.ema_network, chain, network, classifier)
        return self._compiled[key]

    def run_chain(
        self, key, build, shape, num_steps, seed, x_T=None, inputs=(), trajectory_every=None,
        segment_steps=SEGMENT_STEPS, progress=None, dtype="float32", classifier=None,
    ):
        """Runs the chain `build(model_fn, noise_fn, *inputs)` from `x_T` (or noise from `seed`) in segments.

        Returns the sample, or `(sample, frames)` with `trajectory_every`.
        A `classifier` (classifier guidance) is passed to `build` as
        `classifier_fn=`.
        """
        key = key + (tuple(shape), x_T is None, trajectory_every)
        drawn = x_T is None

        def init(model_fn, noise_fn, *args, **networks):
            x_start = noise_fn(shape, -1) if drawn else args[0]
            chain = build(model_fn, noise_fn, *args[0 if drawn else 1 :], **networks)
            return samplers.start(chain, x_start, trajectory_every)

        def segment(model_fn, noise_fn, loop_state, begin, end, *args, **networks):
            chain = build(model_fn, noise_fn, *args, **networks)
            return samplers.advance(chain, loop_state, begin, end, trajectory_every)

        run_init = self.compiled(key + ("init",), init, dtype, classifier)
        run_segment = self.compiled(key + ("segment",), segment, dtype, classifier)
        seed = random_seed(seed)
        loop_state = run_init(seed, *((() if drawn else (ops.convert_to_tensor(x_T),)) + tuple(inputs)))
        size = num_steps if segment_steps is None else segment_steps
        for begin in range(0, num_steps, size):
            end = min(begin + size, num_steps)
            loop_state = run_segment(seed, loop_state, _index(begin), _index(end), *inputs)
            if progress is not None:
                progress.advance(end - begin, loop_state)
        return samplers.finish(loop_state)


def check_images(images, name, image_shape):
    """`images` as float32 `(N, H, W, C)` of `image_shape`, or a ValueError."""
    images = np.asarray(ops.convert_to_numpy(images), dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[0] < 1 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name} must have shape (N,) + {tuple(image_shape)} or {tuple(image_shape)}. "
            f"Received: {name}.shape={images.shape}"
        )
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{name} must be finite. Received: {name} with NaN or inf values")
    return images


def check_pair(pair, name, image_shape):
    """A pair `(a, b)` of `(H, W, C)` arrays as float32 `(2, H, W, C)`."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ValueError(f"{name} must be a pair (a, b). Received: {name} of type {type(pair).__name__}")
    return np.concatenate([check_images(item, name, image_shape) for item in pair], axis=0)


def to_images(images, diffusion):
    """A sampler's output as a NumPy float32 array clipped to `diffusion`'s data range."""
    images = np.asarray(ops.convert_to_numpy(images), dtype=np.float32)
    return np.clip(images, diffusion.clip_min, diffusion.clip_max)


class Progress:
    """A progress bar over sampling steps, shown only when `show`; waits for each segment to finish."""

    def __init__(self, total, show):
        self.bar = progress_bar(total, unit_name="step") if show else None
        self.done = 0
        self._lock = threading.Lock()  # chunks may run in one thread per device

    def advance(self, steps, loop_state):
        if self.bar is None:
            return
        # Wait for the segment (asynchronous backends return at once).
        ops.convert_to_numpy(ops.ravel(loop_state[0][0])[:1])
        with self._lock:
            self.done += steps
            self.bar.update(self.done)


def num_segments(num_steps, segment_steps):
    return 1 if segment_steps is None else -(-num_steps // segment_steps)


def _index(value):
    """A loop bound as an int32 scalar tensor, so one compiled segment serves every position."""
    if keras.backend.backend() == "torch":
        return int(value)
    return ops.convert_to_tensor(value, "int32")


def padded(images, size):
    """`images` with zero images appended up to `size`."""
    if len(images) == size:
        return images
    return np.concatenate([images, np.zeros((size - len(images),) + images.shape[1:], images.dtype)])


def chunk_seeds(seed, num_chunks):
    """The seed of each chunk: `seed` itself for one chunk, else derived from `(seed, k)`."""
    if num_chunks == 1:
        return [seed]
    base = np.random.default_rng().integers(2**31 - 1) if seed is None else int(seed)
    return [derived_seed(base, k) for k in range(num_chunks)]


def derived_seed(base, k):
    """An int seed in `[0, 2^31 - 1)` derived from `(base, k)`."""
    return int(np.random.SeedSequence([int(base) % 2**32, k]).generate_state(1)[0] % (2**31 - 1))
