"""Data whose ideal denoiser is closed form, and the exact probability-flow ODE solution for it.

The reference the samplers are measured against (tests/test_sampler_contract.py,
benchmarks/sampler_accuracy.py). Data x_0 ~ Σ_k w_k N(μ_k, s_k²), every coordinate independently
(`GaussianMixture`; `Gaussian` is its one-component case). With x_t = √ᾱ x_0 + √(1 − ᾱ) ε (Ho et
al. 2020, eq. 4) each component stays Gaussian, x_t | k ~ N(√ᾱ μ_k, v_k) with v_k = ᾱ s_k² + 1 − ᾱ,
so the minimum-mean-squared-error predictions are posterior-weighted sums of linear regressions:

    r_k(x_t)       = w_k N(x_t; √ᾱ μ_k, v_k) / Σ_j w_j N(x_t; √ᾱ μ_j, v_j)
    E[x_0 | x_t]   = Σ_k r_k (μ_k + √ᾱ s_k² (x_t − √ᾱ μ_k) / v_k)
    E[ε | x_t]     = Σ_k r_k √(1 − ᾱ) (x_t − √ᾱ μ_k) / v_k     (= −√(1 − ᾱ) ∇ log q(x_t))

and x_t = √ᾱ E[x_0 | x_t] + √(1 − ᾱ) E[ε | x_t] holds exactly. These are what a perfectly trained
network predicts, so a sampler's error against the exact ODE solution is its discretisation
error alone.

The probability-flow ODE (Song et al. 2021, eq. 13) in the variables x̄ = x/√ᾱ and
σ = √((1 − ᾱ)/ᾱ) is dx̄/dσ = ε*(x̄, σ) (Karras et al. 2022, eq. 4 with s = 1; Lu et al. 2022,
eq. 3.4): it no longer depends on the β schedule, only on where it starts. For the Gaussian it
solves in closed form, x̄_0 = μ + s (x̄ − μ) / √(s² + σ²); for a mixture `integrate_ode` runs a
float64 RK45 with tight tolerances. In one dimension the flow also carries every quantile to the
same quantile (it transports q_σ to q_0 monotonically), x̄_0 = F_0⁻¹(F_σ(x̄)), which the tests use
as an independent check of the integrator. `final_step_error` is what a discrete-time sampler
cannot beat: exact down to the model's smallest noise level, it still returns x̂_0 there.

Everything here is float64 NumPy except `denoise_fn`, which returns the TF denoiser
`(x_t, t, labels) -> (x̂_0, ε̂)` of `tfdiffusion.samplers.sample`, computed in float64 and cast to
the dtype of x_t, and `CountingDenoiser`, which counts a sampler's network evaluations as they run.
`TOYS` holds the two cases of the sampler contract; `SamplerRun` runs one sampler configuration on
one of them (compiled once, NFE counted) and `SamplerRun.within` finds the most steps a budget of
network evaluations allows: the measurement both the contract tests and the accuracy benchmark make.
"""

import math

import numpy as np
import scipy.integrate
import scipy.special
import tensorflow as tf

from tfdiffusion import samplers

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def sigma_from_alpha_bar(alpha_bar):
    """σ = √((1 − ᾱ)/ᾱ), the noise level of x̄ = x/√ᾱ."""
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


