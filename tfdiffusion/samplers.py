"""Reverse-process samplers: pure step functions, a registry of solvers and one `tf.while_loop` driver.

The network enters through a denoiser, `denoise_fn(x_t, t, labels) -> (x̂_0, ε̂)`: both predictions at
once, each formed directly from the network's output by its prediction type
(`DiffusionModel.denoise`), so that no step turns ε̂ into x̂_0 or back. Each step function maps tensors
to tensors with no hidden state: it receives x_t, the predictions it needs, the noise levels ᾱ at the
current and at the next (less noisy) timestep of the sequence, and the Gaussian draw it may need. ᾱ
arrives as a float64 scalar so that the coefficients are formed in float64 and cast once.

A sequence of `num_steps` timesteps τ_0 = T−1 > τ_1 > … > τ_{n−1} = 0 is laid out by a spacing
(`timestep_sequence`: uniform in t, uniform in log-SNR, Karras et al.'s σ grid or quadratic); "next"
after τ_{n−1} is t = −1 with ᾱ_{−1} = 1, i.e. the data. On a subsequence the effective α of a step is
ᾱ_τi / ᾱ_τ(i+1), which makes DDPM's step (Ho et al. 2020, eq. 11) exact for the respaced chain
(Nichol & Dhariwal 2021, §4).

The solvers (`SAMPLERS`), in the notation of Lu et al. 2022: α = √ᾱ, σ = √(1 − ᾱ), λ = log(α/σ),
h = λ_next − λ_now, x̂_0 the data prediction:

| name           | method                                                           | order | NFE per step |
|----------------|------------------------------------------------------------------|-------|--------------|
| `ddpm`         | ancestral sampling, Ho et al. 2020, Algorithm 2                  | 1     | 1            |
| `ddim`         | Song et al. 2020, eq. 12 (η = 0: the probability-flow ODE)       | 1     | 1            |
| `dpmpp_2m`     | DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2                   | 2     | 1            |
| `dpmpp_3m`     | DPM-Solver++(3M), the third-order multistep data-prediction solver| 3    | 1            |
| `unipc`        | UniPC-2 with B(h) = e^h − 1 ("bh2"), Zhao et al. 2023            | 3     | 1            |
| `unipc3`       | UniPC-3 with B(h) = h ("bh1"), ε̂ form, Zhao et al. 2023 (see the step) | 4 | 1          |
| `heun`         | EDM's Heun, Karras et al. 2022, Algorithm 1 (S_churn = 0)        | 2     | 2, 1 on the last |
| `dpmpp_2m_sde` | SDE-DPM-Solver++(2M), Lu et al. 2022b (stochastic, ancestral)    | 1 (strong) | 1       |

`network_evaluations(sampler, num_steps)` counts the network calls of a request.

A new solver is one pure step function and one `SOLVERS` entry (`Solver`): the driver hands every
solver the same arguments and carries the state the solver asks for.

Noise: x_T ~ N(0, I) is drawn with `tf.random.stateless_normal(seed=[seed, 0])` and the noise of
loop iteration i with `seed=[seed, i + 1]`, outside any XLA cluster. With the loop always run as a
graph (eager calls included) on a batch of unknown size, one seed gives bitwise the same samples
eagerly, in `tf.function`, under XLA networks and after export.

Editing (same driver): image-to-image (SDEdit, Meng et al. 2022) starts from q_sample(x_0, t_s, ε)
with t_s = round(strength·T) − 1 and ε the seed's x_T draw, on the spacing restricted to [0, t_s];
inpainting (RePaint, Lugmayr et al. 2022, Algorithm 1) replaces the known pixels (mask = 1) after
every step by q_sample of the known image at the step's next noise level, and they equal the given
image exactly at the end; `jumps=(j, r)` adds RePaint's resampling (§4.2, `_resampling_loop`).

Validation: `sample` (and `DiffusionModel.generate`) check a request's Python values where a Python
caller enters; the driver `reverse_process` trusts the tensors it is given (the exported signatures
assert on theirs, see `tfdiffusion.export`).
"""

import functools
import typing

import numpy as np
import tensorflow as tf

from tfdiffusion.diffusion import VARIANCE_TYPES, eps_from_x0, reverse_mean_variance

SPACINGS = ("uniform", "logsnr", "karras", "quadratic")
AUTO_SPACING = "auto"  # the default: each solver's own grid, `Solver.spacing`
SPACING_CHOICES = (AUTO_SPACING,) + SPACINGS  # what a request may name
DEFAULT_SPACING = AUTO_SPACING
KARRAS_RHO = 7.0  # ρ of Karras et al. 2022, eq. 5
THIRD_ORDER_MAX_H = 1.0  # the longest step in λ that DPM-Solver++(3M) takes at order 3 (`dpmpp_3m_order`)


# -- step functions ------------------------------------------------------------------------
def _as_dtype(value, x):
    return tf.cast(value, x.dtype)


def ddpm_step(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, noise, variance_type="beta_tilde"):
    """Ancestral step x_{t−1} = μ_θ(x_t, t) + σ_t z (Ho et al. 2020, Algorithm 2).

    μ_θ and σ_t² are `diffusion.reverse_mean_variance` (eq. 11 with α_t = ᾱ_t/ᾱ_prev, x̂_0 into the
    data; σ² = β̃_t or β_t), the formula `GaussianDiffusion.p_mean_variance` uses. Pass `noise = 0`
    for the last step.
    """
    mean, variance = reverse_mean_variance(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, variance_type)
    return mean + _as_dtype(tf.sqrt(variance), x_t) * noise


def ddim_step(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, eta, noise):
    """x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z (Song et al. 2020, eq. 12).

    σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev) (eq. 16): η = 0 is the
    deterministic DDIM, η = 1 the DDPM posterior variance.
    """
    eta = tf.cast(eta, tf.float64)
    sigma = eta * tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))
    direction = _as_dtype(tf.sqrt(tf.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)), x_t) * eps
    return _as_dtype(tf.sqrt(alpha_bar_prev), x_t) * x0 + direction + _as_dtype(sigma, x_t) * noise


def half_log_snr(alpha_bar):
    """λ = log(α/σ) = ½ log(ᾱ / (1 − ᾱ)) (Lu et al. 2022)."""
    return 0.5 * (tf.math.log(alpha_bar) - tf.math.log1p(-alpha_bar))


def dpmpp_2m_step(x_t, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, is_first):
    """One step of DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), data-prediction form.

    h = λ_prev − λ_t; D = x̂_0 on the first step, else (1 + 1/2r) x̂_0 − (1/2r) x̂_0^prev with
    r = h_prev/h; x_prev = (σ_prev/σ_t) x_t − α_prev (e^{−h} − 1) D. The step into the
    data (ᾱ_prev = 1, σ_prev = 0) returns x̂_0 itself.

    Returns:
      (x_prev, h): h is the `previous_h` of the next step.
    """
    final = alpha_bar_prev >= 1.0
    safe_prev = tf.where(final, alpha_bar_t, alpha_bar_prev)  # keeps the unused branch finite
    h = half_log_snr(safe_prev) - half_log_snr(alpha_bar_t)
    r = previous_h / h
    second_order = _as_dtype(1.0 + 0.5 / r, x0) * x0 - _as_dtype(0.5 / r, x0) * previous_x0
    denoised = tf.where(is_first, x0, second_order)
    x_prev = _as_dtype(tf.sqrt((1.0 - safe_prev) / (1.0 - alpha_bar_t)), x_t) * x_t - _as_dtype(
        tf.sqrt(safe_prev) * tf.math.expm1(-h), x_t
    ) * denoised
    return tf.where(final, x0, x_prev), h


def _combine(coefficients, tensors):
    """Σ c_k x_k with float64 scalar coefficients cast once to the tensors' dtype."""
    return tf.add_n([_as_dtype(c, x) * x for c, x in zip(coefficients, tensors)])


