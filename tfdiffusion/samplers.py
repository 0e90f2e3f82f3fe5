"""Reverse-process samplers: pure step functions and one `tf.while_loop` driver.

Each step function maps tensors to tensors, with no hidden state: it receives x_t, the
predicted noise (or x_0), the noise levels ᾱ at the current and at the next (less
noisy) timestep of the sequence, and the Gaussian draw it may need. ᾱ arrives as a
float64 scalar so that the coefficients are formed in float64 and cast once.

A sequence of `num_steps` timesteps τ_0 = T−1 > τ_1 > … > τ_{n−1} = 0 is spaced
uniformly over [0, T) (`timestep_sequence`); "next" after τ_{n−1} is t = −1 with
ᾱ_{−1} = 1, i.e. the data. On a subsequence the effective α of a step is
ᾱ_τi / ᾱ_τ(i+1), which makes DDPM's step (Ho et al. 2020, eq. 11) exact for the
respaced chain (Nichol & Dhariwal 2021, §4).

Noise: x_T ~ N(0, I) is drawn with `tf.random.stateless_normal(seed=[seed, 0])` and the
noise of step i with `seed=[seed, i + 1]`, outside any XLA cluster. With the loop always run
as a graph (eager calls included) on a batch of unknown size, one seed gives bitwise the same
samples eagerly, in `tf.function`, under XLA networks and after export.
"""

import numpy as np
import tensorflow as tf

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
DDPM_VARIANCES = ("beta_tilde", "beta")


# -- step functions ------------------------------------------------------------------------
def _as_dtype(value, x):
    return tf.cast(value, x.dtype)


def predict_x0(x_t, eps, alpha_bar_t):
    """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t (Ho et al. 2020, eq. 4 solved for x_0)."""
    return (x_t - _as_dtype(tf.sqrt(1.0 - alpha_bar_t), x_t) * eps) / _as_dtype(tf.sqrt(alpha_bar_t), x_t)


def eps_from_x0(x_t, x0, alpha_bar_t):
    """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    return (x_t - _as_dtype(tf.sqrt(alpha_bar_t), x_t) * x0) / _as_dtype(tf.sqrt(1.0 - alpha_bar_t), x_t)


def ddpm_step(x_t, eps, alpha_bar_t, alpha_bar_prev, noise, variance_type="beta_tilde"):
    """Ancestral step x_{t−1} = μ_θ(x_t, t) + σ_t z (Ho et al. 2020, Algorithm 2).

    μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε) / √α_t (eq. 11) with α_t = ᾱ_t/ᾱ_prev;
    σ_t² = β̃_t = β_t (1 − ᾱ_prev)/(1 − ᾱ_t) ("beta_tilde") or β_t ("beta").
    Pass `noise = 0` for the last step.
    """
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1.0 - alpha_t
    mean = (x_t - _as_dtype(beta_t / tf.sqrt(1.0 - alpha_bar_t), x_t) * eps) / _as_dtype(tf.sqrt(alpha_t), x_t)
    if variance_type == "beta_tilde":
        variance = beta_t * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    elif variance_type == "beta":
        variance = beta_t
    else:
        raise ValueError(f"variance_type must be one of {DDPM_VARIANCES}. Received: variance_type={variance_type!r}")
    return mean + _as_dtype(tf.sqrt(variance), x_t) * noise


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise):
    """x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε + σ z (Song et al. 2020, eq. 12).

    σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev) (eq. 16): η = 0 is the
    deterministic DDIM, η = 1 the DDPM posterior variance.
    """
    eta = tf.cast(eta, tf.float64)
    sigma = eta * tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))
    x0 = predict_x0(x_t, eps, alpha_bar_t)
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


# -- the driver ----------------------------------------------------------------------------
def timestep_sequence(num_steps, num_timesteps):
    """int32 [num_steps]: round(linspace(T − 1, 0, num_steps)), T − 1 first, 0 last."""
    values = tf.linspace(tf.constant(num_timesteps - 1, tf.float64), tf.constant(0.0, tf.float64), num_steps)
    return tf.cast(tf.round(values), tf.int32)


def _is_concrete(value):
    return value is None or isinstance(value, (int, float, str, bytes, np.generic, np.ndarray)) or (
        tf.is_tensor(value) and not tf.is_symbolic_tensor(value)
    )


def _concrete(value):
    if tf.is_tensor(value):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return value


def validate_request(num_timesteps, *, sampler, num_steps, eta, guidance_scale=None):
    """Raises ValueError naming the argument when a concrete sampling request is invalid."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler. Expected one of {SAMPLERS}. Received: sampler={sampler!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, {num_timesteps}]. Received: num_steps={num_steps!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1]. Received: eta={eta!r}")
    if guidance_scale is not None and not np.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be finite. Received: guidance_scale={guidance_scale!r}")


