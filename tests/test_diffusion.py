"""Tests for tfdiffusion.diffusion.GaussianDiffusion.

Reference values are computed here, independently, with plain float64 Python/NumPy from the
formulas of Ho et al. 2020 (and Salimans & Ho 2022 for v).
"""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import diffusion as diffusion_lib
from tfdiffusion import schedules
from tfdiffusion.diffusion import GaussianDiffusion

T = 400


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(schedules.make_betas("linear", T))


def _hand_tables(betas):
    """ᾱ_t and ᾱ_{t−1} by an explicit running product (no np.cumprod)."""
    alphas_bar, alphas_bar_prev, running = [], [], 1.0
    for beta in betas:
        alphas_bar_prev.append(running)
        running *= 1.0 - beta
        alphas_bar.append(running)
    return np.array(alphas_bar), np.array(alphas_bar_prev)


def _random_t(rng, n, T=T):
    t = rng.integers(0, T, size=n)
    t[:3] = [0, 1, T - 1]  # always include both ends
    return t


# -- tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,steps", [("linear", 400), ("cosine", 50), ("polynomial", 10)])
def test_tables_match_hand_formulas(name, steps):
    betas = schedules.make_betas(name, steps)
    d = GaussianDiffusion(betas)
    ab, ab_prev = _hand_tables(betas)
    assert d.num_timesteps == steps
    np.testing.assert_allclose(d.alphas_cumprod, ab, rtol=1e-12)
    np.testing.assert_allclose(d.alphas_cumprod_prev, ab_prev, rtol=1e-12)
    assert d.alphas_cumprod_prev[0] == 1.0
    for t in range(steps):
        beta, a, a_prev = betas[t], ab[t], ab_prev[t]
        assert d.posterior_variance[t] == pytest.approx(beta * (1 - a_prev) / (1 - a), rel=1e-10, abs=1e-300)
        assert d.posterior_mean_coef1[t] == pytest.approx(beta * math.sqrt(a_prev) / (1 - a), rel=1e-10)
        assert d.posterior_mean_coef2[t] == pytest.approx((1 - a_prev) * math.sqrt(1 - beta) / (1 - a), rel=1e-10, abs=1e-300)
        # A noise-free x_t = √ᾱ_t x_0 has posterior mean √ᾱ_{t−1} x_0: coef1 + coef2·√ᾱ_t = √ᾱ_{t−1}.
        assert d.posterior_mean_coef1[t] + d.posterior_mean_coef2[t] * math.sqrt(a) == pytest.approx(math.sqrt(a_prev), rel=1e-10)
    # t = 0: the posterior is the point mass at x_0 (β̃_0 = 0, coef1 = 1, coef2 = 0).
    assert d.posterior_variance[0] == 0.0
    assert d.posterior_mean_coef1[0] == pytest.approx(1.0, rel=1e-12)
    assert d.posterior_mean_coef2[0] == 0.0
    assert d.posterior_log_variance_clipped[0] == math.log(d.posterior_variance[1])
    np.testing.assert_allclose(d.posterior_log_variance_clipped[1:], np.log(d.posterior_variance[1:]), rtol=1e-12)
    assert np.all(np.isfinite(d.posterior_log_variance_clipped))


def test_single_step_chain_has_finite_log_variance():
    d = GaussianDiffusion([0.3])
    assert d.posterior_log_variance_clipped[0] == pytest.approx(math.log(0.3), rel=1e-12)


def test_q_mean_variance_is_closed_form(diffusion):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(64, 3)).astype(np.float64)
    t = _random_t(rng, 64)
    ab, _ = _hand_tables(diffusion.betas)
    mean, variance, log_variance = diffusion.q_mean_variance(tf.constant(x0), tf.constant(t))
    np.testing.assert_allclose(mean.numpy(), np.sqrt(ab[t])[:, None] * x0, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(variance.numpy()[:, 0], 1 - ab[t], rtol=1e-10)
    np.testing.assert_allclose(log_variance.numpy()[:, 0], np.log(1 - ab[t]), rtol=1e-10)


def test_extract_broadcasts_per_example_over_image_axes(diffusion):
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(4, 5, 5, 2)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 7, 150, 399])
    x_t = diffusion.q_sample(x0, tf.constant(t), noise).numpy()
    assert x_t.dtype == np.float32
    ab, _ = _hand_tables(diffusion.betas)
    for i, ti in enumerate(t):
        expected = math.sqrt(ab[ti]) * x0[i].astype(np.float64) + math.sqrt(1 - ab[ti]) * noise[i]
        np.testing.assert_allclose(x_t[i], expected, rtol=1e-5, atol=1e-6)


