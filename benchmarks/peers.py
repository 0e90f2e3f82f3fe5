"""The peer of the benchmarks: a plain Keras 3 port of the JAX tutorial's U-Net and train step.

Written the straightforward way a user would port the tutorial, with no tfdiffusion import: a
functional model of (x [N, 28, 28, 1], t [N]), channels-last, and a `keras.Model` whose
`train_step` draws t and ε with `tf.random`, forms x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and minimises
the MSE to ε with Adam (1e-4). `train_throughput.py --network=plain_keras_port` times it.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

TUTORIAL_PARAMS = 2_020_353
IMAGE_SHAPE = (28, 28, 1)


def sinusoidal_features(t, dim=64, max_period=10_000.0):
    half = dim // 2
    frequencies = ops.exp(ops.arange(half, dtype="float32") * (-math.log(max_period) / (half - 1)))
    angles = ops.cast(ops.reshape(t, (-1, 1)), "float32") * frequencies[None, :]
    return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)


def conv_block(x, time, filters, name):
    """conv3×3 → SiLU → + SiLU(Dense(time)) → conv3×3 → SiLU (the tutorial's ConvBlock)."""
    h = layers.Conv2D(filters, 3, padding="same", activation="silu", name=f"{name}_conv1")(x)
    shift = layers.Dense(filters, activation="silu", name=f"{name}_time")(time)
    h = h + layers.Reshape((1, 1, filters))(shift)
    return layers.Conv2D(filters, 3, padding="same", activation="silu", name=f"{name}_conv2")(h)


def build_tutorial_unet(image_shape=IMAGE_SHAPE, channels=(64, 128, 256), time_dim=64, mlp_width=256):
    """The tutorial's U-Net as a functional Keras model: inputs (x, t), output ε̂ (NHWC)."""
    x_in = keras.Input(image_shape, name="x_t")
    t_in = keras.Input((), dtype="int32", name="t")
    time = sinusoidal_features(t_in, time_dim)
    time = layers.Dense(mlp_width, activation="relu", name="time_mlp_0")(time)
    time = layers.Dense(mlp_width, activation="relu", name="time_mlp_1")(time)
    time = layers.Dense(time_dim, name="time_mlp_out")(time)

    h = layers.Conv2D(32, 3, padding="same", name="initial_conv")(x_in)
    skips = []
    for i, filters in enumerate(channels[:-1]):
        h = conv_block(h, time, filters, f"down_{i}")
        skips.append(h)
        h = layers.MaxPooling2D(2, name=f"pool_{i}")(h)
    h = conv_block(h, time, channels[-1], "bottleneck")
    for i, (filters, skip) in enumerate(zip(channels[-2::-1], reversed(skips))):
        h = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up_sample_{i}")(h)
        h = layers.Concatenate(name=f"concat_{i}")([h, skip])
        h = conv_block(h, time, filters, f"up_{i}")
    out = layers.Conv2D(image_shape[-1], 1, name="final_conv")(h)
    return keras.Model([x_in, t_in], out, name="tutorial_unet")


class PlainDiffusion(keras.Model):
    """ε-prediction DDPM training of `network` on a linear schedule (T = 400, β 1e-4 → 0.02)."""

    def __init__(self, network, num_timesteps=400, beta_start=1e-4, beta_end=0.02, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.num_timesteps = num_timesteps
        alphas_cumprod = np.cumprod(1.0 - np.linspace(beta_start, beta_end, num_timesteps))
        self.sqrt_alphas_cumprod = tf.constant(np.sqrt(alphas_cumprod), tf.float32)
        self.sqrt_one_minus_alphas_cumprod = tf.constant(np.sqrt(1.0 - alphas_cumprod), tf.float32)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs, training=False):
        x_t, t = inputs
        return self.network([x_t, t], training=training)

    def train_step(self, data):
        x0 = data[0] if isinstance(data, (tuple, list)) else data  # train_on_batch packs (x, y, weights)
        x0 = tf.cast(x0, tf.float32)
        batch = tf.shape(x0)[0]
        t = tf.random.uniform([batch], 0, self.num_timesteps, dtype=tf.int32)
        noise = tf.random.normal(tf.shape(x0))
        x_t = (tf.gather(self.sqrt_alphas_cumprod, t)[:, None, None, None] * x0
               + tf.gather(self.sqrt_one_minus_alphas_cumprod, t)[:, None, None, None] * noise)
        with tf.GradientTape() as tape:
            prediction = tf.cast(self.network([x_t, t], training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(noise - prediction))
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.network.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.network.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build_plain_keras_port(jit_compile=False, steps_per_execution=1, learning_rate=1e-4):
    """The compiled peer; asserts the tutorial's parameter count."""
    network = build_tutorial_unet()
    count = network.count_params()
    if count != TUTORIAL_PARAMS:  # not `assert`: it must hold under python -O too
        raise AssertionError(f"plain Keras port has {count} parameters, expected {TUTORIAL_PARAMS}")
    model = PlainDiffusion(network)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    return model
