"""Tests for tfdiffusion.samplers.

Most tests use data x_0 ~ N(μ, s²), for which every marginal is Gaussian,
q(x_t) = N(√ᾱ_t μ, ᾱ_t s² + 1 − ᾱ_t), and the optimal noise prediction is known exactly:

    ε*(x_t, t) = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t)   (= −√(1 − ᾱ_t) ∇ log q(x_t)).

ε* is affine in x_t, so every sampler is an affine (or, with noise, linear-Gaussian) map of
x_T, and the exact output of each discretised chain can be computed independently here in
float64 NumPy. The probability-flow ODE, solved exactly, maps x_T to
x_0 = μ + s (x_T − √ᾱ_T μ) / √(ᾱ_T s² + 1 − ᾱ_T).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import diffusion as diffusion_lib
from tfdiffusion import samplers, schedules
from tfdiffusion.diffusion import GaussianDiffusion

T = 400
MU, S = 0.5, 0.2
N = 20_000
SAMPLER_CASES = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0)]

BETAS = schedules.make_betas("linear", T)
DIFFUSION = GaussianDiffusion(BETAS)
ALPHA_BAR = np.cumprod(1.0 - BETAS)  # ᾱ_t, recomputed here
_VAR = ALPHA_BAR * S**2 + 1.0 - ALPHA_BAR
# ε*(x, t) = C1[t]·x + C0[t], tabulated in float64 and cast once. (A table keeps the graph free
# of constant chains that graph optimisation could refold, so eager and graph runs agree bitwise.)
C1 = np.sqrt(1.0 - ALPHA_BAR) / _VAR
C0 = -np.sqrt(1.0 - ALPHA_BAR) * np.sqrt(ALPHA_BAR) * MU / _VAR
_C1_TF, _C0_TF = tf.constant(C1, tf.float32), tf.constant(C0, tf.float32)


def analytic_eps(x, t, labels=None):
    return tf.gather(_C1_TF, t)[:, None] * x + tf.gather(_C0_TF, t)[:, None]


def eps_denoiser(eps_fn):
    """`denoise_fn` (x̂_0, ε̂) of an ε-predictor, as `DiffusionModel.denoise` forms it."""
    return lambda x, t, labels=None: DIFFUSION.x0_and_eps(x, t, eps_fn(x, t, labels), "epsilon")


analytic_denoise = eps_denoiser(analytic_eps)


def exact_ode_solution(x_T):
    a = ALPHA_BAR[-1]
    return MU + S * (np.asarray(x_T, np.float64) - math.sqrt(a) * MU) / math.sqrt(a * S**2 + 1.0 - a)


def ab(t):
    return 1.0 if t < 0 else ALPHA_BAR[t]


def hand_sequence(n):
    taus = np.round(np.linspace(T - 1, 0, n)).astype(int)
    return list(zip(taus, list(taus[1:]) + [-1]))


_FUNCTIONS = {}


def run_sampler(sampler, num_steps, eta=0.0, *, x_T=None, seed=1, shape=(N, 1), spacing="uniform", **kwargs):
    """samplers.sample in one tf.function per configuration (num_steps and eta as tensors; uniform spacing, which
    `hand_sequence` writes out, unless told)."""
    kwargs["spacing"] = spacing
    key = (sampler, shape, x_T is None, tuple(sorted(kwargs.items())))
    if key not in _FUNCTIONS:
        def fn(num_steps, eta, seed, x_T):
            return samplers.sample(analytic_denoise, DIFFUSION, shape, sampler=sampler, num_steps=num_steps, eta=eta,
                                   seed=seed, x_T=x_T, **kwargs)
        _FUNCTIONS[key] = tf.function(fn)
    out = _FUNCTIONS[key](tf.constant(num_steps), tf.constant(eta), tf.constant(seed, tf.int64),
                          None if x_T is None else tf.constant(x_T, tf.float32))
    return out.numpy()


@pytest.fixture(scope="module")
def x_T():
    return np.random.default_rng(123).standard_normal((N, 1)).astype(np.float32)


# -- independent float64 references ------------------------------------------------------------
def ddpm_chain_moments(n, variance="beta_tilde"):
    """Mean and variance of DDPM's output for x_T ~ N(0, 1) (eq. 11 + σ z on the respaced chain)."""
    m, v = 0.0, 1.0
    for t, t_prev in hand_sequence(n):
        a_t, a_p = ab(t), ab(t_prev)
        alpha = a_t / a_p
        beta = 1.0 - alpha
        k = beta / math.sqrt(1.0 - a_t)
        gain, offset = (1.0 - k * C1[t]) / math.sqrt(alpha), -k * C0[t] / math.sqrt(alpha)
        sigma2 = 0.0 if t_prev < 0 else (beta * (1.0 - a_p) / (1.0 - a_t) if variance == "beta_tilde" else beta)
        m, v = gain * m + offset, gain**2 * v + sigma2
    return m, v


def ddim_affine_map(n):
    """(gain, offset) of DDIM η=0 (Song et al. eq. 12): x_0 = gain·x_T + offset."""
    x = np.array([1.0, 0.0])  # x = x[0]·x_T + x[1]
    one = np.array([0.0, 1.0])
    for t, t_prev in hand_sequence(n):
        a_t, a_p = ab(t), ab(t_prev)
        eps = C1[t] * x + C0[t] * one
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_p) * x0 + math.sqrt(1.0 - a_p) * eps
    return x


def dpmpp_2m_affine_map(n):
    """(gain, offset) of DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), written from the paper."""
    x = np.array([1.0, 0.0])
    one = np.array([0.0, 1.0])
    lam = lambda a: 0.5 * math.log(a / (1.0 - a))  # noqa: E731
    previous_x0, previous_h = None, None
    for i, (t, t_prev) in enumerate(hand_sequence(n)):
        a_t, a_p = ab(t), ab(t_prev)
        x0 = (x - math.sqrt(1.0 - a_t) * (C1[t] * x + C0[t] * one)) / math.sqrt(a_t)
        if t_prev < 0:  # into the data: σ = 0, λ = ∞
            return x0
        h = lam(a_p) - lam(a_t)
        if i == 0:
            D = x0
        else:
            r = previous_h / h
            D = (1.0 + 1.0 / (2.0 * r)) * x0 - 1.0 / (2.0 * r) * previous_x0
        x = math.sqrt((1.0 - a_p) / (1.0 - a_t)) * x - math.sqrt(a_p) * (math.exp(-h) - 1.0) * D
        previous_x0, previous_h = x0, h
    return x


# -- Gaussian data: moments and convergence -----------------------------------------------------
@pytest.mark.parametrize("sampler,eta", SAMPLER_CASES)
def test_recovers_gaussian_and_std_error_shrinks_with_steps(sampler, eta):
    errors = []
    for n in (20, 100, 400):
        x = run_sampler(sampler, n, eta, seed=11)
        assert abs(x.mean() - MU) < 0.01, (n, x.mean())  # 5·se = 5·0.2/√20000 ≈ 0.007, plus slack
        errors.append(abs(x.std() - S))
    assert errors[0] > errors[1] > errors[2], errors
    # At 400 steps: DDPM/DDIM-η=1 with β̃ keep an inherent discretisation bias (std ≈ 0.19);
    # DDIM-η=0 is a first-order ODE solver; DPM-Solver++(2M) is second order.
    bound = {("ddpm", 0.0): 0.015, ("ddim", 1.0): 0.015, ("ddim", 0.0): 0.008, ("dpmpp_2m", 0.0): 0.004}[(sampler, eta)]
    assert errors[2] < bound, errors


