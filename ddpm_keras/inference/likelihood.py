"""`bits_per_dim`: a model's negative log-likelihood bound, `DiffusionModel.bits_per_dim`.

The bound's math (its terms, the stratified timesteps, one compiled loop
over them) is `ddpm_keras.diffusion.likelihood`; this function feeds it the
model's images in chunks, through the model's compiled chains
(`runner.ChainRunner.compiled`, the EMA weights), and sums the terms.
"""

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import likelihood
from ddpm_keras.inference.runner import check_images
from ddpm_keras.inference.runner import derived_seed
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import check_seed
from ddpm_keras.utils.progress import progress_bar
from ddpm_keras.utils.seeds import random_seed


def bits_per_dim(
    model,
    data,
    num_steps=None,
    batch_size=None,
    seed=0,
    clip_denoised=True,
    model_variance="fixedsmall",
    return_terms=False,
    verbose=1,
):
    """The negative log-likelihood bound of `model` in bits per dimension, with its EMA network.

    The variational bound of Ho et al. 2020 (eq. 5), as Ho et al. and
    Nichol & Dhariwal 2021 (improved-diffusion) report it: the prior
    term `KL(q(x_T | x_0) || N(0, I))`, for each `t > 0` the term
    `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` and the decoder's
    `-log p(x_0 | x_1)` at `t = 0`, each from one draw of `x_t`; every
    term is the mean over `H * W * C` divided by `ln 2`. The images are
    taken as 8-bit data: a value `x` stands for the bin of width
    `(clip_max - clip_min) / 255` centred on it, of the 256 levels of
    the data range (the outer bins extended to infinity). The reverse
    step's mean puts the `x_0` that the network's output stands for
    (read as `prediction_type`, `GaussianDiffusion.split_prediction`)
    in the posterior. See `ddpm_keras.diffusion.likelihood`.

    With `num_steps` `None` (or `T`), every timestep: the bound itself,
    up to the Monte Carlo error of its one draw of noise per term and
    image. With `num_steps=n < T` it is an unbiased stratified
    estimate from `n` network calls per image: the prior and `t = 0`
    exact, the timesteps `[1, T)` split into `n - 1` contiguous strata
    with geometrically spaced edges (the first ones single timesteps,
    where the terms are largest: `likelihood.stratified_timesteps`),
    one `t` drawn uniformly in each (from `seed`, the same for every
    image), its term weighted by the stratum's size.

    Images are processed in order in chunks of `batch_size` (the last
    one padded), each through one compiled loop over the timesteps,
    traced once per chunk shape, number of steps and options. Chunk `k`
    draws its noise from a seed derived from `(seed, k)`: the same
    images in the same order give the same result for the same
    `(seed, batch_size)`, however a dataset batches them.

    A class-conditional model's network gets the null label: this is
    the bound of its unconditional model, and a dataset's labels are
    ignored.

    Args:
        model: A `DiffusionModel`.
        data: Images `(N, H, W, C)` (a NumPy array or a tensor) in the
            data range, or a `tf.data.Dataset` (or any iterable) of such
            batches or of `(images, labels, ...)` tuples.
        num_steps: `None` or an integer in `[2, T]` (`1` when
            `T == 1`), the timesteps evaluated per image. Defaults to
            `None` (all `T`).
        batch_size: Integer or `None`, images per compiled call.
            Defaults to `None`: all of an array at once, or the size of
            a dataset's first batch.
        seed: Integer or `None`, the seed of the noise and of the
            stratified timesteps. Defaults to `0`.
        clip_denoised: Boolean, clip the predicted `x_0` to the data
            range in the reverse step's mean. Defaults to `True`.
        model_variance: `"fixedsmall"` (the posterior variance, which
            the DDPM sampler uses) or `"fixedlarge"` (`beta_t`), the
            reverse step's fixed variance; at `t = 0` both use
            `posterior_variance[1]`. Defaults to `"fixedsmall"`.
        return_terms: Boolean, return the terms too. Defaults to
            `False`.
        verbose: `0` or `1`, show a progress bar over chunks. Defaults
            to `1`.

    Returns:
        The mean over all images of the bound, in bits per dimension (a
        Python float). With `return_terms=True`, a dict: `"bpd"` (that
        float), `"prior_bpd"`, `"decoder_bpd"` (the `t = 0` term),
        `"timesteps"` (int array `(n,)`, increasing, from 0),
        `"terms_bpd"` (float array `(n,)`, each timestep's term
        averaged over images, unweighted), `"weights"` (int array
        `(n,)`, the stratum sizes, all 1 for the exact bound) and
        `"num_images"`; `bpd == prior_bpd + sum(weights * terms_bpd)`.

    Example:

    >>> bpd = model.bits_per_dim(test_images)                       # all T timesteps
    >>> terms = model.bits_per_dim(test_ds, num_steps=100, return_terms=True)
    """
    seed = random_seed(check_seed("seed", seed))
    timesteps, weights = likelihood.stratified_timesteps(model.diffusion.num_timesteps, num_steps, seed)
    likelihood.check_model_variance(model_variance)
    batch_size = None if batch_size is None else check_positive_int("batch_size", batch_size)
    if hasattr(data, "shape"):
        data = check_images(data, "data", model.image_shape)
    options = {"clip_denoised": bool(clip_denoised), "model_variance": model_variance}

    def chain(model_fn, noise_fn, x_0, steps):
        if model.num_classes is not None:
            conditional_fn = model_fn

            def model_fn(x_t, t):
                return conditional_fn(x_t, t, ops.full_like(ops.cast(t, "int32"), model.null_label))

        return likelihood.vb_terms_loop(
            model_fn, noise_fn, model.diffusion, x_0, steps, prediction_type=model.prediction_type, **options
        )

    term_sums, prior_sum, num_images = np.zeros(len(timesteps)), 0.0, 0
    target = -(-len(data) // (batch_size or len(data))) if isinstance(data, np.ndarray) else None
    progbar = progress_bar(target, unit_name="chunk") if verbose and target != 1 else None
    for k, (chunk, count) in enumerate(_image_chunks(model, data, batch_size)):
        key = ("bits_per_dim", chunk.shape, len(timesteps)) + tuple(sorted(options.items()))
        run = model.runner.compiled(key, chain)
        x_0 = ops.convert_to_tensor(chunk)
        terms = ops.convert_to_numpy(run(derived_seed(seed, k), x_0, ops.convert_to_tensor(timesteps, "int32")))
        term_sums += np.asarray(terms, np.float64)[:, :count].sum(axis=1)
        prior_sum += float(np.sum(ops.convert_to_numpy(likelihood.prior_bpd(model.diffusion, x_0))[:count]))
        num_images += count
        if progbar is not None:
            progbar.add(1)
    if progbar is not None and target is None and num_images:
        progbar.update(k + 1, finalize=True)  # ends a bar of unknown length
    if num_images == 0:
        raise ValueError(f"data must hold at least one image. Received: an empty {type(data).__name__}")
    terms_bpd, prior = term_sums / num_images, prior_sum / num_images
    bpd = float(prior + np.sum(weights * terms_bpd))
    if not return_terms:
        return bpd
    return {
        "bpd": bpd, "prior_bpd": prior, "decoder_bpd": float(terms_bpd[0]), "timesteps": timesteps,
        "terms_bpd": terms_bpd, "weights": weights, "num_images": num_images,
    }


def _image_chunks(model, data, batch_size):
    """Yields `(chunk, count)`: `data`'s images in order, in chunks of `batch_size`, the last zero-padded.

    `data` is an array of images or an iterable of batches (or of
    `(images, ...)` tuples); `batch_size=None` takes the size of the array,
    or of the first batch.
    """
    if isinstance(data, np.ndarray):
        batches = iter([data])
    elif hasattr(data, "as_numpy_iterator"):
        batches = data.as_numpy_iterator()
    else:
        try:
            batches = iter(data)
        except TypeError:
            raise ValueError(
                "data must be images (N, H, W, C) or an iterable of batches of images. "
                f"Received: data of type {type(data).__name__}"
            ) from None
    pending = np.zeros((0,) + model.image_shape, np.float32)
    for batch in batches:
        images = keras.utils.unpack_x_y_sample_weight(batch)[0]
        pending = np.concatenate([pending, check_images(images, "data", model.image_shape)])
        batch_size = batch_size or len(pending)
        while len(pending) >= batch_size:
            yield pending[:batch_size], batch_size
            pending = pending[batch_size:]
    if len(pending):
        padding = np.zeros((batch_size - len(pending),) + model.image_shape, np.float32)
        yield np.concatenate([pending, padding]), len(pending)