class GaussianMixture:
    """Data x_0 ~ Σ_k w_k N(μ_k, s_k²), independently in every coordinate.

    Args:
      means: μ_k, one per component.
      stds: s_k > 0, one per component.
      weights: w_k > 0 (normalised here); equal weights by default.

    Example:
      >>> data = GaussianMixture(means=[-0.5, 0.5], stds=[0.1, 0.2], weights=[0.4, 0.6])
      >>> x = samplers.sample(data.denoise_fn(diffusion), diffusion, (512, 1), sampler="ddim", num_steps=20)
      >>> error = np.abs(x - data.ode_solution(x_T, diffusion.alphas_cumprod[-1])).mean()
    """

    def __init__(self, means, stds, weights=None):
        means, stds = np.asarray(means, np.float64).ravel(), np.asarray(stds, np.float64).ravel()
        weights = np.ones_like(means) if weights is None else np.asarray(weights, np.float64).ravel()
        if not means.size or stds.shape != means.shape or weights.shape != means.shape:
            raise ValueError(f"means, stds and weights must be equally long and non-empty. Received: means={means}, "
                             f"stds={stds}, weights={weights}")
        if not (np.all(stds > 0) and np.all(weights > 0) and np.all(np.isfinite(means))):
            raise ValueError(f"stds and weights must be positive, means finite. Received: means={means}, stds={stds}, "
                             f"weights={weights}")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    def __repr__(self):
        return f"{type(self).__name__}(means={self.means.tolist()}, stds={self.stds.tolist()}, " \
               f"weights={self.weights.tolist()})"

    # -- the data distribution -------------------------------------------------------------
    def mean(self):
        """E[x_0] = Σ w_k μ_k."""
        return float(self.weights @ self.means)

    def std(self):
        """√Var[x_0], with Var[x_0] = Σ w_k (s_k² + μ_k²) − E[x_0]²."""
        return math.sqrt(float(self.weights @ (self.stds**2 + self.means**2)) - self.mean() ** 2)

    def sample(self, shape, seed=0):
        """float64 draws of x_0 of `shape` (NumPy's default generator seeded with `seed`)."""
        rng = np.random.default_rng(seed)
        component = rng.choice(self.means.size, size=shape, p=self.weights)
        return self.means[component] + self.stds[component] * rng.standard_normal(shape)

    def cdf(self, x, alpha_bar=1.0):
        """P(x_t ≤ x) under q(x_t) = Σ w_k N(√ᾱ μ_k, v_k); ᾱ = 1 is the data."""
        return scipy.special.ndtr(self._standardised(x, alpha_bar)) @ self.weights

    def sf(self, x, alpha_bar=1.0):
        """P(x_t > x) = 1 − `cdf`, without its cancellation in the upper tail."""
        return scipy.special.ndtr(-self._standardised(x, alpha_bar)) @ self.weights

    def _standardised(self, x, alpha_bar):
        """(x − √ᾱ μ_k)/√v_k for every component, on a new last axis."""
        x = np.asarray(x, np.float64)[..., None]
        return (x - math.sqrt(alpha_bar) * self.means) / np.sqrt(alpha_bar * self.stds**2 + 1.0 - alpha_bar)

    def log_density(self, x, alpha_bar=1.0):
        """log q(x_t = x), elementwise."""
        x = np.asarray(x, np.float64)[..., None]
        variance = alpha_bar * self.stds**2 + 1.0 - alpha_bar
        log_terms = -0.5 * (x - math.sqrt(alpha_bar) * self.means) ** 2 / variance - 0.5 * np.log(variance)
        return scipy.special.logsumexp(log_terms, axis=-1, b=self.weights) - LOG_SQRT_2PI

    # -- the ideal denoiser ---------------------------------------------------------------------
    def _posterior_means(self, x_t, alpha_bar, math_ops):
        """(E[x_0 | x_t], E[ε | x_t]) with `math_ops` NumPy or `tf.math` (the formulas of the module doc)."""
        sqrt_alpha_bar, sqrt_one_minus = math_ops.sqrt(alpha_bar), math_ops.sqrt(1.0 - alpha_bar)
        logits, x0s, epss = [], [], []
        for weight, mu, s in zip(self.weights.tolist(), self.means.tolist(), self.stds.tolist()):
            variance = alpha_bar * s**2 + 1.0 - alpha_bar
            residual = x_t - sqrt_alpha_bar * mu
            logits.append(math.log(weight) - 0.5 * math_ops.log(variance) - 0.5 * residual**2 / variance)
            x0s.append(mu + sqrt_alpha_bar * s**2 * residual / variance)
            epss.append(sqrt_one_minus * residual / variance)
        largest = logits[0]
        for logit in logits[1:]:
            largest = math_ops.maximum(largest, logit)
        unnormalised = [math_ops.exp(logit - largest) for logit in logits]  # r_k up to their sum, ≤ 1
        total = sum(unnormalised)
        x0 = sum(r * value for r, value in zip(unnormalised, x0s)) / total
        eps = sum(r * value for r, value in zip(unnormalised, epss)) / total
        return x0, eps

    def x0(self, x_t, alpha_bar):
        """E[x_0 | x_t] at noise level ᾱ (float64)."""
        return self._posterior_means(np.asarray(x_t, np.float64), np.asarray(alpha_bar, np.float64), np)[0]

    def eps(self, x_t, alpha_bar):
        """E[ε | x_t] = ε*(x_t) at noise level ᾱ (float64)."""
        return self._posterior_means(np.asarray(x_t, np.float64), np.asarray(alpha_bar, np.float64), np)[1]

    def denoise_fn(self, diffusion):
        """The ideal `denoise_fn(x_t, t, labels) -> (x̂_0, ε̂)` of `diffusion`'s timesteps, for `samplers.sample`.

        ᾱ_t is looked up in float64 (`GaussianDiffusion.alpha_bar`), the predictions formed in
        float64 and cast to the dtype of x_t; labels are ignored.
        """

        def denoise(x_t, t, labels=None):
            del labels  # unconditional data
            alpha_bar = diffusion.alpha_bar(t, x_t)
            x0, eps = self._posterior_means(tf.cast(x_t, tf.float64), alpha_bar, tf.math)
            return tf.cast(x0, x_t.dtype), tf.cast(eps, x_t.dtype)

        return denoise

    # -- the probability-flow ODE ------------------------------------------------------------------
    def integrate_ode(self, x, alpha_bar_start, alpha_bar_end=1.0, *, rtol=1e-11, atol=1e-12):
        """x at noise level ᾱ_end on the probability-flow ODE through x at ᾱ_start, by float64 RK45.

        Integrates dx̄/dσ = ε*(x̄, σ) from σ_start to σ_end for every element at once (the
        coordinates are independent, so one adaptive step sequence for all of them only makes it
        finer) and returns √ᾱ_end x̄_end; ᾱ_end = 1 is the data.
        """
        x = np.asarray(x, np.float64)

        def velocity(sigma, x_bar):
            alpha_bar = 1.0 / (1.0 + sigma**2)
            return self.eps(x_bar * math.sqrt(alpha_bar), alpha_bar)

        span = (float(sigma_from_alpha_bar(alpha_bar_start)), float(sigma_from_alpha_bar(alpha_bar_end)))
        solution = scipy.integrate.solve_ivp(velocity, span, x.ravel() / math.sqrt(alpha_bar_start), method="RK45",
                                             rtol=rtol, atol=atol)
        if not solution.success:
            raise RuntimeError(f"RK45 failed: {solution.message}")
        return math.sqrt(alpha_bar_end) * solution.y[:, -1].reshape(x.shape)

    def quantile(self, probabilities, alpha_bar=1.0):
        """F⁻¹(p) of q(x_t) at ᾱ (the data's by default), to ~1e-12 for p in [1e-12, 1 − 1e-12]."""
        probabilities = np.asarray(probabilities, np.float64)
        return self._invert_cdf(probabilities, 1.0 - probabilities, alpha_bar)

    def transport_quantiles(self, x, alpha_bar_start, alpha_bar_end=1.0):
        """F_end⁻¹(F_start(x)): the 1-D probability flow maps each quantile of q(x_t) to the same quantile.

        Independent of `integrate_ode` (no ODE: bisection on the CDFs, on the survival function in
        the upper half so that neither tail cancels).
        """
        return self._invert_cdf(self.cdf(x, alpha_bar_start), self.sf(x, alpha_bar_start), alpha_bar_end)

    def _invert_cdf(self, lower, upper, alpha_bar, *, iterations=100):
        """y with F_ᾱ(y) = lower (where lower ≤ ½) or 1 − F_ᾱ(y) = upper (elsewhere), by bisection."""
        use_upper = lower > 0.5
        spread = 40.0 * max(1.0, self.stds.max())
        low = np.full_like(lower, self.means.min() - spread)
        high = np.full_like(lower, self.means.max() + spread)
        for _ in range(iterations):  # the bracket halves each time: 100 halvings reach float64's spacing
            middle = 0.5 * (low + high)
            below = np.where(use_upper, self.sf(middle, alpha_bar) > upper, self.cdf(middle, alpha_bar) < lower)
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        return 0.5 * (low + high)

    def wasserstein1(self, samples):
        """W₁ between the empirical distribution of 1-D `samples` and the data, mean |x_(i) − F_0⁻¹((i − ½)/n)|.

        The quantile coupling is the optimal one in 1-D; the midpoint rule's bias is O(1/n).
        """
        ordered = np.sort(np.asarray(samples, np.float64).ravel())
        return float(np.abs(ordered - self.quantile((np.arange(ordered.size) + 0.5) / ordered.size)).mean())

    def ode_solution(self, x, alpha_bar_start, alpha_bar_end=1.0):
        """The exact probability-flow ODE solution at ᾱ_end (the data by default) from x at ᾱ_start (float64)."""
        return self.integrate_ode(x, alpha_bar_start, alpha_bar_end)

    def final_step_error(self, x, alpha_bar_start, alpha_bar_last):
        """mean |E[x_0 | x_last] − x_0|: the error of a sampler exact down to ᾱ_last that then returns x̂_0.

        Every sampler here ends on the model's smallest timestep t = 0 (σ_0 = √β_0) and steps into the
        data with the x̂_0 there, a first-order step whose error is O(σ_0²): an error below this is
        luck (cancellation), not accuracy.
        """
        x_last = self.ode_solution(x, alpha_bar_start, alpha_bar_last)
        return float(np.abs(self.x0(x_last, alpha_bar_last) - self.ode_solution(x, alpha_bar_start)).mean())


