import math

import numpy as np
import pytest

from ddpm_keras.diffusion.schedules import cosine_beta_schedule
from ddpm_keras.diffusion.schedules import get_beta_schedule
from ddpm_keras.diffusion.schedules import linear_beta_schedule


def test_linear_schedule_matches_formula():
    betas = linear_beta_schedule(1000, 1e-4, 0.02)
    expected = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert betas.dtype == np.float64


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 100, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = np.minimum([1 - f[t + 1] / f[t] for t in range(T)], 0.999)
    betas = cosine_beta_schedule(T)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    # The cumulative product of alphas follows f(t) / f(0) until the cap bites.
    np.testing.assert_allclose(np.cumprod(1 - betas)[:-1], np.array(f[1:T]) / f[0], rtol=1e-9)
    assert betas.max() == pytest.approx(0.999)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "quadratic", "timesteps": 10}, "quadratic"),
        ({"name": "linear", "timesteps": 0}, "timesteps=0"),
        ({"name": "linear", "timesteps": 10, "beta_start": 0.1, "beta_end": 0.01}, "beta_start=0.1"),
        ({"name": "linear", "timesteps": 10, "beta_end": 1.5}, "beta_end=1.5"),
    ],
)
def test_bad_schedule_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_beta_schedule(**kwargs)