def graph_checks(num_timesteps, *, sampler, num_steps, eta, guidance_scale=None, labels=None, num_samples=None, null_label=None):
    """The same checks as `validate_request` as graph assertions (InvalidArgumentError).

    Used by the exported signature, where the request's values are only known at run time.
    Returns the list of assertion ops to run before sampling.
    """
    checks = [
        tf.debugging.Assert(
            tf.reduce_any(tf.equal(sampler, tf.constant(SAMPLERS))),
            [tf.strings.format("Unknown sampler. Expected one of {}. Received: sampler={}", (tf.constant(SAMPLERS), sampler))],
        ),
        tf.debugging.Assert(
            tf.logical_and(num_steps >= 1, num_steps <= num_timesteps),
            [tf.strings.format("num_steps must be in [1, " + str(num_timesteps) + "]. Received: num_steps={}", num_steps)],
        ),
        tf.debugging.Assert(
            tf.logical_and(eta >= 0.0, eta <= 1.0),
            [tf.strings.format("eta must be in [0, 1]. Received: eta={}", eta)],
        ),
    ]
    if guidance_scale is not None:
        checks.append(
            tf.debugging.Assert(
                tf.math.is_finite(guidance_scale),
                [tf.strings.format("guidance_scale must be finite. Received: guidance_scale={}", guidance_scale)],
            )
        )
    if num_samples is not None:
        checks.append(
            tf.debugging.Assert(
                num_samples >= 1, [tf.strings.format("num_samples must be >= 1. Received: num_samples={}", num_samples)]
            )
        )
    if labels is not None and null_label is not None:
        checks.append(
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_and(labels >= 0, labels <= null_label)),
                [tf.strings.format("labels must lie in [0, " + str(null_label) + "]. Received: labels={}", labels)],
            )
        )
        checks.append(
            tf.debugging.Assert(
                tf.equal(tf.size(labels), num_samples),
                [tf.strings.format("labels must hold num_samples={} values. Received: labels={}", (num_samples, labels))],
            )
        )
    return checks


def guided_eps_fn(eps_fn, guidance_scale, null_label):
    """ε̃ = (1 + w) ε(x, c) − w ε(x, ∅) in one batched call (Ho & Salimans 2022, eq. 6).

    w = 0 skips the unconditional half. Returns eps_fn itself when there is nothing to guide.
    """
    if guidance_scale is None or null_label is None:
        return eps_fn

    def guided(x, t, labels):
        if labels is None:
            return eps_fn(x, t, labels)
        w = tf.cast(guidance_scale, x.dtype)

        def both():
            null = tf.fill(tf.shape(labels), tf.constant(null_label, labels.dtype))
            eps = eps_fn(tf.concat([x, x], 0), tf.concat([t, t], 0), tf.concat([labels, null], 0))
            conditional, unconditional = tf.split(eps, 2, axis=0)
            return (1.0 + w) * conditional - w * unconditional

        return tf.cond(tf.equal(w, 0.0), lambda: eps_fn(x, t, labels), both)

    return guided