def _exponential_integrator(alpha_bar_t, alpha_bar_prev):
    """(σ_prev/σ_t, α_prev, h, φ_1 = e^{−h} − 1) of a data-prediction step; ᾱ_prev = 1 is made finite.

    The exact solution of the probability-flow ODE from t to prev is
    x_prev = (σ_prev/σ_t) x_t + σ_prev ∫_{λ_t}^{λ_prev} e^λ x̂_0(λ) dλ (Lu et al. 2022b, eq. 8);
    every λ-solver here is a quadrature of that integral.
    """
    safe_prev = tf.where(alpha_bar_prev >= 1.0, alpha_bar_t, alpha_bar_prev)
    h = half_log_snr(safe_prev) - half_log_snr(alpha_bar_t)
    return tf.sqrt((1.0 - safe_prev) / (1.0 - alpha_bar_t)), tf.sqrt(safe_prev), h, tf.math.expm1(-h)


def dpmpp_3m_step(x_t, x0, previous_x0s, alpha_bar_t, alpha_bar_prev, previous_hs, order):
    """One step of DPM-Solver++(3M): eq. 8's integral with x̂_0(λ) interpolated through the last three x̂_0.

    With u = λ − λ_t, x̂_0(λ) ≈ m_0 + u m' + u²/2 m'' integrates exactly to
    x_prev = (σ_prev/σ_t) x_t − α_prev φ_1 m_0 + α_prev φ_2 D_1 − 2 α_prev φ_3 D_2, where
    φ_2 = φ_1/h + 1 and φ_3 = φ_2/h − ½ (the multistep third-order update of Lu et al. 2022a,
    §3.3/App. B, in the data-prediction form of Lu et al. 2022b, §4.2). D_1 ≈ h m' and
    D_2 ≈ h² m''/2 are the Newton divided differences of m_0 = x̂_0, m_1 and m_2 taken r_1 h and
    (r_1 + r_2) h before (r_k = h_k/h):
    D_1 = d_0 + r_1/(r_1 + r_2) (d_0 − d_1), D_2 = (d_0 − d_1)/(r_1 + r_2), with
    d_0 = (m_0 − m_1)/r_1 and d_1 = (m_1 − m_2)/r_2. `order` 2 drops D_2 (D_1 = d_0), `order` 1 both.
    The step into the data returns x̂_0.

    Args:
      previous_x0s: (m_1, m_2), the x̂_0 of the previous two steps.
      previous_hs: (h_1, h_2), their step sizes in λ.
      order: int32 scalar 1, 2 or 3.

    Returns:
      (x_prev, h).
    """
    (previous_x0, earlier_x0), (h_1, h_2) = previous_x0s, previous_hs
    ratio, alpha_prev, h, phi_1 = _exponential_integrator(alpha_bar_t, alpha_bar_prev)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    r_1, r_2 = h_1 / h, h_2 / h
    # The coefficients of m_0, m_1, m_2 for each order, from D_1 and D_2 written out.
    second = alpha_prev * phi_2 / r_1
    weight_0 = alpha_prev * (phi_2 * (1.0 + r_1 / (r_1 + r_2)) - 2.0 * phi_3 / (r_1 + r_2))  # of d_0
    weight_1 = alpha_prev * (2.0 * phi_3 - phi_2 * r_1) / (r_1 + r_2)  # of d_1
    third = (weight_0 / r_1, -weight_0 / r_1 + weight_1 / r_2, -weight_1 / r_2)
    zero = tf.zeros_like(h)
    c_0 = -alpha_prev * phi_1 + tf.where(order == 3, third[0], tf.where(order == 2, second, zero))
    c_1 = tf.where(order == 3, third[1], tf.where(order == 2, -second, zero))
    c_2 = tf.where(order == 3, third[2], zero)
    x_prev = _combine((ratio, c_0, c_1, c_2), (x_t, x0, previous_x0, earlier_x0))
    return tf.where(alpha_bar_prev >= 1.0, x0, x_prev), h


def multistep_order(index, num_steps, highest):
    """The order of a multistep solver's step `index` of `num_steps`, at most `highest`.

    Warm-up from order 1 (step i has i earlier points), and orders 2 and 1 on the last two steps (Lu et
    al. 2022b's `lower_order_final`: the last step is into the data, where only x̂_0 is finite, and the
    one before lands on t = 0).
    """
    return tf.minimum(tf.minimum(index + 1, num_steps - index), highest)


def unipc_coefficients(h, r, order):
    """(ρ_0, ρ_1): UniC-p's weights of D_1 and of m_t − m_0 for p = `order` ∈ {1, 2}, B(h) = e^h − 1.

    Zhao et al. 2023 (§3.2; data-prediction form, "bh2"): with ĥ = −h, φ_1 = e^ĥ − 1 = B(ĥ),
    g_1 = φ_1/ĥ − 1 and g_2 = g_1/ĥ − ½, the weights solve R ρ = b with R = [[1, 1], [r, 1]] and
    b_k = k! g_k / B(ĥ); UniC-1 takes ρ = ½ (the trapezoidal rule, b_1's limit as h → 0).
    """
    h_hat = -h
    phi_1 = tf.math.expm1(h_hat)
    g_1 = phi_1 / h_hat - 1.0
    g_2 = g_1 / h_hat - 0.5
    b_1, b_2 = g_1 / phi_1, 2.0 * g_2 / phi_1
    rho_0 = (b_1 - b_2) / (1.0 - r)
    return tf.where(order == 2, rho_0, tf.zeros_like(h)), tf.where(order == 2, b_1 - rho_0, 0.5 * tf.ones_like(h))


def _unic_correct(x_base, x0, history, alpha_bar_t, order):
    """UniC (Zhao et al. 2023, Algorithm 1): x^c_t from the corrected previous point x_base, its x̂_0 = m_0,
    the one before (m_{−1}) and the fresh x̂_0 at t (m_t), at no extra network evaluation."""
    previous_x0, earlier_x0, alpha_bar_base, alpha_bar_earlier = history
    ratio, alpha_t, h, phi_1 = _exponential_integrator(alpha_bar_base, alpha_bar_t)
    r = (half_log_snr(alpha_bar_earlier) - half_log_snr(alpha_bar_base)) / h  # < 0: a point behind
    rho_0, rho_1 = unipc_coefficients(h, r, order)
    # x^c = ratio·x_base − α φ_1 m_0 − α B(ĥ) (ρ_0 (m_{−1} − m_0)/r + ρ_1 (m_t − m_0)), B(ĥ) = φ_1.
    scale = -alpha_t * phi_1
    d_0 = tf.where(order == 2, scale * rho_0 / r, tf.zeros_like(h))
    return _combine((ratio, scale - scale * rho_1 - d_0, scale * rho_1, d_0), (x_base, previous_x0, x0, earlier_x0))


def unipc_step(x_t, x0, state, alpha_bar_t, alpha_bar_prev, index, num_steps):
    """One step of UniPC-2 with B(h) = e^h − 1 (Zhao et al. 2023, Algorithms 1–2, data prediction).

    The fresh x̂_0 at x_t first corrects x_t itself (UniC of the previous step's order, none on the
    first step), then UniP-p predicts the next point from the corrected x^c_t:
    x_next = (σ_next/σ_t) x^c_t − α_next φ_1 m_0 − α_next B(h) ½ D_1 with D_1 = (m_{−1} − m_0)/r,
    r = (λ_{−1} − λ_t)/h (UniP-2; UniP-1 drops D_1). Order min(2, index + 1, steps left): the first
    step has no history, and the step into the data (σ = 0) returns x̂_0. The model is evaluated at the
    uncorrected point only, so UniC costs no evaluation.

    Args:
      state: (x^c of the previous point, its x̂_0, the x̂_0 before, their ᾱ).
      index, num_steps: this step's index and the number of steps (int32 scalars).

    Returns:
      (x_next, state).
    """
    x_base, previous_x0, earlier_x0, alpha_bar_base, alpha_bar_earlier = state
    corrected = _unic_correct(x_base, x0, (previous_x0, earlier_x0, alpha_bar_base, alpha_bar_earlier), alpha_bar_t,
                              tf.minimum(index, 2))
    x_c = tf.where(index > 0, corrected, x_t)
    order = multistep_order(index, num_steps, 2)
    ratio, alpha_next, h, phi_1 = _exponential_integrator(alpha_bar_t, alpha_bar_prev)
    r = (half_log_snr(alpha_bar_base) - half_log_snr(alpha_bar_t)) / h
    first = -alpha_next * phi_1
    d_1 = tf.where(order == 2, first * 0.5 / r, tf.zeros_like(h))  # −α B(h) ½ D_1, B(h) = φ_1
    x_next = _combine((ratio, first - d_1, d_1), (x_c, x0, previous_x0))
    x_next = tf.where(alpha_bar_prev >= 1.0, x0, x_next)
    return x_next, (x_c, x0, previous_x0, alpha_bar_t, alpha_bar_base)


