"""Evaluation: FID/KID on classifier features, bits/dim from the variational bound, toy metrics.

The protocol, stated once (what `tools/evaluate.py` follows):

* **Features.** A small CNN trained on the dataset (`build_classifier`, trained by
  `tools/train_classifier.py`), not Inception: its 128-unit "features" layer (post-ReLU) is
  the embedding, its logits give the classifier extras. Images in [0, 1] (or uint8) are
  *quantised to uint8 first* — round(x·255) — exactly like the dataset's own pixels, so
  that a model is not rewarded or punished for sub-quantum noise; the classifier itself
  takes pixel values in [0, 255] and rescales them with its first layer. The network always
  runs in inference mode (dropout off, batch-norm moving statistics).
* **FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two
  feature sets (float64; unbiased covariances), ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½).
  It is biased upwards at small N; compare numbers only at equal N (the report states N).
* **KID** (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, mean and standard deviation over random subsets.
* **Reference**: all images of one split of the real data (default: test), statistics
  cached per (dataset, split, classifier) in an .npz (`reference_statistics`).

Likelihood: `bits_per_dim` evaluates the DDPM variational bound (Ho et al. 2020, eq. 5 and
App. B; Sohl-Dickstein et al. 2015) with the discretised Gaussian decoder on 256 bins.

Toys: `energy_distance` (Székely & Rizzo) for any dimension and `ks_statistic_1d`, the
two-sample Kolmogorov–Smirnov statistic.

This module imports no other tfdiffusion module (in particular never `model` or `training`): it\ntakes ε-functions and `GaussianDiffusion` objects as arguments.
"""

import hashlib
import math
import os
import warnings

import keras
import numpy as np
import scipy.linalg
import scipy.special
import tensorflow as tf

FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"
_LN2 = math.log(2.0)


# ============================================================================================
# Fréchet distance and kernel inception distance
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


