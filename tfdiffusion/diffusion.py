"""The fixed Gaussian diffusion process of Ho et al. 2020 (DDPM).

Notation (table name → symbol; every table is float64 NumPy of shape [T], built once):

    betas                          β_t
    alphas                         α_t = 1 − β_t
    alphas_cumprod                 ᾱ_t = ∏_{s≤t} α_s
    alphas_cumprod_prev            ᾱ_{t−1}  (ᾱ_{−1} = 1)
    posterior_variance             β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    posterior_log_variance_clipped log β̃_t, with β̃_0 (= 0) replaced by β̃_1
    posterior_mean_coef1           β_t √ᾱ_{t−1} / (1 − ᾱ_t)       (multiplies x_0)
    posterior_mean_coef2           (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)  (multiplies x_t)

Time index: t is 0-based, t ∈ [0, T), as in the tutorial's code. The papers' x_t for
t = 1..T is our x at index t − 1; x_0 (the data) has no index in the tables.

Methods take tensors (any float dtype; `t` an integer vector of shape [N]) and return
tensors of the dtype of the data they are given. Equation numbers refer to Ho et al. 2020
unless stated otherwise.

The x_0/ε/v conversions and the reverse step's mean and variance are module functions of ᾱ
(`x0_from_eps`, `eps_from_x0`, `x0_and_eps`, `reverse_mean_variance`, ...), so that the samplers
apply them on a respaced subsequence of timesteps; the methods of `GaussianDiffusion` call them
at ᾱ_t looked up by t.
"""

import numpy as np
import tensorflow as tf

from tfdiffusion import schedules

PREDICTION_TYPES = ("epsilon", "x0", "v")
VARIANCE_TYPES = ("beta_tilde", "beta")  # σ² of a reverse step: β̃_t or β_t (Ho et al. 2020, §3.2)


# -- the algebra in terms of ᾱ ---------------------------------------------------------------
# Each function takes ᾱ as a float64 tensor that broadcasts against the data (a scalar in the
# samplers' loop, [N, 1, ..., 1] from `GaussianDiffusion.alpha_bar`), so that it also holds on a
# respaced subsequence of timesteps; coefficients are formed in float64 and cast once.
def _coefficient(value, x):
    return tf.cast(value, x.dtype)


def x0_from_eps(x_t, eps, alpha_bar):
    """x_0 = (x_t − √(1 − ᾱ) ε) / √ᾱ, eq. 4 solved for x_0."""
    return (x_t - _coefficient(tf.sqrt(1.0 - alpha_bar), x_t) * eps) / _coefficient(tf.sqrt(alpha_bar), x_t)


def eps_from_x0(x_t, x0, alpha_bar):
    """ε = (x_t − √ᾱ x_0) / √(1 − ᾱ), eq. 4 solved for ε."""
    return (x_t - _coefficient(tf.sqrt(alpha_bar), x_t) * x0) / _coefficient(tf.sqrt(1.0 - alpha_bar), x_t)


def v_from_x0_eps(x0, eps, alpha_bar):
    """v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022, §4)."""
    return _coefficient(tf.sqrt(alpha_bar), x0) * eps - _coefficient(tf.sqrt(1.0 - alpha_bar), x0) * x0


def x0_from_v(x_t, v, alpha_bar):
    """x_0 = √ᾱ x_t − √(1 − ᾱ) v."""
    return _coefficient(tf.sqrt(alpha_bar), x_t) * x_t - _coefficient(tf.sqrt(1.0 - alpha_bar), x_t) * v


def eps_from_v(x_t, v, alpha_bar):
    """ε = √(1 − ᾱ) x_t + √ᾱ v."""
    return _coefficient(tf.sqrt(1.0 - alpha_bar), x_t) * x_t + _coefficient(tf.sqrt(alpha_bar), x_t) * v


