"""The maths of evaluation: Fréchet distance, KID, precision/recall, classifier extras, bits/dim, toy distances.

Pure functions of arrays (and, for the likelihood, of an ε-function and a `GaussianDiffusion`):
no networks are built, no files read or written. The evaluation protocol that feeds them —
drawing samples, the classifier's features, reference statistics and their cache, the reports —
is `tfdiffusion.evaluation`.

* **FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature
  sets (float64; unbiased covariances), ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½). It is
  biased upwards at small N; compare numbers only at equal N.
  With fewer samples than dimensions (N < d, e.g. a few hundred Inception features of 2048
  dimensions) Σ is a Gram matrix XᵀX/(N−1) of rank < N and tr((Σ Σ_ref)^½) is computed
  exactly from the N×N matrix X Σ_ref Xᵀ instead of a d×d square root (`frechet_distance_to_statistics`).
* **KID** (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, mean and standard deviation over random subsets.
* **Precision and recall** (Kynkäänniemi et al. 2019): each feature set spans a manifold, the
  union of balls around its points with radius the distance to the k-th nearest neighbour
  (k = 3); precision is the fraction of generated samples inside the real manifold (fidelity),
  recall the fraction of real samples inside the generated one (coverage).
* **Classifier extras**: the confident fraction, the label histogram and, for class-conditional
  models, how often the requested class was drawn — all from a classifier's logits.
* **Likelihood**: `bits_per_dim` evaluates the DDPM variational bound (Ho et al. 2020, eq. 5 and
  App. B; Sohl-Dickstein et al. 2015) with the discretised Gaussian decoder on 256 bins. With
  0-based table indices t ∈ [0, T) (x^(t) ~ q(x_t | x0) is the paper's x_{t+1}):

      L = L_T + Σ_{t=1}^{T−1} L_t + L_0
      L_T = KL(q(x^(T−1) | x0) ‖ N(0, I))                               (closed form)
      L_t = E_{x^(t)} KL(q(x^(t−1) | x^(t), x0) ‖ p_θ(x^(t−1) | x^(t)))  (one draw of x^(t))
      L_0 = −log p_θ(x0 | x^(0))

  The bound is ≥ −log p_θ(x0) and equals the model's NLL only when every reverse step is the
  true reverse conditional (optimal mean *and* variance).
* **Toys**: `energy_distance` (Székely & Rizzo) for any dimension and `ks_statistic_1d`, the
  two-sample Kolmogorov–Smirnov statistic.
"""

import math
import warnings

import keras
import numpy as np
import scipy.linalg
import scipy.special
import tensorflow as tf

from tfdiffusion.diffusion import VARIANCE_TYPES

_LN2 = math.log(2.0)


# ============================================================================================
# Fréchet distance, kernel inception distance, precision and recall
# ============================================================================================
def _as_features(features, name):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [N >= 2, d]. Received: {name}.shape={features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} holds non-finite values (NaN or Inf).")
    return features


