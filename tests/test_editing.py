"""Editing with the samplers' driver (issue 14): image-to-image (SDEdit) and inpainting (RePaint's replacement).

The sampler-level tests use 2-D correlated Gaussian data x_0 ~ N(μ, Σ), Σ = s² [[1, ρ], [ρ, 1]], whose ideal
noise prediction is linear and known exactly:

    ε*(x_t, t) = √(1 − ᾱ_t) C_t⁻¹ (x_t − √ᾱ_t μ),   C_t = ᾱ_t Σ + (1 − ᾱ_t) I   (the covariance of q(x_t)).

With coordinate 0 known, the exact conditional of coordinate 1 is N(μ_1 + ρ (x_0 − μ_0), s²(1 − ρ²)).
The model-level tests use a tiny untrained x0-prediction U-Net (its samples stay inside the data range,
so every comparison sees every bit, as in test_export.py).
"""

import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfd
from tfdiffusion import analytic, samplers, schedules
from tfdiffusion.diffusion import GaussianDiffusion

T = 400
DIFFUSION = GaussianDiffusion(schedules.make_betas("linear", T))
ALPHA_BAR = np.cumprod(1.0 - schedules.make_betas("linear", T))
MU = np.array([0.5, -0.2])
S, RHO = 0.3, 0.8
SIGMA = S**2 * np.array([[1.0, RHO], [RHO, 1.0]])
_GAIN = np.stack([np.sqrt(1 - a) * np.linalg.inv(a * SIGMA + (1 - a) * np.eye(2)) for a in ALPHA_BAR])
_OFFSET = -np.einsum("tij,tj->ti", _GAIN, np.sqrt(ALPHA_BAR)[:, None] * MU)
_GAIN_TF, _OFFSET_TF = tf.constant(_GAIN, tf.float32), tf.constant(_OFFSET, tf.float32)
N = 2000


def denoise(x, t, labels=None):
    eps = tf.einsum("nij,nj->ni", tf.gather(_GAIN_TF, t), x) + tf.gather(_OFFSET_TF, t)
    return DIFFUSION.x0_and_eps(x, t, eps, "epsilon")


def edit(sampler, num_steps, init, *, seed=1, **kwargs):
    return samplers.sample(denoise, DIFFUSION, init.shape, sampler=sampler, num_steps=num_steps, seed=seed,
                           init_images=init, **kwargs)


def _init(n=N, first=1.0, second=0.0):
    return np.tile(np.array([[first, second]], np.float32), (n, 1))


KEEP_FIRST = np.tile(np.array([[1.0, 0.0]], np.float32), (N, 1))


# -- image-to-image (SDEdit, Meng et al. 2022) ------------------------------------------------------------
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_strength_zero_returns_the_input_exactly(sampler):
    init = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    out, frames = edit(sampler, 10, init, strength=0.0, trajectory_every=1)
    np.testing.assert_array_equal(out.numpy(), init)
    assert frames.shape[0] == 1  # no network evaluation


def test_strength_one_starts_from_q_sample_of_the_seed_noise_and_is_plain_sampling_up_to_it():
    init, seed = _init(256, 3.0, -2.0), 4
    out, frames = edit("ddim", 50, init, seed=seed, strength=1.0, trajectory_every=1)
    noise = tf.random.stateless_normal(init.shape, [seed, 0]).numpy().astype(np.float64)
    a = ALPHA_BAR[-1]
    start = np.sqrt(a) * init + np.sqrt(1 - a) * noise  # q_sample(x_0, T − 1, ε) with the seed's x_T as ε
    np.testing.assert_allclose(frames[0].numpy(), start, rtol=0, atol=1e-6)
    plain = samplers.sample(denoise, DIFFUSION, init.shape, sampler="ddim", num_steps=50, seed=seed).numpy()
    # DDIM is affine in x_T with the gain of the exact flow, s/√(ᾱ s² + 1 − ᾱ) per coordinate up to ρ's mixing
    # (below 0.3 here): the two runs differ by at most that gain times the start's difference.
    difference = np.abs(out.numpy() - plain).max()
    assert 0 < difference <= 0.3 * np.abs(start - noise).max() + 1e-5, difference


