"""A trained model's generator as a self-contained TensorFlow SavedModel.

The SavedModel holds the EMA weights and the whole sampling chain, compiled
with XLA as `generate_images` runs it. Its serving signature takes two
integer scalars and returns uint8 images; loading it needs TensorFlow only
(no Keras, no ddpm_keras), so it serves from TensorFlow Serving, a batch job
or a web backend:

>>> generator = tf.saved_model.load("flowers_generator")
>>> images = generator.signatures["serving_default"](
...     seed=tf.constant(0, tf.int64), num_images=tf.constant(16))["images"]

For a seed in `[0, 2**31)` the images are those of
`model.generate_images(num_images, seed=seed, ...)` with the exported
options, as uint8 (`ddpm_keras.visualize.to_uint8`). A class-conditional
model's signature also takes `labels` and `guidance_scale`.

Only the TensorFlow backend exports: a SavedModel is a TensorFlow graph, and
JAX's route to one (`jax2tf`) cannot express an output whose shape is an
input's value (`num_images`); the JAX and PyTorch samplers also draw other
noise than TensorFlow's for a seed. A `.keras` file loads on any backend:
load it under `KERAS_BACKEND=tensorflow` to export it.
"""

import os

import keras
from keras import ops

from ddpm_keras import samplers
from ddpm_keras.inference import conditioning
from ddpm_keras.inference.compiled import tf_chain_function
from ddpm_keras.inference.masked import with_free_inputs
from ddpm_keras.inference.compiled import weight_values
from ddpm_keras.inference.generate import generation_chain
from ddpm_keras.inference.generate import resolved_options
from ddpm_keras.inference.generate import with_default_sampling
from ddpm_keras.inference.precision import check_inference_dtype
from ddpm_keras.samplers.options import default_sampling_for
from ddpm_keras.utils import files

METADATA_FILE = files.EXPORT_METADATA_FILE