def feature_statistics(features):
    """(μ, Σ) of a feature set [N, d]: the float64 mean and unbiased covariance."""
    features = _as_features(features, "features")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b, *, eps=1e-6):
    """d² = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between N(μ_a, Σ_a) and N(μ_b, Σ_b).

    The square root is `scipy.linalg.sqrtm` of Σ_a Σ_b. When that product is (numerically)
    singular — the result is not finite or its relative error ‖X² − A‖/‖A‖ is above 1e-3 —
    the square root is recomputed with eps·I added to both covariances. A small imaginary
    part (round-off: the exact root of a product of two PSD matrices has real eigenvalues)
    is dropped; a large one (max |Im diag| > 1e-3) means the inputs are not covariances and
    raises.

    Args:
      mu_a, mu_b: means [d].
      sigma_a, sigma_b: covariances [d, d].
      eps: the diagonal offset of the stabilised retry.

    Returns:
      A Python float ≥ 0 (tiny negative round-off is clipped to 0).
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(
            "The statistics must be means [d] and covariances [d, d] of one dimension d. Received: shapes "
            f"mu_a={mu_a.shape}, sigma_a={sigma_a.shape}, mu_b={mu_b.shape}, sigma_b={sigma_b.shape}"
        )

    def root(a, b):
        product = a @ b
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular: handled by the retry
            covmean = scipy.linalg.sqrtm(product)
            if not np.all(np.isfinite(covmean)):
                return covmean, np.inf
            scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
            return covmean, np.linalg.norm(covmean @ covmean - product) / scale

    covmean, error = root(sigma_a, sigma_b)
    if not np.all(np.isfinite(covmean)) or error > 1e-3:
        offset = eps * np.eye(d)
        covmean, error = root(sigma_a + offset, sigma_b + offset)
        if not np.all(np.isfinite(covmean)):
            raise ValueError(f"sqrtm(Σ_a Σ_b) is not finite even with eps={eps} added to the covariances.")
    if np.iscomplexobj(covmean):
        largest = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if largest > 1e-3:
            raise ValueError(
                "sqrtm(Σ_a Σ_b) has a large imaginary component; the inputs are not covariance matrices. "
                f"Received: max |imaginary diagonal| = {largest:.3g}"
            )
        covmean = covmean.real
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def frechet_distance_to_statistics(features, mu, sigma, *, eps=1e-6):
    """The Fréchet distance between a feature set [N, d] and reference statistics (μ, Σ).

    With N ≥ d this is `frechet_distance_from_statistics` of the set's own (μ, Σ). With N < d the
    set's covariance Σ_x = XᵀX/(N−1) (X: the centred features) has rank < N, and the nonzero
    eigenvalues of Σ_x Σ equal those of the N×N PSD matrix X Σ Xᵀ/(N−1) (AB and BA share them),
    so tr((Σ_x Σ)^½) = Σ_i √λ_i(X Σ Xᵀ/(N−1)): exact, with no d×d square root and no eps.

    Args:
      features: an array [N ≥ 2, d].
      mu, sigma: the reference mean [d] and covariance [d, d].
      eps: see `frechet_distance_from_statistics` (the N ≥ d route only).

    Returns:
      A Python float ≥ 0.
    """
    features = _as_features(features, "features")
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    n, d = features.shape
    if mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(f"The statistics must have the features' dimension {d}. Received: shapes "
                         f"mu={mu.shape}, sigma={sigma.shape}")
    if n >= d:
        return frechet_distance_from_statistics(*feature_statistics(features), mu, sigma, eps=eps)
    mean = features.mean(axis=0)
    centred = features - mean
    gram = centred @ sigma @ centred.T / (n - 1)
    eigenvalues = np.linalg.eigvalsh((gram + gram.T) / 2)
    # Centring leaves at least one zero eigenvalue; its round-off (~1e-13) would add √1e-13 ≈ 3e-7 to the
    # trace, so eigenvalues under numpy's rank tolerance (λ_max · N · ε) count as the zeros they are.
    eigenvalues[eigenvalues < eigenvalues.max(initial=0.0) * n * np.finfo(np.float64).eps] = 0.0
    trace_sqrt = np.sqrt(eigenvalues).sum()
    diff = mean - mu
    value = diff @ diff + np.sum(centred * centred) / (n - 1) + np.trace(sigma) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance(features_a, features_b, *, eps=1e-6):
    """The Fréchet distance (FID when the features are a classifier's) of two feature sets.

    When the smaller set has fewer rows than dimensions, its low-rank route is taken
    (`frechet_distance_to_statistics`; the distance is symmetric).

    Args:
      features_a, features_b: arrays [N_a, d] and [N_b, d] (N ≥ 2), any float dtype;
        computed in float64.
      eps: see `frechet_distance_from_statistics`.

    Returns:
      A Python float.
    """
    features_a = _as_features(features_a, "features_a")
    features_b = _as_features(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"The feature sets have different dimensions. Received: shapes {features_a.shape} and {features_b.shape}"
        )
    smaller, larger = sorted((features_a, features_b), key=len)
    if len(smaller) < smaller.shape[1]:
        return frechet_distance_to_statistics(smaller, *feature_statistics(larger), eps=eps)
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b), eps=eps)


def _polynomial_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(features_a, features_b, *, num_subsets=100, subset_size=None, seed=0):
    """KID: the unbiased MMD² with k(x, y) = (x·y/d + 1)³, mean and std over random subsets.

    Each of `num_subsets` rounds draws `subset_size` rows from each set without replacement
    (a `np.random.default_rng(seed)` stream) and computes
    MMD²_u = Σ_{i≠j} k(a_i, a_j)/(m(m−1)) + Σ_{i≠j} k(b_i, b_j)/(m(m−1)) − 2 Σ_{i,j} k(a_i, b_j)/m².

    Args:
      features_a, features_b: arrays [N_a, d], [N_b, d].
      num_subsets: number of subsets, ≥ 1.
      subset_size: rows per subset, 2 ≤ subset_size ≤ min(N_a, N_b); None means
        min(1000, N_a, N_b).
      seed: seed of the subset draws.

    Returns:
      (mean, std): Python floats. The mean can be slightly negative (the estimate is unbiased).
    """
    features_a = _as_features(features_a, "features_a")
    features_b = _as_features(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"The feature sets have different dimensions. Received: shapes {features_a.shape} and {features_b.shape}"
        )
    largest = min(len(features_a), len(features_b))
    if subset_size is None:
        subset_size = min(1000, largest)
    if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)) or not 2 <= subset_size <= largest:
        raise ValueError(f"subset_size must be an integer in [2, {largest}]. Received: subset_size={subset_size!r}")
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, (int, np.integer)) or num_subsets < 1:
        raise ValueError(f"num_subsets must be an integer >= 1. Received: num_subsets={num_subsets!r}")
    rng = np.random.default_rng(seed)
    m = subset_size
    values = np.empty(num_subsets)
    for k in range(num_subsets):
        a = features_a[rng.choice(len(features_a), m, replace=False)]
        b = features_b[rng.choice(len(features_b), m, replace=False)]
        k_aa, k_bb, k_ab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
        values[k] = (
            (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
            + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
            - 2.0 * k_ab.mean()
        )
    return float(values.mean()), float(values.std())


def _squared_distances(a, b):
    """‖a_i − b_j‖² [len(a), len(b)] as ‖a‖² − 2a·b + ‖b‖² (one matrix product), clipped at 0."""
    return np.maximum(np.sum(a * a, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b * b, axis=1)[None, :], 0.0)


def manifold_radii(features, k=3, *, chunk=1024):
    """The squared radius of each point's ball: ‖φ − NN_k(φ)‖², its k-th nearest *other* point.

    Args:
      features: an array [N > k, d] (float64 inside).
      k: the neighbour rank, ≥ 1.
      chunk: rows per distance block (memory O(chunk·N)).

    Returns:
      float64 [N].
    """
    features = _as_features(features, "features")
    n = len(features)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] (fewer than the {n} points). Received: k={k!r}")
    radii = np.empty(n)
    for start in range(0, n, chunk):
        distances = _squared_distances(features[start:start + chunk], features)
        rows = np.arange(len(distances))
        distances[rows, start + rows] = 0.0  # the point itself: exactly the smallest, so index k skips it
        radii[start:start + chunk] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside(queries, manifold, radii, chunk):
    """The fraction of `queries` inside ∪_j B(manifold_j, radii_j): Kynkäänniemi et al.'s f(φ, Φ)."""
    inside = 0
    for start in range(0, len(queries), chunk):
        distances = _squared_distances(queries[start:start + chunk], manifold)
        inside += int(np.count_nonzero(np.any(distances <= radii[None, :], axis=1)))
    return inside / len(queries)


def precision_recall(real_features, fake_features, k=3, *, chunk=1024):
    """Improved precision and recall of generated samples (Kynkäänniemi et al. 2019, eqs. 1–2).

    The manifold of a set Φ is ∪_{φ'∈Φ} B(φ', ‖φ' − NN_k(φ')‖); f(φ, Φ) = 1 when φ lies in it.
    precision = mean_{φ_g} f(φ_g, Φ_real), recall = mean_{φ_r} f(φ_r, Φ_fake). Both depend on the
    sample sizes (the paper uses 50 000 of each): compare numbers only at equal N.

    Args:
      real_features: reference features [N_r > k, d].
      fake_features: generated samples' features [N_g > k, d].
      k: the neighbour rank of the radii (the paper's 3).
      chunk: rows per distance block.

    Returns:
      (precision, recall): Python floats in [0, 1].
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"The feature sets have different dimensions. Received: shapes {real.shape} and {fake.shape}")
    real_radii, fake_radii = manifold_radii(real, k, chunk=chunk), manifold_radii(fake, k, chunk=chunk)
    return _fraction_inside(fake, real, real_radii, chunk), _fraction_inside(real, fake, fake_radii, chunk)


# ============================================================================================
# Classifier extras: what the classifier's logits say about a sample set
# ============================================================================================
def _as_logits(logits, num_classes=None):
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty 2-D array [N, classes]. Received: shape={logits.shape}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits must have num_classes={num_classes} columns. Received: shape={logits.shape}")
    return logits


def confident_fraction(logits, threshold=0.9):
    """The fraction of rows whose largest softmax probability is ≥ `threshold`."""
    logits = _as_logits(logits)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]. Received: threshold={threshold!r}")
    probabilities = scipy.special.softmax(logits, axis=1)
    return float(np.mean(probabilities.max(axis=1) >= threshold))


def label_histogram(logits, num_classes=10):
    """The fraction of rows whose argmax is each class: float64 [num_classes], summing to 1."""
    logits = _as_logits(logits, num_classes)
    return np.bincount(np.argmax(logits, axis=1), minlength=num_classes) / len(logits)


def requested_label_accuracy(logits, labels, num_classes=10):
    """How often a conditional model drew the class it was asked for, as a classifier judges.

    Returns (overall fraction, float64 [num_classes] per requested class; NaN for a class never requested).
    """
    logits = _as_logits(logits, num_classes)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != logits.shape[0] or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must hold one class in [0, {num_classes}) per row of logits ({logits.shape[0]}). "
                         f"Received: labels of shape {labels.shape} in [{labels.min()}, {labels.max()}]")
    hits = np.argmax(logits, axis=1) == labels
    counts = np.bincount(labels, minlength=num_classes)
    per_class = np.bincount(labels, weights=hits, minlength=num_classes) / np.where(counts, counts, np.nan)
    return float(np.mean(hits)), per_class


# ============================================================================================
# Likelihood: the variational bound in bits/dim
# ============================================================================================
def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)), elementwise (nats)."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + np.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * np.exp(-log_var2))


def gaussian_log_likelihood(x, *, mean, log_scale):
    """log N(x; mean, e^{2 log_scale}), elementwise (nats): the continuous decoder."""
    return -0.5 * math.log(2.0 * math.pi) - log_scale - 0.5 * (x - mean) ** 2 * np.exp(-2.0 * log_scale)


def _log_ndtr_difference(a, b):
    """log(Φ(b) − Φ(a)) for a < b, accurate in both tails."""
    upper = a > 0  # both in the upper tail: Φ(b) − Φ(a) = Φ(−a) − Φ(−b)
    hi = np.where(upper, scipy.special.log_ndtr(-a), scipy.special.log_ndtr(b))
    lo = np.where(upper, scipy.special.log_ndtr(-b), scipy.special.log_ndtr(a))
    with np.errstate(divide="ignore"):
        return hi + np.log1p(-np.exp(np.minimum(lo - hi, 0.0)))


def discretized_gaussian_log_likelihood(x, *, mean, log_scale):
    """log P(x) of data on 256 levels in [−1, 1] under N(mean, e^{2 log_scale}) binned.

    The decoder of Ho et al. 2020, eq. 13: level x (one of 2k/255 − 1) owns the interval
    [x − 1/255, x + 1/255], the first and last levels own (−∞, −1 + 1/255] and
    [1 − 1/255, ∞), so the 256 probabilities sum to 1. Computed with `log_ndtr` in float64
    (no clipping of tiny probabilities).

    Returns:
      Elementwise log-probabilities (nats), float64.
    """
    x, mean, log_scale = (np.asarray(v, np.float64) for v in (x, mean, log_scale))
    inv_scale = np.exp(-log_scale)
    plus = inv_scale * (x - mean + 1.0 / 255.0)
    minus = inv_scale * (x - mean - 1.0 / 255.0)
    middle = _log_ndtr_difference(minus, plus)
    return np.where(x < -0.999, scipy.special.log_ndtr(plus),
                    np.where(x > 0.999, scipy.special.log_ndtr(-minus), middle))


def bits_per_dim(eps_fn, diffusion, x0, *, seed=0, num_timesteps_subsample=None, variance_type="beta_tilde",
                 continuous=False, batch_size=1024, return_terms=False, verbose=False):
    """The negative variational bound −ELBO(x0) of a diffusion model, in bits per dimension.

    L = L_T + Σ_{t=1}^{T−1} L_t + L_0 as in the module docstring. p_θ's mean is `diffusion.p_mean_variance` at the predicted ε; its variance is fixed
    (β̃_t or β_t, `variance_type`) or given by a callable. The decoder L_0 is the
    discretised Gaussian on 256 bins in [−1, 1] (`discretized_gaussian_log_likelihood`) or,
    with `continuous=True`, the Gaussian density (for continuous data, e.g. toys; then
    the result is a differential quantity and can be negative). bits/dim = nats/(D·ln 2).

    Args:
      eps_fn: `eps_fn(x_t, t)` → ε̂ for a float32 tensor x_t [B, ...] and an int32 tensor
        t [B] (rows may have different t), e.g. `model.predict_eps` of a DiffusionModel
        (wrap it to pass labels).
      diffusion: the model's `GaussianDiffusion`.
      x0: data [N, ...] in the model's space ([−1, 1] on 256 levels for the discrete decoder).
      seed: seed of the noise draws (and of the timestep subsample).
      num_timesteps_subsample: None evaluates every t ∈ [1, T); K evaluates K distinct t drawn
        uniformly at random (the same for every example) and scales their sum by (T−1)/K, an
        unbiased estimate of the sum. L_T and L_0 are always exact.
      variance_type: "beta_tilde" (β̃_t), "beta" (β_t; β̃_1 at t = 0 as in DDPM's code), or a
        callable `(x_t, t) → variance` (float64 numpy, broadcastable to x_t) for models with
        learned or otherwise known reverse variances.
      continuous: use the continuous Gaussian decoder.
      batch_size: rows (example, timestep pairs) per `eps_fn` call.
      return_terms: also return the terms.
      verbose: show a `keras.utils.Progbar` over the rows.

    Returns:
      The mean over examples of the bound in bits/dim (a Python float); with
      `return_terms=True` a dict of float64 arrays in bits/dim: "bits_per_dim", "prior",
      "decoder", "kl" (per example [N]), "timesteps" and "kl_per_timestep" (mean over
      examples, already scaled by (T−1)/K when subsampled).
    """
    x0 = _check_bound_arguments(x0, variance_type, batch_size, continuous)
    T = diffusion.num_timesteps
    n = len(x0)
    rng = np.random.default_rng(seed)
    kl_timesteps = _kl_timesteps(T, num_timesteps_subsample, rng)
    timesteps = np.concatenate([[0], kl_timesteps]).astype(np.int32)

    # L_T: the prior term, exact.
    prior_mean, _, prior_log_var = (v.numpy() for v in diffusion.q_mean_variance(tf.constant(x0), tf.fill([n], T - 1)))
    prior = normal_kl(prior_mean, prior_log_var, 0.0, 0.0).reshape(n, -1).sum(axis=1)

    decoder, kl, kl_per_timestep = _sum_bound_terms(
        eps_fn, diffusion, x0, timesteps, rng, variance_type=variance_type, continuous=continuous,
        kl_weight=(T - 1) / len(kl_timesteps) if len(kl_timesteps) else 0.0, batch_size=batch_size, verbose=verbose)
    to_bits = 1.0 / (int(np.prod(x0.shape[1:])) * _LN2)
    total = (prior + decoder + kl) * to_bits
    if not return_terms:
        return float(total.mean())
    return {
        "bits_per_dim": total,
        "prior": prior * to_bits,
        "decoder": decoder * to_bits,
        "kl": kl * to_bits,
        "timesteps": timesteps,
        "kl_per_timestep": kl_per_timestep / n * to_bits,
    }


def _check_bound_arguments(x0, variance_type, batch_size, continuous):
    """`bits_per_dim`'s checks; returns x0 as float64."""
    x0 = np.asarray(x0, np.float64)
    if x0.ndim < 2 or len(x0) == 0:
        raise ValueError(f"x0 must be a non-empty array [N, ...]. Received: shape={x0.shape}")
    if not callable(variance_type) and variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES} or a callable. "
                         f"Received: variance_type={variance_type!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    if not continuous and (x0.min() < -1.0 - 1e-6 or x0.max() > 1.0 + 1e-6):
        raise ValueError("The discretised decoder needs data in [-1, 1]. "
                         f"Received: x0 in [{x0.min():.4g}, {x0.max():.4g}]")
    return x0


def _kl_timesteps(num_timesteps, num_timesteps_subsample, rng):
    """The t ∈ [1, T) whose KL terms `bits_per_dim` evaluates: all, or K drawn from `rng`, sorted."""
    if num_timesteps_subsample is None or num_timesteps_subsample >= num_timesteps - 1:
        return np.arange(1, num_timesteps)
    if isinstance(num_timesteps_subsample, bool) or not isinstance(num_timesteps_subsample, (int, np.integer)) \
            or num_timesteps_subsample < 1:
        raise ValueError("num_timesteps_subsample must be None or an integer >= 1. "
                         f"Received: num_timesteps_subsample={num_timesteps_subsample!r}")
    return np.sort(rng.choice(np.arange(1, num_timesteps), num_timesteps_subsample, replace=False))


def _sum_bound_terms(eps_fn, diffusion, x0, timesteps, rng, *, variance_type, continuous, kl_weight, batch_size,
                     verbose):
    """Every (example, timestep) row's term, `batch_size` rows per `eps_fn` call, summed.

    Returns:
      (decoder [N], kl [N], per-timestep sums [len(timesteps)]), in nats.
    """
    n, per_example = len(x0), len(timesteps)
    decoder, kl, kl_per_timestep = np.zeros(n), np.zeros(n), np.zeros(per_example)
    total_rows = n * per_example
    progbar = keras.utils.Progbar(total_rows, unit_name="row") if verbose else None
    for start in range(0, total_rows, batch_size):
        rows = np.arange(start, min(start + batch_size, total_rows))
        example, position = rows // per_example, rows % per_example
        x_start = x0[example]
        terms = _bound_terms(eps_fn, diffusion, x_start, timesteps[position], rng.standard_normal(x_start.shape),
                             variance_type=variance_type, continuous=continuous, kl_weight=kl_weight)
        is_decoder = timesteps[position] == 0
        np.add.at(decoder, example[is_decoder], terms[is_decoder])
        np.add.at(kl, example[~is_decoder], terms[~is_decoder])
        np.add.at(kl_per_timestep, position, terms)
        if progbar is not None:
            progbar.add(len(rows))
    return decoder, kl, kl_per_timestep


def _bound_terms(eps_fn, diffusion, x_start, t, noise, *, variance_type, continuous, kl_weight):
    """One term of the bound per row (nats): −log p_θ(x0 | x^(0)) where t = 0, else the weighted KL L_t."""
    # x_t is rounded to float32 (what the network sees) and used as such everywhere.
    x_t = diffusion.q_sample(tf.constant(x_start), t, tf.constant(noise)).numpy().astype(np.float32)
    eps = np.asarray(eps_fn(tf.constant(x_t), tf.constant(t, tf.int32)), np.float64)
    x_t = x_t.astype(np.float64)
    mean, _, log_var, _ = diffusion.p_mean_variance(
        tf.constant(eps), tf.constant(x_t), t, variance_type="beta_tilde" if callable(variance_type) else variance_type)
    mean, log_var = mean.numpy(), np.broadcast_to(log_var.numpy(), x_t.shape)
    if callable(variance_type):
        log_var = np.broadcast_to(np.log(np.asarray(variance_type(x_t, t), np.float64)), x_t.shape)
    terms = np.zeros(len(t))
    is_decoder = t == 0
    if np.any(is_decoder):
        log_likelihood = (gaussian_log_likelihood if continuous else discretized_gaussian_log_likelihood)(
            x_start[is_decoder], mean=mean[is_decoder], log_scale=0.5 * log_var[is_decoder])
        terms[is_decoder] = -log_likelihood.reshape(int(is_decoder.sum()), -1).sum(axis=1)
    is_kl = ~is_decoder
    if np.any(is_kl):
        true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(
            tf.constant(x_start[is_kl]), tf.constant(x_t[is_kl]), t[is_kl])
        true_log_var = np.broadcast_to(true_log_var.numpy(), true_mean.shape)
        kl = normal_kl(true_mean.numpy(), true_log_var, mean[is_kl], log_var[is_kl])
        terms[is_kl] = kl_weight * kl.reshape(int(is_kl.sum()), -1).sum(axis=1)
    return terms


# ============================================================================================
# Toy metrics
# ============================================================================================
def _as_points(points, name):
    points = np.asarray(points, np.float64)
    if points.ndim == 1:
        points = points[:, np.newaxis]
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"{name} must be a non-empty array [N] or [N, d]. Received: shape={points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} holds non-finite values (NaN or Inf).")
    return points