class RecordingDenoiser:
    """`denoise`, recording every evaluation's timestep (a py_function: it sees the graph's calls)."""

    def __init__(self):
        self.timesteps = []

    def _record(self, t):
        self.timesteps.append(int(t.numpy()[0]))
        return 0

    def __call__(self, x, t, labels=None):
        with tf.control_dependencies([tf.py_function(self._record, [t], tf.int32)]):
            return denoise(tf.identity(x), t, labels)


@pytest.mark.parametrize("strength,num_steps,spacing", [(0.5, 10, "uniform"), (0.3, 200, "logsnr"),
                                                        (0.0025, 5, "karras"), (1.0, 7, "quadratic")])
def test_sdedit_runs_the_spacing_restricted_below_its_start(strength, num_steps, spacing):
    recording = RecordingDenoiser()
    samplers.sample(recording, DIFFUSION, (4, 2), sampler="unipc", num_steps=num_steps, spacing=spacing, seed=0,
                    init_images=_init(4), strength=strength)
    start = int(round(strength * T)) - 1
    expected = samplers.timestep_sequence(min(num_steps, start + 1), T, spacing, ALPHA_BAR, max_timestep=start)
    assert recording.timesteps == expected.numpy().tolist()
    assert recording.timesteps[0] == start and len(recording.timesteps) == min(num_steps, start + 1)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "heun"])
def test_lower_strength_stays_closer_to_the_input(sampler):
    init = _init(512, 1.5, 1.5)  # far from the data's mean
    distances = [np.abs(edit(sampler, 40, init, strength=s).numpy() - init).mean() for s in (0.1, 0.4, 0.8)]
    assert distances[0] < distances[1] < distances[2], distances


# -- inpainting (RePaint's replacement, Lugmayr et al. 2022) --------------------------------------------------
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_inpainting_keeps_the_known_region_exactly_with_every_solver(sampler):
    init = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    mask = KEEP_FIRST[:64]
    out = edit(sampler, 8, init, mask=mask, spacing="logsnr").numpy()
    np.testing.assert_array_equal(out[:, 0], init[:, 0])
    assert np.abs(out[:, 1] - init[:, 1]).min() > 0  # the unknown coordinate is generated
    with_strength = edit(sampler, 8, init, mask=mask, strength=0.5).numpy()
    np.testing.assert_array_equal(with_strength[:, 0], init[:, 0])


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_the_known_region_is_a_q_sample_after_every_step(sampler):
    """After each step to τ the known pixels are √ᾱ_τ x_0 + √(1 − ᾱ_τ) z: z the step's own draw for a
    stochastic solver (RePaint, Algorithm 1, line 5), the seed's x_T draw for an ODE solver."""
    init, seed, n = _init(8, 0.7, 0.0), 3, 6
    _, frames = edit(sampler, n, init, seed=seed, mask=KEEP_FIRST[:8], trajectory_every=1, spacing="uniform")
    levels = list(samplers.timestep_sequence(n, T).numpy()[1:]) + [-1]
    for i, t in enumerate(levels, start=1):  # frame i is x after step i − 1
        a = 1.0 if t < 0 else ALPHA_BAR[t]
        draw = [seed, i] if sampler == "ddpm" else [seed, 0]
        z = tf.random.stateless_normal(init.shape, draw).numpy() * (t >= 0 or sampler != "ddpm")
        np.testing.assert_allclose(frames[i].numpy()[:, 0], np.sqrt(a) * init[:, 0] + np.sqrt(1 - a) * z[:, 0],
                                   rtol=0, atol=2e-6)


@pytest.mark.parametrize("sampler,num_steps", [("ddpm", 100), ("dpmpp_2m_sde", 50), ("dpmpp_2m", 20), ("unipc", 20),
                                               ("heun", 10)])