def unipc_bh1_targets(h):
    """(b_1, b_2, b_3): the right-hand side of UniPC's order conditions with B(h) = h ("bh1").

    Zhao et al. 2023, Theorem 3.1 (noise-prediction form): b_k = k! g_k / B(h) with
    g_1 = (e^h − 1)/h − 1 and g_{k+1} = g_k/h − 1/(k + 1)!; the weights ρ of the differences D_k
    solve Σ_k ρ_k r_k^(j−1) = b_j.
    """
    g_1 = tf.math.expm1(h) / h - 1.0
    g_2 = g_1 / h - 0.5
    g_3 = g_2 / h - 1.0 / 6.0
    return g_1 / h, 2.0 * g_2 / h, 6.0 * g_3 / h


def _vandermonde_weights(nodes, targets):
    """ρ with Σ_k ρ_k nodes_k^j = targets_j for j < len(nodes) ∈ {2, 3}: ρ_k = L(ℓ_k), ℓ_k the Lagrange basis."""
    if len(nodes) == 2:
        (a, b), (t_1, t_2) = nodes, targets[:2]
        return (t_2 - b * t_1) / (a - b), (t_2 - a * t_1) / (b - a)
    weights = []
    for k, node in enumerate(nodes):
        a, b = (n for j, n in enumerate(nodes) if j != k)
        weights.append((targets[2] - (a + b) * targets[1] + a * b * targets[0]) / ((node - a) * (node - b)))
    return tuple(weights)


def _noise_form_update(x_start, eps_start, differences, alpha_bar_start, alpha_bar_end, h, weights):
    """x_end = (α_end/α_start) x_start − σ_end (e^h − 1) ε_start − σ_end B(h) Σ_k ρ_k D_k, B(h) = h.

    UniPC's update in the noise-prediction form (Zhao et al. 2023, eq. 8 / Algorithms 2–3), each
    D_k = (ε_k − ε_start)/r_k given as (ε_k, r_k) and weighted by ρ_k.
    """
    sigma_end = tf.sqrt(1.0 - alpha_bar_end)
    coefficients = [tf.sqrt(alpha_bar_end / alpha_bar_start), -sigma_end * tf.math.expm1(h)]
    tensors = [x_start, eps_start]
    for (eps_k, r_k), rho_k in zip(differences, weights):
        coefficients += [-sigma_end * h * rho_k / r_k, sigma_end * h * rho_k / r_k]
        tensors += [eps_k, eps_start]
    return _combine(coefficients, tensors)


def unipc3_step(x_t, x0, eps, state, alpha_bar_t, alpha_bar_next, index, num_steps):
    """One step of UniPC-3 (Zhao et al. 2023, Algorithms 1–3) in the noise-prediction form with B(h) = h.

    The paper's setting for unconditional models (order 3, "bh1"), with the network's ε̂ as the
    model output. The fresh ε̂_t at the (uncorrected) point x_t first corrects it: UniC-p (p the
    previous step's order) re-runs the previous step from its corrected start x^c_s with the nodes
    r_k = (λ_{s−k} − λ_s)/h of the earlier points and r_p = 1 of ε̂_t itself, ρ solving the order
    conditions (`unipc_bh1_targets`; ρ = ½ for p = 1), at no extra network evaluation. UniP-p then
    predicts the next point from x^c_t: ρ = ½ for p = 2, the 2×2 conditions for p = 3. Order
    min(3, index + 1, steps left): no history on the first steps, and lower orders on the last two,
    the step into the data (σ = 0) returning x̂_0.

    One departure from the paper: from x^c_t on, the point's ε̂ is the one at x^c_t with the
    network's x̂_0 held, ε̂^c = (x^c_t − α_t x̂_0)/σ_t (`eps_from_x0`), not the ε̂ evaluated at x_t.
    In the noise form a base point x^c and an ε̂ that disagree carry their difference into the next
    point with the factor α_next/α_t = e^h σ_next/σ_t, growing ~e^5 over the noisy half of λ; with
    x̂_0 held it is σ_next/σ_t < 1, as in the data-prediction form. Both keep the method's order (the
    exact ε̂ of the analytic toys); on the MNIST model the paper's version diverges (FID 171 against
    18.1 at 10 quadratic-grid steps: docs/RESULTS.md).

    Args:
      state: (x^c_s, (ε̂_s, ε̂_{s−1}, ε̂_{s−2}), (ᾱ_s, ᾱ_{s−1}, ᾱ_{s−2})): the previous point's
        corrected value, and the ε̂ (at the corrected points) and ᾱ of the last three points.
      index, num_steps: this step's index and the number of steps (int32 scalars).

    Returns:
      (x_next, state).
    """
    x_base, (eps_1, eps_2, eps_3), (alpha_bar_1, alpha_bar_2, alpha_bar_3) = state
    lam_t, lam_1, lam_2, lam_3 = (half_log_snr(a) for a in (alpha_bar_t, alpha_bar_1, alpha_bar_2, alpha_bar_3))
    zero = tf.zeros_like(lam_t)

    # UniC-p from the previous point s (λ_1) to t, p = min(3, index, steps left + 1) its predictor's order.
    h = lam_t - lam_1
    r_1, r_2 = (lam_2 - lam_1) / h, (lam_3 - lam_1) / h
    b = unipc_bh1_targets(h)
    order = multistep_order(index - 1, num_steps, 3)  # the previous step's
    two, three = _vandermonde_weights((r_1, 1.0), b), _vandermonde_weights((r_1, r_2, 1.0), b)
    rho_1 = tf.where(order == 3, three[0], tf.where(order == 2, two[0], zero))
    rho_2 = tf.where(order == 3, three[1], zero)
    rho_t = tf.where(order == 3, three[2], tf.where(order == 2, two[1], 0.5 + zero))
    corrected = _noise_form_update(x_base, eps_1, ((eps_2, r_1), (eps_3, r_2), (eps, 1.0)), alpha_bar_1,
                                   alpha_bar_t, h, (rho_1, rho_2, rho_t))
    x_c = tf.where(index > 0, corrected, x_t)
    eps = tf.where(index > 0, eps_from_x0(x_c, x0, alpha_bar_t), eps)

    # UniP-p from t to the next point.
    final = alpha_bar_next >= 1.0
    safe_next = tf.where(final, 0.5 * alpha_bar_t, alpha_bar_next)  # keeps the unused branch finite
    h = half_log_snr(safe_next) - lam_t
    r_1, r_2 = (lam_1 - lam_t) / h, (lam_2 - lam_t) / h
    order = multistep_order(index, num_steps, 3)
    three = _vandermonde_weights((r_1, r_2), unipc_bh1_targets(h))
    rho_1 = tf.where(order == 3, three[0], tf.where(order == 2, 0.5 + zero, zero))
    rho_2 = tf.where(order == 3, three[1], zero)
    x_next = _noise_form_update(x_c, eps, ((eps_1, r_1), (eps_2, r_2)), alpha_bar_t, safe_next, h, (rho_1, rho_2))
    return tf.where(final, x0, x_next), (x_c, (eps, eps_1, eps_2), (alpha_bar_t, alpha_bar_1, alpha_bar_2))