def _mean_pairwise_distance(a, b, chunk=2048):
    import scipy.spatial.distance

    total = 0.0
    for start in range(0, len(a), chunk):
        total += scipy.spatial.distance.cdist(a[start:start + chunk], b).sum()
    return total / (len(a) * len(b))


def energy_distance(a, b):
    """The (squared) energy distance 2E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ of two samples.

    Székely & Rizzo's statistic with every pair (V-statistic), so it is ≥ 0, 0 only for
    identical samples, and ≈ O(1/N) for two samples of one distribution; in 1-D it is the
    square of `scipy.stats.energy_distance`. Memory is O(2048·N) (chunked).

    Args:
      a, b: arrays [N_a] / [N_a, d] and [N_b] / [N_b, d].

    Returns:
      A Python float.
    """
    a, b = _as_points(a, "a"), _as_points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different dimensions. Received: shapes {a.shape} and {b.shape}")
    value = 2.0 * _mean_pairwise_distance(a, b) - _mean_pairwise_distance(a, a) - _mean_pairwise_distance(b, b)
    return float(max(value, 0.0))


def ks_statistic_1d(a, b):
    """The two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| of 1-D samples.

    Both empirical CDFs are right-continuous step functions, so the supremum is attained at
    one of the pooled sample values; ties are handled by evaluating both CDFs there.
    """
    a = np.sort(_as_points(a, "a").reshape(-1)) if np.ndim(a) == 1 or np.shape(a)[-1:] == (1,) else None
    b = np.sort(_as_points(b, "b").reshape(-1)) if np.ndim(b) == 1 or np.shape(b)[-1:] == (1,) else None
    if a is None or b is None:
        raise ValueError("ks_statistic_1d needs 1-D samples ([N] or [N, 1]).")
    pooled = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, pooled, side="right") / len(a)
    cdf_b = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))