# -- Monte Carlo: the chain of q_step has the closed-form marginal q(x_t | x_0) ----------------
def test_iterated_q_step_matches_q_sample_marginal(diffusion):
    n = 100_000
    x0_values = np.array([-1.0, 2.0], np.float32)
    x = tf.constant(np.tile(x0_values, (n, 1)))
    ab, _ = _hand_tables(diffusion.betas)
    checkpoints = {0, 9, 99, T - 1}
    seen = 0
    for t in range(T):
        noise = tf.random.stateless_normal(x.shape, seed=[7, t])
        x = diffusion.q_step(x, tf.fill([n], t), noise)
        if t in checkpoints:
            seen += 1
            samples = x.numpy().astype(np.float64)
            mean, var = samples.mean(0), samples.var(0)
            expected_mean = math.sqrt(ab[t]) * x0_values
            expected_var = 1.0 - ab[t]
            # 5 standard errors: se(mean) = √(v/n), se(var) = v·√(2/n) for a Gaussian.
            np.testing.assert_array_less(np.abs(mean - expected_mean), 5 * math.sqrt(expected_var / n))
            np.testing.assert_array_less(np.abs(var - expected_var), 5 * expected_var * math.sqrt(2 / n))
            # And the same moments from q_sample's closed form with fresh noise.
            direct = diffusion.q_sample(
                tf.constant(np.tile(x0_values, (n, 1))), tf.fill([n], t), tf.random.stateless_normal(x.shape, seed=[8, t])
            ).numpy()
            np.testing.assert_array_less(np.abs(direct.mean(0) - mean), 7 * math.sqrt(2 * expected_var / n))
    assert seen == len(checkpoints)
    # ᾱ_{T−1} ≈ 3.6e-5: the end of the chain is N(0, 1) up to MC error.
    assert ab[-1] < 1e-4


# -- posterior -----------------------------------------------------------------------------------
def _bayes_posterior(x0, x_t, beta, a_prev):
    """q(x_{t−1} | x_t, x_0) ∝ N(x_t; √α x_{t−1}, β) · N(x_{t−1}; √ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}).

    As a function of x_{t−1} the first factor is N(x_t/√α, β/α); multiply two Gaussians:
    precisions add and the mean is the precision-weighted mean.
    """
    alpha = 1.0 - beta
    precision_1, mean_1 = alpha / beta, x_t / math.sqrt(alpha)
    precision_2, mean_2 = 1.0 / (1.0 - a_prev), math.sqrt(a_prev) * x0
    variance = 1.0 / (precision_1 + precision_2)
    return variance * (precision_1 * mean_1 + precision_2 * mean_2), variance


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-6)])
def test_q_posterior_is_bayes_product_of_gaussians(diffusion, dtype, tol):
    rng = np.random.default_rng(2)
    n = 200
    x0 = rng.uniform(-1, 1, size=(n, 2))
    x_t = rng.uniform(-2, 2, size=(n, 2))
    t = _random_t(rng, n)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(
        tf.constant(x0.astype(dtype)), tf.constant(x_t.astype(dtype)), tf.constant(t)
    )
    assert mean.dtype == dtype
    _, ab_prev = _hand_tables(diffusion.betas)
    for i, ti in enumerate(t):
        if ti == 0:  # ᾱ_{−1} = 1: q(x_{−1} | x_0) is the point mass at x_0.
            expected_mean, expected_var = x0[i], 0.0
        else:
            expected_mean, expected_var = _bayes_posterior(x0[i], x_t[i], diffusion.betas[ti], ab_prev[ti])
        np.testing.assert_allclose(mean.numpy()[i], expected_mean, rtol=tol, atol=tol)
        assert variance.numpy()[i, 0] == pytest.approx(expected_var, rel=tol, abs=tol * 1e-3)
        assert log_variance.numpy()[i, 0] == pytest.approx(math.log(diffusion.posterior_variance[max(ti, 1)]), rel=tol)


