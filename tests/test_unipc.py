"""UniPC (Zhao et al. 2023, `bh2`, data prediction), checked against closed forms.

Gaussian data x_0 ~ N(mu, s^2) per pixel has an exact denoiser at every noise level
(alpha = sqrt(ab), sigma = sqrt(1 - ab)): x0*(x) = mu + alpha s^2 (x - alpha mu) / v,
v = alpha^2 s^2 + sigma^2, and its probability-flow ODE keeps the standardised value
(x - alpha mu) / sqrt(v), so the exact output of a deterministic solver is known. UniPC's
steps are affine in x and the stored predictions, so its whole map is affine in x_T, and
an independent float64 transcription of the published update rules gives it exactly.
"""

import numpy as np
import pytest
from gaussian_exact import T
from gaussian_exact import exact_flow
from gaussian_exact import exact_x0
from gaussian_exact import levels
from gaussian_exact import make_model
from gaussian_exact import trailing_kept

from ddpm_keras import samplers
from ddpm_keras.samplers.dpm_solver import dpmpp_coefficients
from ddpm_keras.samplers.unipc import unipc_coefficients


def run_coefficients(table, alphas, x, corrector=True):
    """Runs `unipc_coefficients` in NumPy with the exact denoiser: correct x~_i, then predict x~_{i+1}."""
    history = [0.0, 0.0, 0.0]
    for i in range(len(table["a"])):
        predictions = [exact_x0(x, alphas[i] ** 2)] + history
        if corrector:
            x = x + sum(table[f"c{k}"][i] * m for k, m in enumerate(predictions))
        x = table["a"][i] * x + sum(table[f"p{k}"][i] * m for k, m in enumerate(predictions[:3]))
        history = predictions[:3]
    return x


def observed_orders(order, corrector=True, steps=(32, 64, 128, 256)):
    """log2 of the error ratio per doubling of n, uniform lambda steps from -3 to 3 (not the data)."""
    errors = []
    for n in steps:
        alphas, sigmas = levels(np.linspace(-3.0, 3.0, n + 1))
        x = run_coefficients(unipc_coefficients(alphas, sigmas, order=order), alphas, 1.3, corrector)
        errors.append(abs(x - exact_flow(1.3, alphas[0] ** 2, alphas[-1] ** 2)))
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


# ------------------------------------------------------------------ order


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_global_error_falls_with_one_order_more_than_its_predictor(order):
    # UniC-p turns a p-th order predictor into a (p + 1)-th order method (Zhao et al. 2023):
    # for the default p = 2 the error falls by 8 per doubling of n, warm-up included.
    # (With the corrector weights rho^c scaled by 1.1 the orders are about 1, 1, 1.)
    np.testing.assert_allclose(observed_orders(order)[-2:], order + 1, atol=0.3)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_without_its_corrector_unipc_has_its_predictor_order(order):
    np.testing.assert_allclose(observed_orders(order, corrector=False)[-2:], order, atol=0.3)


def test_bh2_second_order_predictor_is_dpm_solver_pp_2m():
    # B(h) = expm1(-h) and rho = 1/2 give DPM-Solver++(2M)'s step; the corrector is what differs.
    ab = np.linspace(0.01, 0.99, 21) ** 2
    alphas, sigmas = np.sqrt(ab), np.sqrt(1 - ab)
    unipc, dpmpp = unipc_coefficients(alphas, sigmas), dpmpp_coefficients(alphas, sigmas, order=2)
    for ours, theirs in [("a", "a"), ("p0", "c0"), ("p1", "c1")]:
        np.testing.assert_allclose(unipc[ours], dpmpp[theirs], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(unipc["order"], dpmpp["order"])
    assert np.abs(unipc["c0"][1:]).min() > 0 and np.all(unipc["c0"][0] == 0)


# ------------------------------------------------------------------ reference


def reference_unipc(kept, x_T, order=2):
    """UniPC-bh2 in data prediction as diffusers' UniPCMultistepScheduler.step runs it, in float64.

    kept: alphas_cumprod of the kept timesteps, ascending; the solver walks them from the
    last down, then to the data. Each call evaluates the model at the predicted sample,
    corrects the previous step with it (UniC, from the second call on), then predicts
    (UniP) with order min(order, calls so far, calls left).
    """
    path = np.append(np.asarray(kept)[::-1], 1.0)
    n = len(path) - 1
    alpha, sigma = np.sqrt(path), np.sqrt(1 - path)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)

    def update(x, ms, j, p, corrector):
        """Step j -> j + 1 of order p from x at point j; ms newest first (ms[0] = m_{j+1} for UniC)."""
        h = lam[j + 1] - lam[j]
        m_j = ms[1] if corrector else ms[0]
        b_h = np.expm1(-h)  # bh2
        x_base = sigma[j + 1] / sigma[j] * x - alpha[j + 1] * np.expm1(-h) * m_j
        rks = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
        diffs = [(ms[k + (1 if corrector else 0)] - m_j) / rks[k - 1] for k in range(1, p)]
        if not corrector and p <= 2:
            rhos = [0.5] * (p - 1)
        elif corrector and p == 1:
            rhos = [0.5]
        else:
            size = p if corrector else p - 1
            rks_all = np.array(rks + [1.0])[:size]
            matrix = np.stack([rks_all**i for i in range(size)])
            b, h_phi, factorial = [], np.expm1(-h) / -h - 1.0, 1.0
            for i in range(1, size + 1):
                b.append(h_phi * factorial / b_h)
                factorial *= i + 1
                h_phi = h_phi / -h - 1.0 / factorial
            rhos = list(np.linalg.solve(matrix, np.array(b)))
        if corrector:
            diffs.append(ms[0] - m_j)
        return x_base - alpha[j + 1] * b_h * sum(r * d for r, d in zip(rhos, diffs))

    x, ms, last_x, last_order = x_T, [], None, None
    for i in range(n):
        m = exact_x0(x, path[i])
        if i > 0:
            x = update(last_x, [m] + ms, i - 1, last_order, corrector=True)
        ms.insert(0, m)
        last_x, last_order = x, min(order, i + 1, n - i)
        x = update(x, ms, i, last_order, corrector=False)
    return x