class Gaussian(GaussianMixture):
    """Data x_0 ~ N(μ, s²): E[ε | x_t] is affine in x_t and the probability flow is closed form.

    Example:
      >>> data = Gaussian(0.5, 0.2)
      >>> data.ode_solution(x_T, diffusion.alphas_cumprod[-1])  # μ + s (x̄ − μ)/√(s² + σ²), in closed form
    """

    def __init__(self, mean, std):
        super().__init__([mean], [std])

    def ode_solution(self, x, alpha_bar_start, alpha_bar_end=1.0):
        """√ᾱ_end (μ + √(s² + σ_end²) (x̄ − μ)/√(s² + σ²)), in closed form.

        (x̄ − μ)/√(s² + σ²) is constant along dx̄/dσ = ε*(x̄, σ) = σ (x̄ − μ)/(s² + σ²); σ_end = 0 gives
        x_0 = μ + s (x̄ − μ)/√(s² + σ²).
        """
        mu, s = self.means[0], self.stds[0]
        x_bar = np.asarray(x, np.float64) / math.sqrt(alpha_bar_start)
        sigma_start, sigma_end = sigma_from_alpha_bar(alpha_bar_start), sigma_from_alpha_bar(alpha_bar_end)
        contraction = math.sqrt(s**2 + sigma_end**2) / math.sqrt(s**2 + sigma_start**2)
        return math.sqrt(alpha_bar_end) * (mu + contraction * (x_bar - mu))