# -- parameterisations ----------------------------------------------------------------------------
def _triple(diffusion, seed, n=256, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, 3)).astype(dtype)
    eps = rng.normal(size=(n, 3)).astype(dtype)
    t = _random_t(rng, n)
    x_t = diffusion.q_sample(tf.constant(x0), tf.constant(t), tf.constant(eps))
    return x0, eps, t, x_t


def test_predict_x0_from_eps_inverts_q_sample(diffusion):
    x0, eps, t, x_t = _triple(diffusion, 3)
    np.testing.assert_allclose(diffusion.predict_x0_from_eps(x_t, t, eps).numpy(), x0, rtol=0, atol=1e-10)


def test_predict_x0_from_eps_float32_within_conditioning(diffusion):
    x0, eps, t, x_t = _triple(diffusion, 4, dtype=np.float32)
    recovered = diffusion.predict_x0_from_eps(x_t, t, eps).numpy()
    assert recovered.dtype == np.float32
    # x_t carries float32 rounding (~1e-7·|x_t|), amplified by 1/√ᾱ_t (≈ 166 at t = T−1).
    bound = 2e-6 / np.sqrt(diffusion.alphas_cumprod[t])[:, None]
    np.testing.assert_array_less(np.abs(recovered - x0), np.broadcast_to(bound, x0.shape))


def test_predict_eps_from_x0_round_trip(diffusion):
    x0, eps, t, x_t = _triple(diffusion, 5)
    np.testing.assert_allclose(diffusion.predict_eps_from_x0(x_t, t, x0).numpy(), eps, rtol=0, atol=1e-9)
    recovered_x0 = diffusion.predict_x0_from_eps(x_t, t, diffusion.predict_eps_from_x0(x_t, t, x0))
    np.testing.assert_allclose(recovered_x0.numpy(), x0, rtol=0, atol=1e-9)


