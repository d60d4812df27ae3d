"""The high-order solvers and the prediction types, checked against closed forms.

Gaussian data x_0 ~ N(mu, s^2) per pixel has an exact denoiser at every noise level
(alpha = sqrt(ab), sigma = sqrt(1 - ab)): x0*(x) = mu + alpha s^2 (x - alpha mu) / v,
v = alpha^2 s^2 + sigma^2, and its probability-flow ODE keeps the standardised value
(x - alpha mu) / sqrt(v): the exact output of a deterministic solver is known. Every
solver step is affine in x and the stored predictions, so a solver's whole map is
affine in x_T, and an independent float64 implementation of the published update
rules gives it exactly.
"""

import math

import numpy as np
import pytest
from gaussian_exact import MU
from gaussian_exact import S
from gaussian_exact import T
from gaussian_exact import exact_flow
from gaussian_exact import exact_x0
from gaussian_exact import levels
from gaussian_exact import make_model
from gaussian_exact import trailing_kept
from keras import ops

from ddpm_keras import GaussianDiffusion
from ddpm_keras import samplers
from ddpm_keras.samplers.dpm_solver import dpmpp_coefficients


def run_coefficients(table, alphas, sigmas, x):
    """Runs a deterministic solver's coefficient table in NumPy with the exact denoiser."""
    history = [0.0, 0.0]
    for i in range(len(table["a"])):
        m = exact_x0(x, alphas[i] ** 2)
        x = table["a"][i] * x + table["c0"][i] * m + table["c1"][i] * history[0] + table["c2"][i] * history[1]
        history = [m, history[0]]
    return x