@pytest.mark.parametrize("num_steps", [2, 8, 20])
def test_unipc_is_the_published_update_rule(num_steps):
    model, diffusion = make_model()
    noise = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype("float32")
    images = model.generate_images(sampler="unipc", num_steps=num_steps, initial_noise=noise)
    kept = trailing_kept(diffusion, num_steps)
    offset = reference_unipc(kept, 0.0)
    gain = reference_unipc(kept, 1.0) - offset
    np.testing.assert_allclose(images, gain * noise + offset, atol=5e-6)


def test_unipc_is_several_times_closer_to_the_ode_than_ddim():
    # The n-step run integrates the ODE from T - 1 to s_0 and returns the predicted x_0 there.
    # At n = 20 the largest errors (float64 reference): DDIM 6.0e-2, DPM-Solver++(2M) 1.0e-2
    # (UniPC's predictor alone), UniPC 7.1e-3.
    model, diffusion = make_model()
    noise = np.random.default_rng(1).standard_normal((512, 4, 4, 1)).astype("float32")
    ab = diffusion.terms_float64["alphas_cumprod"]
    s_0 = samplers.spaced_timesteps(T, 20)[0]
    exact = exact_x0(exact_flow(noise.astype(np.float64), ab[-1], ab[s_0]), ab[s_0])
    errors = {
        name: np.abs(model.generate_images(512, sampler=name, num_steps=20, initial_noise=noise) - exact).max()
        for name in ("ddim", "dpmpp_2m", "unipc")
    }
    assert errors["unipc"] < errors["ddim"] / 5, errors
    assert errors["unipc"] < 0.8 * errors["dpmpp_2m"], errors


def test_zero_terminal_snr_unipc_starts_from_pure_noise():
    # With zero terminal SNR x_T is exactly the standardised value; the first step (h infinite)
    # and its correction stay finite. (Noise prediction is undefined at ab = 0.)
    model, diffusion = make_model("x0", zero_terminal_snr=True)
    ab = diffusion.terms_float64["alphas_cumprod"]
    assert ab[-1] == 0.0
    noise = np.random.default_rng(2).standard_normal((4, 4, 4, 1))
    s_0 = samplers.spaced_timesteps(T, 20)[0]
    exact = exact_x0(exact_flow(noise, 0.0, ab[s_0]), ab[s_0])
    images = model.generate_images(sampler="unipc", num_steps=20, initial_noise=noise.astype("float32"))
    assert np.all(np.isfinite(images))
    np.testing.assert_allclose(images, exact, atol=0.01)


# ------------------------------------------------------------------ arguments


def test_unipc_rejects_too_few_steps_and_unknown_orders():
    model, _ = make_model()
    with pytest.raises(ValueError, match=r"^sampler='unipc' is a multistep solver of order 2: it needs num_steps >= 2. "
                                         r"Received: num_steps=1 \(use 'ddim' for fewer steps\)$"):
        model.generate_images(2, sampler="unipc", num_steps=1)
    with pytest.raises(ValueError, match=r"order must be one of \(1, 2, 3\). Received: order=4"):
        unipc_coefficients(np.ones(3), np.ones(3), order=4)