def test_v_parameterisation_identities_float32(diffusion):
    x0, eps, t, x_t = _triple(diffusion, 6, n=1024, dtype=np.float32)
    v = diffusion.get_v(x0, t, eps)
    ab = diffusion.alphas_cumprod[t][:, None]
    # Hand formula: v = √ᾱ ε − √(1 − ᾱ) x_0.
    np.testing.assert_allclose(v.numpy(), np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, rtol=0, atol=1e-5)
    # (x_t, v) is a rotation of (x_0, ε): both come back to float32 precision for every t.
    np.testing.assert_allclose(diffusion.predict_eps_from_v(x_t, t, v).numpy(), eps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(diffusion.predict_x0_from_v(x_t, t, v).numpy(), x0, rtol=0, atol=1e-5)
    # ε → x_0 → v → ε in float64 (the ε → x_0 leg is ill-conditioned in float32 at large t).
    x0_64, eps_64, t_64, x_t_64 = _triple(diffusion, 7)
    x0_hat = diffusion.predict_x0_from_eps(x_t_64, t_64, eps_64)
    v_hat = diffusion.get_v(x0_hat, t_64, eps_64)
    np.testing.assert_allclose(diffusion.predict_eps_from_v(x_t_64, t_64, v_hat).numpy(), eps_64, rtol=0, atol=1e-9)


def test_score_from_eps_is_score_of_q_xt_given_x0(diffusion):
    x0, eps, t, _ = _triple(diffusion, 8)
    ab = diffusion.alphas_cumprod[t][:, None]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps  # formed in NumPy, independently of q_sample
    analytic = -(x_t - np.sqrt(ab) * x0) / (1 - ab)
    np.testing.assert_allclose(diffusion.score_from_eps(tf.constant(eps), t).numpy(), analytic, rtol=1e-8, atol=1e-10)
    # Finite-difference check of ∇ log N(x; √ᾱ x_0, 1 − ᾱ) at one point.
    i, h = 5, 1e-5
    logp = lambda x: -0.5 * (x - math.sqrt(ab[i, 0]) * x0[i, 0]) ** 2 / (1 - ab[i, 0])  # noqa: E731
    assert analytic[i, 0] == pytest.approx((logp(x_t[i, 0] + h) - logp(x_t[i, 0] - h)) / (2 * h), rel=1e-6)


# -- the module's algebra in terms of ᾱ -------------------------------------------------------------
def test_conversions_at_a_scalar_alpha_bar_are_eq_4_solved():
    rng = np.random.default_rng(4)
    x0, eps = rng.normal(size=(32, 3)), rng.normal(size=(32, 3))
    a = 0.37
    x_t = tf.constant(math.sqrt(a) * x0 + math.sqrt(1 - a) * eps)
    v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    a_tf = tf.constant(a, tf.float64)
    np.testing.assert_allclose(diffusion_lib.x0_from_eps(x_t, tf.constant(eps), a_tf).numpy(), x0, atol=1e-12)
    np.testing.assert_allclose(diffusion_lib.eps_from_x0(x_t, tf.constant(x0), a_tf).numpy(), eps, atol=1e-12)
    np.testing.assert_allclose(diffusion_lib.v_from_x0_eps(tf.constant(x0), tf.constant(eps), a_tf).numpy(), v,
                               atol=1e-12)
    np.testing.assert_allclose(diffusion_lib.x0_from_v(x_t, tf.constant(v), a_tf).numpy(), x0, atol=1e-12)
    np.testing.assert_allclose(diffusion_lib.eps_from_v(x_t, tf.constant(v), a_tf).numpy(), eps, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_x0_and_eps_returns_the_prediction_itself_and_one_conversion(diffusion, prediction_type):
    x0, eps, t, x_t = _triple(diffusion, 11, dtype=np.float32)
    prediction = tf.constant({"epsilon": eps, "x0": x0, "v": diffusion.get_v(x0, t, eps).numpy()}[prediction_type])
    x0_hat, eps_hat = diffusion.x0_and_eps(x_t, t, prediction, prediction_type)
    ab = diffusion.alpha_bar(t, x_t)
    native = {"epsilon": eps_hat, "x0": x0_hat}.get(prediction_type)
    if native is not None:  # no round trip: the network's output is passed on as it is
        assert native is prediction
    expected = {"epsilon": (diffusion_lib.x0_from_eps(x_t, prediction, ab), prediction),
                "x0": (prediction, diffusion_lib.eps_from_x0(x_t, prediction, ab)),
                "v": (diffusion_lib.x0_from_v(x_t, prediction, ab), diffusion_lib.eps_from_v(x_t, prediction, ab))}
    for got, want in zip((x0_hat, eps_hat), expected[prediction_type]):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # float32: x̂_0 within its conditioning (1/√ᾱ_t ≈ 166 at t = T−1), ε̂ within 1/√(1 − ᾱ_t) at small t.
    x0_bound = 3e-6 / np.sqrt(diffusion.alphas_cumprod[t])[:, None]
    eps_bound = 3e-6 / np.sqrt(1 - diffusion.alphas_cumprod[t])[:, None]
    np.testing.assert_array_less(np.abs(x0_hat.numpy() - x0), np.broadcast_to(x0_bound, x0.shape))
    np.testing.assert_array_less(np.abs(eps_hat.numpy() - eps), np.broadcast_to(eps_bound, eps.shape))
    with pytest.raises(ValueError, match="prediction_type='score'"):
        diffusion.x0_and_eps(x_t, t, prediction, "score")


def test_alpha_bar_lookup_includes_the_data_and_has_a_static_broadcast_shape(diffusion):
    t = tf.constant([-1, 0, 5, T - 1])
    values = diffusion.alpha_bar(t, tf.zeros((4, 8, 8, 1))).numpy()
    assert values.shape == (4, 1, 1, 1) and values.dtype == np.float64
    np.testing.assert_array_equal(values[:, 0, 0, 0], [1.0, *diffusion.alphas_cumprod[[0, 5, T - 1]]])
    graph_shape = tf.function(lambda t_, x: diffusion.alpha_bar(t_, x), input_signature=[
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 8, 8, 1])]).get_concrete_function().output_shapes
    assert graph_shape.as_list() == [None, 1, 1, 1]


