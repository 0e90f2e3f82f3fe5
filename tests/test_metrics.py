"""tfdiffusion.metrics: FID/KID, the classifier extras, bits/dim and the toy metrics.

Everything here is offline and deterministic. The feature extractor, its cache and the FID of a
real MNIST classifier are tested with the protocol, in test_evaluation.py.
"""

import math

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfdiffusion import data, metrics, schedules
from tfdiffusion.diffusion import GaussianDiffusion


# -- Fréchet distance --------------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16))
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    # Same covariance exactly, so d² = ‖m‖² (closed form) up to the matrix square root's round-off.
    a = np.random.default_rng(1).normal(size=(2000, 8))
    m = np.linspace(-1.0, 2.0, 8)
    assert metrics.frechet_distance(a, a + m) == pytest.approx(float(m @ m), rel=1e-6)


def test_frechet_distance_between_independent_gaussian_samples_matches_closed_form():
    rng = np.random.default_rng(2)
    m = np.full(4, 0.5)
    a, b = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + m
    assert metrics.frechet_distance(a, b) == pytest.approx(float(m @ m), abs=0.01)


def test_frechet_distance_is_symmetric_and_from_statistics_agrees():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 1.0
    ab, ba = metrics.frechet_distance(a, b), metrics.frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-9)
    stats = metrics.feature_statistics(a) + metrics.feature_statistics(b)
    assert metrics.frechet_distance_from_statistics(*stats) == pytest.approx(ab, rel=1e-12)


def test_frechet_distance_with_singular_covariances_is_finite():
    # Rank-deficient features (dead ReLU units, fewer samples than dimensions): the eps·I retry.
    rng = np.random.default_rng(4)
    a = np.concatenate([rng.normal(size=(50, 10)), np.zeros((50, 90))], axis=1)
    b = np.concatenate([rng.normal(size=(50, 10)) + 1.0, np.zeros((50, 90))], axis=1)
    value = metrics.frechet_distance(a, b)
    assert np.isfinite(value) and value > 5.0


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"Received: shapes \(10, 3\) and \(10, 4\)"):
        metrics.frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"features_a.shape=\(1, 3\)"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((10, 3)))


def test_frechet_distance_with_fewer_samples_than_dimensions_matches_closed_forms():
    # N = 12 < d = 300: the N×N route. A shift adds ‖m‖²; scaling by c gives ‖(1−c)μ‖² + (1−c)² tr Σ.
    rng = np.random.default_rng(12)
    a = rng.normal(size=(12, 300)) + 0.2
    m = rng.normal(size=300)
    trace = np.trace(np.cov(a, rowvar=False))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * trace)
    assert metrics.frechet_distance(a, a + m) == pytest.approx(float(m @ m), rel=1e-9)
    c, mu = 1.7, a.mean(axis=0)
    expected = (1 - c) ** 2 * float(mu @ mu) + (1 - c) ** 2 * trace
    assert metrics.frechet_distance(a, c * a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_to_statistics_agrees_with_the_square_root_route():
    # 15 features of dimension 20 against 5000: the N×N route gives what the 20×20 square root gives.
    rng = np.random.default_rng(13)
    basis = rng.normal(size=(20, 20))
    reference = rng.normal(size=(5000, 20)) @ basis
    mu, sigma = metrics.feature_statistics(reference)
    few = rng.normal(size=(15, 20)) @ basis + 0.5  # 15 < 20: the N×N route
    via_sqrtm = metrics.frechet_distance_from_statistics(*metrics.feature_statistics(few), mu, sigma, eps=0.0)
    assert metrics.frechet_distance_to_statistics(few, mu, sigma) == pytest.approx(via_sqrtm, rel=1e-5)
    with pytest.raises(ValueError, match=r"dimension 20. Received: shapes mu=\(3,\)"):
        metrics.frechet_distance_to_statistics(few, np.zeros(3), np.eye(3))


# -- precision and recall --------------------------------------------------------------------------
def test_precision_recall_by_hand():
    # 1-D, k = 1. Real radii (nearest other point): 0→1, 1→1, 2→1, 3→1, 10→7.
    # Fake radii: 2.6→2.4, 5→2.4, 20→1, 21→1.
    # Precision: 2.6 (|2.6−2| ≤ 1) and 5 (|5−10| ≤ 7) are inside, 20 and 21 are not → 2/4.
    # Recall: 1, 2, 3 lie within 2.4 of 2.6; 0 (2.6 away) and 10 (5 from 5, 10 from 20) do not → 3/5.
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = np.array([[2.6], [5.0], [20.0], [21.0]])
    np.testing.assert_allclose(metrics.manifold_radii(real, 1), [1.0, 1.0, 1.0, 1.0, 49.0])
    assert metrics.precision_recall(real, fake, k=1) == (0.5, 0.6)
    # k = 2 widens the real radii to 0→2, 1→1, 2→1, 3→2, 10→8: 20 is still 10 from 10 → same precision.
    np.testing.assert_allclose(metrics.manifold_radii(real, 2), [4.0, 1.0, 1.0, 4.0, 64.0])
    assert metrics.precision_recall(real, fake, k=2)[0] == 0.5


def test_precision_recall_of_a_set_with_itself_and_with_far_noise():
    rng = np.random.default_rng(14)
    real = rng.normal(size=(300, 16))
    assert metrics.precision_recall(real, real, chunk=64) == (1.0, 1.0)  # chunked: 64 does not divide 300
    far = rng.normal(size=(200, 16)) + 100.0
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    # Two draws of one distribution: both high but not 1 (the k-NN balls miss some of the other draw).
    precision, recall = metrics.precision_recall(real, rng.normal(size=(300, 16)))
    assert 0.6 < precision < 1.0 and 0.6 < recall < 1.0


def test_precision_recall_separate_fidelity_from_coverage():
    # A mode-collapsed generator: near-copies of 10 real points. High precision, low recall.
    rng = np.random.default_rng(15)
    real = rng.normal(size=(500, 8))
    collapsed = np.repeat(real[:10], 30, axis=0) + 1e-3 * rng.normal(size=(300, 8))
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\] .*Received: k=5"):
        metrics.precision_recall(real[:5], collapsed, k=5)