@pytest.mark.parametrize("sampler,eta,n", [("ddpm", 0.0, 20), ("ddpm", 0.0, 400), ("ddim", 1.0, 20)])
def test_stochastic_samplers_match_exact_chain_moments(sampler, eta, n):
    mean, var = ddpm_chain_moments(n)
    x = run_sampler(sampler, n, eta, seed=12).astype(np.float64)
    std = math.sqrt(var)
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(N)
    assert abs(x.std() - std) < 5 * std / math.sqrt(2 * N)


def test_ddpm_beta_variance_matches_exact_chain_moments():
    mean, var = ddpm_chain_moments(50, variance="beta")
    x = run_sampler("ddpm", 50, seed=13, ddpm_variance="beta").astype(np.float64)
    std = math.sqrt(var)
    assert std > math.sqrt(ddpm_chain_moments(50)[1])  # σ² = β_t adds more noise than β̃_t
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(N)
    assert abs(x.std() - std) < 5 * std / math.sqrt(2 * N)


def test_ddim_eta1_equals_ddpm_with_same_seed():
    # σ_t(η=1) = √β̃_t, and √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − β̃_t) ε equals eq. 11's mean: the same chain.
    a = run_sampler("ddpm", 50, seed=14, shape=(256, 1))
    b = run_sampler("ddim", 50, 1.0, seed=14, shape=(256, 1))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler,n", [("ddim", 20), ("ddim", 400), ("dpmpp_2m", 7), ("dpmpp_2m", 20)])
def test_deterministic_samplers_match_float64_reference(x_T, sampler, n):
    gain, offset = ddim_affine_map(n) if sampler == "ddim" else dpmpp_2m_affine_map(n)
    x = run_sampler(sampler, n, 0.0, x_T=x_T)
    np.testing.assert_allclose(x, gain * x_T.astype(np.float64) + offset, rtol=0, atol=2e-4)


def test_ddim_400_steps_matches_exact_ode_solution(x_T):
    error = np.abs(run_sampler("ddim", T, 0.0, x_T=x_T) - exact_ode_solution(x_T))
    assert error.max() < 0.02
    assert error.mean() < 0.005


def test_dpmpp_2m_beats_ddim_at_20_steps(x_T):
    exact = exact_ode_solution(x_T)
    ddim_error = np.abs(run_sampler("ddim", 20, 0.0, x_T=x_T) - exact).mean()
    dpm_error = np.abs(run_sampler("dpmpp_2m", 20, 0.0, x_T=x_T) - exact).mean()
    assert dpm_error < ddim_error
    # And it converges: with every step it is within float32 noise of the exact solution.
    assert np.abs(run_sampler("dpmpp_2m", T, 0.0, x_T=x_T) - exact).max() < 2e-3


# -- seeds and reproducibility ----------------------------------------------------------------------
@pytest.mark.parametrize("sampler,eta", SAMPLER_CASES)
def test_same_seed_bitwise_equal_eager_and_tf_function(sampler, eta):
    kwargs = dict(sampler=sampler, num_steps=25, eta=eta, seed=5)
    eager = samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **kwargs).numpy()
    graph = tf.function(lambda: samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **kwargs))().numpy()
    np.testing.assert_array_equal(eager, graph)
    again = samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **kwargs).numpy()
    np.testing.assert_array_equal(eager, again)
    other = samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **{**kwargs, "seed": 6}).numpy()
    assert np.abs(other - eager).min() > 0.0


def test_x_T_comes_from_seed_and_can_be_overridden():
    shape = (32, 1)
    x_T = tf.random.stateless_normal(shape, [9, 0])
    from_seed = samplers.sample(analytic_denoise, DIFFUSION, shape, sampler="ddim", num_steps=10, seed=9).numpy()
    explicit = samplers.sample(analytic_denoise, DIFFUSION, shape, sampler="ddim", num_steps=10, seed=0, x_T=x_T).numpy()
    np.testing.assert_array_equal(from_seed, explicit)


# -- timestep sequence and trajectories -----------------------------------------------------------
@pytest.mark.parametrize("n,T_", [(2, 400), (3, 400), (7, 400), (10, 400), (50, 400), (333, 400), (399, 400),
                                   (400, 400), (17, 1000), (999, 1000), (1000, 1000), (2, 2)])
def test_timestep_sequence_properties(n, T_):
    seq = samplers.timestep_sequence(n, T_).numpy()
    assert seq.dtype == np.int32 and seq.shape == (n,)
    assert seq[0] == T_ - 1 and seq[-1] == 0
    assert np.all(np.diff(seq) < 0)
    if n == T_:
        np.testing.assert_array_equal(seq, np.arange(T_ - 1, -1, -1))


def test_timestep_sequence_hand_values():
    # linspace(399, 0, 5) = 399, 299.25, 199.5, 99.75, 0; 199.5 rounds half to even → 200.
    np.testing.assert_array_equal(samplers.timestep_sequence(5, 400).numpy(), [399, 299, 200, 100, 0])
    np.testing.assert_array_equal(samplers.timestep_sequence(1, 400).numpy(), [399])