def x0_and_eps(x_t, prediction, alpha_bar, prediction_type):
    """(x̂_0, ε̂) from a network's prediction of type "epsilon", "x0" or "v", each formed directly.

    A predicted ε or x_0 is returned as it is and the other is one conversion from it; from v, each
    is one conversion. Nothing goes through a third quantity and back.
    """
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, prediction, alpha_bar), prediction
    if prediction_type == "x0":
        return prediction, eps_from_x0(x_t, prediction, alpha_bar)
    if prediction_type == "v":
        return x0_from_v(x_t, prediction, alpha_bar), eps_from_v(x_t, prediction, alpha_bar)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}. Received: prediction_type={prediction_type!r}")


def reverse_mean_variance(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, variance_type="beta_tilde"):
    """Mean and variance of p_θ(x_prev | x_t) for one reverse step from ᾱ_t to ᾱ_prev.

    μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε_θ) / √α_t (eq. 11) with α_t = ᾱ_t/ᾱ_prev, which makes the
    step exact on a respaced chain (Nichol & Dhariwal 2021, §4); into the data (ᾱ_prev = 1) eq. 11
    is x̂_0 itself (Algorithm 2's last line), which is returned as given. σ² is β̃_t =
    β_t (1 − ᾱ_prev)/(1 − ᾱ_t) ("beta_tilde", eq. 7) or β_t ("beta"), §3.2.

    Returns:
      (mean of x_t's dtype, variance as float64 of ᾱ's shape).
    """
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1.0 - alpha_t
    mean = (x_t - _coefficient(beta_t / tf.sqrt(1.0 - alpha_bar_t), x_t) * eps) / _coefficient(tf.sqrt(alpha_t), x_t)
    mean = tf.where(alpha_bar_prev >= 1.0, x0, mean)
    if variance_type == "beta_tilde":
        variance = beta_t * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    elif variance_type == "beta":
        variance = beta_t
    else:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}. Received: variance_type={variance_type!r}")
    return mean, variance


