"""Reverse-process samplers: pure step functions, a registry of solvers and one `tf.while_loop` driver.

The network enters through a denoiser, `denoise_fn(x_t, t, labels) -> (x̂_0, ε̂)`: both predictions at
once, each formed directly from the network's output by its prediction type
(`DiffusionModel.denoise`), so that no step turns ε̂ into x̂_0 or back. Each step function maps tensors
to tensors with no hidden state: it receives x_t, the predictions it needs, the noise levels ᾱ at the
current and at the next (less noisy) timestep of the sequence, and the Gaussian draw it may need. ᾱ
arrives as a float64 scalar so that the coefficients are formed in float64 and cast once.

A sequence of `num_steps` timesteps τ_0 = T−1 > τ_1 > … > τ_{n−1} = 0 is spaced uniformly over
[0, T) (`timestep_sequence`); "next" after τ_{n−1} is t = −1 with ᾱ_{−1} = 1, i.e. the data. On a
subsequence the effective α of a step is ᾱ_τi / ᾱ_τ(i+1), which makes DDPM's step (Ho et al. 2020,
eq. 11) exact for the respaced chain (Nichol & Dhariwal 2021, §4).

A new solver is one pure step function and one `SOLVERS` entry (`Solver`): the driver hands every
solver the same arguments and carries the state the solver asks for.

Noise: x_T ~ N(0, I) is drawn with `tf.random.stateless_normal(seed=[seed, 0])` and the noise of
step i with `seed=[seed, i + 1]`, outside any XLA cluster. With the loop always run as a graph
(eager calls included) on a batch of unknown size, one seed gives bitwise the same samples eagerly,
in `tf.function`, under XLA networks and after export.

Validation: `sample` (and `DiffusionModel.generate`) check a request's Python values where a Python
caller enters; the driver `reverse_process` trusts the tensors it is given (the exported signatures
assert on theirs, see `tfdiffusion.export`).
"""

import functools
import typing

import numpy as np
import tensorflow as tf

from tfdiffusion.diffusion import VARIANCE_TYPES, eps_from_x0, reverse_mean_variance


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


# -- the registry ----------------------------------------------------------------------------
class Solver(typing.NamedTuple):
    """A sampler as the driver sees it.

    step: `(x_t, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options) -> (x_prev, state)`,
      pure; `noise` is this step's draw (zero on the step into the data) or None when not
      `stochastic`; `options` holds the request's `eta` (float32 tensor) and `ddpm_variance`.
    stochastic: draw the noise of step i from the seed pair [seed, i + 1].
    initial_state: `x_T -> state` (a nest of tensors the loop carries), `()` by default.
    """

    step: typing.Callable
    stochastic: bool = False
    initial_state: typing.Callable = lambda x_T: ()


def _ddpm(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return ddpm_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, options["ddpm_variance"]), state


def _ddim(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    return ddim_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, options["eta"], noise), state


def _dpmpp_2m(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):
    previous_x0, previous_h, is_first = state
    x, h = dpmpp_2m_step(x, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, is_first)
    return x, (x0, h, tf.constant(False))


SOLVERS = {
    "ddpm": Solver(_ddpm, stochastic=True),
    "ddim": Solver(_ddim, stochastic=True),
    "dpmpp_2m": Solver(_dpmpp_2m, initial_state=lambda x_T: (tf.zeros_like(x_T), tf.constant(1.0, tf.float64),
                                                             tf.constant(True))),
}
SAMPLERS = tuple(SOLVERS)  # the built-in solvers' names


# -- requests ----------------------------------------------------------------------------------
def validate_request(num_timesteps, *, sampler="ddpm", num_steps=1, eta=0.0, guidance_scale=None,
                     ddpm_variance="beta_tilde", trajectory_every=None):
    """Raises ValueError naming the argument when a (Python) sampling request is invalid."""
    if sampler not in SOLVERS:
        raise ValueError(f"Unknown sampler. Expected one of {tuple(SOLVERS)}. Received: sampler={sampler!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, {num_timesteps}]. Received: num_steps={num_steps!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1]. Received: eta={eta!r}")
    if guidance_scale is not None and not np.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be finite. Received: guidance_scale={guidance_scale!r}")
    if ddpm_variance not in VARIANCE_TYPES:
        raise ValueError(f"ddpm_variance must be one of {VARIANCE_TYPES}. Received: ddpm_variance={ddpm_variance!r}")
    if trajectory_every is not None and (
        isinstance(trajectory_every, bool) or not isinstance(trajectory_every, int) or trajectory_every < 1
    ):
        raise ValueError(f"trajectory_every must be a positive integer. Received: trajectory_every={trajectory_every!r}")


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
def timestep_sequence(num_steps, num_timesteps):
    """int32 [num_steps]: round(linspace(T − 1, 0, num_steps)), T − 1 first, 0 last."""
    values = tf.linspace(tf.constant(num_timesteps - 1, tf.float64), tf.constant(0.0, tf.float64), num_steps)
    return tf.cast(tf.round(values), tf.int32)