def test_ddpm_trajectory_follows_algorithm_2_step_by_step():
    shape, seed, n = (16, 1), 3, 6
    samples, frames = samplers.sample(analytic_denoise, DIFFUSION, shape, sampler="ddpm", num_steps=n, seed=seed,
                                      trajectory_every=1, spacing="uniform")
    frames, samples = frames.numpy(), samples.numpy()
    assert frames.shape == (n + 1,) + shape
    np.testing.assert_array_equal(frames[0], tf.random.stateless_normal(shape, [seed, 0]).numpy())
    np.testing.assert_array_equal(frames[-1], samples)
    for i, (t, t_prev) in enumerate(hand_sequence(n)):
        x = frames[i].astype(np.float64)
        a_t, a_p = ab(t), ab(t_prev)
        alpha = a_t / a_p
        eps = C1[t] * x + C0[t]
        mean = (x - (1 - alpha) / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha)  # eq. 11
        z = tf.random.stateless_normal(shape, [seed, i + 1]).numpy() if t_prev >= 0 else 0.0
        sigma = math.sqrt((1 - alpha) * (1 - a_p) / (1 - a_t))
        np.testing.assert_allclose(frames[i + 1], mean + sigma * z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,k", [(10, 3), (10, 5), (10, 10), (7, 1), (1, 4)])
def test_trajectory_frame_count_and_ends(n, k):
    shape = (8, 1)
    samples, frames = samplers.sample(analytic_denoise, DIFFUSION, shape, sampler="ddim", num_steps=n, eta=1.0, seed=4,
                                      trajectory_every=k)
    _, every = samplers.sample(analytic_denoise, DIFFUSION, shape, sampler="ddim", num_steps=n, eta=1.0, seed=4,
                               trajectory_every=1)
    assert frames.shape[0] == math.ceil(n / k) + 1
    np.testing.assert_array_equal(frames[0].numpy(), tf.random.stateless_normal(shape, [4, 0]).numpy())
    np.testing.assert_array_equal(frames[-1].numpy(), samples.numpy())
    for j in range(frames.shape[0] - 1):  # frame j is x before step j·k
        np.testing.assert_array_equal(frames[j].numpy(), every[j * k].numpy())


# -- classifier-free guidance -------------------------------------------------------------------------
NULL = 10


class RecordingEps:
    """ε(x, t, y) = 0.1 x + 0.05 y + 0.001 t, recording every executed call's batch and labels.

    The record is a `tf.py_function`, so it sees every call also when `sample` runs its loop as a graph.
    """

    def __init__(self):
        self.calls = []

    def _record(self, x, labels):
        self.calls.append((int(x.shape[0]), labels.numpy().tolist()))
        return 0

    def __call__(self, x, t, labels):
        recorded = tf.py_function(self._record, [x, labels], tf.int32)
        with tf.control_dependencies([recorded]):
            return 0.1 * x + 0.05 * tf.cast(labels, x.dtype)[:, None] + 0.001 * tf.cast(t, x.dtype)[:, None]


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_guidance_is_one_batched_call_with_cfg_formula(w):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 1)).astype(np.float32))
    t = tf.constant([5, 5, 9, 9])
    labels = tf.constant([0, 3, 7, 10])
    eps_fn = RecordingEps()
    guided = samplers.classifier_free_guidance(eps_fn, w, NULL)(x, t, labels).numpy()
    assert eps_fn.calls == [(8, [0, 3, 7, 10, NULL, NULL, NULL, NULL])]
    x64, t64, y64 = x.numpy().astype(np.float64), t.numpy()[:, None], labels.numpy()[:, None]
    conditional = 0.1 * x64 + 0.05 * y64 + 0.001 * t64
    unconditional = 0.1 * x64 + 0.05 * NULL + 0.001 * t64
    np.testing.assert_allclose(guided, (1 + w) * conditional - w * unconditional, rtol=1e-5, atol=1e-5)