def heun_step(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, state):
    """Half a step of EDM's Heun sampler (Karras et al. 2022, Algorithm 1, S_churn = 0), one evaluation each.

    In EDM's variables x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) the probability-flow ODE is dx̄/dσ = ε̂
    (their eq. 4 with s = 1; d_i = (x̄ − D(x̄; σ))/σ = ε̂). The driver calls this twice per step
    (`heun_timesteps`): the predictor at σ_i, x̄' = x̄_i + (σ_{i+1} − σ_i) ε̂_i (lines 5–6, an Euler =
    DDIM step), and the corrector at σ_{i+1} with the ε̂' of x̄',
    x̄_{i+1} = x̄_i + (σ_{i+1} − σ_i)(ε̂_i + ε̂')/2 (lines 7–8). The step into σ = 0 is the Euler step,
    x̂_0 itself (line 8's condition σ_{i+1} ≠ 0). Written in x = √ᾱ x̄ with float64 coefficients.

    Args:
      state: (x_i, ε̂_i, ᾱ_i, correcting): the step's start and whether this call corrects.

    Returns:
      (x, state).
    """
    x_start, eps_start, alpha_bar_start, correcting = state
    sigma_t = tf.sqrt((1.0 - alpha_bar_t) / alpha_bar_t)
    final = alpha_bar_prev >= 1.0
    # Predictor: √ᾱ_next (x_t/√ᾱ_t + (σ_next − σ_t) ε̂).
    euler = _combine((tf.sqrt(alpha_bar_prev / alpha_bar_t), tf.sqrt(1.0 - alpha_bar_prev) - tf.sqrt(alpha_bar_prev)
                      * sigma_t), (x_t, eps))
    # Corrector: √ᾱ_t (x_i/√ᾱ_i + (σ_t − σ_i)(ε̂_i + ε̂)/2), σ_t being σ_{i+1} here.
    sigma_start = tf.sqrt((1.0 - alpha_bar_start) / alpha_bar_start)
    half_slope = 0.5 * tf.sqrt(alpha_bar_t) * (sigma_t - sigma_start)
    corrected = _combine((tf.sqrt(alpha_bar_t / alpha_bar_start), half_slope, half_slope), (x_start, eps_start, eps))
    x_next = tf.where(correcting, corrected, tf.where(final, x0, euler))
    state = (x_t, eps, alpha_bar_t, tf.logical_not(correcting))
    return x_next, state


def dpmpp_2m_sde_step(x_t, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, is_first, noise):
    """One step of SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. B.3), the reverse SDE in data-prediction form.

    x_prev = (σ_prev/σ_t) e^{−h} x_t + α_prev (1 − e^{−2h}) D + σ_prev √(1 − e^{−2h}) z, with D as in
    `dpmpp_2m_step` (x̂_0 on the first step). Its first-order step is DDPM's ancestral step with
    σ² = β̃ (the noise variance σ_prev²(1 − e^{−2h}) equals β̃ of the respaced chain). The step into
    the data returns x̂_0.

    Returns:
      (x_prev, h).
    """
    ratio, alpha_prev, h, _ = _exponential_integrator(alpha_bar_t, alpha_bar_prev)
    r = previous_h / h
    decay = -tf.math.expm1(-2.0 * h)  # 1 − e^{−2h}
    denoised_weight = tf.where(is_first, tf.zeros_like(h), 0.5 / r)
    x_prev = _combine((ratio * tf.exp(-h), alpha_prev * decay * (1.0 + denoised_weight),
                       -alpha_prev * decay * denoised_weight, ratio * tf.sqrt(1.0 - alpha_bar_t) * tf.sqrt(decay)),
                      (x_t, x0, previous_x0, noise))
    return tf.where(alpha_bar_prev >= 1.0, x0, x_prev), h


def heun_timesteps(timesteps):
    """The loop's timesteps for Heun: τ_0, then τ_1, …, τ_{n−1} twice each (corrector, next predictor)."""
    return tf.concat([timesteps[:1], tf.repeat(timesteps[1:], 2)], 0)


# -- the registry ----------------------------------------------------------------------------
class Solver(typing.NamedTuple):
    """A sampler as the driver sees it.

    step: `(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options) -> (x_prev, state)`,
      pure; `noise` is this step's draw (zero on the step into the data) or None when not
      `stochastic`; `options` holds the request's `eta` (float32 tensor) and `ddpm_variance`, and
      the loop's `index` and `num_steps` (int32 scalars: this network evaluation's index, and their
      number).
    stochastic: draw the noise of loop iteration i from the seed pair [seed, i + 1].
    initial_state: `x_T -> state` (a nest of tensors the loop carries), `()` by default.
    loop_timesteps: `timesteps -> the timesteps of the loop's network evaluations` (the identity by
      default; `heun_timesteps` evaluates twice per step).
    spacing: the grid of a request with spacing="auto" (one of `SPACINGS`).
    """

    step: typing.Callable
    stochastic: bool = False
    initial_state: typing.Callable = lambda x_T: ()
    loop_timesteps: typing.Callable = lambda timesteps: timesteps
    spacing: str = "uniform"


def noise_draw(shape, seed, index, dtype=tf.float32):
    """The sampler's noise stream: draw 0 is x_T, draw i + 1 the noise of loop iteration i (module docstring)."""
    return tf.random.stateless_normal(shape, tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)]), dtype=dtype)


def _ddpm(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return ddpm_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, options["ddpm_variance"]), state


def _ddim(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return ddim_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, options["eta"], noise), state


