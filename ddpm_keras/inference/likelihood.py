"""`bits_per_dim`: a model's negative log-likelihood in bits per dimension, `DiffusionModel.bits_per_dim`.

Two methods: the variational bound (`method="vlb"`, the default; its math,
the terms, the stratified timesteps and one compiled loop over them, is
`ddpm_keras.diffusion.likelihood`) and the likelihood of the
probability-flow ODE (`method="ode"`, `ode_bits_per_dim`; its math, the
continuous process, the solvers and the trace estimators, is
`ddpm_keras.diffusion.ode`). Both feed the model's images in chunks through
the model's compiled chains (`runner.ChainRunner.compiled`, the EMA
weights) and sum per image.
"""

import math

import keras
import numpy as np
from keras import ops

from ddpm_keras.diffusion import likelihood
from ddpm_keras.diffusion import ode
from ddpm_keras.inference.runner import check_images
from ddpm_keras.inference.runner import derived_seed
from ddpm_keras.utils.checks import check_number
from ddpm_keras.utils.checks import check_positive_int
from ddpm_keras.utils.checks import check_seed
from ddpm_keras.utils.progress import progress_bar
from ddpm_keras.utils.seeds import random_seed

METHODS = ("vlb", "ode")


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
    *,
    method="vlb",
    **ode_options,
):
    """The negative log-likelihood of `model` in bits per dimension, with its EMA network: its bound, or by the ODE.

    `method="ode"` computes the likelihood of the probability-flow ODE
    instead (Song et al. 2021): `ode_bits_per_dim(model, data, num_steps,
    batch_size, seed, return_terms, verbose, **ode_options)`, whose
    docstring says what it takes and returns. The rest of this docstring
    is the bound's, `method="vlb"`.

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
        method: `"vlb"` (the bound) or `"ode"` (`ode_bits_per_dim`).
            Defaults to `"vlb"`.
        **ode_options: `ode_bits_per_dim`'s options, with `method="ode"`:
            `solver`, `rtol`, `atol`, `eps`, `exact_trace`, `num_probes`,
            `probe`, `dequantize`.

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
    >>> ode = model.bits_per_dim(test_images, method="ode", return_terms=True)   # ode["nfe"]
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method: {method!r}. Expected one of {METHODS}.")
    if method == "ode":
        if clip_denoised is not True or model_variance != "fixedsmall":
            raise ValueError(
                "clip_denoised and model_variance are options of the bound (method='vlb'). Received: "
                f"clip_denoised={clip_denoised!r}, model_variance={model_variance!r} with method='ode'"
            )
        return ode_bits_per_dim(model, data, num_steps, batch_size, seed, return_terms, verbose, **ode_options)
    if ode_options:
        raise ValueError(
            f"{', '.join(sorted(ode_options))}: options of method='ode'. Received: them with method={method!r}"
        )
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
    for k, chunk, count in _counted_chunks(model, data, batch_size, verbose):
        key = ("bits_per_dim", chunk.shape, len(timesteps)) + tuple(sorted(options.items()))
        run = model.runner.compiled(key, chain)
        x_0 = ops.convert_to_tensor(chunk)
        terms = ops.convert_to_numpy(run(derived_seed(seed, k), x_0, ops.convert_to_tensor(timesteps, "int32")))
        term_sums += np.asarray(terms, np.float64)[:, :count].sum(axis=1)
        prior_sum += float(np.sum(ops.convert_to_numpy(likelihood.prior_bpd(model.diffusion, x_0))[:count]))
        num_images += count
    terms_bpd, prior = term_sums / num_images, prior_sum / num_images
    bpd = float(prior + np.sum(weights * terms_bpd))
    if not return_terms:
        return bpd
    return {
        "bpd": bpd, "prior_bpd": prior, "decoder_bpd": float(terms_bpd[0]), "timesteps": timesteps,
        "terms_bpd": terms_bpd, "weights": weights, "num_images": num_images,
    }


def ode_bits_per_dim(
    model,
    data,
    num_steps=None,
    batch_size=None,
    seed=0,
    return_terms=False,
    verbose=1,
    *,
    solver="rk45",
    rtol=1e-5,
    atol=1e-5,
    eps=1e-5,
    exact_trace=False,
    num_probes=1,
    probe="rademacher",
    dequantize=True,
):
    """The negative log-likelihood of `model` by its probability-flow ODE, in bits per dimension (EMA network).

    Song et al. 2021 (sec. 4.3, app. D.2): each image, dequantised, is
    carried by the probability-flow ODE from Song et al.'s time `t = eps`
    to `t = 1` (the continuous process of the schedule, in the half
    log-SNR), jointly with the integral of the drift's divergence; its
    negative log-likelihood is the prior's `-log N(x(1); 0, I)` minus that
    integral. The continuous process, the drift, how the network is called
    between integer timesteps (the continuous timestep for a network whose
    timestep input is float, the nearest integer timestep otherwise), the
    solvers and the conversion to bits per 8-bit dimension are
    `ddpm_keras.diffusion.ode`'s.

    The divergence is the Skilling-Hutchinson estimate from `num_probes`
    Rademacher or Gaussian probes per image, each held along its path, or
    with `exact_trace=True` the exact trace from all `D = H * W * C` unit
    vectors (`D` copies of each image per network call: for small images;
    the tests' oracle). Each `v^T J v` comes from one reverse-mode
    vector-Jacobian product in the backend's own mechanism
    (`tf.GradientTape`, `jax.vjp`, `torch.autograd`) inside the compiled
    loop; it is the same number as the forward-mode `v^T (J v)`, and the
    sum over unit vectors is the trace. The estimate of the likelihood is
    unbiased; the bits per dimension are then an upper bound in
    expectation (Jensen), as for Song et al.

    Images are processed in chunks of `batch_size` (the last padded), each
    by one compiled integration whose noise (dequantisation and probes)
    comes from a seed derived from `(seed, k)` for chunk `k`. A
    class-conditional model's network gets the null label, as for the
    bound.

    Args:
        model: A `DiffusionModel` whose `alphas_cumprod[T - 1] > 0`.
        data: Images `(N, H, W, C)` in the data range (8-bit levels when
            `dequantize`), or a dataset or iterable of such batches (or of
            `(images, labels, ...)` tuples).
        num_steps: Integer or `None`, RK4's steps, uniform in the log-SNR
            (`None` for RK45). Defaults to `None` (`100` for RK4).
        batch_size: Integer or `None`, images per compiled call. Defaults
            to `None`: all of an array at once, or a dataset's first batch.
        seed: Integer or `None`, the seed of the dequantisation and the
            probes. Defaults to `0`.
        return_terms: Boolean, return a dict. Defaults to `False`.
        verbose: `0` or `1`, a progress bar over chunks. Defaults to `1`.
        solver: `"rk45"` (adaptive Dormand-Prince, Song et al.'s) or
            `"rk4"` (fixed steps). Defaults to `"rk45"`.
        rtol, atol: Floats > 0, RK45's tolerances. Default to `1e-5`.
        eps: Float in `(0, 1)`, where the integration starts, in Song et
            al.'s time (`t * T - 1` is the timestep). Defaults to `1e-5`.
        exact_trace: Boolean, the exact divergence. Defaults to `False`.
        num_probes: Integer, Skilling-Hutchinson probes per image.
            Defaults to `1`.
        probe: `"rademacher"` or `"gaussian"`. Defaults to `"rademacher"`.
        dequantize: Boolean, uniform dequantisation of 8-bit data and bits
            per 8-bit dimension; `False` takes the data as continuous and
            gives `-log p_eps(x) / (D ln 2)`. Defaults to `True`.

    Returns:
        The mean over images of the bits per dimension (a Python float).
        With `return_terms=True`, a dict: `"bpd"`, `"image_bpd"` (float
        array `(N,)`), `"prior_bpd"`, `"divergence_bpd"` (the integral's
        part, `-integral / (D ln 2)`), `"dequantization_bpd"` (`7` on
        `[-1, 1]`, `0` without dequantisation): `bpd == prior_bpd +
        divergence_bpd + dequantization_bpd`; `"nfe"` (network calls per
        chunk, the mean over chunks), `"nfe_per_chunk"`, `"method"`
        (`"ode"`), `"solver"`, `"exact_trace"`, `"num_probes"` (`D` for
        the exact trace), `"probe"` and `"num_images"`.

    Example:

    >>> model.bits_per_dim(test_images, method="ode")                             # RK45, one probe
    >>> model.bits_per_dim(test_images, method="ode", solver="rk4", num_steps=50, exact_trace=True)
    """
    diffusion = model.diffusion
    alphas_cumprod = diffusion.terms_float64["alphas_cumprod"]
    ode.check_ode_schedule(alphas_cumprod)
    ode.check_solver(solver)
    ode.check_probe(probe)
    seed = random_seed(check_seed("seed", seed))
    if solver == "rk4":
        num_steps = 100 if num_steps is None else check_positive_int("num_steps", num_steps)
    elif num_steps is not None:
        raise ValueError(f"num_steps is RK4's; RK45 chooses its steps. Received: num_steps={num_steps!r}")
    rtol, atol = (check_number(name, v, low=0.0, low_open=True) for name, v in (("rtol", rtol), ("atol", atol)))
    eps = check_number("eps", eps, low=0.0, high=1.0, low_open=True, high_open=True)
    num_probes = check_positive_int("num_probes", num_probes)
    batch_size = None if batch_size is None else check_positive_int("batch_size", batch_size)
    if hasattr(data, "shape"):
        data = check_images(data, "data", model.image_shape)
    dims = int(np.prod(model.image_shape))
    start, end = ode.log_snr_at(alphas_cumprod, eps), ode.log_snr_at(alphas_cumprod, 1.0)
    float_timesteps = "float" in str(model.ema_network.inputs[1].dtype)
    options = (solver, num_steps, rtol, atol, eps, bool(exact_trace), num_probes, probe, bool(dequantize))

    def chain(model_fn, noise_fn, x):
        if model.num_classes is not None:
            conditional_fn = model_fn

            def model_fn(x_t, t):
                return conditional_fn(x_t, t, ops.full_like(ops.cast(t, "int32"), model.null_label))

        if dequantize:
            uniform = likelihood.standard_normal_cdf(noise_fn(ops.shape(x), 0))
            x = ode.dequantize(x, uniform, diffusion.clip_min, diffusion.clip_max)
        if exact_trace:
            probes, weight = ode.unit_probes(model.image_shape, x.shape[0]), 1.0
        else:
            probes = ode.draw_probes(noise_fn((num_probes,) + tuple(x.shape), 1), probe)
            weight = 1.0 / num_probes
        flow = ode.make_flow(model_fn, alphas_cumprod, probes, model.prediction_type, float_timesteps, weight)
        return ode.probability_flow_nll(flow, x, start, end, solver, num_steps, rtol, atol)

    image_nats, prior_nats, nfes = [], [], []
    for k, chunk, count in _counted_chunks(model, data, batch_size, verbose):
        run = model.runner.compiled(("bits_per_dim_ode", chunk.shape) + options, chain)
        prior, integral, nfe = (ops.convert_to_numpy(v) for v in run(derived_seed(seed, k), ops.convert_to_tensor(chunk)))
        prior, integral = np.asarray(prior, np.float64)[:count], np.asarray(integral, np.float64)[:count]
        if not np.all(np.isfinite(prior - integral)):
            raise ValueError(
                f"The probability-flow ODE gave a non-finite likelihood for chunk {k} after {int(nfe)} network "
                "evaluations: RK45 ran out of steps (loosen rtol/atol) or the network's output is not finite."
            )
        image_nats.append(prior - integral)
        prior_nats.append(prior)
        nfes.append(int(nfe))
    offset = ode.dequantization_bits(diffusion.clip_min, diffusion.clip_max) if dequantize else 0.0
    image_bpd = np.concatenate(image_nats) / (dims * math.log(2.0)) + offset
    prior_bpd = float(np.mean(np.concatenate(prior_nats)) / (dims * math.log(2.0)))
    bpd = float(np.mean(image_bpd))
    if not return_terms:
        return bpd
    return {
        "bpd": bpd, "image_bpd": image_bpd, "prior_bpd": prior_bpd, "divergence_bpd": bpd - prior_bpd - offset,
        "dequantization_bpd": offset, "nfe": float(np.mean(nfes)), "nfe_per_chunk": nfes, "method": "ode",
        "solver": solver, "exact_trace": bool(exact_trace), "num_probes": dims if exact_trace else num_probes,
        "probe": None if exact_trace else probe, "num_images": len(image_bpd),
    }


def _counted_chunks(model, data, batch_size, verbose):
    """Yields `(k, chunk, count)` from `_image_chunks`, with a progress bar over chunks; none is an error."""
    target = -(-len(data) // (batch_size or len(data))) if isinstance(data, np.ndarray) else None
    progbar = progress_bar(target, unit_name="chunk") if verbose and target != 1 else None
    num_images = 0
    for k, (chunk, count) in enumerate(_image_chunks(model, data, batch_size)):
        yield k, chunk, count
        num_images += count
        if progbar is not None:
            progbar.add(1)
    if progbar is not None and target is None and num_images:
        progbar.update(k + 1, finalize=True)  # ends a bar of unknown length
    if num_images == 0:
        raise ValueError(f"data must hold at least one image. Received: an empty {type(data).__name__}")


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