def test_zero_guidance_is_the_plain_conditional_in_one_call():
    x = tf.constant([[0.3], [-1.2]])
    t, labels = tf.constant([2, 2]), tf.constant([1, 4])
    eps_fn = RecordingEps()
    out = samplers.classifier_free_guidance(eps_fn, 0.0, NULL)(x, t, labels).numpy()
    assert eps_fn.calls == [(2, [1, 4])]
    np.testing.assert_array_equal(out, RecordingEps()(x, t, labels).numpy())
    assert samplers.classifier_free_guidance(eps_fn, None, NULL) is eps_fn
    assert samplers.classifier_free_guidance(eps_fn, 1.0, None) is eps_fn


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_guidance_on_the_prediction_is_guidance_on_x0_and_on_eps(prediction_type):
    """x̂_0, ε̂ and v are affine in one another with coefficients of (x_t, t) only, and (1 + w) − w = 1:
    guiding the network's prediction and converting equals guiding the converted x̂_0 and ε̂."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(6, 3)))
    t = tf.constant([0, 3, 50, 200, 398, 399])
    labels = tf.constant([0, 1, 2, 3, 4, 5])
    weights = tf.constant(rng.normal(size=(NULL + 1, 3)))

    def predict(x_, t_, labels_):  # a float64 "network" that depends on the label
        return 0.7 * x_ + tf.gather(weights, labels_) + 0.001 * tf.cast(t_, tf.float64)[:, None]

    def pair(x_, t_, labels_):
        return DIFFUSION.x0_and_eps(x_, t_, predict(x_, t_, labels_), prediction_type)

    w = 2.5
    guide_then_convert = DIFFUSION.x0_and_eps(x, t, samplers.classifier_free_guidance(predict, w, NULL)(x, t, labels),
                                             prediction_type)
    convert_then_guide = samplers.classifier_free_guidance(pair, w, NULL)(x, t, labels)
    for a, b in zip(guide_then_convert, convert_then_guide):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9)


def test_sample_with_a_guided_denoiser_batches_every_step():
    shape, n = (3, 1), 4
    labels = tf.constant([1, 2, 3])

    def run(guidance_scale):
        eps_fn = RecordingEps()
        denoise = eps_denoiser(samplers.classifier_free_guidance(eps_fn, guidance_scale, NULL))
        out = samplers.sample(denoise, DIFFUSION, shape, sampler="ddim", num_steps=n, seed=2, labels=labels).numpy()
        return out, eps_fn.calls

    guided, calls = run(2.0)
    assert [c[0] for c in calls] == [6] * n
    assert all(c[1] == [1, 2, 3, NULL, NULL, NULL] for c in calls)
    plain, _ = run(None)
    zero, calls = run(0.0)
    assert [c[0] for c in calls] == [3] * n
    np.testing.assert_array_equal(zero, plain)
    assert not np.allclose(guided, plain)


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sampler="foo"), "Received: sampler='foo'"),
        (dict(num_steps=0), "Received: num_steps=0"),
        (dict(num_steps=T + 1), f"Received: num_steps={T + 1}"),
        (dict(num_steps=2.5), "Received: num_steps=2.5"),
        (dict(num_steps=True), "Received: num_steps=True"),
        (dict(sampler="ddim", eta=1.5), "Received: eta=1.5"),
        (dict(sampler="ddim", eta=-0.1), "Received: eta=-0.1"),
        (dict(ddpm_variance="large"), "Received: ddpm_variance='large'"),
        (dict(trajectory_every=0), "Received: trajectory_every=0"),
    ],
)
def test_invalid_requests_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        samplers.sample(analytic_denoise, DIFFUSION, (2, 1), **kwargs)


def test_validate_request_with_concrete_tensors():
    samplers.validate_request(T, sampler=tf.constant("ddim").numpy().decode(), num_steps=np.int32(5), eta=1.0)
    with pytest.raises(ValueError, match="Received: guidance_scale=inf"):  # `generate`'s guidance check
        samplers.validate_request(T, guidance_scale=float("inf"))
    with pytest.raises(ValueError, match="Received: num_steps=0"):
        samplers.sample(analytic_denoise, DIFFUSION, (2, 1), num_steps=tf.constant(0))
    with pytest.raises(ValueError, match="Received: sampler='foo'"):
        samplers.sample(analytic_denoise, DIFFUSION, (2, 1), sampler=tf.constant("foo"))


@pytest.fixture(scope="module")
def graph_sample():
    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)])
    def fn(sampler, num_steps, eta):
        return samplers.sample(analytic_denoise, DIFFUSION, (4, 1), sampler=sampler, num_steps=num_steps, eta=eta,
                               seed=3)

    return fn


def test_sample_in_graph_with_tensor_sampler_selects_the_right_branch(graph_sample):
    # Symbolic tensors are trusted here; the exported signatures assert on them (test_export.py).
    for sampler, eta in SAMPLER_CASES:
        expected = samplers.sample(analytic_denoise, DIFFUSION, (4, 1), sampler=sampler, num_steps=5, eta=eta, seed=3)
        np.testing.assert_array_equal(graph_sample(sampler, 5, eta).numpy(), expected.numpy())


# -- the registry -----------------------------------------------------------------------------------
def test_a_new_solver_is_a_step_function_and_a_registry_entry(monkeypatch):
    """A solver registered in SOLVERS runs through the driver, by name and as a string tensor."""
    def euler_step(x, x0, eps, alpha_bar_t, alpha_bar_prev, noise, state, options):  # = DDIM, η = 0
        x_prev = tf.cast(tf.sqrt(alpha_bar_prev), x.dtype) * x0 + tf.cast(tf.sqrt(1.0 - alpha_bar_prev), x.dtype) * eps
        return x_prev, state + 1

    counting = samplers.Solver(euler_step, initial_state=lambda x_T: tf.constant(0))
    monkeypatch.setitem(samplers.SOLVERS, "euler", counting)
    got = samplers.sample(analytic_denoise, DIFFUSION, (16, 1), sampler="euler", num_steps=7, seed=1).numpy()
    ddim = samplers.sample(analytic_denoise, DIFFUSION, (16, 1), sampler="ddim", num_steps=7, seed=1).numpy()
    np.testing.assert_allclose(got, ddim, rtol=0, atol=1e-6)
    by_tensor = tf.function(lambda name: samplers.sample(analytic_denoise, DIFFUSION, (16, 1), sampler=name,
                                                         num_steps=7, seed=1))(tf.constant("euler"))
    np.testing.assert_array_equal(by_tensor.numpy(), got)
    assert set(samplers.SAMPLERS) <= set(samplers.SOLVERS)
    assert samplers.SAMPLERS == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc3", "heun", "dpmpp_2m_sde")


# -- pure step functions against hand formulas ----------------------------------------------------
def _step_inputs(seed=0, n=64):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32),
            rng.normal(size=(n, 2)).astype(np.float32))


def _x0(x, eps, a_t):
    return diffusion_lib.x0_from_eps(tf.constant(x), tf.constant(eps), tf.constant(a_t, tf.float64)).numpy()


@pytest.mark.parametrize("t,t_prev", [(399, 398), (100, 50), (10, 0), (0, -1)])
def test_ddpm_step_is_eq_11_plus_sigma_z(t, t_prev):
    x, eps, z = _step_inputs()
    a_t, a_p = ab(t), ab(t_prev)
    alpha, beta = a_t / a_p, 1 - a_t / a_p
    x0 = _x0(x, eps, a_t)
    mean = (x.astype(np.float64) - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha)
    at, ap = tf.constant(a_t, tf.float64), tf.constant(a_p, tf.float64)
    got_mean = samplers.ddpm_step(x, x0, eps, at, ap, 0.0).numpy()
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5 / math.sqrt(alpha))
    if t_prev < 0:  # into the data: Algorithm 2's last line, μ_θ(x_1, 1) = x̂_0
        np.testing.assert_array_equal(got_mean, x0)
    beta_tilde = beta * (1 - a_p) / (1 - a_t)
    np.testing.assert_allclose(samplers.ddpm_step(x, x0, eps, at, ap, z).numpy() - got_mean,
                               math.sqrt(beta_tilde) * z, atol=1e-5)
    np.testing.assert_allclose(samplers.ddpm_step(x, x0, eps, at, ap, z, "beta").numpy() - got_mean,
                               math.sqrt(beta) * z, atol=1e-5)
    if t_prev == t - 1:  # consecutive: the very formula of GaussianDiffusion.p_mean_variance
        p_mean = DIFFUSION.p_mean_variance(tf.constant(eps), tf.constant(x), tf.fill([x.shape[0]], t))[0].numpy()
        np.testing.assert_array_equal(got_mean, p_mean)
    with pytest.raises(ValueError, match="variance_type='large'"):
        samplers.ddpm_step(x, x0, eps, at, ap, z, "large")


@pytest.mark.parametrize("t,t_prev", [(399, 398), (300, 100), (20, 0), (5, -1)])
def test_ddim_step_hand_formula_and_eta_one_is_ddpm(t, t_prev):
    x, eps, z = _step_inputs(1)
    a_t, a_p = ab(t), ab(t_prev)
    at, ap = tf.constant(a_t, tf.float64), tf.constant(a_p, tf.float64)
    x0 = (x.astype(np.float64) - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    x0_32 = _x0(x, eps, a_t)
    deterministic = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps  # η = 0, Song et al. eq. 12
    np.testing.assert_allclose(samplers.ddim_step(x, x0_32, eps, at, ap, 0.0, z).numpy(), deterministic, atol=2e-5)
    # η = 1: σ = √β̃ (the DDPM posterior), and the mean is DDPM's eq. 11.
    beta_tilde = (1 - a_t / a_p) * (1 - a_p) / (1 - a_t)
    zero = samplers.ddim_step(x, x0_32, eps, at, ap, 1.0, np.zeros_like(z)).numpy()
    np.testing.assert_allclose(samplers.ddim_step(x, x0_32, eps, at, ap, 1.0, z).numpy() - zero,
                               math.sqrt(beta_tilde) * z, atol=2e-5)
    np.testing.assert_allclose(zero, samplers.ddpm_step(x, x0_32, eps, at, ap, 0.0).numpy(), atol=2e-5)
    # η = 0.5: σ = ½√β̃ and the ε coefficient is √(1 − ᾱ_prev − σ²).
    sigma = 0.5 * math.sqrt(beta_tilde)
    half = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma**2, 0.0)) * eps + sigma * z
    np.testing.assert_allclose(samplers.ddim_step(x, x0_32, eps, at, ap, 0.5, z).numpy(), half, atol=2e-5)


@pytest.mark.parametrize("t,t_prev", [(399, 370), (200, 150), (30, 0)])
def test_dpmpp_2m_first_step_equals_ddim_eta0(t, t_prev):
    x, eps, _ = _step_inputs(2)
    at, ap = tf.constant(ab(t), tf.float64), tf.constant(ab(t_prev), tf.float64)
    x0 = _x0(x, eps, ab(t))
    first, h = samplers.dpmpp_2m_step(x, x0, tf.zeros_like(x0), at, ap, tf.constant(1.0, tf.float64), True)
    ddim = samplers.ddim_step(x, x0, eps, at, ap, 0.0, tf.zeros_like(x0))
    np.testing.assert_allclose(first.numpy(), ddim.numpy(), rtol=1e-5, atol=1e-5)
    lam = lambda a: 0.5 * math.log(a / (1 - a))  # noqa: E731
    assert h.numpy() == pytest.approx(lam(ab(t_prev)) - lam(ab(t)), rel=1e-12)


def test_dpmpp_2m_second_order_step_and_final_step():
    x, x0, previous_x0 = _step_inputs(3)
    t, t_prev = 200, 150
    a_t, a_p = ab(t), ab(t_prev)
    at, ap = tf.constant(a_t, tf.float64), tf.constant(a_p, tf.float64)
    lam = lambda a: 0.5 * math.log(a / (1 - a))  # noqa: E731
    h = lam(a_p) - lam(a_t)
    h_prev = 0.7 * h
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * x0.astype(np.float64) - 1 / (2 * r) * previous_x0
    expected = math.sqrt((1 - a_p) / (1 - a_t)) * x - math.sqrt(a_p) * (math.exp(-h) - 1) * D
    got, _ = samplers.dpmpp_2m_step(x, x0, previous_x0, at, ap, tf.constant(h_prev, tf.float64), False)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    # Into the data (ᾱ_prev = 1) the step returns x̂_0 itself, finite.
    final, _ = samplers.dpmpp_2m_step(x, x0, previous_x0, at, tf.constant(1.0, tf.float64),
                                      tf.constant(h_prev, tf.float64), False)
    np.testing.assert_array_equal(final.numpy(), x0)


def test_half_log_snr():
    assert samplers.half_log_snr(tf.constant(0.5, tf.float64)).numpy() == pytest.approx(0.0, abs=1e-15)
    assert samplers.half_log_snr(tf.constant(0.8, tf.float64)).numpy() == pytest.approx(math.log(2.0), rel=1e-12)


# -- issue 14: spacings ------------------------------------------------------------------------------
T_LONG = 1000
ALPHA_BAR_LONG = np.cumprod(1.0 - schedules.make_betas("linear", T_LONG))


def _expected_spacing(spacing, n, alpha_bar, top):
    """The targets of each spacing mapped to integer t, written independently with NumPy's interp."""
    lam = 0.5 * np.log(alpha_bar / (1.0 - alpha_bar))[: top + 1]  # decreasing in t
    grid = np.arange(top + 1, dtype=np.float64)
    if spacing == "uniform":
        return np.round(np.linspace(top, 0, n))
    if spacing == "quadratic":
        return np.round(top * np.linspace(1.0, 0.0, n) ** 2)
    if spacing == "logsnr":
        targets = np.linspace(lam[top], lam[0], n)
    else:  # Karras et al. 2022, eq. 5, on σ = e^{−λ}
        sigma_max, sigma_min = np.exp(-lam[top]), np.exp(-lam[0])
        targets = -np.log((sigma_max ** (1 / 7) + np.linspace(0, 1, n) * (sigma_min ** (1 / 7) - sigma_max ** (1 / 7))) ** 7)
    return np.round(np.interp(targets, lam[::-1], grid[::-1]))


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.parametrize("n,top", [(5, 999), (10, 999), (20, 999), (7, 300), (4, 40)])
def test_spacings_place_their_targets_on_the_grid(spacing, n, top):
    """Away from t = 0's crowding, every timestep is the nearest integer to the spacing's target."""
    seq = samplers.timestep_sequence(n, T_LONG, spacing, ALPHA_BAR_LONG, max_timestep=top).numpy()
    np.testing.assert_array_equal(seq, _expected_spacing(spacing, n, ALPHA_BAR_LONG, top).astype(np.int32))


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.parametrize("n,T_,top", [(2, 1000, None), (50, 1000, None), (200, 1000, None), (999, 1000, None),
                                      (1000, 1000, None), (400, 400, None), (3, 10, None), (10, 10, None),
                                      (1, 10, None), (31, 1000, 30), (1, 1000, 0), (0, 1000, -1)])
