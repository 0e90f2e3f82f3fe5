"""Helpers shared by the network tests (test_unet.py, test_dit.py)."""

import keras
import numpy as np

from tfdiffusion import DiffusionModel, GaussianDiffusion
from tfdiffusion.schedules import make_betas


def randomize(net, seed=0):
    """Replaces the zero-initialised weights so that outputs depend on every input."""
    rng = np.random.default_rng(seed)
    for weight in net.weights:
        weight.assign(rng.normal(0.0, 0.2, weight.shape).astype(np.float32))
    return net


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def fit_once(network, prediction_type="epsilon", loss_weighting="none", jit_compile=True, labels=None):
    """One `fit` step of a DiffusionModel around `network` on 8 random 8×8×1 images."""
    diffusion = GaussianDiffusion(make_betas("cosine", 20))
    model = DiffusionModel(network, diffusion, prediction_type=prediction_type, loss_weighting=loss_weighting)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    model(images[:1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    # Built here, the optimizer's slots are not created inside the traced step (which would trace it twice).
    model.optimizer.build(model.trainable_variables)
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    return model, history.history["loss"][0]


def assert_keras_file_round_trip(net, path, num_classes=None):
    """Saves `net` (weights randomised) to `path` (.keras), loads it, checks config, size and outputs."""
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32), np.array([3, 17], np.int32)]
    if num_classes is not None:
        inputs.append(np.array([2, num_classes], np.int32))  # a real class and the null class
    net(*inputs)
    randomize(net)
    expected = to_numpy(net(*inputs))
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(net)
    assert loaded.get_config() == net.get_config()
    assert loaded.count_params() == net.count_params()
    np.testing.assert_allclose(to_numpy(loaded(*inputs)), expected, rtol=1e-5, atol=1e-5)
    return loaded