def _reverse_loop(solver, denoise_fn, alpha_bar_table, x_T, timesteps, seed, labels, options, clip_denoised,
                  trajectory_every):
    """Runs one solver over `timesteps` from x_T; returns x_0, or (x_0, trajectory).

    alpha_bar_table[t + 1] = ᾱ_t and alpha_bar_table[0] = ᾱ_{−1} = 1 (the data).
    """
    n = tf.shape(timesteps)[0]
    keep_every = 1 if trajectory_every is None else trajectory_every
    num_frames = (n - 1) // keep_every + 2

    def body(i, x, state, frames):
        t = timesteps[i]
        t_prev = tf.where(i + 1 < n, timesteps[tf.minimum(i + 1, n - 1)], -1)
        alpha_bar_t = tf.gather(alpha_bar_table, t + 1)
        alpha_bar_prev = tf.gather(alpha_bar_table, t_prev + 1)
        if trajectory_every is not None:
            frames = tf.cond(tf.equal(i % keep_every, 0), lambda: frames.write(i // keep_every, x), lambda: frames)
        x0, eps = (tf.cast(v, x.dtype) for v in denoise_fn(x, tf.fill(tf.shape(x)[:1], t), labels))
        if clip_denoised:
            x0 = tf.clip_by_value(x0, -1.0, 1.0)
            eps = eps_from_x0(x, x0, alpha_bar_t)
        noise = None
        if solver.stochastic:
            noise = tf.random.stateless_normal(tf.shape(x), tf.stack([seed, tf.cast(i, tf.int64) + 1]), dtype=x.dtype)
            noise = noise * tf.cast(t_prev >= 0, x.dtype)
        x, state = solver.step(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options)
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


def reverse_process(denoise_fn, diffusion, shape, *, seed, num_steps, sampler="ddpm", eta=0.0, x_T=None, labels=None,
                    ddpm_variance="beta_tilde", clip_denoised=False, trajectory_every=None):
    """The driver: builds the reverse process in the current graph, trusting its inputs.

    Arguments are those of `sample`, as Python values or tensors (`sampler` a string tensor picks
    the solver at run time); nothing is validated here. Call it inside a graph (`sample` and
    `DiffusionModel.sample_model_space` do; eagerly the loop would run op by op). Returns x_0, or
    (x_0, trajectory).
    """
    if x_T is None:
        x_T = tf.random.stateless_normal(shape, tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))
    x_T = opaque(x_T, tf.float32, batched=True)
    labels = None if labels is None else opaque(labels, tf.int32, batched=True)
    seed, num_steps = opaque(seed, tf.int64), opaque(num_steps, tf.int32)
    options = {"eta": opaque(eta, tf.float32), "ddpm_variance": ddpm_variance}
    alpha_bar_table = tf.constant(np.append(1.0, diffusion.alphas_cumprod), tf.float64)
    timesteps = timestep_sequence(num_steps, diffusion.num_timesteps)
    run = functools.partial(_reverse_loop, denoise_fn=denoise_fn, alpha_bar_table=alpha_bar_table, x_T=x_T,
                            timesteps=timesteps, seed=seed, labels=labels, options=options,
                            clip_denoised=clip_denoised, trajectory_every=trajectory_every)
    if isinstance(sampler, str):
        return run(SOLVERS[sampler])
    index = tf.argmax(tf.cast(tf.equal(sampler, tf.constant(list(SOLVERS))), tf.int32), output_type=tf.int32)
    return tf.switch_case(index, [functools.partial(run, solver) for solver in SOLVERS.values()])


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


def sample(denoise_fn, diffusion, shape, *, sampler="ddpm", num_steps=None, eta=0.0, seed=0, x_T=None, labels=None,
           ddpm_variance="beta_tilde", clip_denoised=False, trajectory_every=None):
    """Draws samples of `shape` from the reverse process of `diffusion`.

    Args:
      denoise_fn: callable `(x_t, t, labels) -> (x̂_0, ε̂)`, e.g. `DiffusionModel.denoise` (labels
        may be None).
      diffusion: a `GaussianDiffusion`.
      shape: shape of x_T, e.g. `(16, 28, 28, 1)`; the batch size may be a tensor.
      sampler: "ddpm", "ddim" or "dpmpp_2m" (a string tensor inside a graph).
      num_steps: model evaluations (default T); fewer steps run on a uniformly respaced subsequence.
      eta: DDIM's η ∈ [0, 1].
      seed: integer seed of every random draw.
      x_T: optional initial noise (overrides the seed's x_T).
      labels: optional int32 [N] class labels, passed to denoise_fn.
      ddpm_variance: σ² of the DDPM step, "beta_tilde" (β̃_t) or "beta" (β_t).
      clip_denoised: clip x̂_0 to [−1, 1] at every step (for data in [−1, 1]).
      trajectory_every: if set to k, also return x_t before every k-th step and x_0.

    Returns:
      x_0 (float32), or `(x_0, trajectory)` with trajectory [frames, *shape] when
      `trajectory_every` is set.

    Raises:
      ValueError: a request value known now (Python, NumPy or eager) is invalid; symbolic tensors
        are trusted.
    """
    request = {"sampler": sampler, "num_steps": diffusion.num_timesteps if num_steps is None else num_steps, "eta": eta}
    known = {k: v for k, v in ((k, _python_value(v)) for k, v in request.items()) if v is not _UNKNOWN}
    validate_request(diffusion.num_timesteps, **known, ddpm_variance=ddpm_variance, trajectory_every=trajectory_every)
    request.update(known)
    run = functools.partial(reverse_process, denoise_fn, diffusion, shape, seed=seed, x_T=x_T, labels=labels,
                            ddpm_variance=ddpm_variance, clip_denoised=clip_denoised,
                            trajectory_every=trajectory_every, **request)
    if not tf.executing_eagerly():
        return run()
    # Op by op, the network would round differently from any graph of it: grappler fuses Conv2D +
    # BiasAdd + activation for oneDNN only in graphs. So an eager call runs the loop as one graph,
    # as `DiffusionModel.generate` and the export do (and faster).
    return tf.function(run, autograph=False)()