def test_every_spacing_is_distinct_decreasing_from_top_to_zero(spacing, n, T_, top):
    alpha_bar = ALPHA_BAR_LONG if T_ == 1000 else np.cumprod(1.0 - schedules.make_betas("cosine", T_))
    first = T_ - 1 if top is None else top
    seq = samplers.timestep_sequence(n, T_, spacing, alpha_bar, max_timestep=top).numpy()
    assert seq.dtype == np.int32 and seq.shape == (n,)
    if n:  # one step is [first], straight into the data
        assert seq[0] == first and seq[-1] == (0 if n > 1 else first) and np.all(np.diff(seq) < 0), seq
    if n == first + 1:  # as many steps as timesteps: every t, whatever the spacing
        np.testing.assert_array_equal(seq, np.arange(first, -1, -1))
    by_tensor = samplers.timestep_sequence(tf.constant(n), T_, tf.constant(spacing), alpha_bar,
                                           max_timestep=None if top is None else tf.constant(top))
    np.testing.assert_array_equal(by_tensor.numpy(), seq)


def test_logsnr_spacing_is_uniform_in_log_snr_and_karras_dense_near_the_data():
    seq = samplers.timestep_sequence(12, T_LONG, "logsnr", ALPHA_BAR_LONG).numpy()
    lam = 0.5 * np.log(ALPHA_BAR_LONG[seq] / (1.0 - ALPHA_BAR_LONG[seq]))
    steps = np.diff(lam)
    assert np.all(steps > 0) and steps.max() / steps.min() < 1.5, steps  # rounding to integers only
    karras = samplers.timestep_sequence(12, T_LONG, "karras", ALPHA_BAR_LONG).numpy()
    sigma = np.sqrt((1.0 - ALPHA_BAR_LONG[karras]) / ALPHA_BAR_LONG[karras])
    ramp = np.diff(sigma ** (1 / 7))
    np.testing.assert_allclose(ramp, ramp.mean(), rtol=0.2)  # σ^{1/ρ} uniform up to rounding


def test_spacing_validation():
    with pytest.raises(ValueError, match="Received: spacing='cosine'"):
        samplers.timestep_sequence(5, T, "cosine", ALPHA_BAR)
    with pytest.raises(ValueError, match="alphas_cumprod=None"):
        samplers.timestep_sequence(5, T, "logsnr")
    with pytest.raises(ValueError, match="Received: spacing='cosine'"):
        samplers.sample(analytic_denoise, DIFFUSION, (2, 1), spacing="cosine")


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_auto_spacing_is_the_samplers_own_grid_in_python_and_in_a_graph(sampler):
    """"auto" (the default) runs `SOLVERS[sampler].spacing`: the same samples as naming that grid, bitwise,
    from Python strings and from the string tensors of an exported signature."""
    own = samplers.SOLVERS[sampler].spacing
    assert own in samplers.SPACINGS and samplers.resolve_spacing(sampler, "auto") == own
    assert samplers.resolve_spacing(sampler, "quadratic") == "quadratic"
    kwargs = dict(sampler=sampler, num_steps=7, eta=0.0, seed=3)
    named = samplers.sample(analytic_denoise, DIFFUSION, (16, 1), spacing=own, **kwargs).numpy()
    by_default = samplers.sample(analytic_denoise, DIFFUSION, (16, 1), **kwargs).numpy()
    np.testing.assert_array_equal(by_default, named)
    by_tensor = tf.function(lambda s, sp: samplers.sample(analytic_denoise, DIFFUSION, (16, 1), **{
        **kwargs, "sampler": s, "spacing": sp}))
    np.testing.assert_array_equal(by_tensor(tf.constant(sampler), tf.constant("auto")).numpy(), named)
    other = "karras" if own != "karras" else "quadratic"  # a named grid still wins over the sampler's own
    assert not np.array_equal(by_tensor(tf.constant(sampler), tf.constant(other)).numpy(), named)