def test_reverse_mean_variance_into_the_data_is_x0():
    rng = np.random.default_rng(12)
    x_t, x0, eps = (tf.constant(rng.normal(size=(16, 2)).astype(np.float32)) for _ in range(3))
    ab_t = tf.constant(0.3, tf.float64)
    mean, variance = diffusion_lib.reverse_mean_variance(x_t, x0, eps, ab_t, tf.constant(1.0, tf.float64))
    np.testing.assert_array_equal(mean.numpy(), x0.numpy())
    assert variance.numpy() == 0.0
    _, variance = diffusion_lib.reverse_mean_variance(x_t, x0, eps, ab_t, tf.constant(1.0, tf.float64), "beta")
    assert variance.numpy() == pytest.approx(0.7, rel=1e-12)  # β = 1 − ᾱ_t/ᾱ_prev
    with pytest.raises(ValueError, match="variance_type='large'"):
        diffusion_lib.reverse_mean_variance(x_t, x0, eps, ab_t, ab_t, "large")


# -- reverse process -----------------------------------------------------------------------------
def test_p_mean_variance_with_true_eps_is_the_posterior(diffusion):
    x0, eps, t, x_t = _triple(diffusion, 9)
    mean, variance, log_variance, pred_x0 = diffusion.p_mean_variance(tf.constant(eps), x_t, t)
    post_mean, post_var, post_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    np.testing.assert_allclose(pred_x0.numpy(), x0, atol=1e-9)
    np.testing.assert_allclose(mean.numpy(), post_mean.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(variance.numpy(), post_var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(log_variance.numpy(), post_log_var.numpy(), rtol=1e-12)
    # Eq. 11 by hand: μ = (x_t − β_t/√(1 − ᾱ_t) ε)/√α_t.
    beta, ab = diffusion.betas[t][:, None], diffusion.alphas_cumprod[t][:, None]
    eq11 = (x_t.numpy() - beta / np.sqrt(1 - ab) * eps) / np.sqrt(1 - beta)
    np.testing.assert_allclose(mean.numpy(), eq11, rtol=0, atol=1e-9)


def test_p_mean_variance_beta_variance_and_clipping(diffusion):
    _, eps, t, x_t = _triple(diffusion, 10)
    _, variance, log_variance, _ = diffusion.p_mean_variance(tf.constant(eps), x_t, t, variance_type="beta")
    expected = np.where(t == 0, diffusion.posterior_variance[1], diffusion.betas[t])
    np.testing.assert_allclose(variance.numpy()[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(log_variance.numpy()[:, 0], np.log(expected), rtol=1e-12)
    _, _, _, clipped = diffusion.p_mean_variance(tf.constant(eps) * 50.0, x_t, t, clip_denoised=True)
    assert np.abs(clipped.numpy()).max() <= 1.0
    assert np.isclose(np.abs(clipped.numpy()), 1.0).any()
    with pytest.raises(ValueError, match="variance_type='large'"):
        diffusion.p_mean_variance(tf.constant(eps), x_t, t, variance_type="large")


# -- serialisation and validation ----------------------------------------------------------------
def test_config_round_trip_through_json(diffusion):
    config = json.loads(json.dumps(diffusion.get_config()))
    clone = GaussianDiffusion.from_config(config)
    assert clone.get_config() == diffusion.get_config()
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_array_equal(getattr(clone, name), getattr(diffusion, name))
    assert "T=400" in repr(clone)


@pytest.mark.parametrize(
    "betas,pattern",
    [([0.1, 1.5, 0.2], r"betas\[1\]=1\.5"), ([0.0, 0.1], r"betas\[0\]=0\.0"), ([0.1, -0.2], r"betas\[1\]=-0\.2"),
     ([], r"shape=\(0,\)")],
)
def test_rejects_bad_betas_naming_the_value(betas, pattern):
    with pytest.raises(ValueError, match=pattern):
        GaussianDiffusion(betas)
