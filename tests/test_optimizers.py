"""AdamEMAWarmup: the EMA follows the weights early and reaches its momentum later."""

import json

import keras
import numpy as np

from tfdiffusion.optimizers import AdamEMAWarmup


def run(optimizer, steps):
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer.build([variable])
    history = []
    for _ in range(steps):
        optimizer.apply_gradients([(np.ones(3, np.float32), variable)])
        history.append((variable.numpy().copy(), optimizer._model_variables_moving_average[0].numpy().copy()))
    return history


def test_average_matches_the_warmup_recursion():
    momentum = 0.99
    history = run(AdamEMAWarmup(0.1, use_ema=True, ema_momentum=momentum), 300)
    expected = history[0][0]  # step 0 copies the weights
    for n, (weights, average) in enumerate(history[1:], start=1):
        m = min(momentum, (1 + n) / (10 + n))
        expected = m * expected + (1 - m) * weights
        np.testing.assert_allclose(average, expected, rtol=1e-5)


def test_warmup_keeps_the_average_near_the_weights_where_keras_ema_does_not():
    warm = run(AdamEMAWarmup(0.1, use_ema=True, ema_momentum=0.999), 200)[-1]
    plain = run(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.999), 200)[-1]
    # Weights move by −0.1 per step: after 200 steps w = −20.
    assert abs(warm[1][0] - warm[0][0]) < 0.1 * abs(warm[0][0])
    assert abs(plain[1][0] - plain[0][0]) > 0.7 * abs(plain[0][0])


def test_config_round_trip():
    optimizer = AdamEMAWarmup(3e-4, use_ema=True, ema_momentum=0.9999, clipnorm=1.0)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(optimizer)))
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, AdamEMAWarmup)
    assert clone.get_config() == optimizer.get_config()