# -- issue 14: the new solvers' steps ---------------------------------------------------------------------
def _lam(a):
    return 0.5 * math.log(a / (1.0 - a))


def _alpha_bar_at(lam):
    return 1.0 / (1.0 + math.exp(-2.0 * lam))


def _exact_integral_step(x_t, lam_t, lam_next, x0_of_lambda):
    """x_next = (σ_n/σ_t) x_t + σ_n ∫ e^λ x̂_0(λ) dλ (Lu et al. 2022b, eq. 8) by scipy quadrature."""
    import scipy.integrate

    sigma = lambda lam: math.sqrt(1.0 - _alpha_bar_at(lam))  # noqa: E731
    integral = scipy.integrate.quad(lambda lam: math.exp(lam) * x0_of_lambda(lam), lam_t, lam_next, epsabs=1e-13,
                                    epsrel=1e-13)[0]
    return sigma(lam_next) / sigma(lam_t) * x_t + sigma(lam_next) * integral


def _f64(value):
    return tf.constant(value, tf.float64)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_3m_integrates_polynomials_of_its_order_exactly(order):
    """Order p is exact when x̂_0(λ) is a polynomial of degree p − 1 (eq. 8's integral, by quadrature)."""
    coefficients = (0.3, -0.7, 0.25)[:order]
    x0_of = lambda lam: sum(c * lam**k for k, c in enumerate(coefficients))  # noqa: E731
    lam_t, h, h_1, h_2 = -1.0, 0.9, 0.5, 1.3
    x_t = np.array([[0.37], [-1.2]])
    history = ((_f64(np.full((2, 1), x0_of(lam_t - h_1))), _f64(np.full((2, 1), x0_of(lam_t - h_1 - h_2)))),
               (_f64(h_1), _f64(h_2)))
    got, h_out = samplers.dpmpp_3m_step(_f64(x_t), _f64(np.full((2, 1), x0_of(lam_t))), history[0],
                                        _f64(_alpha_bar_at(lam_t)), _f64(_alpha_bar_at(lam_t + h)), history[1],
                                        tf.constant(order))
    np.testing.assert_allclose(got.numpy(), _exact_integral_step(x_t, lam_t, lam_t + h, x0_of), rtol=0, atol=1e-12)
    assert h_out.numpy() == pytest.approx(h, rel=1e-12)
    if order == 3:  # one order less leaves an error
        lower, _ = samplers.dpmpp_3m_step(_f64(x_t), _f64(np.full((2, 1), x0_of(lam_t))), history[0],
                                          _f64(_alpha_bar_at(lam_t)), _f64(_alpha_bar_at(lam_t + h)), history[1],
                                          tf.constant(2))
        assert np.abs(lower.numpy() - _exact_integral_step(x_t, lam_t, lam_t + h, x0_of)).max() > 1e-3


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.parametrize("num_steps", [4, 5, 10, 20])
def test_dpmpp_3m_takes_order_3_exactly_on_the_interior_steps_up_to_1_long_in_lambda(spacing, num_steps):
    """Warm-up 1, 2; orders 2 and 1 on the last two steps; else 3 where h ≤ 1, 2 where h > 1."""
    timesteps = samplers.timestep_sequence(num_steps, T, spacing, alphas_cumprod=DIFFUSION.alphas_cumprod).numpy()
    alpha_bar = [DIFFUSION.alphas_cumprod[int(t)] for t in timesteps] + [1.0]
    lam = [0.5 * math.log(a / (1 - a)) for a in alpha_bar[:-1]]
    got = [int(samplers.dpmpp_3m_order(tf.constant(i), tf.constant(num_steps), _f64(alpha_bar[i]),
                                       _f64(alpha_bar[i + 1]))) for i in range(num_steps)]
    expected = [min(i + 1, num_steps - i, 3 if i + 1 == num_steps or lam[i + 1] - lam[i] <= 1.0 else 2)
                for i in range(num_steps)]
    assert got == expected, (timesteps, np.diff(lam))
    assert got[:2] == [1, 2][:num_steps] and got[-1] == 1


def test_unic_2_is_exact_for_quadratic_x0_and_its_weights_solve_r_rho_b():
    x0_of = lambda lam: 0.3 - 0.7 * lam + 0.25 * lam**2  # noqa: E731
    lam_base, h, h_1 = -0.5, 0.8, 0.6
    x_base = np.array([[0.4]])
    history = (_f64([[x0_of(lam_base)]]), _f64([[x0_of(lam_base - h_1)]]), _f64(_alpha_bar_at(lam_base)),
               _f64(_alpha_bar_at(lam_base - h_1)))
    corrected = samplers._unic_correct(_f64(x_base), _f64([[x0_of(lam_base + h)]]), history,
                                       _f64(_alpha_bar_at(lam_base + h)), tf.constant(2))
    np.testing.assert_allclose(corrected.numpy(), _exact_integral_step(x_base, lam_base, lam_base + h, x0_of), atol=1e-12)
    # Zhao et al. 2023: R = [[1, 1], [r, 1]], b_k = k! g_k / B(ĥ) with ĥ = −h and B(ĥ) = e^ĥ − 1.
    r = -h_1 / h
    phi = math.expm1(-h)
    g_1 = phi / -h - 1.0
    g_2 = g_1 / -h - 0.5
    rho = np.linalg.solve([[1.0, 1.0], [r, 1.0]], [g_1 / phi, 2.0 * g_2 / phi])
    got = [v.numpy() for v in samplers.unipc_coefficients(_f64(h), _f64(r), tf.constant(2))]
    np.testing.assert_allclose(got, rho, rtol=1e-12)
    assert [v.numpy() for v in samplers.unipc_coefficients(_f64(h), _f64(r), tf.constant(1))] == [0.0, 0.5]