# -- KID -----------------------------------------------------------------------------------------
def test_kernel_inception_distance_same_and_shifted():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    same_mean, same_std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted_mean, _ = metrics.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.1 and shifted_mean > 20 * same_std
    # Deterministic for a seed.
    assert metrics.kernel_inception_distance(a, b, num_subsets=5, subset_size=100, seed=7) == \
        metrics.kernel_inception_distance(a, b, num_subsets=5, subset_size=100, seed=7)


def test_kernel_inception_distance_matches_a_direct_unbiased_mmd():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 0.3
    k = lambda x, y: (x @ y / 3 + 1.0) ** 3  # noqa: E731
    m = 30
    direct = (
        sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        + sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m**2
    )
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=3, subset_size=30)
    assert mean == pytest.approx(direct, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_kernel_inception_distance_rejects_a_too_large_subset():
    with pytest.raises(ValueError, match="Received: subset_size=50"):
        metrics.kernel_inception_distance(np.zeros((40, 2)), np.zeros((40, 2)), subset_size=50)


# -- classifier extras ----------------------------------------------------------------------------
def test_confident_fraction_and_label_histogram():
    logits = np.array([[10.0, 0, 0], [0, 10.0, 0], [1.0, 1.0, 1.0], [0, 0, 3.0]])
    # softmax maxima: 0.99991, 0.99991, 1/3, 0.9094
    assert metrics.confident_fraction(logits, threshold=0.9) == pytest.approx(0.75)
    assert metrics.confident_fraction(logits, threshold=0.95) == pytest.approx(0.5)
    np.testing.assert_allclose(metrics.label_histogram(logits, num_classes=3), [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match=r"num_classes=10 columns. Received: shape=\(4, 3\)"):
        metrics.label_histogram(logits)


def test_requested_label_accuracy_overall_and_per_class():
    # argmax per row: 0, 1, 0, 2, 2; requested: 0, 1, 1, 2, 0 → hits 1, 1, 0, 1, 0
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0]])
    overall, per_class = metrics.requested_label_accuracy(logits, [0, 1, 1, 2, 0], num_classes=3)
    assert overall == pytest.approx(3 / 5)
    np.testing.assert_allclose(per_class, [0.5, 0.5, 1.0])
    _, unseen = metrics.requested_label_accuracy(logits[:2], [0, 0], num_classes=3)
    assert unseen[0] == 0.5 and np.isnan(unseen[1:]).all()
    with pytest.raises(ValueError, match=r"Received: labels of shape \(5,\) in \[0, 3\]"):
        metrics.requested_label_accuracy(logits, [0, 1, 1, 3, 0], num_classes=3)


# -- likelihood -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.37, -1.0), (-0.99, -5.0), (1.4, 0.5), (0.2, -8.0)])
def test_discretized_decoder_is_a_probability_distribution_over_256_levels(mean, log_scale):
    levels = np.arange(256) * 2.0 / 255.0 - 1.0
    log_p = metrics.discretized_gaussian_log_likelihood(levels, mean=mean, log_scale=log_scale)
    assert np.all(np.isfinite(log_p)) and np.all(log_p <= 0)
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_matches_the_gaussian_bin_mass():
    x, mean, scale = 10 * 2 / 255 - 1, -0.9, 0.05
    expected = scipy.stats.norm.cdf(x + 1 / 255, mean, scale) - scipy.stats.norm.cdf(x - 1 / 255, mean, scale)
    log_p = metrics.discretized_gaussian_log_likelihood(x, mean=mean, log_scale=math.log(scale))
    assert np.exp(log_p) == pytest.approx(expected, rel=1e-10)
    # Far in a tail the log-probability stays finite (log_ndtr, no clipping at 1e-12).
    assert np.isfinite(metrics.discretized_gaussian_log_likelihood(0.5, mean=-0.9, log_scale=math.log(0.01)))