def frechet_distance(features_a, features_b, *, eps=1e-6):
    """The Fréchet distance (FID when the features are a classifier's) of two feature sets.

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


# ============================================================================================
# The feature extractor
# ============================================================================================
def build_classifier(input_shape=(28, 28, 1), num_classes=10, *, dropout=0.3, batch_norm=False, name="classifier"):
    """A small CNN for 28×28 grey images whose "features" layer is the FID embedding.

    pixels [0, 255] → Rescaling(1/255) → conv32 → conv64 → maxpool → conv128 → maxpool →
    flatten → dropout → dense128 ReLU ("features") → dropout → dense `num_classes` ("logits").
    All convolutions are 3×3 "valid" with ReLU (optionally followed by batch norm).

    Args:
      input_shape: (H, W, C) of the images.
      num_classes: classes of the logits layer.
      dropout: dropout rate before the features and logits layers (0 disables it).
      batch_norm: add BatchNormalization after each convolution.
      name: the model's name.

    Returns:
      A functional `keras.Model` taking float pixel values in [0, 255] and returning logits.
    """
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, (filters, pool) in enumerate(((32, False), (64, True), (128, True))):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout1")(x)
    features = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout2")(features) if dropout else features
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name=name)


def quantise_images(images):
    """Images in [0, 1] (float) or uint8 → uint8 [N, H, W, C] by round(x·255).

    Floats may stray outside [0, 1] by at most 1e-3 (round-off) and are clipped; anything
    further out raises (e.g. data still in the model's [−1, 1] space).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C]. Received: shape={images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must be float in [0, 1] or uint8. Received: dtype={images.dtype}")
    images = images.astype(np.float64)
    if images.size:
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(
                f"Float images must lie in [0, 1]. Received: values in [{low:.4g}, {high:.4g}]"
            )
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


class FeatureExtractor:
    """Classifier features and logits for FID/KID, always in inference mode.

    Args:
      classifier: a `keras.Model` from `build_classifier` (or any model taking pixel values
        in [0, 255] with a layer named `features_layer`), e.g.
        `keras.saving.load_model("runs/classifier/classifier.keras")`.
      features_layer: the name of the embedding layer.
      batch_size: images per forward pass.

    Call arguments:
      images: [N, H, W(, C)] floats in [0, 1] or uint8. Quantised to uint8 first.
      verbose: show a `keras.utils.Progbar`.

    Returns:
      (features float32 [N, 128], logits float32 [N, num_classes]).
    """

    def __init__(self, classifier, *, features_layer=FEATURES_LAYER, batch_size=500):
        if not isinstance(classifier, keras.Model):
            raise ValueError(f"classifier must be a keras.Model. Received: classifier={classifier!r}")
        try:
            features = classifier.get_layer(features_layer).output
        except ValueError as error:
            raise ValueError(
                f"The classifier has no layer named {features_layer!r}. Received: layers "
                f"{[layer.name for layer in classifier.layers]}"
            ) from error
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
        self.classifier = classifier
        self.batch_size = int(batch_size)
        self.input_shape = tuple(classifier.inputs[0].shape[1:])
        self._model = keras.Model(classifier.inputs, [features, classifier.outputs[0]])

        def forward(x):
            return self._model(x, training=False)

        self._forward = tf.function(forward, reduce_retracing=True)
        self._fingerprint = None

    @property
    def fingerprint(self):
        """A SHA-1 of the classifier's weights (names the feature space in caches)."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for weight in self.classifier.weights:
                digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __call__(self, images, *, verbose=False):
        pixels = quantise_images(images)
        if pixels.shape[1:] != self.input_shape:
            raise ValueError(
                f"The classifier takes images of shape {self.input_shape}. Received: images.shape={pixels.shape}"
            )
        n = len(pixels)
        if n == 0:
            raise ValueError("images is empty. Received: images.shape=" + str(pixels.shape))
        progbar = keras.utils.Progbar(n, unit_name="image") if verbose else None
        features, logits = [], []
        for start in range(0, n, self.batch_size):
            batch = pixels[start:start + self.batch_size].astype(np.float32)
            count = len(batch)
            if count < self.batch_size and n > self.batch_size:  # pad: one traced shape
                batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:], np.float32)])
            f, l = self._forward(tf.constant(batch))
            features.append(f.numpy()[:count])
            logits.append(l.numpy()[:count])
            if progbar is not None:
                progbar.add(count)
        return np.concatenate(features).astype(np.float32), np.concatenate(logits).astype(np.float32)


def _images_digest(pixels):
    return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def reference_statistics(extractor, images, cache_path=None, *, verbose=False):
    """Features and (μ, Σ) of a reference image set, cached in an .npz.

    The cache is keyed by the classifier's weights and the quantised images: a stale file
    (another classifier, other images) is recomputed and overwritten (written to a
    temporary file and renamed).

    Args:
      extractor: a `FeatureExtractor`.
      images: the reference images ([0, 1] floats or uint8), e.g. one whole dataset split.
      cache_path: an .npz path (one per dataset split and classifier), or None.
      verbose: progress bar while extracting.

    Returns:
      A dict with "mu" [d], "sigma" [d, d] (float64), "features" [N, d] and "logits" [N, K]
      (float32, the features are what KID needs) and "num_images".
    """
    pixels = quantise_images(images)
    key = f"{extractor.fingerprint}:{_images_digest(pixels)}"
    if cache_path is not None and os.path.exists(cache_path):
        try:
            with np.load(cache_path) as cached:
                if str(cached["key"]) == key:
                    return {name: cached[name] for name in ("mu", "sigma", "features", "logits")} | {
                        "num_images": int(cached["num_images"])
                    }
        except (OSError, KeyError, ValueError):
            pass  # unreadable or old-format cache: recompute
    features, logits = extractor(pixels, verbose=verbose)
    mu, sigma = feature_statistics(features)
    stats = {"mu": mu, "sigma": sigma, "features": features, "logits": logits, "num_images": len(pixels)}
    if cache_path is not None:
        directory = os.path.dirname(os.path.abspath(cache_path))
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{os.path.basename(cache_path)}.partial.npz")
        np.savez(temporary, key=np.array(key), **stats)
        os.replace(temporary, cache_path)
    return stats


# -- classifier extras -------------------------------------------------------------------------
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


VARIANCE_TYPES = ("beta_tilde", "beta")


def bits_per_dim(eps_fn, diffusion, x0, *, seed=0, num_timesteps_subsample=None, variance_type="beta_tilde",
                 continuous=False, batch_size=1024, return_terms=False, verbose=False):
    """The negative variational bound −ELBO(x0) of a diffusion model, in bits per dimension.

    With 0-based table indices t ∈ [0, T) (x^(t) ~ q(x_t | x0) is the paper's x_{t+1}):

        L = L_T + Σ_{t=1}^{T−1} L_t + L_0
        L_T = KL(q(x^(T−1) | x0) ‖ N(0, I))                               (closed form)
        L_t = E_{x^(t)} KL(q(x^(t−1) | x^(t), x0) ‖ p_θ(x^(t−1) | x^(t)))  (one draw of x^(t))
        L_0 = −log p_θ(x0 | x^(0))

    p_θ's mean is `diffusion.p_mean_variance` at the predicted ε; its variance is fixed
    (β̃_t or β_t, `variance_type`) or given by a callable. The decoder L_0 is the
    discretised Gaussian on 256 bins in [−1, 1] (`discretized_gaussian_log_likelihood`) or,
    with `continuous=True`, the Gaussian density (for continuous data, e.g. toys; then
    the result is a differential quantity and can be negative). bits/dim = nats/(D·ln 2).

    The bound is ≥ −log p_θ(x0) and equals the model's NLL only when every reverse step is
    the true reverse conditional (optimal mean *and* variance).

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
    T = diffusion.num_timesteps
    n = len(x0)
    dims = int(np.prod(x0.shape[1:]))
    rng = np.random.default_rng(seed)
    if num_timesteps_subsample is None or num_timesteps_subsample >= T - 1:
        kl_timesteps = np.arange(1, T)
    else:
        if isinstance(num_timesteps_subsample, bool) or not isinstance(num_timesteps_subsample, (int, np.integer)) \
                or num_timesteps_subsample < 1:
            raise ValueError("num_timesteps_subsample must be None or an integer >= 1. "
                             f"Received: num_timesteps_subsample={num_timesteps_subsample!r}")
        kl_timesteps = np.sort(rng.choice(np.arange(1, T), num_timesteps_subsample, replace=False))
    weight = (T - 1) / len(kl_timesteps) if len(kl_timesteps) else 0.0
    timesteps = np.concatenate([[0], kl_timesteps]).astype(np.int32)
    per_example = len(timesteps)

    # L_T: the prior term, exact.
    prior_mean, prior_var, prior_log_var = (
        v.numpy() for v in diffusion.q_mean_variance(tf.constant(x0), tf.fill([n], T - 1))
    )
    prior = normal_kl(prior_mean, prior_log_var, 0.0, 0.0).reshape(n, -1).sum(axis=1)

    decoder = np.zeros(n)
    kl = np.zeros(n)
    kl_per_timestep = np.zeros(per_example)
    total_rows = n * per_example
    progbar = keras.utils.Progbar(total_rows, unit_name="row") if verbose else None
    for start in range(0, total_rows, batch_size):
        rows = np.arange(start, min(start + batch_size, total_rows))
        example, position = rows // per_example, rows % per_example
        t = timesteps[position]
        x_start = x0[example]
        noise = rng.standard_normal(x_start.shape)
        # x_t is rounded to float32 (what the network sees) and used as such everywhere.
        x_t = diffusion.q_sample(tf.constant(x_start), t, tf.constant(noise)).numpy().astype(np.float32)
        eps = np.asarray(eps_fn(tf.constant(x_t), tf.constant(t, tf.int32)), np.float64)
        x_t = x_t.astype(np.float64)
        mean, _, log_var, _ = diffusion.p_mean_variance(
            tf.constant(eps), tf.constant(x_t), t, variance_type="beta_tilde" if callable(variance_type) else variance_type)
        mean, log_var = mean.numpy(), np.broadcast_to(log_var.numpy(), x_t.shape)
        if callable(variance_type):
            log_var = np.broadcast_to(np.log(np.asarray(variance_type(x_t, t), np.float64)), x_t.shape)
        is_decoder = t == 0
        if np.any(is_decoder):
            if continuous:
                log_likelihood = gaussian_log_likelihood(
                    x_start[is_decoder], mean=mean[is_decoder], log_scale=0.5 * log_var[is_decoder])
            else:
                log_likelihood = discretized_gaussian_log_likelihood(
                    x_start[is_decoder], mean=mean[is_decoder], log_scale=0.5 * log_var[is_decoder])
            nll = -log_likelihood.reshape(int(is_decoder.sum()), -1).sum(axis=1)
            np.add.at(decoder, example[is_decoder], nll)
            np.add.at(kl_per_timestep, position[is_decoder], nll)
        is_kl = ~is_decoder
        if np.any(is_kl):
            true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(
                tf.constant(x_start[is_kl]), tf.constant(x_t[is_kl]), t[is_kl])
            true_log_var = np.broadcast_to(true_log_var.numpy(), true_mean.shape)
            terms = normal_kl(true_mean.numpy(), true_log_var, mean[is_kl], log_var[is_kl])
            terms = weight * terms.reshape(int(is_kl.sum()), -1).sum(axis=1)
            np.add.at(kl, example[is_kl], terms)
            np.add.at(kl_per_timestep, position[is_kl], terms)
        if progbar is not None:
            progbar.add(len(rows))

    to_bits = 1.0 / (dims * _LN2)
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
