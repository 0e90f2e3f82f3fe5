"""Tests for tfdiffusion.schedules. Golden values are derived by hand from the formulas."""

import math

import numpy as np
import pytest

from tfdiffusion import schedules

# (name, T) pairs that are valid with default parameters. "linear"/"sigmoid" need
# T >= 1000·0.02 = 20 so that the rescaled β_end = 20/T stays below 1.
VALID = [
    ("linear", 20 + 1),
    ("linear", 400),
    ("linear", 1000),
    ("cosine", 1),
    ("cosine", 10),
    ("cosine", 1000),
    ("polynomial", 1),
    ("polynomial", 10),
    ("polynomial", 1000),
    ("sigmoid", 400),
    ("sigmoid", 1000),
]


@pytest.mark.parametrize("name", schedules.SCHEDULE_NAMES)
def test_every_name_builds_float64_betas_in_open_unit_interval(name):
    betas = schedules.make_betas(name, 1000)
    assert betas.shape == (1000,)
    assert betas.dtype == np.float64
    assert np.all(betas > 0.0) and np.all(betas < 1.0)


@pytest.mark.parametrize("name,T", VALID)
def test_alphas_cumprod_strictly_decreasing(name, T):
    betas = schedules.make_betas(name, T)
    assert betas.shape == (T,)
    alphas_cumprod = np.cumprod(1.0 - betas)
    assert alphas_cumprod[0] < 1.0
    assert np.all(np.diff(alphas_cumprod) < 0.0)
    assert alphas_cumprod[-1] > 0.0


@pytest.mark.parametrize(
    "T,first,last",
    [(400, 2.5e-4, 0.05), (1000, 1e-4, 0.02), (100, 1e-3, 0.2)],  # 1e-4·1000/T, 0.02·1000/T
)
def test_linear_endpoints_and_uniform_spacing(T, first, last):
    betas = schedules.make_betas("linear", T)
    assert betas[0] == pytest.approx(first, rel=1e-12)
    assert betas[-1] == pytest.approx(last, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (last - first) / (T - 1), rtol=1e-9)


def test_linear_total_noise_is_invariant_to_T():
    # Σβ = T·(β_0 + β_{T−1})/2 = T·(0.1/T + 20/T)/2 = 10.05 for every T: the 1000/T rescaling.
    for T in (400, 1000, 2000):
        assert schedules.make_betas("linear", T).sum() == pytest.approx(10.05, rel=1e-12)


def test_linear_kwargs_are_rescaled():
    betas = schedules.make_betas("linear", 500, beta_start=2e-4, beta_end=0.01)
    assert betas[0] == pytest.approx(4e-4, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02, rel=1e-12)


def test_cosine_matches_nichol_dhariwal_formula():
    T, s = 1000, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = schedules.make_betas("cosine", T)
    alphas_cumprod = np.cumprod(1.0 - betas)
    # Before the clip at 0.999 bites, ᾱ_t (0-based) = f(t + 1)/f(0).
    expected = np.array([f(t + 1) / f(0) for t in range(T - 1)])
    np.testing.assert_allclose(alphas_cumprod[: T - 1], expected, rtol=1e-9, atol=1e-15)
    assert np.all(betas <= 0.999)
    # f(T) = cos²(π/2) = 0, so the unclipped last β would be 1: the clip must be what sets it.
    assert betas[-1] == pytest.approx(0.999, abs=1e-15)
    assert alphas_cumprod[-1] < 1e-4


def test_cosine_custom_max_beta_clips():
    betas = schedules.make_betas("cosine", 50, max_beta=0.5)
    assert betas.max() == pytest.approx(0.5, abs=0.0)
    assert np.all(betas <= 0.5)