def _gaussian_toy(schedule, num_timesteps, mu, s):
    """The process, the exact ε for x0 ~ N(mu, s²) and the exact reverse variance."""
    diffusion = GaussianDiffusion(schedules.make_betas(schedule, num_timesteps))
    alpha_bar = diffusion.alphas_cumprod

    def eps_fn(x_t, t):
        # q(x_t) = N(√ᾱ mu, ᾱ s² + 1 − ᾱ):  ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ mu)/(ᾱ s² + 1 − ᾱ).
        a = alpha_bar[t.numpy()][:, None]
        return np.sqrt(1 - a) * (x_t.numpy().astype(np.float64) - np.sqrt(a) * mu) / (a * s * s + 1 - a)

    def exact_variance(x_t, t):
        # Var[x^(t−1) | x^(t)] = β̃_t + coef1_t² Var[x0 | x^(t)] (both Gaussian), Var[x0 | x^(t)] below;
        # at t = 0 (β̃ = 0, coef1 = 1) it is Var[x0 | x^(0)], the exact decoder variance.
        a = alpha_bar[t][:, None]
        posterior_x0 = s * s * (1 - a) / (a * s * s + 1 - a)
        return diffusion.posterior_variance[t][:, None] + diffusion.posterior_mean_coef1[t][:, None] ** 2 * posterior_x0

    return diffusion, eps_fn, exact_variance


def _stratified_gaussian(n, dims, mu, s):
    """x0 whose values are the n·dims quantiles of N(mu, s²), shuffled: E over them ≈ E under N."""
    u = (np.arange(n * dims) + 0.5) / (n * dims)
    return mu + s * np.random.default_rng(0).permutation(scipy.stats.norm.ppf(u)).reshape(n, dims)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_bits_per_dim_of_a_gaussian_toy_matches_its_closed_form_nll(schedule):
    """With the exact ε and the exact reverse variances every reverse step is the true reverse
    conditional (Gaussian data: all of q is jointly Gaussian), so the bound is tight:
    E[bound] = E[−log N(x0; mu, s²)] + KL(q(x_T) ‖ N(0, 1)) = ½ log(2πe s²) + ~1e-5.
    The Monte Carlo error (one x_t per example and step) is ~0.75 nats/√(N·D) here."""
    mu, s, n, dims = 0.3, 1.0, 1000, 40
    diffusion, eps_fn, exact_variance = _gaussian_toy(schedule, 200, mu, s)
    x0 = _stratified_gaussian(n, dims, mu, s)
    bound = metrics.bits_per_dim(eps_fn, diffusion, x0, continuous=True, variance_type=exact_variance,
                                 batch_size=20_000) * math.log(2)
    closed_form = 0.5 * math.log(2 * math.pi * math.e * s * s)
    print(f"{schedule}: bound {bound:.5f} nats/dim, closed form {closed_form:.5f}")
    assert bound == pytest.approx(closed_form, rel=0.01)


def test_bits_per_dim_with_fixed_variances_matches_the_analytic_bound():
    """With β̃_t the bound is loose (the reverse variances are too small); the estimate must still
    equal the bound summed analytically: prior KL + Σ ½ coef1² Var[x0|x_t]/β̃_t + the decoder's
    ½ log(2πσ²) + ½ Var[x0|x^(0)]/σ² (σ² = β̃_1), per dimension."""
    mu, s, n, dims = 0.3, 1.0, 1000, 40
    diffusion, eps_fn, _ = _gaussian_toy("cosine", 200, mu, s)
    x0 = _stratified_gaussian(n, dims, mu, s)
    terms = metrics.bits_per_dim(eps_fn, diffusion, x0, continuous=True, batch_size=20_000, return_terms=True)
    a = diffusion.alphas_cumprod
    posterior_x0 = s * s * (1 - a) / (a * s * s + 1 - a)
    kl = 0.5 * diffusion.posterior_mean_coef1[1:] ** 2 * posterior_x0[1:] / diffusion.posterior_variance[1:]
    sigma2 = math.exp(diffusion.posterior_log_variance_clipped[0])
    decoder = 0.5 * math.log(2 * math.pi * sigma2) + 0.5 * posterior_x0[0] / sigma2
    v = 1 - a[-1]
    prior = 0.5 * (-1 - math.log(v) + v + a[-1] * (mu * mu + s * s))
    analytic = (kl.sum() + decoder + prior) / math.log(2)
    estimate = terms["bits_per_dim"].mean()
    print(f"β̃ bound: estimate {estimate:.5f} bits/dim, analytic {analytic:.5f}")
    assert estimate == pytest.approx(analytic, rel=0.01)
    assert terms["prior"].mean() == pytest.approx(prior / math.log(2), rel=1e-3)
    assert estimate > 0.5 * math.log2(2 * math.pi * math.e * s * s) + 0.1  # looser than the tight bound