# ------------------------------------------------------------------ order


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_local_error_falls_with_its_order(order):
    # One step from exact history at uniform lambda spacing h: local error O(h^(order + 1)).
    # (With diffusers' 3M weights the ratio is 8, not 16: a second-order method.)
    errors = []
    for h in [0.05, 0.025, 0.0125]:
        log_snr = -1.0 + h * np.arange(4)
        alphas, sigmas = levels(log_snr)
        table = dpmpp_coefficients(alphas, sigmas, order=order, few_steps=0)
        assert table["order"][-1] == order
        x_T = 1.3
        xs = [exact_flow(x_T, alphas[0] ** 2, a**2) for a in alphas]
        m = [exact_x0(x, a**2) for x, a in zip(xs, alphas)]
        step = table["a"][2] * xs[2] + table["c0"][2] * m[2] + table["c1"][2] * m[1] + table["c2"][2] * m[0]
        errors.append(abs(step - xs[3]))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0 ** (order + 1), rtol=0.2)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_global_error_falls_with_its_order(order):
    # Uniform lambda steps between fixed levels (not the data): the error of n steps falls
    # by 2^order per doubling of n, warm-up included.
    errors = []
    for n in [32, 64, 128, 256]:
        alphas, sigmas = levels(np.linspace(-3.0, 3.0, n + 1))
        x = run_coefficients(dpmpp_coefficients(alphas, sigmas, order=order), alphas, sigmas, 1.3)
        errors.append(abs(x - exact_flow(1.3, alphas[0] ** 2, alphas[-1] ** 2)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios[-2:], 2.0**order, rtol=0.2)


def test_dpmpp_3m_is_more_accurate_than_2m():
    alphas, sigmas = levels(np.linspace(-3.0, 3.0, 33))
    exact = exact_flow(1.3, alphas[0] ** 2, alphas[-1] ** 2)
    error = {order: abs(run_coefficients(dpmpp_coefficients(alphas, sigmas, order=order), alphas, sigmas, 1.3) - exact)
             for order in (1, 2, 3)}
    assert error[3] < error[2] / 2 < error[1] / 10


# ------------------------------------------------------------------ reference


def reference_dpmpp(kept, x_T, order, stochastic=False, noises=None):
    """DPM-Solver++ multistep (diffusers' midpoint 2M), written out in lambda, in float64.

    kept: alphas_cumprod of the kept timesteps, ascending; the solver walks them from the
    last down, then to the data with a first-order step. 3M is diffusers'
    multistep_dpm_solver_third_order_update with the D2 weight doubled (its Taylor
    coefficient; see test_dpmpp_local_error_falls_with_its_order).
    """
    path = np.append(np.asarray(kept)[::-1], 1.0)
    n = len(path) - 1
    alpha, sigma = np.sqrt(path), np.sqrt(1 - path)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    x, ms, x_outputs = x_T, [], []
    for i in range(n):
        m0 = exact_x0(x, path[i])
        ms.insert(0, m0)
        step_order = min(order, i + 1)
        if i == n - 1:
            step_order = 1
        elif i == n - 2 and n < 15:
            step_order = min(step_order, 2)
        h = lam[i + 1] - lam[i]
        if step_order == 1:
            d = m0
        elif step_order == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d = m0 + 0.5 * (m0 - ms[1]) / r0
        if stochastic:
            e = math.exp(-h) if np.isfinite(h) else 0.0
            x = sigma[i + 1] / sigma[i] * e * x + alpha[i + 1] * (1 - e**2) * d + sigma[i + 1] * math.sqrt(1 - e**2) * noises[i]
        elif step_order <= 2:
            e = math.exp(-h) if np.isfinite(h) else 0.0
            x = sigma[i + 1] / sigma[i] * x + alpha[i + 1] * (1 - e) * d
        else:
            h0, h1 = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
            r0, r1 = h0 / h, h1 / h
            d1_0, d1_1 = (m0 - ms[1]) / r0, (ms[1] - ms[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            e = math.exp(-h)
            x = (sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (e - 1) * m0 + alpha[i + 1] * ((e - 1) / h + 1) * d1
                 - 2 * alpha[i + 1] * ((e - 1 + h) / h**2 - 0.5) * d2)
        x_outputs.append(x)
    return x, x_outputs



@pytest.mark.parametrize("sampler, order", [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
@pytest.mark.parametrize("num_steps", [8, 20])
def test_deterministic_solvers_are_the_published_update_rules(sampler, order, num_steps):
    model, diffusion = make_model()
    noise = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype("float32")
    images = model.generate_images(sampler=sampler, num_steps=num_steps, initial_noise=noise)
    kept = trailing_kept(diffusion, num_steps)
    gain = reference_dpmpp(kept, 1.0, order)[0] - reference_dpmpp(kept, 0.0, order)[0]
    offset = reference_dpmpp(kept, 0.0, order)[0]
    np.testing.assert_allclose(images, gain * noise + offset, atol=3e-5)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m"])
def test_solvers_are_several_times_closer_to_the_ode_than_ddim(sampler):
    # With the default (trailing, integer) spacing: the n-step run integrates the ODE from
    # T - 1 to s_0 and returns the predicted x_0 there, as DDIM does.
    model, diffusion = make_model()
    noise = np.random.default_rng(1).standard_normal((4, 4, 4, 1)).astype("float32")
    ab = diffusion.terms_float64["alphas_cumprod"]
    # Fewer than 15 steps take the last two at lower order (measured: 2.4x and 2.8x below
    # DDIM's error at 10 steps, 5.8x and 6.7x at 20).
    for num_steps, factor in ((10, 2), (20, 4)):
        s_0 = samplers.spaced_timesteps(T, num_steps)[0]
        exact = exact_x0(exact_flow(noise.astype(np.float64), ab[-1], ab[s_0]), ab[s_0])
        errors = {
            name: np.abs(model.generate_images(sampler=name, num_steps=num_steps, initial_noise=noise) - exact).max()
            for name in ("ddim", sampler)
        }
        assert errors[sampler] < errors["ddim"] / factor, errors


def test_dpmpp_2m_sde_steps_add_exactly_their_noise():
    # The trajectory's every step minus its deterministic part (the reference's, with zero
    # noise) is sigma_{i+1} sqrt(1 - e^{-2h}) z: standard normal after scaling.
    model, diffusion = make_model()
    num_steps = 10
    images, frames = model.generate_images(
        2048, seed=0, sampler="dpmpp_2m_sde", num_steps=num_steps, return_trajectory=True, trajectory_every=1,
    )
    frames = frames.astype(np.float64)
    kept = trailing_kept(diffusion, num_steps)
    path = np.append(kept[::-1], 1.0)
    alpha, sigma = np.sqrt(path), np.sqrt(1 - path)
    lam = np.log(alpha) - np.log(np.where(sigma > 0, sigma, np.nan))
    standardized = []
    for i in range(num_steps - 1):
        m0, m1 = exact_x0(frames[i], path[i]), exact_x0(frames[i - 1], path[i - 1]) if i else 0.0
        h = lam[i + 1] - lam[i]
        d = m0 if i == 0 else m0 + 0.5 * (m0 - m1) * h / (lam[i] - lam[i - 1])
        e = math.exp(-h)
        mean = sigma[i + 1] / sigma[i] * e * frames[i] + alpha[i + 1] * (1 - e**2) * d
        standardized.append((frames[i + 1] - mean) / (sigma[i + 1] * math.sqrt(1 - e**2)))
    z = np.stack(standardized)
    n = z.size
    assert abs(z.mean()) < 4.5 / math.sqrt(n)
    assert z.var() == pytest.approx(1.0, abs=4.5 * math.sqrt(2.0 / n))
    # The last step returns the predicted x_0 at s_0.
    np.testing.assert_allclose(images, exact_x0(frames[-2], path[-2]), atol=1e-5)
    # Many steps of the stochastic solver land near the data distribution (measured: mean
    # 0.0997, std 0.2105 from 50 steps; the rest is discretisation).
    samples = model.generate_images(2048, seed=1, sampler="dpmpp_2m_sde", num_steps=50)
    assert samples.mean() == pytest.approx(MU, abs=0.01) and samples.std() == pytest.approx(S, rel=0.1)


# ------------------------------------------------------------------ prediction types


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "pc", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"])
@pytest.mark.parametrize("prediction_type", ["v", "x0"])
def test_every_sampler_reads_every_prediction_type(sampler, prediction_type):
    # The exact predictors of the three types stand for the same (x_0, noise): the same
    # seed gives the same samples.
    reference, _ = make_model("epsilon")
    model, _ = make_model(prediction_type)
    options = {"seed": 3, "sampler": sampler, "num_steps": 10, "eta": 0.5 if sampler == "ddim" else 0.0}
    np.testing.assert_allclose(model.generate_images(64, **options), reference.generate_images(64, **options), atol=2e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_zero_terminal_snr_solvers_start_from_pure_noise(sampler):
    # With zero terminal SNR x_T is exactly the standardised value: the ODE to s_0 is exact.
    model, diffusion = make_model("v", zero_terminal_snr=True)
    ab = diffusion.terms_float64["alphas_cumprod"]
    assert ab[-1] == 0.0
    noise = np.random.default_rng(2).standard_normal((4, 4, 4, 1))
    num_steps = 20
    s_0 = samplers.spaced_timesteps(T, num_steps)[0]
    v_0 = ab[s_0] * S**2 + 1 - ab[s_0]
    exact = exact_x0(math.sqrt(ab[s_0]) * MU + math.sqrt(v_0) * noise, ab[s_0])
    images = model.generate_images(sampler=sampler, num_steps=num_steps, initial_noise=noise.astype("float32"))
    assert np.all(np.isfinite(images))
    tolerance = 0.05 if sampler == "ddim" else 0.01
    np.testing.assert_allclose(images, exact, atol=tolerance)


# ------------------------------------------------------------------ options


def test_logsnr_and_karras_spacings_follow_their_grids():
    diffusion = GaussianDiffusion(1000)
    ab = diffusion.terms_float64["alphas_cumprod"]
    lam = 0.5 * np.log(ab / (1 - ab))
    steps = samplers.sampling_timesteps(diffusion, 20, "logsnr")
    assert steps[-1] == 999 and np.all(np.diff(steps) > 0)
    targets = np.linspace(lam[999], lam[0], 20)[::-1]
    spacing = np.abs(np.diff(lam)).max()
    assert np.abs(lam[steps] - targets).max() <= spacing
    karras = samplers.sampling_timesteps(diffusion, 20, "karras")
    sigmas = np.exp(-lam)
    ramp = np.linspace(0, 1, 20)
    grid = (sigmas[999] ** (1 / 7) + ramp * (sigmas[0] ** (1 / 7) - sigmas[999] ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.log(sigmas[karras]), np.log(grid[::-1]), atol=spacing)
    assert not np.array_equal(karras, steps)
    with pytest.raises(ValueError, match=r"Unknown timestep_spacing: 'uniform'. Expected one of"):
        samplers.sampling_timesteps(diffusion, 20, "uniform")
    # On a short schedule the grids crowd at the ends: the steps are moved apart, never merged.
    for spacing in ("karras", "logsnr"):
        short = samplers.sampling_timesteps(GaussianDiffusion(30), 25, spacing)
        assert len(short) == 25 and short[-1] == 29 and short[0] >= 0 and np.all(np.diff(short) > 0)


def test_dynamic_thresholding_matches_its_definition():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4, 4, 2)) * np.array([0.3, 1.5, 3.0])[:, None, None, None]).astype("float32")
    out = ops.convert_to_numpy(samplers.dynamic_threshold(ops.convert_to_tensor(x), 0.9, -1.0, 1.0))
    for image, result in zip(x, out):
        s = max(np.quantile(np.abs(image), 0.9), 1.0)
        np.testing.assert_allclose(result, np.clip(image, -s, s) / s, rtol=1e-5, atol=1e-6)
    # Within the data range, and a no-op for an image already inside it.
    assert np.abs(out).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(out[0], x[0], atol=1e-6) if np.abs(x[0]).max() <= 1 else None
    model, _ = make_model(clip=1.0)
    images = model.generate_images(4, seed=0, sampler="dpmpp_2m", num_steps=10, thresholding=0.995)
    assert images.shape == (4, 4, 4, 1)


def test_segments_and_initial_noise_do_not_change_the_samples(capsys):
    model, _ = make_model()
    whole = model.generate_images(8, seed=4, sampler="dpmpp_2m_sde", num_steps=30, segment_steps=None)
    parts = model.generate_images(8, seed=4, sampler="dpmpp_2m_sde", num_steps=30, segment_steps=7)
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    assert "30/30" in capsys.readouterr().out  # a progress bar over the 5 segments
    noise = np.random.default_rng(0).standard_normal((8, 4, 4, 1)).astype("float32")
    a = model.generate_images(sampler="dpmpp_2m", num_steps=12, initial_noise=noise)
    b = model.generate_images(sampler="dpmpp_2m", num_steps=12, initial_noise=noise, batch_size=3, segment_steps=5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, model.decode(noise, num_steps=12, sampler="dpmpp_2m"), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "dpmpp_3m", "num_steps": 2}, r"order 3: it needs num_steps >= 3. Received: num_steps=2"),
        ({"timestep_spacing": "leading"}, r"Unknown timestep_spacing: 'leading'"),
        ({"thresholding": 1.5}, r"thresholding must be None or a quantile in \(0, 1\).*Received: thresholding=1.5"),
        ({"initial_noise": np.zeros((2, 3, 3, 1)), }, r"initial_noise must have shape"),
        ({"initial_noise": np.zeros((2, 4, 4, 1)), "num_images": 3}, r"num_images must match initial_noise's 2"),
    ],
)
def test_solver_arguments_are_checked(kwargs, match):
    model, _ = make_model()
    with pytest.raises(ValueError, match=match):
        model.generate_images(**{"sampler": "dpmpp_2m", **kwargs})