def _dpmpp_2m(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    previous_x0, previous_h, is_first = state
    x, h = dpmpp_2m_step(x, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, is_first)
    return x, (x0, h, tf.constant(False))


def dpmpp_3m_order(index, num_steps, alpha_bar_t, alpha_bar_prev):
    """The order of DPM-Solver++(3M)'s step `index` of `num_steps`: 1, 2 or 3.

    `multistep_order` (order 3 into t = 0 at 10 uniform steps took the MNIST model's FID from 18.2
    to 82), and order 2 wherever the step is longer than `THIRD_ORDER_MAX_H` in λ. Lu et al.'s code
    lowers the order "below 10 steps", which on its usual grid (T = 1000, λ from −5 to 4.6) is where λ-uniform steps
    are longer than about 1.1; a bound on h says nearly the same, on any schedule and spacing (the
    bound 1 is a round number the measurements bracket). Beyond it D_2, the curvature of x̂_0(λ)
    taken from points up to 2h back, extrapolates more than it interpolates. Measured
    (docs/RESULTS.md, "DPM-Solver++(3M)"): on the MNIST model order 2 on the longer steps takes 3M's
    10-step FID from 20.6 to 16.9 (logsnr) and 21.1 to 15.6 (Karras); on the exact Gaussian, 5
    λ-uniform steps at order 3 erred by a cancellation 12× below any other solver there; 3M's error
    now falls from 5 to 50 steps. UniPC-3 needs no bound: its corrector's third-order term interpolates.
    """
    order = multistep_order(index, num_steps, 3)
    _, _, h, _ = _exponential_integrator(alpha_bar_t, alpha_bar_prev)
    return tf.where(h > THIRD_ORDER_MAX_H, tf.minimum(order, 2), order)


def _dpmpp_3m(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    (previous_x0, earlier_x0), (h_1, h_2) = state
    order = dpmpp_3m_order(options["index"], options["num_steps"], alpha_bar_t, alpha_bar_prev)
    x, h = dpmpp_3m_step(x, x0, (previous_x0, earlier_x0), alpha_bar_t, alpha_bar_prev, (h_1, h_2), order)
    return x, ((x0, previous_x0), (h, h_1))


def _unipc(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return unipc_step(x, x0, state, alpha_bar_t, alpha_bar_prev, options["index"], options["num_steps"])


def _unipc3(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return unipc3_step(x, x0, eps, state, alpha_bar_t, alpha_bar_prev, options["index"], options["num_steps"])


def _heun(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return heun_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, state)


def _dpmpp_2m_sde(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    previous_x0, previous_h, is_first = state
    x, h = dpmpp_2m_sde_step(x, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, is_first, noise)
    return x, (x0, h, tf.constant(False))


def _multistep_state(x_T):
    return tf.zeros_like(x_T), tf.constant(1.0, tf.float64), tf.constant(True)


# `Solver.spacing`, what the default spacing "auto" runs: each solver on its own paper's grid, where it
# measured best or close to it (docs/RESULTS.md, "Default spacing"). The λ-solvers take λ-uniform steps
# (Lu et al. 2022b recommend them for pixel models): on the analytic toys that is their best spacing over
# 5-50 NFE, and for DPM-Solver++(2M) and UniPC the only one on which the error falls from 5 to 10 to 20 to
# 50 steps (2M on the uniform grid is 27× worse at 20 steps than at 10); on MNIST at 20 NFE it is within 7%
# of their best spacing. DDPM and DDIM keep their papers' uniform steps, the best on MNIST by 14-27%;
# Heun keeps EDM's σ grid (Karras et al. 2022).
SOLVERS = {
    "ddpm": Solver(_ddpm, stochastic=True),
    "ddim": Solver(_ddim, stochastic=True),
    "dpmpp_2m": Solver(_dpmpp_2m, initial_state=_multistep_state, spacing="logsnr"),
    "dpmpp_3m": Solver(_dpmpp_3m, initial_state=lambda x_T: ((tf.zeros_like(x_T), tf.zeros_like(x_T)),
                                                            (tf.constant(1.0, tf.float64), tf.constant(1.0, tf.float64))),
                       spacing="logsnr"),
    "unipc": Solver(_unipc, initial_state=lambda x_T: (tf.zeros_like(x_T), tf.zeros_like(x_T), tf.zeros_like(x_T),
                                                      tf.constant(0.5, tf.float64), tf.constant(0.5, tf.float64)),
                    spacing="logsnr"),
    "unipc3": Solver(_unipc3, initial_state=lambda x_T: (tf.zeros_like(x_T), (tf.zeros_like(x_T),) * 3,
                                                        tuple(tf.constant(a, tf.float64) for a in (0.5, 0.25, 0.125))),
                     spacing="logsnr"),
    "heun": Solver(_heun, initial_state=lambda x_T: (tf.zeros_like(x_T), tf.zeros_like(x_T),
                                                    tf.constant(0.5, tf.float64), tf.constant(False)),
                   loop_timesteps=heun_timesteps, spacing="karras"),
    "dpmpp_2m_sde": Solver(_dpmpp_2m_sde, stochastic=True, initial_state=_multistep_state, spacing="logsnr"),
}
SAMPLERS = tuple(SOLVERS)  # the built-in solvers' names


def network_evaluations(sampler, num_steps):
    """How many times `sampler` calls the network for `num_steps` steps (Heun: 2 per step but the last)."""
    if sampler == "heun":
        return 2 * num_steps - 1
    return num_steps


# -- timestep spacings -------------------------------------------------------------------------
def _uniform_spacing(num_steps, top, log_snr):
    """round(linspace(top, 0, n)): distinct for n ≤ top + 1, since the spacing is ≥ 1."""
    values = tf.linspace(tf.cast(top, tf.float64), tf.constant(0.0, tf.float64), num_steps)
    return tf.cast(tf.round(values), tf.int32)


def _quadratic_spacing(num_steps, top, log_snr):
    """t_i = top·(1 − i/(n − 1))²: dense near the data."""
    fraction = tf.linspace(tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64), num_steps)
    return _distinct_timesteps(tf.cast(top, tf.float64) * tf.square(fraction), num_steps, top)


def _logsnr_spacing(num_steps, top, log_snr):
    """λ uniform between λ(top) and λ(0)."""
    targets = tf.linspace(tf.gather(log_snr, tf.maximum(top, 0)), log_snr[0], num_steps)
    return _distinct_timesteps(_timesteps_at_log_snr(targets, log_snr), num_steps, top)


def _karras_spacing(num_steps, top, log_snr):
    """σ_i^{1/ρ} uniform between σ(top)^{1/ρ} and σ(0)^{1/ρ} (Karras et al. 2022, eq. 5), σ = e^{−λ}."""
    inverse_rho = 1.0 / KARRAS_RHO
    sigma_max, sigma_min = tf.exp(-tf.gather(log_snr, tf.maximum(top, 0))), tf.exp(-log_snr[0])
    ramp = tf.linspace(sigma_max**inverse_rho, sigma_min**inverse_rho, num_steps)
    targets = -KARRAS_RHO * tf.math.log(ramp)  # λ = −log σ
    return _distinct_timesteps(_timesteps_at_log_snr(targets, log_snr), num_steps, top)


_SPACING_FUNCTIONS = {"uniform": _uniform_spacing, "logsnr": _logsnr_spacing, "karras": _karras_spacing,
                      "quadratic": _quadratic_spacing}


def _timesteps_at_log_snr(targets, log_snr):
    """The fractional t at which λ(t), linear between integers, equals each target (λ strictly decreasing)."""
    last = int(log_snr.shape[0]) - 1
    upper = tf.clip_by_value(tf.searchsorted(-log_snr, -targets, side="left"), 1, last)  # first t: λ(t) ≤ target
    lower = upper - 1
    lambda_lower, lambda_upper = tf.gather(log_snr, lower), tf.gather(log_snr, upper)
    fraction = tf.clip_by_value((lambda_lower - targets) / (lambda_lower - lambda_upper), 0.0, 1.0)
    return tf.cast(lower, tf.float64) + fraction


def _distinct_timesteps(fractional, num_steps, top):
    """Rounds decreasing fractional timesteps to distinct integers from `top` down to 0.

    Each target is rounded (half to even), then clipped to [n − 1 − i, top − i] so that the steps
    before and after it fit, and where two meet (the spacing is denser than the grid, which happens
    near t = 0) the larger ones move up to the next free t: t_i = max_{j ≥ i}(u_j + j) − i.
    """
    index = tf.range(num_steps)
    rounded = tf.cast(tf.round(fractional), tf.int32)
    rounded = tf.minimum(tf.maximum(rounded, num_steps - 1 - index), top - index)
    return tf.scan(tf.maximum, rounded + index, initializer=tf.int32.min, reverse=True) - index


def timestep_sequence(num_steps, num_timesteps, spacing="uniform", alphas_cumprod=None, max_timestep=None):
    """int32 [num_steps]: distinct timesteps from `max_timestep` (default T − 1) down to 0.

    Spacings (`SPACINGS`) place continuous targets, which are then mapped onto the integer grid:

    - "uniform": round(linspace(max_timestep, 0, n)), the spacing every sampler used before (and DDIM's
      "uniform" skip, Song et al. 2020, App. D.2). Its steps are ≥ 1 apart, so it needs no fix-up.
    - "quadratic": t_i = max_timestep·(1 − i/(n − 1))², dense near the data — Song et al. 2020's
      "quadratic" skip, here spanning the whole [0, max_timestep] rather than [0, 0.8 T].
    - "logsnr": λ = ½ log(ᾱ/(1 − ᾱ)) uniform between λ(max_timestep) and λ(0), the spacing Lu et al.
      2022 recommend for pixel models.
    - "karras": σ = √((1 − ᾱ)/ᾱ) with σ^{1/ρ} uniform, ρ = 7 (Karras et al. 2022, eq. 5), between
      σ(max_timestep) and σ(0).

    The λ and σ targets fall between the model's discrete timesteps: each becomes the fractional t at
    which λ(t), linear between neighbouring integers, equals it; then targets are rounded to the
    nearest t. Near t = 0 these spacings are denser than the grid (λ climbs fastest there), so
    rounding alone would repeat timesteps: where two meet, the larger moves up to the next t not yet
    used (`_distinct_timesteps`). The sequence is therefore distinct, strictly decreasing, starts at
    max_timestep and ends at 0 for any 2 ≤ num_steps ≤ max_timestep + 1 (num_steps = max_timestep + 1
    gives every t, whatever the spacing); one step is [max_timestep], zero steps an empty sequence.

    Args:
      num_steps: n, a Python int or an int32 tensor.
      num_timesteps: T of the model.
      spacing: one of `SPACINGS`, or a string tensor (all four are built and one is picked at run time).
      alphas_cumprod: ᾱ_t (float64 [T]); needed by "logsnr" and "karras" (and a string tensor).
      max_timestep: the first timestep (a Python int or an int32 tensor); default T − 1.

    Raises:
      ValueError: an unknown spacing name, or ᾱ missing where the spacing needs it.
    """
    if isinstance(spacing, str) and spacing not in SPACINGS:
        raise ValueError(f"Unknown spacing. Expected one of {SPACINGS}. Received: spacing={spacing!r}")
    if alphas_cumprod is None and not (isinstance(spacing, str) and spacing in ("uniform", "quadratic")):
        raise ValueError(f"spacing={spacing!r} needs alphas_cumprod. Received: alphas_cumprod=None")
    top = num_timesteps - 1 if max_timestep is None else max_timestep
    log_snr = None if alphas_cumprod is None else half_log_snr(tf.constant(alphas_cumprod, tf.float64))
    if num_timesteps == 1:  # only t = 0
        return _uniform_spacing(num_steps, top, log_snr)
    if isinstance(spacing, str):
        return _SPACING_FUNCTIONS[spacing](num_steps, top, log_snr)
    branches = [functools.partial(_SPACING_FUNCTIONS[name], num_steps, top, log_snr) for name in SPACINGS]
    return tf.switch_case(_name_index(spacing, SPACINGS), branches)


def resolve_spacing(sampler, spacing):
    """The spacing a request runs on: `spacing`, or for "auto" the sampler's own (`Solver.spacing`).

    Python strings give a Python string; if either is a string tensor (an exported signature's
    inputs), a string tensor picked at run time.
    """
    if isinstance(spacing, str) and spacing != AUTO_SPACING:
        return spacing
    if isinstance(sampler, str) and isinstance(spacing, str):
        return SOLVERS[sampler].spacing if sampler in SOLVERS else spacing  # `validate_request` names a bad one
    own = tf.gather(tf.constant([solver.spacing for solver in SOLVERS.values()]), _name_index(sampler, SOLVERS))
    return tf.where(tf.equal(spacing, AUTO_SPACING), own, spacing)


def _name_index(name, names):
    """int32 []: the position of the (string tensor) `name` in `names`, for a `tf.switch_case` or a gather."""
    return tf.argmax(tf.cast(tf.equal(name, tf.constant(list(names))), tf.int32), output_type=tf.int32)


# -- requests ----------------------------------------------------------------------------------
def validate_request(num_timesteps, *, sampler="ddpm", num_steps=1, eta=0.0, guidance_scale=None,
                     ddpm_variance="beta_tilde", trajectory_every=None, spacing=DEFAULT_SPACING, strength=None):
    """Raises ValueError naming the argument when a (Python) sampling request is invalid."""
    if sampler not in SOLVERS:
        raise ValueError(f"Unknown sampler. Expected one of {tuple(SOLVERS)}. Received: sampler={sampler!r}")
    if spacing not in SPACING_CHOICES:
        raise ValueError(f"Unknown spacing. Expected one of {SPACING_CHOICES}. Received: spacing={spacing!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, {num_timesteps}]. Received: num_steps={num_steps!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1]. Received: eta={eta!r}")
    if guidance_scale is not None and not np.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be finite. Received: guidance_scale={guidance_scale!r}")
    if strength is not None and not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1]. Received: strength={strength!r}")
    if ddpm_variance not in VARIANCE_TYPES:
        raise ValueError(f"ddpm_variance must be one of {VARIANCE_TYPES}. Received: ddpm_variance={ddpm_variance!r}")
    if trajectory_every is not None and (
        isinstance(trajectory_every, bool) or not isinstance(trajectory_every, int) or trajectory_every < 1
    ):
        raise ValueError(f"trajectory_every must be a positive integer. Received: trajectory_every={trajectory_every!r}")


def validate_edit(shape, init_images=None, strength=None, mask=None):
    """Raises ValueError naming the argument when an edit request is incomplete or its known values are bad.

    `init_images` must have `shape` (the dimensions known now) and be finite; `mask`, the shape of
    the images or with one channel, holds only 0 and 1; an edit needs `strength`, `mask` or both.
    Symbolic tensors are trusted.
    """
    if init_images is None:
        for name, value in (("strength", strength), ("mask", mask)):
            if value is not None:
                raise ValueError(f"{name} needs init_images. Received: init_images=None")
        return
    if strength is None and mask is None:
        raise ValueError("init_images needs strength (image-to-image) or mask (inpainting). Received: strength=None, "
                         "mask=None")
    expected = tuple(d if isinstance(d, (int, np.integer)) else None for d in _static_shape(shape))
    images = _known_array(init_images)
    if images is not None and not _shape_matches(images.shape, expected):
        raise ValueError(f"init_images must have shape {expected}. Received: init_images of shape {images.shape}")
    if images is not None and not np.all(np.isfinite(images)):
        raise ValueError("init_images must be finite. Received: init_images with NaN or inf")
    values = None if mask is None else _known_array(mask)
    if values is None:
        return
    if not (_shape_matches(values.shape, expected) or _shape_matches(values.shape, expected[:-1] + (1,))):
        raise ValueError(f"mask must have shape {expected} or {expected[:-1] + (1,)}. Received: mask of shape "
                         f"{values.shape}")
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"mask must hold only 0 (generate) and 1 (keep). Received: mask with values "
                         f"{np.unique(values)[:5].tolist()}")


def validate_jumps(jumps, mask=None, sampler=None, trajectory_every=None):
    """Raises ValueError naming `jumps` unless it is None or (jump_length ≥ 1, resamples ≥ 1) for an inpainting
    request (a mask) of a one-evaluation-per-step sampler without a trajectory."""
    if jumps is None:
        return
    pair = tuple(jumps) if isinstance(jumps, (tuple, list)) else ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ValueError(f"jumps must be (jump_length, resamples), two integers >= 1. Received: jumps={jumps!r}")
    if mask is None:
        raise ValueError(f"jumps resample an inpainting and need a mask. Received: jumps={jumps!r}, mask=None")
    if sampler == "heun" or trajectory_every is not None:
        raise ValueError(f"jumps work with every sampler but heun and without trajectory_every. Received: "
                         f"jumps={jumps!r}, sampler={sampler!r}, trajectory_every={trajectory_every!r}")


def _static_shape(shape):
    if tf.is_tensor(shape):
        static = tf.get_static_value(shape)
        return [None] * int(shape.shape[0]) if static is None else [int(d) for d in static]
    return [_python_value(d) if not tf.is_tensor(d) or not tf.is_symbolic_tensor(d) else None for d in shape]


def _known_array(value):
    value = _python_value(value)
    return None if value is _UNKNOWN else np.asarray(value)


def _shape_matches(actual, expected):
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected))


