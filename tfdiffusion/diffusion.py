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
"""

import numpy as np
import tensorflow as tf

from tfdiffusion import schedules


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
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # eq. 7
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0 would give log 0; DDPM's code clips it to β̃_1 (a one-step chain has only β̃_0).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
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

    # -- parameterisations ---------------------------------------------------------------
    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, eq. 4 solved for x_0."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t), eq. 4 solved for ε."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0
        ) / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def get_v(self, x0, t, eps):
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4)."""
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * eps - self._extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * x0

    def predict_eps_from_v(self, x_t, t, v):
        """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
        return self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + self._extract(
            self.sqrt_alphas_cumprod, t, x_t
        ) * v

    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
        return self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - self._extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t
        ) * v

    def score_from_eps(self, eps, t):
        """∇_x log q(x_t) ≈ −ε / √(1 − ᾱ_t) (the score connection, Song et al. 2021)."""
        return -eps / self._extract(self.sqrt_one_minus_alphas_cumprod, t, eps)

    # -- reverse process -----------------------------------------------------------------
    def p_mean_variance(self, eps, x_t, t, *, variance_type="beta_tilde", clip_denoised=False):
        """Mean and variance of p_θ(x_{t−1} | x_t) given the predicted noise ε_θ(x_t, t).

        μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε_θ) / √α_t (eq. 11), written as the posterior mean at
        the predicted x_0. σ² is β̃_t ("beta_tilde") or β_t ("beta"), both from §3.2; for
        "beta" the first entry is β̃_1 as in DDPM's code, so that log σ² is finite.

        Returns:
          (mean, variance, log_variance, pred_x0).
        """
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = tf.clip_by_value(pred_x0, -1.0, 1.0)
        mean, variance, log_variance = self.q_posterior_mean_variance(pred_x0, x_t, t)
        if variance_type == "beta":
            large = np.append(self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0], self.betas[1:])
            variance = self._extract(large, t, x_t)
            log_variance = self._extract(np.log(large), t, x_t)
        elif variance_type != "beta_tilde":
            raise ValueError(f"variance_type must be 'beta_tilde' or 'beta'. Received: variance_type={variance_type!r}")
        return mean, variance, log_variance, pred_x0