def export_generator(
    model, path, sampler=None, *, dtype=None, guidance_rescale=0.0, overwrite=False,
    **sampler_options,
):
    """Writes `model`'s generator as a TensorFlow SavedModel at `path`.

    The serving signature `serving_default` takes `seed` (int64 scalar, in
    `[0, 2**31)`) and `num_images` (int32 scalar, >= 1) and returns
    `{"images": uint8 (num_images, H, W, C)}`. A class-conditional model's
    signature also takes `labels` (int32 `(num_images,)`, classes in
    `[0, num_classes)`, or `num_classes` itself for an unconditional image)
    and `guidance_scale` (float32 scalar >= 0, as in `generate_images`: `1`
    runs the conditional model alone, other values guide with one batched
    call). XLA compiles the chain once
    per `num_images` on first use, as `generate_images` does per batch
    size. The sampler options are fixed at export and written, with the
    image shape, to `assets.extra/ddpm_keras.json` inside the SavedModel.

    Args:
        model: A `DiffusionModel`.
        path: String, the SavedModel directory to write. It must be new
            or empty, or hold a previous export of ddpm_keras and nothing
            else (which is replaced); anything else is an error unless
            `overwrite`.
        sampler: A sampler's name or a `samplers.SamplerOptions`, as in
            `DiffusionModel.generate_images`, or `None`: the model's
            `default_sampling`, else `samplers.DEFAULT_SAMPLING`
            (`"ddpm"` respaced to 50 steps, or all `T` of a shorter
            diffusion), the
            options given overriding theirs; that sampler named also
            takes their options where none are given. Defaults to
            `None`.
        dtype: `None`, `"float32"`, `"bfloat16"` or `"float16"`, the
            precision the network computes in, as in `generate_images`.
            Defaults to `None`.
        guidance_rescale: Float in `[0, 1]`, a conditional model's rescale
            of the guided output (`generate_images`), fixed at export.
            Defaults to `0.0`.
        overwrite: Boolean, replace `path` even when it holds files that
            are not an export of ddpm_keras. Nothing beside `path` is ever
            touched. Defaults to `False`.
        **sampler_options: The sampler's options (`samplers.SamplerOptions`),
            as in `generate_images`.

    Returns:
        `path`.

    Example:

    >>> export_generator(model, "flowers_generator", sampler="ddim", num_steps=50)
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_generator writes a TensorFlow SavedModel and needs KERAS_BACKEND=tensorflow. "
            f"Received: KERAS_BACKEND={keras.backend.backend()!r}. The .keras file loads on any backend: "
            "load it under tensorflow and export there."
        )
    import tensorflow as tf

    # Checked before the compilation: a folder of the user's is never replaced.
    files.check_output(path, "path", overwrite=overwrite, kind="dir")
    fallback = default_sampling_for(model.diffusion.num_timesteps)
    sampler, sampler_options = with_default_sampling(model, sampler, sampler_options, fallback=fallback)
    options = resolved_options(model, sampler, **sampler_options)
    dtype = check_inference_dtype(dtype)
    rescale = conditioning.check_float("guidance_rescale", guidance_rescale, low=0.0, high=1.0)
    module = _serving_module(model, options, dtype, rescale)
    # Written beside `path` and moved in place, so an interrupted export leaves no half SavedModel.
    with files.replacing_dir(path, overwrite=overwrite, option="path") as staging:
        tf.saved_model.save(module, staging, signatures={"serving_default": module.generate.get_concrete_function()})
        files.write_json(os.path.join(staging, METADATA_FILE), _metadata(model, options, dtype, rescale))
    return path


def _compiled_chain(model, options, dtype, guided, rescaled):
    """The XLA-compiled init and segment of the sampling chain (guided: two passes per step)."""
    import tensorflow as tf

    build = generation_chain(model, options)
    if model.num_classes is not None:
        build = conditioning.guided_build(build, model.null_label, guided, rescaled)
    image_shape = model.image_shape

    def init(model_fn, noise_fn, batch, *extra):
        # The batch size comes from an input's shape, which XLA knows when it compiles.
        x_T = noise_fn((ops.shape(batch)[0],) + image_shape, -1)
        return samplers.start(build(model_fn, noise_fn, *extra), x_T, None)

    def segment(model_fn, noise_fn, loop_state, begin, end, *extra):
        return samplers.advance(build(model_fn, noise_fn, *extra), loop_state, begin, end, None)

    network = model.runner.inference_network(dtype)
    return tuple(
        # An inpainting network generates freely here: the all-zero mask.
        tf.function(tf_chain_function(network, with_free_inputs(fn, model.inpainting)), jit_compile=True,
                    autograph=False)
        for fn in (init, segment)
    )


def _serving_module(model, options, dtype, rescale):
    """A `tf.Module` holding the EMA weights and `generate`, the serving function of the signature."""
    import tensorflow as tf

    conditional = model.num_classes is not None
    clip_min, clip_max = float(model.diffusion.clip_min), float(model.diffusion.clip_max)
    module = tf.Module()
    trainable, non_trainable = weight_values(model.ema_network)
    module.trainable = [tf.Variable(v, trainable=False) for v in trainable]
    module.non_trainable = [tf.Variable(v, trainable=False) for v in non_trainable]
    run_init, run_segment = _compiled_chain(model, options, dtype, False, rescale > 0)
    run_guided_segment = _compiled_chain(model, options, dtype, True, rescale > 0)[1] if conditional else None

    def run(seed, num_images, labels=None, guidance_scale=None):
        with tf.control_dependencies(_input_checks(model, seed, num_images, labels, guidance_scale)):
            seed32 = tf.cast(seed, tf.int32)
        weights = ([v.read_value() for v in module.trainable], [v.read_value() for v in module.non_trainable])
        extra = () if not conditional else (labels, guidance_scale, tf.constant(rescale, tf.float32))
        loop_state = run_init(*weights, seed32, tf.zeros(tf.stack([num_images]), tf.float32), *extra)
        bounds = (tf.constant(0, tf.int32), tf.constant(options.num_steps, tf.int32))
        if conditional:
            loop_state = tf.cond(
                tf.equal(guidance_scale, 1.0),
                lambda: run_segment(*weights, seed32, loop_state, *bounds, *extra),
                lambda: run_guided_segment(*weights, seed32, loop_state, *bounds, *extra),
            )
        else:
            loop_state = run_segment(*weights, seed32, loop_state, *bounds)
        images = (tf.clip_by_value(samplers.finish(loop_state), clip_min, clip_max) - clip_min) / (clip_max - clip_min)
        return {"images": tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)}

    signature = [tf.TensorSpec([], tf.int64, name="seed"), tf.TensorSpec([], tf.int32, name="num_images")]
    if conditional:
        signature += [tf.TensorSpec([None], tf.int32, name="labels"), tf.TensorSpec([], tf.float32, name="guidance_scale")]
    module.generate = tf.function(run, input_signature=signature, autograph=False)
    return module


def _input_checks(model, seed, num_images, labels, guidance_scale):
    """The graph's assertions on the signature's inputs."""
    import tensorflow as tf

    checks = [
        tf.debugging.assert_positive(num_images, message="num_images must be >= 1"),
        tf.debugging.assert_non_negative(seed, message="seed must be in [0, 2**31)"),
        tf.debugging.assert_less(seed, tf.constant(2**31, tf.int64), message="seed must be in [0, 2**31)"),
    ]
    if model.num_classes is not None:
        bound = f"labels must be in [0, {model.num_classes}]"
        checks += [
            tf.debugging.assert_equal(tf.size(labels), num_images, message="labels must hold num_images labels"),
            tf.debugging.assert_non_negative(labels, message=bound),
            tf.debugging.assert_less_equal(labels, model.num_classes, message=bound),
            tf.debugging.assert_non_negative(guidance_scale, message="guidance_scale must be >= 0"),
        ]
    return checks


def _metadata(model, options, dtype, rescale):
    """What `assets.extra/ddpm_keras.json` says of an export: its options, shapes and inputs."""
    conditional = model.num_classes is not None
    inputs = {"seed": "int64 scalar in [0, 2**31)", "num_images": "int32 scalar >= 1"}
    if conditional:
        inputs.update(labels=f"int32 (num_images,) in [0, {model.num_classes}] ({model.num_classes}: unconditional)",
                      guidance_scale="float32 scalar >= 0")
    return {
        "image_shape": list(model.image_shape),
        "sampler_options": {**options.as_dict(), "dtype": dtype},
        "prediction_type": model.prediction_type,
        "num_timesteps": int(model.diffusion.num_timesteps),
        "value_range": [float(model.diffusion.clip_min), float(model.diffusion.clip_max)],
        "inputs": inputs,
        "class_names": list(model.class_names) if conditional and model.class_names else None,
        "guidance_rescale": rescale if conditional else None,
        "outputs": {"images": "uint8 (num_images, H, W, C)"},
    }