def edit_start_timestep(strength, num_timesteps):
    """t_s = round(strength·T) − 1 (half to even; int32): SDEdit's start, −1 (no step) for strength 0."""
    return tf.cast(tf.round(tf.cast(strength, tf.float64) * num_timesteps), tf.int32) - 1


def classifier_free_guidance(predict_fn, guidance_scale, null_label):
    """(1 + w) f(x, c) − w f(x, ∅) in one batched call (Ho & Salimans 2022, eq. 6).

    `predict_fn(x, t, labels)` may return a tensor or a nest of tensors; each is combined the same
    way. x̂_0, ε̂ and v are affine in one another with coefficients that depend on (x_t, t) only, the
    same for both halves, and (1 + w) − w = 1: guiding the network's prediction and converting it
    equals converting each half and guiding x̂_0 or ε̂. w = 0 skips the unconditional half; returns
    predict_fn itself when there is nothing to guide.
    """
    if guidance_scale is None or null_label is None:
        return predict_fn

    def guided(x, t, labels):
        if labels is None:
            return predict_fn(x, t, labels)
        w = tf.cast(guidance_scale, x.dtype)

        def combine(output):
            conditional, unconditional = tf.split(output, 2, axis=0)
            return (1.0 + w) * conditional - w * unconditional

        def both():
            null = tf.fill(tf.shape(labels), tf.constant(null_label, labels.dtype))
            outputs = predict_fn(tf.concat([x, x], 0), tf.concat([t, t], 0), tf.concat([labels, null], 0))
            return tf.nest.map_structure(combine, outputs)

        return tf.cond(tf.equal(w, 0.0), lambda: predict_fn(x, t, labels), both)

    return guided


