"""Tests for tfdiffusion.analytic: the reference itself, checked against independent derivations.

* The Gaussian's closed-form flow against the float64 RK45 of the same ODE.
* The mixture's RK45 against the quantile transport x_0 = F_0⁻¹(F_σ(x)) (no ODE at all).
* ε* and x̂_0* against what any conditional mean must satisfy, by quadrature over q(x_t): E[ε*] = 0,
  E[x_t ε*] = E[x_t ε] = √(1 − ᾱ), E[x̂_0*] = E[x_0]; and Tweedie's ε* = −√(1 − ᾱ) ∂_x log q(x_t)
  against a finite difference of the separately written log-density.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import tensorflow as tf

from tfdiffusion import analytic, schedules
from tfdiffusion.diffusion import GaussianDiffusion

MU, S = 0.5, 0.2
GAUSSIAN = analytic.Gaussian(MU, S)
MIXTURE = analytic.GaussianMixture(means=[-0.5, 0.5], stds=[0.1, 0.2], weights=[0.4, 0.6])
DIFFUSION = GaussianDiffusion(schedules.make_betas("linear", 1000))
ALPHA_BAR_T = DIFFUSION.alphas_cumprod[-1]
NOISE_LEVELS = [0.9999, 0.9, 0.5, 0.05, ALPHA_BAR_T]


def gaussian_posterior(x, alpha_bar):
    """E[x_0 | x_t], E[ε | x_t] for x_0 ~ N(μ, s²), written out (Bishop 2006, eq. 2.116)."""
    variance = alpha_bar * S**2 + 1.0 - alpha_bar
    residual = x - math.sqrt(alpha_bar) * MU
    return MU + math.sqrt(alpha_bar) * S**2 * residual / variance, math.sqrt(1.0 - alpha_bar) * residual / variance


def expectation(data, f, alpha_bar):
    """∫ q(x_t) f(x_t) dx_t by adaptive quadrature."""
    density = lambda x: math.exp(float(data.log_density(x, alpha_bar))) * float(f(np.float64(x)))  # noqa: E731
    centre = math.sqrt(alpha_bar) * data.mean()
    value, _ = scipy.integrate.quad(density, centre - 12.0, centre + 12.0, epsabs=1e-13, epsrel=1e-12, limit=400,
                                    points=[math.sqrt(alpha_bar) * m for m in data.means])
    return value


# -- the probability-flow ODE solution ------------------------------------------------------------
@pytest.mark.parametrize("alpha_bar", [ALPHA_BAR_T, 0.3])
def test_gaussian_closed_form_flow_equals_rk45(alpha_bar):
    x = np.linspace(-4.0, 4.0, 401)
    np.testing.assert_allclose(GAUSSIAN.ode_solution(x, alpha_bar), GAUSSIAN.integrate_ode(x, alpha_bar),
                               rtol=0, atol=1e-9)


def test_gaussian_closed_form_is_the_affine_map_of_its_quantiles():
    # The flow maps N(√ᾱ μ, ᾱ s² + 1 − ᾱ) onto N(μ, s²) monotonically, so it is the quantile map.
    x = np.linspace(-3.0, 3.0, 61)
    np.testing.assert_allclose(GAUSSIAN.ode_solution(x, ALPHA_BAR_T), GAUSSIAN.transport_quantiles(x, ALPHA_BAR_T),
                               rtol=0, atol=1e-11)


@pytest.mark.parametrize("alpha_bar", [ALPHA_BAR_T, 0.5, 0.99])
def test_mixture_rk45_equals_quantile_transport(alpha_bar):
    scale = math.sqrt(alpha_bar * MIXTURE.std() ** 2 + 1.0 - alpha_bar)  # of q(x_t): keep F away from 0 and 1
    x = math.sqrt(alpha_bar) * MIXTURE.mean() + np.linspace(-5.0, 5.0, 301) * scale
    flowed = MIXTURE.integrate_ode(x, alpha_bar)
    np.testing.assert_allclose(flowed, MIXTURE.transport_quantiles(x, alpha_bar), rtol=0, atol=1e-8)
    assert np.all(np.diff(flowed) > 0)  # a 1-D flow keeps the order of its particles


@pytest.mark.parametrize("toy", ["gaussian", "mixture"])
def test_flow_to_an_intermediate_level_composes(toy):
    # Φ(ᾱ_T → 1) = Φ(0.6 → 1) ∘ Φ(ᾱ_T → 0.6), and the leg to 0.6 is the quantile map.
    data = GAUSSIAN if toy == "gaussian" else MIXTURE
    x = np.linspace(-3.0, 3.0, 121)
    middle = data.ode_solution(x, ALPHA_BAR_T, 0.6)
    np.testing.assert_allclose(middle, data.transport_quantiles(x, ALPHA_BAR_T, 0.6), rtol=0, atol=1e-8)
    np.testing.assert_allclose(data.ode_solution(middle, 0.6), data.ode_solution(x, ALPHA_BAR_T), rtol=0, atol=1e-8)
    if toy == "gaussian":
        np.testing.assert_allclose(middle, GAUSSIAN.integrate_ode(x, ALPHA_BAR_T, 0.6), rtol=0, atol=1e-9)


def test_final_step_error_is_the_gap_between_denoising_and_flowing():
    # From σ_0, the flow contracts x̄ − μ by s/√(s² + σ_0²), the denoiser by s²/(s² + σ_0²).
    alpha_bar_0 = DIFFUSION.alphas_cumprod[0]
    sigma2 = (1.0 - alpha_bar_0) / alpha_bar_0
    x = np.linspace(-3.0, 3.0, 201)
    x_bar_0 = GAUSSIAN.ode_solution(x, ALPHA_BAR_T, alpha_bar_0) / math.sqrt(alpha_bar_0)
    gap = S / math.sqrt(S**2 + sigma2) - S**2 / (S**2 + sigma2)
    expected = np.abs(x_bar_0 - MU).mean() * gap
    assert GAUSSIAN.final_step_error(x, ALPHA_BAR_T, alpha_bar_0) == pytest.approx(expected, rel=1e-9)
    assert 1e-4 < expected < 1e-3  # σ_0 = 0.01 on linear β: the floor of issue 14's toy


def test_flow_from_the_data_is_the_identity():
    x = np.linspace(-1.0, 1.0, 11)
    np.testing.assert_allclose(MIXTURE.integrate_ode(x, 1.0), x, rtol=0, atol=0)
    np.testing.assert_allclose(GAUSSIAN.ode_solution(x, 1.0), x, rtol=0, atol=1e-15)


# -- the ideal denoiser -------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha_bar", NOISE_LEVELS)
def test_one_component_mixture_is_the_gaussian_posterior(alpha_bar):
    x = np.linspace(-3.0, 3.0, 101)
    expected_x0, expected_eps = gaussian_posterior(x, alpha_bar)
    twin = analytic.GaussianMixture(means=[MU, MU], stds=[S, S], weights=[0.3, 0.7])  # the same law, two labels
    for data in (GAUSSIAN, twin):
        np.testing.assert_allclose(data.x0(x, alpha_bar), expected_x0, rtol=0, atol=1e-13)
        np.testing.assert_allclose(data.eps(x, alpha_bar), expected_eps, rtol=0, atol=1e-13)


@pytest.mark.parametrize("alpha_bar", NOISE_LEVELS)
def test_predictions_reconstruct_x_t(alpha_bar):
    x = np.linspace(-3.0, 3.0, 101)
    reconstructed = (math.sqrt(alpha_bar) * MIXTURE.x0(x, alpha_bar)
                     + math.sqrt(1.0 - alpha_bar) * MIXTURE.eps(x, alpha_bar))
    np.testing.assert_allclose(reconstructed, x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("alpha_bar", [0.9, 0.5, 0.05])
def test_conditional_means_have_the_moments_of_what_they_predict(alpha_bar):
    assert abs(expectation(MIXTURE, lambda x: MIXTURE.eps(x, alpha_bar), alpha_bar)) < 1e-10
    assert expectation(MIXTURE, lambda x: x * MIXTURE.eps(x, alpha_bar), alpha_bar) == pytest.approx(
        math.sqrt(1.0 - alpha_bar), abs=1e-10)
    assert expectation(MIXTURE, lambda x: MIXTURE.x0(x, alpha_bar), alpha_bar) == pytest.approx(MIXTURE.mean(),
                                                                                               abs=1e-10)
    # A conditional mean has less variance than what it predicts: E[ε*²] < E[ε²] = 1.
    assert 0.0 < expectation(MIXTURE, lambda x: MIXTURE.eps(x, alpha_bar) ** 2, alpha_bar) < 1.0


@pytest.mark.parametrize("alpha_bar", [0.9, 0.5, 0.05])
def test_eps_is_tweedie_score(alpha_bar):
    x, h = np.linspace(-2.0, 2.0, 81), 1e-5
    score = (MIXTURE.log_density(x + h, alpha_bar) - MIXTURE.log_density(x - h, alpha_bar)) / (2.0 * h)
    np.testing.assert_allclose(MIXTURE.eps(x, alpha_bar), -math.sqrt(1.0 - alpha_bar) * score, rtol=0, atol=1e-8)


def test_tf_denoiser_matches_numpy_at_the_diffusion_timesteps():
    denoise = tf.function(MIXTURE.denoise_fn(DIFFUSION))
    x = np.linspace(-3.0, 3.0, 64).astype(np.float32)[:, None] * np.ones((1, 3), np.float32)  # [N, 3]
    t = np.arange(0, 1000, 1000 // 64)[:64].astype(np.int32)
    x0, eps = denoise(tf.constant(x), tf.constant(t), None)
    assert x0.dtype == eps.dtype == tf.float32 and x0.shape == eps.shape == x.shape
    alpha_bar = DIFFUSION.alphas_cumprod[t][:, None]
    np.testing.assert_allclose(x0.numpy(), MIXTURE.x0(x, alpha_bar), rtol=0, atol=1e-6)
    np.testing.assert_allclose(eps.numpy(), MIXTURE.eps(x, alpha_bar), rtol=0, atol=1e-6)


def test_counting_denoiser_counts_evaluations_in_a_while_loop():
    counted = analytic.CountingDenoiser(GAUSSIAN.denoise_fn(DIFFUSION))

    @tf.function
    def loop(n):
        return tf.while_loop(lambda i, x: i < n, lambda i, x: (i + 1, counted(x, tf.fill([4], 10 * i))[1]),
                             (tf.constant(0), tf.zeros([4, 1])))[1]

    loop(tf.constant(7))
    assert counted.take() == 7
    loop(tf.constant(3))
    assert counted.take() == 3


# -- the distribution ---------------------------------------------------------------------------------
def test_samples_follow_the_cdf_and_moments():
    draws = MIXTURE.sample((40_000,), seed=3)
    assert scipy.stats.kstest(draws, MIXTURE.cdf).pvalue > 1e-3
    assert abs(draws.mean() - MIXTURE.mean()) < 4.0 * MIXTURE.std() / math.sqrt(draws.size)
    # Var = Σ w_k s_k² + w₁ w₂ (μ₁ − μ₂)².
    assert MIXTURE.std() == pytest.approx(math.sqrt(0.4 * 0.1**2 + 0.6 * 0.2**2 + 0.24), rel=1e-12)


def test_quantile_inverts_cdf_and_wasserstein_of_exact_quantiles_is_zero():
    x = np.linspace(-0.9, 1.1, 41)
    np.testing.assert_allclose(MIXTURE.quantile(MIXTURE.cdf(x)), x, rtol=0, atol=1e-11)
    exact = MIXTURE.quantile((np.arange(1000) + 0.5) / 1000)
    assert MIXTURE.wasserstein1(exact[::-1]) < 1e-12
    assert MIXTURE.wasserstein1(exact + 0.01) == pytest.approx(0.01, abs=1e-12)


def test_normal_quantiles_are_a_standard_normal_batch():
    z = analytic.normal_quantiles(4096)
    assert np.all(np.diff(z) > 0) and abs(z.mean()) < 1e-12 and z.std() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("kwargs,message", [
    ({"means": [0.0], "stds": [0.0]}, "stds and weights must be positive"),
    ({"means": [0.0, 1.0], "stds": [1.0]}, "equally long"),
    ({"means": [0.0], "stds": [1.0], "weights": [-1.0]}, "stds=\\[1.\\], weights=\\[-1.\\]"),
])
def test_invalid_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        analytic.GaussianMixture(**kwargs)