# -- the sampler contract's cases (issue 14) -------------------------------------------------------
TOYS = {
    "gaussian": Gaussian(0.5, 0.2),  # issue 14's N(0.5, 0.2²)
    "mixture": GaussianMixture(means=[-0.5, 0.5], stds=[0.1, 0.2], weights=[0.4, 0.6]),  # two modes, ε* non-linear
}


def normal_quantiles(n):
    """Φ⁻¹((i + ½)/n) for i < n: a fixed batch of x_T ~ N(0, 1), spread evenly over its quantiles (no draws)."""
    return scipy.special.ndtri((np.arange(n) + 0.5) / n)


class CountingDenoiser:
    """A `denoise_fn` that counts its evaluations, also inside `tf.function` and `tf.while_loop`.

    The count is the number of network evaluations (NFE) a sampler really made: a solver with two
    evaluations per step, or one that skips one on its last step, is counted as it ran.

    Example:
      >>> counted = CountingDenoiser(data.denoise_fn(diffusion))
      >>> x = samplers.sample(counted, diffusion, shape, sampler="heun", num_steps=5)
      >>> counted.take()  # evaluations since the last take()
    """

    def __init__(self, denoise_fn):
        self.denoise_fn = denoise_fn
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False, name="denoiser_calls")

    def __call__(self, x_t, t, labels=None):
        # The data dependency keeps the increment in every graph the call is traced into.
        with tf.control_dependencies([self.calls.assign_add(1)]):
            return self.denoise_fn(tf.identity(x_t), t, labels)

    def take(self):
        """The evaluations counted since the last `take()` (Python int), and resets the count."""
        count = int(self.calls.numpy())
        self.calls.assign(0)
        return count