# -- the driver ----------------------------------------------------------------------------
def _network_step(solver, denoise_fn, alpha_bar_table, x, state, t, t_prev, seed, iteration, labels, options,
                  clip_denoised, after_step):
    """One network evaluation at t and the solver's step to t_prev (−1: the data); returns (x_prev, state).

    The step's noise, if the solver draws one, is the loop iteration's draw (`noise_draw`), zero into the data.
    """
    alpha_bar_t = tf.gather(alpha_bar_table, t + 1)
    alpha_bar_prev = tf.gather(alpha_bar_table, t_prev + 1)
    x0, eps = (tf.cast(v, x.dtype) for v in denoise_fn(x, tf.fill(tf.shape(x)[:1], t), labels))
    if clip_denoised:
        x0 = tf.clip_by_value(x0, -1.0, 1.0)
        eps = eps_from_x0(x, x0, alpha_bar_t)
    noise = None
    if solver.stochastic:
        noise = noise_draw(tf.shape(x), seed, tf.cast(iteration, tf.int64) + 1, x.dtype)
        noise = noise * tf.cast(t_prev >= 0, x.dtype)
    x, state = solver.step(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options)
    if after_step is not None:
        x = after_step(x, alpha_bar_prev, noise)
    return x, state


def _resampling_loop(solver, denoise_fn, alpha_bar_table, x_T, timesteps, seed, labels, options, clip_denoised,
                     after_step, jump_length, resamples):
    """`_reverse_loop` with RePaint's resampling jumps (Lugmayr et al. 2022, §4.2, "jump length" j, "resamplings" r).

    Position p = 0..n walks the n timesteps (p = n is the data). Each time the walk down reaches a
    multiple of j short of the data, it jumps back up j positions, r − 1 times per block, by the forward
    process q(x_τ(p−j) | x_τ(p)) = N(√(ᾱ_τ(p−j)/ᾱ_τ(p)) x, (1 − ᾱ_τ(p−j)/ᾱ_τ(p)) I) (no network call),
    and walks the block down again: the generated pixels are re-harmonised with the known ones. A
    jump restarts a multistep solver's history (its state and its step count, hence its order).
    Iteration i draws its noise as `_reverse_loop`'s iteration i does.
    """
    n = tf.shape(timesteps)[0]
    jump_length, resamples = tf.constant(jump_length), tf.constant(resamples)

    def timestep(p):
        return tf.where(p < n, timesteps[tf.minimum(p, n - 1)], -1)

    def body(i, p, repeats, arrived_down, since_restart, x, state):
        jump = (p % jump_length == 0) & (p > 0) & (p < n) & (repeats < resamples - 1) & arrived_down

        def up():
            ratio = tf.gather(alpha_bar_table, timestep(p - jump_length) + 1) / tf.gather(alpha_bar_table,
                                                                                          timestep(p) + 1)
            noise = noise_draw(tf.shape(x), seed, tf.cast(i, tf.int64) + 1, x.dtype)
            x_up = _as_dtype(tf.sqrt(ratio), x) * x + _as_dtype(tf.sqrt(1.0 - ratio), x) * noise
            return (p - jump_length, repeats + 1, tf.constant(False), tf.constant(0), x_up,
                    solver.initial_state(x_up))

        def down():
            step_options = dict(options, index=since_restart, num_steps=since_restart + n - p)
            x_next, next_state = _network_step(solver, denoise_fn, alpha_bar_table, x, state, timestep(p),
                                               timestep(p + 1), seed, i, labels, step_options, clip_denoised,
                                               after_step)
            # Walking on from a block's end after its last resampling starts the next block's count; the
            # same position reached by a jump (arrived_down false) is the previous block's start and keeps it.
            finished_block = (p % jump_length == 0) & (p > 0) & arrived_down
            return (p + 1, tf.where(finished_block, 0, repeats), tf.constant(True), since_restart + 1, x_next,
                    next_state)

        return (i + 1,) + tf.cond(jump, up, down)

    start = (tf.constant(0), tf.constant(0), tf.constant(0), tf.constant(False), tf.constant(0), x_T,
             solver.initial_state(x_T))
    return tf.while_loop(lambda i, p, *_: p < n, body, start, parallel_iterations=1)[5]