class GaussianDiffusion:
    """The forward process q(x_{1:T} | x_0) and the Gaussian reverse-step algebra.

    Args:
      betas: the schedule β (1-D, every value in (0, 1)), e.g. from
        `schedules.make_betas("linear", 400)`.

    Example:
      >>> diffusion = GaussianDiffusion(schedules.make_betas("linear", 400))
      >>> x_t = diffusion.q_sample(x0, t, noise)

    References:
      Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models".
      Salimans & Ho 2022, "Progressive Distillation" (v-prediction).
    """

    def __init__(self, betas):
        betas = schedules.validate_betas(betas)
        self.num_timesteps = int(betas.shape[0])
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # eq. 7
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0 would give log 0; DDPM's code clips it to β̃_1 (a one-step chain has only β̃_0).
        self._first_variance = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(self._first_variance, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

    # -- serialisation -------------------------------------------------------------------
    def get_config(self):
        return {"betas": self.betas.tolist()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"GaussianDiffusion(T={self.num_timesteps}, ᾱ_T={self.alphas_cumprod[-1]:.3g})"

    # -- helpers -------------------------------------------------------------------------
    def _extract(self, table, t, x):
        """table[t] shaped to broadcast against x ([N] → [N, 1, ..., 1])."""
        x = tf.convert_to_tensor(x)
        values = tf.gather(tf.constant(table, dtype=x.dtype), tf.cast(t, tf.int32))
        return tf.reshape(values, tf.concat([tf.shape(values), tf.ones([tf.rank(x) - 1], tf.int32)], 0))

    def alpha_bar(self, t, x):
        """ᾱ_t as float64 [N, 1, ..., 1], to broadcast against x; t = −1 gives ᾱ_{−1} = 1."""
        table = tf.constant(np.append(1.0, self.alphas_cumprod), tf.float64)
        values = tf.gather(table, tf.cast(t, tf.int32) + 1)
        # A static [?, 1, ..., 1]: with a shape grappler cannot see, its arithmetic optimiser
        # regroups the broadcasts of the samplers' step (another rounding).
        return tf.reshape(values, [-1] + [1] * (tf.convert_to_tensor(x).shape.rank - 1))

    # -- forward process -----------------------------------------------------------------
    def q_mean_variance(self, x0, t):
        """Mean, variance and log-variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (eq. 4)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = self._extract(1.0 - self.alphas_cumprod, t, x0)
        log_variance = self._extract(np.log(1.0 - self.alphas_cumprod), t, x0)
        return mean, variance, log_variance

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0) (eq. 4)."""
        x0 = tf.convert_to_tensor(x0)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_step(self, x_prev, t, noise):
        """One forward step x_t = √(1 − β_t) x_{t−1} + √β_t ε, a draw from q(x_t | x_{t−1}) (eq. 2)."""
        x_prev = tf.convert_to_tensor(x_prev)
        return self._extract(np.sqrt(self.alphas), t, x_prev) * x_prev + self._extract(np.sqrt(self.betas), t, x_prev) * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0) (eqs. 6–7)."""
        x_t = tf.convert_to_tensor(x_t)
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- parameterisations (the module's functions at ᾱ_t) ------------------------------------
    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, eq. 4 solved for x_0."""
        x_t = tf.convert_to_tensor(x_t)
        return x0_from_eps(x_t, eps, self.alpha_bar(t, x_t))

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t), eq. 4 solved for ε."""
        x_t = tf.convert_to_tensor(x_t)
        return eps_from_x0(x_t, x0, self.alpha_bar(t, x_t))

    def get_v(self, x0, t, eps):
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4)."""
        x0 = tf.convert_to_tensor(x0)
        return v_from_x0_eps(x0, eps, self.alpha_bar(t, x0))

    def predict_eps_from_v(self, x_t, t, v):
        """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
        x_t = tf.convert_to_tensor(x_t)
        return eps_from_v(x_t, v, self.alpha_bar(t, x_t))

    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
        x_t = tf.convert_to_tensor(x_t)
        return x0_from_v(x_t, v, self.alpha_bar(t, x_t))

    def x0_and_eps(self, x_t, t, prediction, prediction_type):
        """(x̂_0, ε̂) at timesteps t from a prediction of `prediction_type` (see `x0_and_eps`)."""
        x_t = tf.convert_to_tensor(x_t)
        return x0_and_eps(x_t, prediction, self.alpha_bar(t, x_t), prediction_type)

    def score_from_eps(self, eps, t):
        """∇_x log q(x_t) ≈ −ε / √(1 − ᾱ_t) (the score connection, Song et al. 2021)."""
        return -eps / _coefficient(tf.sqrt(1.0 - self.alpha_bar(t, eps)), eps)

    # -- reverse process -----------------------------------------------------------------
    def p_mean_variance(self, eps, x_t, t, *, variance_type="beta_tilde", clip_denoised=False):
        """Mean and variance of p_θ(x_{t−1} | x_t) given the predicted noise ε_θ(x_t, t).

        The mean and σ² are `reverse_mean_variance` from ᾱ_t to ᾱ_{t−1}, the formula of the
        samplers' DDPM step. At t = 0, where σ² is 0 (β̃_0) or β_0, DDPM's code uses β̃_1 so that
        log σ² is finite: the log-variance there is log β̃_1, and "beta"'s variance is β̃_1.

        Returns:
          (mean, variance, log_variance, pred_x0).
        """
        x_t = tf.convert_to_tensor(x_t)
        alpha_bar_t, alpha_bar_prev = self.alpha_bar(t, x_t), self.alpha_bar(tf.cast(t, tf.int32) - 1, x_t)
        pred_x0 = x0_from_eps(x_t, eps, alpha_bar_t)
        if clip_denoised:
            pred_x0 = tf.clip_by_value(pred_x0, -1.0, 1.0)
            eps = eps_from_x0(x_t, pred_x0, alpha_bar_t)
        mean, variance = reverse_mean_variance(x_t, pred_x0, eps, alpha_bar_t, alpha_bar_prev, variance_type)
        clipped = tf.where(alpha_bar_prev < 1.0, variance, self._first_variance)
        if variance_type == "beta":
            variance = clipped
        return mean, _coefficient(variance, mean), _coefficient(tf.math.log(clipped), mean), pred_x0