def test_inpainting_moves_the_unknown_coordinate_towards_its_conditional(sampler, num_steps):
    """x_1 | x_0 = 1 has mean μ_1 + ρ(1 − μ_0) = 0.2 (unconditionally −0.2). Replacement without RePaint's
    resampling is known to under-condition (Lugmayr et al. 2022, §4.2): measured here, stochastic solvers
    go ~60% of the way, ODE solvers ~45%."""
    out = edit(sampler, num_steps, _init(), mask=KEEP_FIRST, spacing="logsnr").numpy()
    conditional, unconditional = MU[1] + RHO * (1.0 - MU[0]), MU[1]
    fraction = (out[:, 1].mean() - unconditional) / (conditional - unconditional)
    assert 0.35 < fraction < 1.0, fraction
    assert out[:, 1].std() < 1.3 * S  # no blow-up at the seam


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde"])
def test_resampling_jumps_condition_the_unknown_coordinate_much_closer(sampler):
    """RePaint's jumps (§4.2) re-harmonise the generated coordinate with the known one: the fraction of the way
    to the conditional mean rises from ~0.63 (replacement alone, above) to ≥ 0.85, and the spread nears the
    conditional's s√(1 − ρ²) = 0.18 (measured: 0.91 and 0.177 for DDPM, 0.87 and 0.197 for the SDE solver)."""
    conditional, unconditional = MU[1] + RHO * (1.0 - MU[0]), MU[1]
    fractions = {}
    for jumps in (None, (5, 10)):
        out = edit(sampler, 50, _init(), mask=KEEP_FIRST, spacing="logsnr", jumps=jumps).numpy()
        fractions[jumps] = (out[:, 1].mean() - unconditional) / (conditional - unconditional)
    assert fractions[(5, 10)] > 0.85 and fractions[(5, 10)] > fractions[None] + 0.15, fractions
    assert abs(out[:, 1].std() - S * np.sqrt(1 - RHO**2)) < 0.03
    np.testing.assert_array_equal(out[:, 0], KEEP_FIRST[:, 0])


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_3m"])  # 3M: a jump restarts both its history and its order
def test_one_resample_per_block_is_plain_inpainting_and_jumps_cost_their_evaluations(sampler):
    counted, init = analytic.CountingDenoiser(denoise), _init(8)
    plain = edit(sampler, 20, init, mask=KEEP_FIRST[:8])
    once = samplers.sample(counted, DIFFUSION, init.shape, sampler=sampler, num_steps=20, seed=1, init_images=init,
                           mask=KEEP_FIRST[:8], jumps=(5, 1))
    assert counted.take() == 20
    np.testing.assert_array_equal(once.numpy(), plain.numpy())
    samplers.sample(counted, DIFFUSION, init.shape, sampler=sampler, num_steps=20, seed=1, init_images=init,
                    mask=KEEP_FIRST[:8], jumps=(5, 3))
    # Blocks end at positions 5, 10 and 15 (20 is the data): each is walked twice more.
    assert counted.take() == 20 + 3 * 2 * 5


NULL = 2


def test_inpainting_with_classifier_free_guidance_batches_and_keeps_the_known_region():
    calls = []

    def labelled_denoise(x, t, labels):
        recorded = tf.py_function(lambda y: calls.append(y.numpy().tolist()) or 0, [labels], tf.int32)
        with tf.control_dependencies([recorded]):
            shift = 0.1 * tf.cast(labels, x.dtype)[:, None]
            return denoise(x + shift, t)

    init, labels = _init(4, 0.4, 0.0), tf.constant([0, 1, 1, 0])
    out = samplers.sample(labelled_denoise, DIFFUSION, (4, 2), sampler="dpmpp_3m", num_steps=5, seed=2, labels=labels,
                          guidance_scale=1.5, null_label=NULL, init_images=init, mask=KEEP_FIRST[:4]).numpy()
    np.testing.assert_array_equal(out[:, 0], init[:, 0])
    assert calls == [[0, 1, 1, 0, NULL, NULL, NULL, NULL]] * 5


# -- validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(strength=0.5), "strength needs init_images"),
    (dict(mask=KEEP_FIRST[:4]), "mask needs init_images"),
    (dict(init_images=_init(4)), "init_images needs strength"),
    (dict(init_images=_init(4), strength=1.5), "Received: strength=1.5"),
    (dict(init_images=_init(4), strength=-0.1), "Received: strength=-0.1"),
    (dict(init_images=_init(3), strength=0.5), r"init_images must have shape \(4, 2\). Received: init_images of shape"),
    (dict(init_images=_init(4, np.nan), strength=0.5), "init_images must be finite"),
    (dict(init_images=_init(4), mask=KEEP_FIRST[:4] * 0.5), r"mask must hold only 0 \(generate\) and 1 \(keep\)"),
    (dict(init_images=_init(4), mask=np.ones((4, 3), np.float32)), "mask must have shape"),
    (dict(init_images=_init(4), strength=0.5, jumps=(2, 2)), r"jumps resample an inpainting and need a mask"),
    (dict(init_images=_init(4), mask=KEEP_FIRST[:4], jumps=(0, 2)), r"Received: jumps=\(0, 2\)"),
    (dict(init_images=_init(4), mask=KEEP_FIRST[:4], jumps=3), r"Received: jumps=3"),
    (dict(init_images=_init(4), mask=KEEP_FIRST[:4], jumps=(2, 2), sampler="heun"), "Received: jumps=\\(2, 2\\), "
                                                                                      "sampler='heun'"),
])
def test_bad_edit_requests_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        samplers.sample(denoise, DIFFUSION, (4, 2), **{"sampler": "ddim", "num_steps": 3, **kwargs})