def _exact_noise_step(x_start, lam_start, lam_end, eps_of_lambda):
    """x_end = (α_end/α_start) x_start − α_end ∫ e^{−λ} ε̂(λ) dλ (Lu et al. 2022a, eq. 3.4), by quadrature."""
    import scipy.integrate

    integral = scipy.integrate.quad(lambda lam: math.exp(-lam) * eps_of_lambda(lam), lam_start, lam_end, epsabs=1e-14,
                                    epsrel=1e-14)[0]
    return (math.sqrt(_alpha_bar_at(lam_end) / _alpha_bar_at(lam_start)) * x_start
            - math.sqrt(_alpha_bar_at(lam_end)) * integral)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_unipc3_corrector_and_predictor_are_exact_for_polynomial_noise_of_their_order(degree):
    """Zhao et al. 2023, Theorem 3.1: with ρ solving the order conditions, UniC-3 (nodes s−2, s−1, s, t) is exact
    when ε̂(λ) is a cubic and UniP-3 (nodes t−2, t−1, t) when it is a quadratic; UniC-2 misses the cubic. The
    predictor starts from x^c with the ε̂ there, which the step forms from the x̂_0 it is given: an x̂_0
    consistent with (x^c, ε̂(λ_t)) makes that ε̂ the polynomial's value."""
    coefficients = (0.3, -0.7, 0.25, 0.11)[:degree + 1]
    eps_of = lambda lam: sum(c * lam**k for k, c in enumerate(coefficients))  # noqa: E731
    lam_3, lam_2, lam_1, lam_t, lam_next = -2.1, -1.3, -0.6, 0.2, 1.1  # s−2, s−1, s, t, next
    eps = lambda lam: _f64([[eps_of(lam)]])  # noqa: E731
    alpha_bar_t = _alpha_bar_at(lam_t)
    x_base = 0.4
    for index, corrector_order in ((3, 3), (2, 2)):
        state = (_f64([[x_base]]), (eps(lam_1), eps(lam_2), eps(lam_3)),
                 tuple(_f64(_alpha_bar_at(lam)) for lam in (lam_1, lam_2, lam_3)))

        def step(x0):
            return samplers.unipc3_step(_f64([[0.123]]), _f64([[x0]]), eps(lam_t), state, _f64(alpha_bar_t),
                                        _f64(_alpha_bar_at(lam_next)), tf.constant(index), tf.constant(10))

        _, (x_c, _, _) = step(0.0)  # the corrector reads no x̂_0
        x_c = x_c.numpy()[0, 0]
        consistent_x0 = (x_c - math.sqrt(1.0 - alpha_bar_t) * eps_of(lam_t)) / math.sqrt(alpha_bar_t)
        x_next, (_, (eps_carried, _, _), _) = step(consistent_x0)
        corrector_error = abs(x_c - _exact_noise_step(x_base, lam_1, lam_t, eps_of))
        predictor_error = abs(x_next.numpy()[0, 0] - _exact_noise_step(x_c, lam_t, lam_next, eps_of))
        assert abs(eps_carried.numpy()[0, 0] - eps_of(lam_t)) < 1e-12
        assert (corrector_error < 1e-12) == (degree <= corrector_order), (index, corrector_error)
        assert (predictor_error < 1e-12) == (degree <= 2), (index, predictor_error)


def test_unipc3_carries_the_corrected_points_eps_at_the_networks_x0():
    """After UniC moves x_t to x^c, the next steps use the ε̂ (x^c − α x̂_0)/σ (x̂_0 held), not the one at x_t."""
    alpha_bar_1, alpha_bar_t, alpha_bar_next = 0.2, 0.5, 0.8
    x_t, x0 = _f64([[0.3, -0.2]]), _f64([[0.1, 0.4]])
    eps = diffusion_lib.eps_from_x0(x_t, x0, _f64(alpha_bar_t))
    state = (_f64([[0.5, 0.1]]), (_f64([[0.2, -0.3]]),) * 3, tuple(_f64(a) for a in (alpha_bar_1, 0.1, 0.05)))
    _, (x_c, (eps_carried, eps_1, _), _) = samplers.unipc3_step(x_t, x0, eps, state, _f64(alpha_bar_t),
                                                                _f64(alpha_bar_next), tf.constant(1), tf.constant(6))
    assert np.abs(x_c.numpy() - x_t.numpy()).min() > 1e-3  # the corrector moved the point
    np.testing.assert_allclose(eps_carried.numpy(), (x_c.numpy() - math.sqrt(alpha_bar_t) * x0.numpy())
                               / math.sqrt(1.0 - alpha_bar_t), rtol=1e-12)
    np.testing.assert_array_equal(eps_1.numpy(), state[1][0].numpy())


def test_the_corrector_solvers_stay_stable_under_a_learned_like_error_in_eps():
    """The exact Gaussian denoiser plus a 0.05 error in ε̂ that changes with t and x, as a network's does: the
    predictor-corrector solvers' samples move from the exact denoiser's by at most twice DDIM's shift. The
    paper's noise-form UniPC-3, which keeps the ε̂ of the uncorrected point, moved them by 0.66 at 10 steps
    (65× DDIM's 0.010) and is what this guards against; held x̂_0 gives 0.013. (DPM-Solver++(3M), no
    corrector, moves them 4× DDIM's at 10 steps: its quadratic extrapolation of x̂_0 magnifies an error
    that changes from step to step.)"""
    from tfdiffusion import analytic

    diffusion = GaussianDiffusion(schedules.make_betas("linear", 1000))
    exact = analytic.TOYS["gaussian"].denoise_fn(diffusion)

    def perturbed(x, t, labels=None):
        _, eps = exact(x, t, labels)
        eps = eps + 0.05 * tf.sin(0.37 * tf.cast(t, x.dtype)[:, None] + 3.0 * x)
        return diffusion_lib.x0_from_eps(x, eps, diffusion.alpha_bar(t, x)), eps

    x_T = tf.constant(analytic.normal_quantiles(2048).astype(np.float32)[:, None])
    for num_steps in (10, 20):
        shift = {}
        for sampler in ("ddim", "dpmpp_2m", "unipc", "unipc3"):
            runs = [samplers.sample(fn, diffusion, x_T.shape, sampler=sampler, num_steps=num_steps, x_T=x_T, seed=0)
                    for fn in (exact, perturbed)]
            shift[sampler] = float(np.abs(runs[1].numpy() - runs[0].numpy()).mean())
        assert 0.005 < shift["ddim"] < 0.02, shift
        assert max(shift.values()) <= 2.0 * shift["ddim"], (num_steps, shift)


def test_first_steps_of_the_lambda_solvers_are_ddim():
    """With no history every data-prediction solver's first step is DDIM's (the exponential integrator of
    constant x̂_0), and the step into the data returns x̂_0."""
    x, eps, _ = _step_inputs(4)
    t, t_prev = 300, 150
    at, ap = _f64(ab(t)), _f64(ab(t_prev))
    x0 = _x0(x, eps, ab(t))
    ddim = samplers.ddim_step(x, x0, eps, at, ap, 0.0, tf.zeros_like(x0)).numpy()
    zeros = tf.zeros_like(x0)
    third, _ = samplers.dpmpp_3m_step(x, x0, (zeros, zeros), at, ap, (_f64(1.0), _f64(1.0)), tf.constant(1))
    unipc, _ = samplers.unipc_step(x, x0, (zeros, zeros, zeros, _f64(0.5), _f64(0.5)), at, ap, tf.constant(0),
                                   tf.constant(5))
    noise_history = (zeros, (zeros, zeros, zeros), (_f64(0.5), _f64(0.25), _f64(0.125)))
    unipc3, _ = samplers.unipc3_step(x, x0, eps, noise_history, at, ap, tf.constant(0), tf.constant(5))
    heun, state = samplers.heun_step(x, x0, eps, at, ap, (zeros, zeros, _f64(0.5), tf.constant(False)))
    for got in (third, unipc, unipc3, heun):
        np.testing.assert_allclose(got.numpy(), ddim, rtol=1e-5, atol=1e-5)
    assert bool(state[3].numpy())  # the next call corrects
    for step in (lambda a: samplers.dpmpp_3m_step(x, x0, (zeros, zeros), at, a, (_f64(0.3), _f64(0.2)), tf.constant(3)),
                 lambda a: samplers.unipc_step(x, x0, (zeros, zeros, zeros, _f64(0.5), _f64(0.5)), at, a,
                                               tf.constant(3), tf.constant(4)),
                 lambda a: samplers.unipc3_step(x, x0, eps, noise_history, at, a, tf.constant(3), tf.constant(4)),
                 lambda a: samplers.heun_step(x, x0, eps, at, a, (zeros, zeros, _f64(0.5), tf.constant(False)))):
        np.testing.assert_array_equal(step(_f64(1.0))[0].numpy(), x0)