def test_bits_per_dim_subsampling_and_discrete_decoder():
    diffusion, eps_fn, _ = _gaussian_toy("linear", 50, 0.0, 0.5)
    rng = np.random.default_rng(1)
    levels = np.clip(np.round((rng.normal(0.0, 0.5, size=(256, 3)) + 1) * 127.5), 0, 255) * 2 / 255 - 1
    full = metrics.bits_per_dim(eps_fn, diffusion, levels, return_terms=True)
    assert full["timesteps"].tolist() == list(range(50))
    assert np.all(full["decoder"] > 0)  # a probability ≤ 1 per dimension
    np.testing.assert_allclose(full["bits_per_dim"], full["prior"] + full["decoder"] + full["kl"], rtol=1e-12)
    assert full["kl_per_timestep"].sum() == pytest.approx(full["decoder"].mean() + full["kl"].mean(), rel=1e-12)
    # K of the T − 1 KL terms, scaled by (T − 1)/K: the sum over the drawn timesteps of the full run's
    # per-timestep means (up to the Monte Carlo error of one x_t per example and step).
    for seed in (0, 1):
        sub = metrics.bits_per_dim(eps_fn, diffusion, levels, num_timesteps_subsample=10, seed=seed,
                                   return_terms=True)
        drawn = sub["timesteps"][1:]
        assert sub["timesteps"][0] == 0 and len(drawn) == 10 and len(set(drawn)) == 10 and drawn.min() >= 1
        expected = 49 / 10 * full["kl_per_timestep"][drawn].sum()
        assert sub["kl"].mean() == pytest.approx(expected, rel=0.2)
        assert sub["prior"].mean() == pytest.approx(full["prior"].mean(), rel=1e-12)
    # Same seed and arguments → same numbers.
    again = metrics.bits_per_dim(eps_fn, diffusion, levels)
    assert again == pytest.approx(full["bits_per_dim"].mean(), rel=1e-12)
    with pytest.raises(ValueError, match=r"needs data in \[-1, 1\]. Received: x0 in \[0, 2\]"):
        metrics.bits_per_dim(eps_fn, diffusion, np.full((2, 3), 2.0) * np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="Received: variance_type='learned'"):
        metrics.bits_per_dim(eps_fn, diffusion, levels, variance_type="learned")


def test_bits_per_dim_of_a_diffusion_model():
    """`model.predict_eps` plugs in directly (float32 tensors in, ε̂ out)."""
    import tfdiffusion as tfd

    keras.utils.set_random_seed(0)
    model = tfd.DiffusionModel(tfd.layers.MLPDenoiser(data_dim=2, hidden_units=16, num_hidden_layers=1),
                               tfd.GaussianDiffusion(schedules.make_betas("cosine", 20)), data_range=None)
    x0 = data.make_moons_dataset(32)
    model(tf.constant(x0[:1]))
    value = metrics.bits_per_dim(model.predict_eps, model.diffusion, x0, continuous=True, batch_size=256)
    assert np.isfinite(value)


# -- toy metrics ----------------------------------------------------------------------------------
def test_energy_distance_same_and_shifted():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2))
    same = metrics.energy_distance(a, b)
    shifted = metrics.energy_distance(a, b + np.array([1.0, 0.0]))
    assert same < 5e-3 and shifted > 0.3
    assert metrics.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_in_1d_is_the_square_of_scipys():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=300), rng.standard_t(3, size=500) + 0.2
    assert metrics.energy_distance(a, b) == pytest.approx(scipy.stats.energy_distance(a, b) ** 2, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_statistic_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=200 + 37 * seed)
    b = rng.normal(0.2, 1.3, size=150)
    assert metrics.ks_statistic_1d(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
    ties_a, ties_b = rng.integers(0, 5, size=100).astype(float), rng.integers(0, 6, size=80)[:, None].astype(float)
    assert metrics.ks_statistic_1d(ties_a, ties_b) == pytest.approx(
        scipy.stats.ks_2samp(ties_a, ties_b[:, 0]).statistic, abs=1e-12)