def _reverse_loop(solver, denoise_fn, alpha_bar_table, x_T, timesteps, seed, labels, options, clip_denoised,
                  trajectory_every, after_step=None):
    """Runs one solver over `timesteps` from x_T; returns x_0, or (x_0, trajectory).

    alpha_bar_table[t + 1] = ᾱ_t and alpha_bar_table[0] = ᾱ_{−1} = 1 (the data). `after_step(x,
    alpha_bar_prev, noise)`, if given, maps every step's output (inpainting's known region).
    """
    timesteps = solver.loop_timesteps(timesteps)
    n = tf.shape(timesteps)[0]
    keep_every = 1 if trajectory_every is None else trajectory_every
    num_frames = (n - 1) // keep_every + 2

    def body(i, x, state, frames):
        t = timesteps[i]
        t_prev = tf.where(i + 1 < n, timesteps[tf.minimum(i + 1, n - 1)], -1)
        if trajectory_every is not None:
            frames = tf.cond(tf.equal(i % keep_every, 0), lambda: frames.write(i // keep_every, x), lambda: frames)
        x, state = _network_step(solver, denoise_fn, alpha_bar_table, x, state, t, t_prev, seed, i, labels,
                                 dict(options, index=i, num_steps=n), clip_denoised, after_step)
        return i + 1, x, state, frames

    frames = tf.TensorArray(x_T.dtype, size=num_frames if trajectory_every is not None else 0, element_shape=x_T.shape)
    _, x, _, frames = tf.while_loop(
        lambda i, *_: i < n, body, (tf.constant(0), x_T, solver.initial_state(x_T), frames), parallel_iterations=1
    )
    if trajectory_every is None:
        return x
    return x, frames.write(num_frames - 1, x).stack()


def opaque(value, dtype, batched=False):
    """`value` as a tensor whose value (and batch size, if `batched`) grappler cannot fold.

    The graph of a request is then the same whether its values are constants or fed (as in the
    export): grappler folds constants and known batch sizes into the coefficient arithmetic in
    another order (differences ~1e-7).
    """
    value = tf.cast(value, dtype)
    shape = value.shape.as_list()
    return tf.raw_ops.PlaceholderWithDefault(input=value, shape=[None] + shape[1:] if batched else shape)


def _edit_start(alpha_bar_table, num_timesteps, noise, num_steps, init_images, strength):
    """SDEdit's start (Meng et al. 2022): (x_{t_s} = √ᾱ x_0 + √(1 − ᾱ) ε, t_s, min(num_steps, t_s + 1))."""
    top = edit_start_timestep(strength, num_timesteps)
    alpha_bar = tf.gather(alpha_bar_table, top + 1)
    x_start = _as_dtype(tf.sqrt(alpha_bar), init_images) * init_images + _as_dtype(tf.sqrt(1.0 - alpha_bar), noise) * noise
    return x_start, top, tf.minimum(num_steps, top + 1)


def _keep_known_region(init_images, mask, initial_noise):
    """The inpainting hook (RePaint, Lugmayr et al. 2022, Algorithm 1, line 5): x ← m ⊙ x^known + (1 − m) ⊙ x.

    x^known = √ᾱ_next x_0 + √(1 − ᾱ_next) ε is a draw of q(x_next | x_0) at the noise level the step
    reached: with the step's own noise for solvers that draw one (fresh each step, as RePaint; the
    known and unknown pixels are disjoint, so they stay independent), with the initial ε for the
    ODE solvers (whose path for a known x_0 that is). Into the data (ᾱ = 1) x^known is x_0 exactly.
    """
    known = mask >= 0.5

    def keep(x, alpha_bar_next, noise):
        noise = initial_noise if noise is None else noise
        noised = _as_dtype(tf.sqrt(alpha_bar_next), x) * init_images + _as_dtype(tf.sqrt(1.0 - alpha_bar_next), x) * noise
        return tf.where(known, noised, x)

    return keep


def reverse_process(denoise_fn, diffusion, shape, *, seed, num_steps, sampler="ddpm", spacing=DEFAULT_SPACING,
                    eta=0.0, x_T=None, labels=None, ddpm_variance="beta_tilde", clip_denoised=False,
                    trajectory_every=None, init_images=None, strength=None, mask=None, jumps=None):
    """The driver: builds the reverse process in the current graph, trusting its inputs.

    Arguments are those of `sample`, as Python values or tensors (`sampler` and `spacing` string
    tensors pick the solver and the spacing at run time; `jumps` is Python); nothing is validated here. Call it inside a
    graph (`sample` and `DiffusionModel.sample_model_space` do; eagerly the loop would run op by op).
    Returns x_0, or (x_0, trajectory).
    """
    if x_T is None:
        x_T = noise_draw(shape, seed, 0)
    x_T = opaque(x_T, tf.float32, batched=True)
    labels = None if labels is None else opaque(labels, tf.int32, batched=True)
    seed, num_steps = opaque(seed, tf.int64), opaque(num_steps, tf.int32)
    options = {"eta": opaque(eta, tf.float32), "ddpm_variance": ddpm_variance}
    alpha_bar_table = tf.constant(np.append(1.0, diffusion.alphas_cumprod), tf.float64)
    x_start, top, after_step = x_T, None, None
    if init_images is not None:
        init_images = opaque(init_images, tf.float32, batched=True)
        strength = opaque(1.0 if strength is None else strength, tf.float32)
        x_start, top, num_steps = _edit_start(alpha_bar_table, diffusion.num_timesteps, x_T, num_steps, init_images,
                                              strength)
        if mask is not None:
            after_step = _keep_known_region(init_images, opaque(mask, tf.float32, batched=True), x_T)
    timesteps = timestep_sequence(num_steps, diffusion.num_timesteps, resolve_spacing(sampler, spacing),
                                  diffusion.alphas_cumprod, top)
    common = dict(denoise_fn=denoise_fn, alpha_bar_table=alpha_bar_table, x_T=x_start, timesteps=timesteps, seed=seed,
                  labels=labels, options=options, clip_denoised=clip_denoised, after_step=after_step)
    if jumps is not None and jumps[1] > 1:
        run = functools.partial(_resampling_loop, jump_length=jumps[0], resamples=jumps[1], **common)
    else:
        run = functools.partial(_reverse_loop, trajectory_every=trajectory_every, **common)
    if isinstance(sampler, str):
        return run(SOLVERS[sampler])
    branches = [functools.partial(run, solver) for solver in SOLVERS.values()]
    return tf.switch_case(_name_index(sampler, SOLVERS), branches)


_UNKNOWN = object()


def _python_value(value):
    """A request argument's Python value when it is known now (Python, NumPy, eager tensor)."""
    if tf.is_tensor(value):
        if tf.is_symbolic_tensor(value):
            return _UNKNOWN
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    return value.decode() if isinstance(value, bytes) else value


def sample(denoise_fn, diffusion, shape, *, sampler="ddpm", num_steps=None, spacing=DEFAULT_SPACING, eta=0.0,
           seed=0, x_T=None, labels=None, guidance_scale=None, null_label=None, ddpm_variance="beta_tilde",
           clip_denoised=False, trajectory_every=None, init_images=None, strength=None, mask=None, jumps=None):
    """Draws samples of `shape` from the reverse process of `diffusion`, or edits `init_images`.

    Args:
      denoise_fn: callable `(x_t, t, labels) -> (x̂_0, ε̂)`, e.g. `DiffusionModel.denoise` (labels
        may be None).
      diffusion: a `GaussianDiffusion`.
      shape: shape of x_T, e.g. `(16, 28, 28, 1)`; the batch size may be a tensor.
      sampler: one of `SAMPLERS` (a string tensor inside a graph).
      num_steps: steps (default T) on the `spacing`'s timesteps; `network_evaluations` counts the
        network calls (Heun's are 2·num_steps − 1).
      spacing: one of `SPACINGS` (see `timestep_sequence`; a string tensor inside a graph), or "auto"
        (the default): the sampler's own, `Solver.spacing` (logsnr for the DPM-Solver++ family and
        UniPC, karras for Heun, uniform for DDPM and DDIM).
      eta: DDIM's η ∈ [0, 1].
      seed: integer seed of every random draw.
      x_T: optional initial noise (overrides the seed's x_T; an edit's ε).
      labels: optional int32 [N] class labels, passed to denoise_fn.
      guidance_scale, null_label: classifier-free guidance of denoise_fn's (x̂_0, ε̂) with weight w
        and the null class (`classifier_free_guidance`); None: denoise_fn as given.
      ddpm_variance: σ² of the DDPM step, "beta_tilde" (β̃_t) or "beta" (β_t).
      clip_denoised: clip x̂_0 to [−1, 1] at every step (for data in [−1, 1]).
      trajectory_every: if set to k, also return x_t before every k-th network evaluation and x_0.
      init_images: images of `shape` in model space to edit (SDEdit and/or inpainting).
      strength: image-to-image strength in [0, 1]: start from q_sample(init_images, t_s, ε) with
        t_s = round(strength·T) − 1 and run min(num_steps, t_s + 1) steps of the spacing on [0, t_s];
        0 returns init_images, 1 starts from q(x_{T−1} | x_0) ≈ N(0, I) (plain sampling but for
        √ᾱ_{T−1}·x_0). Default 1 when only `mask` is given.
      mask: 1 where init_images is kept, 0 where it is generated, of `shape` or with one channel;
        the kept pixels are replaced after every step (see `_keep_known_region`) and equal
        init_images at the end.
      jumps: inpainting's resampling (RePaint, Lugmayr et al. 2022, §4.2): (jump_length j, resamples r)
        walks every block of j steps r times, jumping back up by the forward process in between
        (`_resampling_loop`; r − 1 extra passes cost (r − 1)·j network evaluations per block). None
        or r = 1: none. Not with `heun` or `trajectory_every`.

    Returns:
      x_0 (float32), or `(x_0, trajectory)` with trajectory [frames, *shape] when
      `trajectory_every` is set.

    Raises:
      ValueError: a request value known now (Python, NumPy or eager) is invalid; symbolic tensors
        are trusted.
    """
    request = {"sampler": sampler, "num_steps": diffusion.num_timesteps if num_steps is None else num_steps, "eta": eta,
               "spacing": spacing}
    known = {k: v for k, v in ((k, _python_value(v)) for k, v in request.items()) if v is not _UNKNOWN}
    checked = {k: v for k, v in (("guidance_scale", _python_value(guidance_scale)), ("strength", _python_value(strength)))
               if v is not _UNKNOWN}
    validate_request(diffusion.num_timesteps, **known, **checked, ddpm_variance=ddpm_variance,
                     trajectory_every=trajectory_every)
    validate_edit(shape, init_images, strength, mask)
    validate_jumps(jumps, mask, known.get("sampler"), trajectory_every)
    request.update(known)
    run = functools.partial(reverse_process, classifier_free_guidance(denoise_fn, guidance_scale, null_label), diffusion,
                            shape, seed=seed, x_T=x_T, labels=labels, ddpm_variance=ddpm_variance,
                            clip_denoised=clip_denoised, trajectory_every=trajectory_every, init_images=init_images,
                            strength=strength, mask=mask, jumps=jumps, **request)
    if not tf.executing_eagerly():
        return run()
    # Op by op, the network would round differently from any graph of it: grappler fuses Conv2D +
    # BiasAdd + activation for oneDNN only in graphs. So an eager call runs the loop as one graph,
    # as `DiffusionModel.generate` and the export do (and faster).
    return tf.function(run, autograph=False)()