def test_heun_corrector_is_the_trapezoid_in_sigma():
    """Karras et al. 2022, Algorithm 1, line 8: x̄_{i+1} = x̄_i + (σ_{i+1} − σ_i)(d_i + d')/2, d = ε̂, x̄ = x/√ᾱ."""
    x_i, eps_i, eps_new = _step_inputs(5)
    x_pred = np.random.default_rng(6).normal(size=x_i.shape).astype(np.float32)  # the corrector ignores it
    t_i, t_next = 250, 120
    sigma = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    expected = math.sqrt(ab(t_next)) * (x_i / math.sqrt(ab(t_i))
                                        + (sigma(ab(t_next)) - sigma(ab(t_i))) * (eps_i.astype(np.float64) + eps_new) / 2)
    state = (tf.constant(x_i), tf.constant(eps_i), _f64(ab(t_i)), tf.constant(True))
    got, new_state = samplers.heun_step(x_pred, tf.zeros_like(x_pred), eps_new, _f64(ab(t_next)), _f64(ab(t_next)), state)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert not bool(new_state[3].numpy())


def test_heun_evaluates_twice_per_step_but_the_last():
    assert samplers.heun_timesteps(tf.constant([9, 5, 2, 0])).numpy().tolist() == [9, 5, 5, 2, 2, 0, 0]
    for n in (1, 2, 5):
        eps_fn = RecordingEps()
        samplers.sample(eps_denoiser(lambda x, t, labels: eps_fn(x, t, tf.zeros(tf.shape(x)[:1], tf.int32))),
                        DIFFUSION, (3, 1), sampler="heun", num_steps=n, seed=0)
        assert len(eps_fn.calls) == samplers.network_evaluations("heun", n) == 2 * n - 1
    assert samplers.network_evaluations("unipc", 7) == 7


def test_sde_dpmpp_2m_first_step_is_ddpm_and_second_matches_the_formula():
    x, eps, z = _step_inputs(7)
    t, t_prev = 200, 120
    a_t, a_p = ab(t), ab(t_prev)
    at, ap = _f64(a_t), _f64(a_p)
    x0 = _x0(x, eps, a_t)
    first, h = samplers.dpmpp_2m_sde_step(x, x0, tf.zeros_like(x0), at, ap, _f64(1.0), True, z)
    np.testing.assert_allclose(first.numpy(), samplers.ddpm_step(x, x0, eps, at, ap, z).numpy(), rtol=1e-4, atol=1e-4)
    previous_x0, h_prev = np.random.default_rng(8).normal(size=x.shape), 0.6 * h.numpy()
    r = h_prev / h.numpy()
    D = (1 + 1 / (2 * r)) * x0.astype(np.float64) - 1 / (2 * r) * previous_x0
    hh = h.numpy()
    expected = (math.sqrt((1 - a_p) / (1 - a_t)) * math.exp(-hh) * x + math.sqrt(a_p) * (1 - math.exp(-2 * hh)) * D
                + math.sqrt(1 - a_p) * math.sqrt(1 - math.exp(-2 * hh)) * z)
    second, _ = samplers.dpmpp_2m_sde_step(x, x0, previous_x0.astype(np.float32), at, ap, _f64(h_prev), False, z)
    np.testing.assert_allclose(second.numpy(), expected, rtol=1e-5, atol=1e-5)


# -- issue 14: the new solvers end to end ------------------------------------------------------------
@pytest.mark.parametrize("sampler,bound", [("dpmpp_3m", 0.003), ("unipc", 0.002), ("unipc3", 0.002), ("heun", 0.002),
                                           ("dpmpp_2m_sde", 0.004)])
def test_new_solvers_recover_the_gaussian(sampler, bound):
    errors = []
    for n in (20, 400):
        x = run_sampler(sampler, n, seed=11)
        assert abs(x.mean() - MU) < 0.01, (n, x.mean())
        errors.append(abs(x.std() - S))
    assert errors[1] < min(bound, errors[0]), errors


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m", "unipc", "unipc3", "heun"])
def test_ode_solvers_converge_on_logsnr_spacing(x_T, sampler):
    """Against the exact probability-flow ODE solution: the error at 50 and 200 evaluations (Heun: half the
    steps) is below that at 10, and at 200 under 1e-3. (By 50 the solvers reach the floor of T = 400's grid: its
    last steps, e.g. t = 0 → data, cannot be refined.)"""
    exact = exact_ode_solution(x_T)
    errors = []
    for nfe in (10, 50, 200):
        n = (nfe + 1) // 2 if sampler == "heun" else nfe
        errors.append(np.abs(run_sampler(sampler, n, x_T=x_T, spacing="logsnr") - exact).mean())
    assert errors[0] > max(errors[1:]) and errors[1] < 3e-3 and errors[2] < 1e-3, errors


@pytest.mark.parametrize("sampler,eta", [("dpmpp_3m", 0.0), ("unipc", 0.0), ("unipc3", 0.0), ("heun", 0.0),
                                        ("dpmpp_2m_sde", 0.0)])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_new_solvers_same_seed_bitwise_eager_and_tf_function(sampler, eta, spacing):
    kwargs = dict(sampler=sampler, num_steps=9, eta=eta, seed=5, spacing=spacing)
    eager = samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **kwargs).numpy()
    graph = tf.function(lambda: samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **kwargs))().numpy()
    np.testing.assert_array_equal(eager, graph)
    by_tensor = tf.function(lambda s, sp: samplers.sample(analytic_denoise, DIFFUSION, (64, 1), **{
        **kwargs, "sampler": s, "spacing": sp}))(tf.constant(sampler), tf.constant(spacing)).numpy()
    np.testing.assert_array_equal(by_tensor, eager)


def test_sample_guides_the_denoiser_with_guidance_scale_and_null_label():
    labels = tf.constant([1, 2, 3])
    calls = RecordingEps()
    guided = samplers.sample(eps_denoiser(calls), DIFFUSION, (3, 1), sampler="unipc", num_steps=4, seed=2, labels=labels,
                             guidance_scale=2.0, null_label=NULL).numpy()
    assert [c[0] for c in calls.calls] == [6] * 4  # one batched call per step
    by_hand = samplers.sample(samplers.classifier_free_guidance(eps_denoiser(RecordingEps()), 2.0, NULL), DIFFUSION,
                              (3, 1), sampler="unipc", num_steps=4, seed=2, labels=labels).numpy()
    np.testing.assert_array_equal(guided, by_hand)