def _reverse_loop(kind, eps_fn, alpha_bar_table, x_T, timesteps, seed, *, eta, labels, ddpm_variance, clip_denoised, trajectory_every):
    """Runs one sampler over `timesteps` from x_T; returns (x_0, trajectory or None)."""
    n = tf.shape(timesteps)[0]
    seed = tf.cast(seed, tf.int64)
    # alpha_bar_table[t + 1] = ᾱ_t and alpha_bar_table[0] = ᾱ_{−1} = 1.
    keep_every = 1 if trajectory_every is None else trajectory_every
    num_frames = (n - 1) // keep_every + 2

    def body(i, x, previous_x0, previous_h, frames):
        t = timesteps[i]
        t_prev = tf.where(i + 1 < n, timesteps[tf.minimum(i + 1, n - 1)], -1)
        alpha_bar_t = tf.gather(alpha_bar_table, t + 1)
        alpha_bar_prev = tf.gather(alpha_bar_table, t_prev + 1)
        if trajectory_every is not None:
            frames = tf.cond(tf.equal(i % keep_every, 0), lambda: frames.write(i // keep_every, x), lambda: frames)
        eps = tf.cast(eps_fn(x, tf.fill(tf.shape(x)[:1], t), labels), x.dtype)
        x0 = predict_x0(x, eps, alpha_bar_t)
        if clip_denoised:
            x0 = tf.clip_by_value(x0, -1.0, 1.0)
            eps = eps_from_x0(x, x0, alpha_bar_t)
        h = previous_h
        if kind == "dpmpp_2m":
            x, h = dpmpp_2m_step(x, x0, previous_x0, alpha_bar_t, alpha_bar_prev, previous_h, tf.equal(i, 0))
        else:
            stateless_seed = tf.stack([seed, tf.cast(i, tf.int64) + 1])
            noise = tf.random.stateless_normal(tf.shape(x), stateless_seed, dtype=x.dtype)
            noise = noise * tf.cast(t_prev >= 0, x.dtype)
            if kind == "ddpm":
                x = ddpm_step(x, eps, alpha_bar_t, alpha_bar_prev, noise, ddpm_variance)
            else:
                x = ddim_step(x, eps, alpha_bar_t, alpha_bar_prev, eta, noise)
        return i + 1, x, x0, h, frames

    frames = tf.TensorArray(x_T.dtype, size=num_frames if trajectory_every is not None else 0, element_shape=x_T.shape)
    _, x, _, _, frames = tf.while_loop(
        lambda i, *_: i < n,
        body,
        (tf.constant(0), x_T, tf.zeros_like(x_T), tf.constant(1.0, tf.float64), frames),
        parallel_iterations=1,
    )
    if trajectory_every is None:
        return x, None
    frames = frames.write(num_frames - 1, x)
    return x, frames.stack()


def sample(
    eps_fn,
    diffusion,
    shape,
    *,
    sampler="ddpm",
    num_steps=None,
    eta=0.0,
    seed=0,
    x_T=None,
    labels=None,
    guidance_scale=None,
    null_label=None,
    ddpm_variance="beta_tilde",
    clip_denoised=False,
    trajectory_every=None,
):
    """Draws samples of `shape` from the reverse process of `diffusion`.

    Args:
      eps_fn: callable `(x_t, t, labels) -> ε̂` (any ε-predictor; labels may be None).
      diffusion: a `GaussianDiffusion`.
      shape: shape of x_T, e.g. `(16, 28, 28, 1)`; the batch size may be a tensor.
      sampler: "ddpm", "ddim" or "dpmpp_2m" (a string tensor inside a graph).
      num_steps: model evaluations (default T); DDPM and DDIM on fewer steps run on a
        uniformly respaced subsequence.
      eta: DDIM's η ∈ [0, 1].
      seed: integer seed of every random draw.
      x_T: optional initial noise (overrides the seed's x_T).
      labels: optional int32 [N] class labels.
      guidance_scale: classifier-free guidance weight w (None or 0: plain conditional).
      null_label: the network's "null" class (needed for guidance).
      ddpm_variance: σ² of the DDPM step, "beta_tilde" (β̃_t) or "beta" (β_t).
      clip_denoised: clip x̂_0 to [−1, 1] at every step (for data in [−1, 1]).
      trajectory_every: if set to k, also return x_t before every k-th step and x_0.

    Returns:
      x_0 (float32), or `(x_0, trajectory)` with trajectory [frames, *shape] when
      `trajectory_every` is set.
    """
    T = diffusion.num_timesteps
    num_steps = T if num_steps is None else num_steps
    request = dict(sampler=sampler, num_steps=num_steps, eta=eta, guidance_scale=guidance_scale)
    # Values known now are checked now (ValueError); the placeholders stand in for symbolic ones.
    concrete = {k: _concrete(v) for k, v in request.items() if _is_concrete(v)}
    validate_request(T, **{**dict(sampler=SAMPLERS[0], num_steps=1, eta=0.0, guidance_scale=None), **concrete})
    request.update(concrete)
    symbolic = {k: v for k, v in request.items() if not _is_concrete(v)}
    if symbolic:
        # Known only at run time: assert in the graph (InvalidArgumentError naming the argument)
        # and route the request through the assertions, so no op of the sampler sees a bad value.
        checks = graph_checks(T, **{k: v if v is None else tf.convert_to_tensor(v) for k, v in request.items()})
        with tf.control_dependencies(checks):
            request.update({k: tf.identity(v) for k, v in symbolic.items()})
    sampler, num_steps, eta, guidance_scale = (request[k] for k in ("sampler", "num_steps", "eta", "guidance_scale"))
    if ddpm_variance not in DDPM_VARIANCES:
        raise ValueError(f"ddpm_variance must be one of {DDPM_VARIANCES}. Received: ddpm_variance={ddpm_variance!r}")
    if trajectory_every is not None and (not isinstance(trajectory_every, int) or trajectory_every < 1):
        raise ValueError(f"trajectory_every must be a positive integer. Received: trajectory_every={trajectory_every!r}")

    def draw(x_T, labels, seed, num_steps, eta, guidance_scale):
        # The graph is the same whether the request is constant or fed (as in the export): grappler
        # folds constants and known batch sizes into the coefficient arithmetic in another order
        # (differences ~1e-7), so every input enters through an opaque placeholder.
        x_T = _opaque(x_T, tf.float32, batched=True)
        labels = None if labels is None else _opaque(labels, tf.int32, batched=True)
        seed, num_steps, eta = _opaque(seed, tf.int64), _opaque(num_steps, tf.int32), _opaque(eta, tf.float32)
        guidance_scale = None if guidance_scale is None else _opaque(guidance_scale, tf.float32)
        alpha_bar_table = tf.constant(np.append(1.0, diffusion.alphas_cumprod), tf.float64)
        timesteps = timestep_sequence(num_steps, T)
        model_fn = guided_eps_fn(eps_fn, guidance_scale, null_label)
        options = dict(eta=eta, labels=labels, ddpm_variance=ddpm_variance, clip_denoised=clip_denoised,
                       trajectory_every=trajectory_every)

        def run(kind):
            return _reverse_loop(kind, model_fn, alpha_bar_table, x_T, timesteps, seed, **options)

        if isinstance(sampler, str):
            x0, trajectory = run(sampler)
        else:
            index = tf.argmax(tf.cast(tf.equal(sampler, tf.constant(SAMPLERS)), tf.int32), output_type=tf.int32)
            branches = [lambda kind=kind: _drop_none(run(kind)) for kind in SAMPLERS]
            outputs = tf.switch_case(index, branches)
            x0, trajectory = (outputs, None) if trajectory_every is None else outputs
        return x0 if trajectory_every is None else (x0, trajectory)

    if x_T is None:
        x_T = tf.random.stateless_normal(shape, tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))
    inputs = dict(x_T=x_T, labels=labels, seed=seed, num_steps=num_steps, eta=eta, guidance_scale=guidance_scale)
    if not tf.executing_eagerly():
        return draw(**inputs)
    # Op by op, the network would round differently from any graph of it: grappler fuses Conv2D +
    # BiasAdd + activation for oneDNN only in graphs. So an eager call runs the loop as one graph,
    # as `DiffusionModel.generate` and the export do (and faster).
    return tf.function(lambda: draw(**inputs), autograph=False)()


def _opaque(value, dtype, batched=False):
    """`value` as a tensor whose value (and batch size, if `batched`) grappler cannot fold."""
    value = tf.cast(value, dtype)
    shape = value.shape.as_list()
    return tf.raw_ops.PlaceholderWithDefault(input=value, shape=[None] + shape[1:] if batched else shape)


def _drop_none(outputs):
    x0, trajectory = outputs
    return x0 if trajectory is None else (x0, trajectory)