class SamplerRun:
    """One sampler configuration on analytic data, compiled once (num_steps and seed are tensors).

    Args:
      data: a `GaussianMixture` (e.g. `TOYS["gaussian"]`); its exact denoiser is the network.
      diffusion: a `GaussianDiffusion`.
      sampler, spacing, eta: as in `samplers.sample`.
      x_T: a fixed float32 [N, 1] starting batch (deterministic runs), or None to draw
        `num_samples` x_T from the seed.

    Calling it with `num_steps` (and `seed`) returns (samples as float64, NFE counted as they ran).

    Example:
      >>> run = SamplerRun(TOYS["gaussian"], diffusion, "dpmpp_2m", "logsnr", x_T=x_T)
      >>> x, nfe, num_steps = run.within(10)
      >>> error, nfe, num_steps = run.error_within(10)
    """

    def __init__(self, data, diffusion, sampler, spacing, eta=0.0, *, x_T=None, num_samples=None):
        self.data, self.diffusion, self.x_T, self._exact = data, diffusion, x_T, None
        self.counted = CountingDenoiser(data.denoise_fn(diffusion))
        shape = (num_samples, 1) if x_T is None else x_T.shape
        x_T = None if x_T is None else tf.constant(x_T)

        @tf.function(autograph=False)
        def run(num_steps, seed):
            return samplers.sample(self.counted, diffusion, shape, sampler=sampler, spacing=spacing,
                                   num_steps=num_steps, eta=eta, seed=seed, x_T=x_T)

        self._run = run

    def __call__(self, num_steps, seed=0):
        x = self._run(tf.constant(num_steps), tf.constant(seed, tf.int64)).numpy().astype(np.float64)
        return x, self.counted.take()

    def within(self, budget, seed=0):
        """(samples, NFE, num_steps) at the most steps whose counted NFE ≤ budget; None if one step exceeds it."""
        num_steps = budget
        x, nfe = self(num_steps, seed)
        while nfe > budget and num_steps > 1:  # NFE grows with num_steps: scale down, then climb back
            num_steps = max(1, min(num_steps - 1, num_steps * budget // nfe))
            x, nfe = self(num_steps, seed)
        if nfe > budget:
            return None
        while True:
            more, more_nfe = self(num_steps + 1, seed)
            if more_nfe > budget:
                return x, nfe, num_steps
            x, nfe, num_steps = more, more_nfe, num_steps + 1

    def error(self, x):
        """The error of samples `x` of this run: with a fixed x_T, mean |x − x_exact| against the float64
        probability-flow ODE solution from it (`ode_solution`); with drawn x_T, W1 to the data."""
        if self.x_T is None:
            return self.data.wasserstein1(x)
        if self._exact is None:
            self._exact = self.data.ode_solution(self.x_T.astype(np.float64), self.diffusion.alphas_cumprod[-1])
        return float(np.abs(x - self._exact).mean())

    def error_within(self, budget, seed=0):
        """(`error`, NFE, num_steps) of `within(budget, seed)`; None if one step exceeds the budget."""
        found = self.within(budget, seed)
        return None if found is None else (self.error(found[0]),) + found[1:]