# -- DiffusionModel.generate ------------------------------------------------------------------------------------
H = W = 8


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(3)
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)),
                               prediction_type="x0")
    model(tf.zeros((1, H, W, 1)))
    return model


IMAGES = np.random.default_rng(5).uniform(0.0, 1.0, (3, H, W, 1)).astype(np.float32)
BOTTOM_MASKED = np.concatenate([np.ones((3, H // 2, W, 1)), np.zeros((3, H // 2, W, 1))], 1).astype(np.float32)


def test_generate_edits_in_data_space_exactly_where_it_keeps(model):
    same = model.generate(3, seed=1, sampler="dpmpp_2m", num_steps=6, init_images=IMAGES, strength=0.0)
    np.testing.assert_array_equal(same, IMAGES)  # not a round trip through [−1, 1]
    inpainted = model.generate(3, seed=1, sampler="unipc", num_steps=6, spacing="karras", init_images=IMAGES,
                               mask=BOTTOM_MASKED)
    np.testing.assert_array_equal(inpainted[:, : H // 2], IMAGES[:, : H // 2])
    assert np.abs(inpainted[:, H // 2:] - IMAGES[:, H // 2:]).mean() > 0.01
    again = model.generate(3, seed=1, sampler="unipc", num_steps=6, spacing="karras", init_images=IMAGES,
                           mask=BOTTOM_MASKED)
    np.testing.assert_array_equal(again, inpainted)
    resampled = model.generate(3, seed=1, sampler="ddpm", num_steps=6, init_images=IMAGES, mask=BOTTOM_MASKED,
                               jumps=(2, 3))
    np.testing.assert_array_equal(resampled[:, : H // 2], IMAGES[:, : H // 2])
    plain = model.generate(3, seed=1, sampler="ddpm", num_steps=6, init_images=IMAGES, mask=BOTTOM_MASKED)
    assert np.abs(resampled[:, H // 2:] - plain[:, H // 2:]).max() > 1e-3  # another path (the net is untrained)
    edited = model.generate(3, seed=1, sampler="heun", num_steps=4, init_images=IMAGES, strength=0.6)
    unmasked = model.generate(3, seed=1, sampler="heun", num_steps=4, init_images=IMAGES, strength=0.6,
                              mask=np.zeros_like(BOTTOM_MASKED))
    np.testing.assert_array_equal(unmasked, edited)  # an all-zero mask keeps nothing


def test_generate_at_strength_one_is_close_to_plain_sampling(model):
    plain = model.generate(3, seed=2, sampler="ddim", num_steps=10)
    edited = model.generate(3, seed=2, sampler="ddim", num_steps=10, init_images=IMAGES, strength=1.0)
    # cosine T = 20: ᾱ_19 ≈ 6e-5, so q(x_19 | x_0) is N(0, I) to within √ᾱ_19 ≈ 0.008 of the data.
    assert 0 < np.abs(edited - plain).max() < 0.05


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_images=IMAGES[:2], strength=0.5), r"init_images must have shape \(3, 8, 8, 1\)"),
    (dict(init_images=IMAGES, mask=BOTTOM_MASKED[:, :, :4]), "mask must have shape"),
    (dict(init_images=IMAGES, strength=2.0), "Received: strength=2.0"),
    (dict(mask=BOTTOM_MASKED), "mask needs init_images"),
    (dict(spacing="linear"), "Received: spacing='linear'"),
    (dict(init_images=IMAGES, mask=BOTTOM_MASKED, jumps=(2, 0)), r"Received: jumps=\(2, 0\)"),
])
def test_generate_rejects_bad_edits_naming_the_argument(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(3, seed=0, sampler="ddim", num_steps=4, **kwargs)