def test_polynomial_defaults_small_near_data_and_convex():
    T = 10
    betas = schedules.make_betas("polynomial", T)
    # β_t = 0.01 + 0.89·((t+1)/10)²: β_0 = 0.0189, β_9 = 0.9.
    assert betas[0] == pytest.approx(0.0189, rel=1e-12)
    assert betas[-1] == pytest.approx(0.9, rel=1e-12)
    assert betas[0] < betas[-1] / 40  # ratio 0.021
    # Convex: the second difference of 0.89·u², u = (t+1)/10, is 2·0.89/100 = 0.0178.
    np.testing.assert_allclose(np.diff(betas, 2), 0.0178, rtol=1e-9)
    # Changes little near t = 0: the first step is the smallest increment.
    increments = np.diff(betas)
    assert np.all(np.diff(increments) > 0) and increments[0] == pytest.approx(0.89 * 3 / 100, rel=1e-12)
    # ᾱ_T = Π(1 − β_t) by hand ≈ 2.33e-3 (the docstring's "≈ 2e-3").
    alphas_bar_T = np.prod([1.0 - (0.01 + 0.89 * ((t + 1) / 10) ** 2) for t in range(10)])
    assert np.cumprod(1.0 - betas)[-1] == pytest.approx(alphas_bar_T, rel=1e-12)
    assert 2e-3 < alphas_bar_T < 2.5e-3


def test_polynomial_power_one_is_linear():
    betas = schedules.make_betas("polynomial", 5, power=1.0, beta_start=0.1, beta_end=0.6)
    np.testing.assert_allclose(betas, [0.2, 0.3, 0.4, 0.5, 0.6], rtol=1e-12)


def test_sigmoid_is_monotone_between_rescaled_endpoints():
    T = 1000
    betas = schedules.make_betas("sigmoid", T)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    assert betas[0] == pytest.approx(1e-4 + (0.02 - 1e-4) * sig(-6.0), rel=1e-12)
    assert betas[-1] == pytest.approx(1e-4 + (0.02 - 1e-4) * sig(6.0), rel=1e-12)
    assert np.all(np.diff(betas) > 0)
    # Symmetric about the midpoint: β_t + β_{T−1−t} = 2·1e-4 + (0.02 − 1e-4).
    np.testing.assert_allclose(betas + betas[::-1], 2e-4 + 0.0199, rtol=1e-12)


# -- errors ----------------------------------------------------------------------------------
def test_unknown_name_raises_naming_it():
    with pytest.raises(ValueError, match=r"name='quadratic'"):
        schedules.make_betas("quadratic", 100)


@pytest.mark.parametrize("T,shown", [(0, "num_timesteps=0"), (-3, "num_timesteps=-3"), (2.5, "num_timesteps=2.5"),
                                     (True, "num_timesteps=True"), ("10", "num_timesteps='10'")])
def test_bad_num_timesteps_raises_naming_it(T, shown):
    with pytest.raises(ValueError, match=shown):
        schedules.make_betas("linear", T)


def test_numpy_integer_num_timesteps_accepted():
    np.testing.assert_array_equal(schedules.make_betas("linear", np.int64(400)), schedules.make_betas("linear", 400))


def test_linear_with_too_few_steps_raises_naming_the_beta():
    # T=10: β_t = 0.01 + t·1.99/9, up to β_end = 0.02·1000/10 = 2; the first β ≥ 1 is
    # β_5 = 0.01 + 5·1.99/9 = 1.1156 (β_4 = 0.894).
    with pytest.raises(ValueError, match=r"betas\[5\]=1\.115"):
        schedules.make_betas("linear", 10)


def test_unknown_kwarg_raises_naming_it():
    with pytest.raises(ValueError, match="bogus"):
        schedules.make_betas("cosine", 100, bogus=1.0)


@pytest.mark.parametrize(
    "betas,pattern",
    [([0.1, 0.0, 0.2], r"betas\[1\]=0\.0"), ([0.1, 1.0], r"betas\[1\]=1\.0"), ([0.1, np.nan], r"betas\[1\]=nan"),
     ([], r"shape=\(0,\)"), ([[0.1, 0.2]], r"shape=\(1, 2\)")],
)
def test_validate_betas_rejects_and_names_the_value(betas, pattern):
    with pytest.raises(ValueError, match=pattern):
        schedules.validate_betas(betas)
