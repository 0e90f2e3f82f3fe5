"""DiffusionModel: the objective, its draws, fit on two moons, sampling, serialisation."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial import distance

import tfdiffusion as tfd


def tiny_unet(**kwargs):
    return tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32, **kwargs)


def built_model(network=None, shape=(8, 8, 1), timesteps=20, **kwargs):
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", timesteps))
    model = tfd.DiffusionModel(network or tiny_unet(), diffusion, **kwargs)
    model(tf.zeros((1,) + shape))
    return model


def energy_distance(a, b):
    return 2 * distance.cdist(a, b).mean() - distance.cdist(a, a).mean() - distance.cdist(b, b).mean()


def test_loss_is_the_epsilon_mse_of_the_draws():
    model = built_model()
    x0 = tf.random.stateless_uniform((4, 8, 8, 1), [1, 2], -1, 1)
    step = tf.constant(7, tf.int64)
    t, noise, _ = model._training_draws(x0, None, step)
    x_t = np.sqrt(model.diffusion.alphas_cumprod[t.numpy()])[:, None, None, None] * x0.numpy() + np.sqrt(
        1 - model.diffusion.alphas_cumprod[t.numpy()]
    )[:, None, None, None] * noise.numpy()
    expected = np.mean((noise.numpy() - model(x_t.astype(np.float32), t).numpy()) ** 2)
    np.testing.assert_allclose(model.compute_diffusion_loss(x0, None, step).numpy(), expected, rtol=1e-5)


def test_training_draws_are_a_function_of_seed_and_step():
    model = built_model()
    x0 = tf.zeros((64, 8, 8, 1))
    t_a, noise_a, _ = model._training_draws(x0, None, tf.constant(3, tf.int64))
    t_b, noise_b, _ = model._training_draws(x0, None, tf.constant(3, tf.int64))
    t_c, noise_c, _ = model._training_draws(x0, None, tf.constant(4, tf.int64))
    np.testing.assert_array_equal(t_a, t_b)
    np.testing.assert_array_equal(noise_a, noise_b)
    assert not np.array_equal(noise_a, noise_c)
    assert 0 <= t_a.numpy().min() and t_a.numpy().max() < 20
    # ε ~ N(0, I): moments of 4096 draws.
    assert abs(noise_a.numpy().mean()) < 0.06 and abs(noise_a.numpy().std() - 1) < 0.05


def test_label_dropout_replaces_the_requested_fraction_by_the_null_class():
    model = built_model(tiny_unet(num_classes=3), label_dropout=0.25)
    labels = tf.zeros((20_000,), tf.int32)
    _, _, dropped = model._training_draws(tf.zeros((20_000, 1)), labels, tf.constant(0, tf.int64))
    fraction = np.mean(dropped.numpy() == 3)
    assert abs(fraction - 0.25) < 0.015
    assert set(np.unique(dropped.numpy())) == {0, 3}


def test_jit_compiled_train_step_on_mnist_shaped_data():
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 400))
    model = tfd.DiffusionModel(tfd.layers.SeedUNet(), diffusion)
    model(tf.zeros((1, 28, 28, 1)))
    assert model.count_params() == 2_020_353
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=True)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32)
    before = [w.numpy() for w in model.trainable_weights]
    history = model.fit(images, batch_size=8, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and 0.1 < loss < 10
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))


@pytest.mark.parametrize("as_dataset", [False, True])
def test_fit_refuses_a_first_batch_outside_the_model_space(as_dataset):
    model = built_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 1)).astype(np.float32)  # left unscaled
    x = tf.data.Dataset.from_tensor_slices(pixels).batch(4) if as_dataset else pixels
    before = [w.numpy() for w in model.trainable_weights]
    with pytest.raises(ValueError, match=r"outside the model space \[-1, 1\].*Received: min=0\.\d+, max=25\d\.\d+$"):
        model.fit(x, batch_size=None if as_dataset else 4, epochs=1, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))
    scaled = pixels / 127.5 - 1.0
    model.fit(tf.data.Dataset.from_tensor_slices(scaled).batch(4) if as_dataset else scaled,
              batch_size=None if as_dataset else 4, epochs=1, verbose=0)


def test_nonfinite_batch_does_not_reach_the_weights_and_is_counted():
    model = built_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.numpy() for w in model.trainable_weights]
    # On a first step Adam's moments are zero, so a zero gradient leaves every weight as it was.
    history = model.fit(np.full((4, 8, 8, 1), np.nan, np.float32), batch_size=4, epochs=1, verbose=0)
    assert history.history["nonfinite_steps"] == [1.0]
    for a, w in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())
    images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    model.fit(images, batch_size=4, epochs=1, verbose=0)
    history = model.fit(np.full((4, 8, 8, 1), np.inf, np.float32), batch_size=4, epochs=1, verbose=0)
    assert history.history["nonfinite_steps"] == [1.0]
    assert all(np.all(np.isfinite(w.numpy())) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def trained_moons():
    keras.utils.set_random_seed(0)
    x = tfd.data.make_moons_dataset(10_000, seed=0)
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("polynomial", 10))
    model = tfd.DiffusionModel(tfd.layers.MLPDenoiser(2), diffusion, data_range=None)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, 2400)))
    batches = tfd.data.step_indexed_batches(x, None, 512, seed=0)
    history = model.fit(batches, steps_per_epoch=300, epochs=8, verbose=0)
    return model, history.history["loss"]


def test_two_moons_loss_drops_and_samples_land_on_the_moons(trained_moons):
    model, losses = trained_moons
    assert losses[-1] < 0.85 * losses[0]
    held_out = tfd.data.make_moons_dataset(2000, seed=1)
    samples = model.generate(2000, seed=0)
    noise = np.random.default_rng(0).standard_normal((2000, 2))
    trained, untrained = energy_distance(samples, held_out), energy_distance(noise, held_out)
    assert trained < 0.25 * untrained, (trained, untrained)


def test_generate_same_seed_same_samples_and_validates(trained_moons):
    model, _ = trained_moons
    a = model.generate(64, seed=5, sampler="ddim", num_steps=5)
    b = model.generate(64, seed=5, sampler="ddim", num_steps=5)
    c = model.generate(64, seed=6, sampler="ddim", num_steps=5, eta=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for kwargs, received in [
        ({"num_samples": 0}, "num_samples=0"),
        ({"num_samples": 4, "num_steps": 11}, "num_steps=11"),
        ({"num_samples": 4, "sampler": "euler"}, "sampler='euler'"),
        ({"num_samples": 4, "eta": 2.0}, "eta=2.0"),
        ({"num_samples": 4, "labels": [0, 1, 0, 1]}, "labels=[0, 1, 0, 1]"),
        ({"num_samples": 4, "ddpm_variance": "large"}, "ddpm_variance='large'"),
        ({"num_samples": 4, "trajectory_every": 0}, "trajectory_every=0"),
        ({"num_samples": 4, "guidance_scale": float("nan")}, "guidance_scale=nan"),
        ({"num_samples": 4, "spacing": "cosine"}, "spacing='cosine'"),
        ({"num_samples": 4, "init_images": np.zeros((4, 2)), "strength": 1.5}, "strength=1.5"),
    ]:
        with pytest.raises(ValueError, match=f"Received: {received.replace('[', '.').replace(']', '.')}"):
            model.generate(**kwargs)


def test_generate_with_a_spacing_and_a_toy_edit(trained_moons):
    """Every spacing runs through generate; a toy (data_range None) edits in model space, keeping masked points."""
    model, _ = trained_moons
    by_spacing = {s: model.generate(256, seed=3, sampler="unipc", num_steps=6, spacing=s) for s in tfd.samplers.SPACINGS}
    assert len({v.tobytes() for v in by_spacing.values()}) == len(tfd.samplers.SPACINGS)
    points = tfd.data.make_moons_dataset(256, seed=4).astype(np.float32)
    keep_x = np.tile([[1.0, 0.0]], (256, 1)).astype(np.float32)  # keep each point's first coordinate
    edited = model.generate(256, seed=3, sampler="dpmpp_2m", num_steps=6, init_images=points, mask=keep_x)
    np.testing.assert_array_equal(edited[:, 0], points[:, 0])
    assert np.abs(edited[:, 1] - points[:, 1]).mean() > 0.01


def test_from_data_space_inverts_to_data_space():
    model = built_model(data_range=(0.0, 255.0))
    pixels = np.linspace(0.0, 255.0, 11, dtype=np.float32)
    model_space = model.from_data_space(pixels).numpy()
    np.testing.assert_allclose(model_space, np.linspace(-1.0, 1.0, 11), atol=1e-6)
    np.testing.assert_allclose(model.to_data_space(model_space).numpy(), pixels, atol=1e-4)


def test_trajectory_ends_at_the_samples(trained_moons):
    model, _ = trained_moons
    samples, trajectory = model.generate(8, seed=1, trajectory_every=3)
    assert trajectory.shape == (1 + (10 - 1) // 3 + 1, 8, 2)
    np.testing.assert_array_equal(trajectory[-1], samples)


@pytest.mark.parametrize("conditional", [False, True])
def test_config_json_and_keras_round_trip(tmp_path, conditional):
    model = built_model(tiny_unet(num_classes=3 if conditional else None), label_dropout=0.1, prediction_type="v")
    config = json.loads(json.dumps(model.get_config()))
    clone = tfd.DiffusionModel.from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = tf.random.stateless_normal((3, 8, 8, 1), [0, 1])
    t = tf.constant([0, 10, 19])
    labels = tf.constant([0, 1, 3]) if conditional else None
    np.testing.assert_allclose(loaded(x, t, labels), model(x, t, labels), atol=1e-6)
    np.testing.assert_array_equal(loaded.diffusion.betas, model.diffusion.betas)
    kwargs = {"labels": [0, 1, 2]} if conditional else {}
    np.testing.assert_allclose(
        loaded.generate(3, seed=2, sampler="ddim", num_steps=4, **kwargs),
        model.generate(3, seed=2, sampler="ddim", num_steps=4, **kwargs),
        atol=1e-6,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_predict_eps_converts_every_prediction_type(prediction_type):
    model = built_model(prediction_type=prediction_type)
    x0 = tf.random.stateless_uniform((5, 8, 8, 1), [3, 4], -1, 1)
    eps = tf.random.stateless_normal((5, 8, 8, 1), [5, 6])
    t = tf.constant([0, 3, 7, 12, 19])
    x_t = model.diffusion.q_sample(x0, t, eps)
    target = model.target(x0, t, eps)
    # A network that outputs exactly the target must give back ε.
    model.call = lambda x, t_, labels=None, training=False: target
    np.testing.assert_allclose(model.predict_eps(x_t, t), eps, atol=2e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_denoise_gives_x0_and_eps_from_one_call(prediction_type):
    model = built_model(prediction_type=prediction_type)
    x0 = tf.random.stateless_uniform((5, 8, 8, 1), [3, 4], -1, 1)
    eps = tf.random.stateless_normal((5, 8, 8, 1), [5, 6])
    t = tf.constant([0, 3, 7, 12, 19])
    x_t = model.diffusion.q_sample(x0, t, eps)
    target = model.target(x0, t, eps)
    calls = []

    def network_output(x, t_, labels=None, training=False):
        calls.append(1)
        return target

    model.call = network_output
    x0_hat, eps_hat = model.denoise(x_t, t)
    assert len(calls) == 1
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)
    if prediction_type == "x0":  # the network's x̂_0 is passed on, not rebuilt from ε̂
        np.testing.assert_array_equal(x0_hat, target)


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0"])
def test_guided_denoise_is_the_same_combination_of_x0_and_of_eps(prediction_type):
    keras.utils.set_random_seed(4)
    model = built_model(tiny_unet(num_classes=3), prediction_type=prediction_type)
    x = tf.random.stateless_normal((4, 8, 8, 1), [1, 9])
    t, labels, w = tf.constant([0, 6, 13, 19]), tf.constant([0, 1, 2, 1]), 1.5
    guided = model.denoise(x, t, labels, guidance_scale=w)
    conditional, unconditional = model.denoise(x, t, labels), model.denoise(x, t, tf.fill([4], 3))
    for g, c, u in zip(guided, conditional, unconditional):  # x̂_0, then ε̂
        np.testing.assert_allclose(g, (1 + w) * c.numpy() - w * u.numpy(), rtol=1e-4, atol=1e-4)


def test_min_snr_weight_matches_hang_et_al():
    model = built_model(loss_weighting="min_snr")
    t = tf.range(20)
    snr = model.diffusion.alphas_cumprod / (1 - model.diffusion.alphas_cumprod)
    np.testing.assert_allclose(model.loss_weight(t), np.minimum(snr, 5.0) / snr, rtol=1e-6)


def test_ema_weights_are_swapped_in_and_restored():
    model = built_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5))
    images = np.random.default_rng(1).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    model.train_on_batch(images)
    model.train_on_batch(images)
    raw = [w.numpy() for w in model.trainable_weights]
    averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    with model.ema_weights():
        for w, a in zip(model.trainable_weights, averages):
            np.testing.assert_array_equal(w.numpy(), a)
    for w, r in zip(model.trainable_weights, raw):
        np.testing.assert_array_equal(w.numpy(), r)
    assert any(not np.array_equal(a, r) for a, r in zip(averages, raw))


def test_bad_constructor_arguments_name_the_value():
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20))
    for kwargs, received in [
        ({"prediction_type": "score"}, "prediction_type='score'"),
        ({"loss_weighting": "snr"}, "loss_weighting='snr'"),
        ({"label_dropout": 1.5}, "label_dropout=1.5"),
    ]:
        with pytest.raises(ValueError, match=f"Received: {received}"):
            tfd.DiffusionModel(tiny_unet(), diffusion, **kwargs)


def test_mixed_float16_overflow_steps_are_counted():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = built_model()
        # A huge initial scale overflows the float16 gradients: the first steps are skipped.
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3), initial_scale=2.0**60)
        model.compile(optimizer=optimizer)
        images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
        history = model.fit(images, batch_size=4, epochs=1, verbose=0)
        assert history.history["loss_scale_skipped_steps"] == [2.0]
        assert history.history["nonfinite_steps"] == [0.0]
        assert all(w.dtype == "float32" and np.all(np.isfinite(w.numpy())) for w in model.trainable_weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("prediction_type", [pytest.param("x0", marks=pytest.mark.slow), "v"])  # 13 s each
def test_two_moons_with_other_prediction_types(prediction_type):
    keras.utils.set_random_seed(0)
    x = tfd.data.make_moons_dataset(10_000, seed=0)
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("polynomial", 10))
    model = tfd.DiffusionModel(tfd.layers.MLPDenoiser(2), diffusion, data_range=None, prediction_type=prediction_type)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, 2400)))
    model.fit(tfd.data.step_indexed_batches(x, None, 512, seed=0), steps_per_epoch=300, epochs=8, verbose=0)
    held_out = tfd.data.make_moons_dataset(2000, seed=1)
    noise = np.random.default_rng(0).standard_normal((2000, 2))
    trained = energy_distance(model.generate(2000, seed=0), held_out)
    assert trained < 0.25 * energy_distance(noise, held_out), trained


def test_toy_metrics_separate_trained_from_untrained(trained_moons):
    from tfdiffusion import metrics

    model, _ = trained_moons
    untrained = tfd.DiffusionModel(tfd.layers.MLPDenoiser(2), model.diffusion, data_range=None)
    untrained(tf.zeros((1, 2)))
    held_out = tfd.data.make_moons_dataset(2000, seed=1)
    trained_distance = metrics.energy_distance(model.generate(2000, seed=0), held_out)
    untrained_distance = metrics.energy_distance(untrained.generate(2000, seed=0), held_out)
    assert trained_distance < 0.2 * untrained_distance, (trained_distance, untrained_distance)
    # The 1-D marginals tell them apart too: KS on the first coordinate.
    trained_ks = metrics.ks_statistic_1d(model.generate(2000, seed=1)[:, 0], held_out[:, 0])
    untrained_ks = metrics.ks_statistic_1d(untrained.generate(2000, seed=1)[:, 0], held_out[:, 0])
    assert trained_ks < 0.5 * untrained_ks, (trained_ks, untrained_ks)


@pytest.mark.parametrize("conditional", [False, True])
def test_bfloat16_inference_copy_keeps_weights_and_tracks_float32(conditional):
    keras.utils.set_random_seed(3)
    model = built_model(tiny_unet(num_classes=3 if conditional else None), prediction_type="x0")
    copy = model.with_dtype_policy("mixed_bfloat16")
    assert copy.network.compute_dtype == "bfloat16" and model.network.compute_dtype == "float32"
    for ours, theirs in zip(model.network.weights, copy.network.weights):
        assert theirs.dtype == "float32"
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x = tf.random.stateless_normal((4, 8, 8, 1), [0, 7])
    t = tf.constant([0, 5, 10, 19])
    labels = tf.constant([0, 1, 2, 3]) if conditional else None
    full, reduced = model.predict_eps(x, t, labels).numpy(), copy.predict_eps(x, t, labels).numpy()
    assert reduced.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: relative error of order 2^-8 per op, a few % at most.
    assert 0 < np.abs(reduced - full).max() < 0.05 * np.abs(full).max()
    kwargs = {"labels": [0, 1, 2, 3], "guidance_scale": 1.0} if conditional else {}
    samples = copy.generate(4, seed=1, sampler="dpmpp_2m", num_steps=5, **kwargs)
    np.testing.assert_allclose(samples, model.generate(4, seed=1, sampler="dpmpp_2m", num_steps=5, **kwargs), atol=0.1)
    assert keras.mixed_precision.global_policy().name == "float32"  # the copy did not change the global policy
    with pytest.raises(ValueError, match="Received: dtype_policy='float16'"):
        model.with_dtype_policy("float16")
