"""Tests for tfdiffusion.layers: shapes, formulas, parameter counts and serialisation."""

import json
import math
import re

import keras
import numpy as np
import pytest

from tfdiffusion.layers import ConvBlock, MLPDenoiser, SeedUNet, SinusoidalEmbedding, TimestepEmbedding
from tfdiffusion.layers.utils import check_divides, check_positive_int, check_positive_ints, modulate

TINY = dict(channels=(8, 16, 32), initial_channels=8, time_embedding_dim=16, time_mlp_width=32)


def _np(tensor):
    return tensor.numpy()  # TensorFlow backend: outputs are EagerTensors


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _seed_unet_param_count(channels, initial_channels, time_embedding_dim, time_mlp_width, time_mlp_depth=2,
                           in_channels=1, output_channels=1, num_classes=None):
    """Parameters of the tutorial's U-Net counted by hand: k·k·c_in·c_out + c_out per conv."""

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out

    def dense(c_in, c_out):
        return c_in * c_out + c_out

    def block(c_in, c):  # conv3×3, Dense(time), conv3×3
        return conv(3, c_in, c) + dense(time_embedding_dim, c) + conv(3, c, c)

    widths = [time_embedding_dim] + [time_mlp_width] * time_mlp_depth
    total = sum(dense(a, b) for a, b in zip(widths[:-1], widths[1:])) + dense(widths[-1], time_embedding_dim)
    if num_classes is not None:
        total += (num_classes + 1) * time_embedding_dim
    total += conv(3, in_channels, initial_channels)
    c_in = initial_channels
    for c in channels[:-1]:
        total += block(c_in, c)
        c_in = c
    total += block(c_in, channels[-1])
    c_in = channels[-1]
    for c in channels[-2::-1]:
        total += conv(2, c_in, c)  # transposed 2×2 conv
        total += block(2 * c, c)  # after concatenating the skip
        c_in = c
    return total + conv(1, c_in, output_channels)


# -- helpers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_check_positive_int_refuses_non_positive_and_non_int(value):
    with pytest.raises(ValueError, match=re.escape(f"width={value!r}")):
        check_positive_int("width", value)


def test_check_positive_ints_and_check_divides():
    assert check_positive_ints("widths", [8, 16], min_length=2) == (8, 16)
    with pytest.raises(ValueError, match=re.escape("at least 2 positive integers. Received: widths=(8,)")):
        check_positive_ints("widths", [8], min_length=2)
    with pytest.raises(ValueError, match=re.escape("one or more positive integers. Received: widths=()")):
        check_positive_ints("widths", [])
    check_divides("num_groups", 4, 16, "16 channels")
    with pytest.raises(ValueError, match=re.escape("num_groups must divide 18 channels. Received: num_groups=4")):
        check_divides("num_groups", 4, 18, "18 channels")


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 5), (2, 3, 4, 5)])
def test_modulate_broadcasts_scale_and_shift_over_the_middle_axes(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    shift, scale = rng.normal(size=(2, 2, 5)).astype(np.float32)
    middle = (slice(None),) + (None,) * (len(shape) - 2) + (slice(None),)
    expected = x * (1 + scale[middle]) + shift[middle]
    np.testing.assert_allclose(_np(modulate(keras.ops.convert_to_tensor(x), shift, scale)), expected, rtol=1e-6)


# -- SinusoidalEmbedding -------------------------------------------------------------------------
def test_sinusoidal_embedding_matches_formula():
    d = 32
    t = np.array([0, 1, 10, 399], np.int32)
    out = _np(SinusoidalEmbedding(d)(t))
    assert out.shape == (4, d)
    half = d // 2
    omega = np.array([10000.0 ** (-i / (half - 1)) for i in range(half)])
    angles = t[:, None].astype(np.float64) * omega[None, :]
    # float32 angles up to 399 rad carry ~399·1e-7 of rounding.
    np.testing.assert_allclose(out[:, :half], np.sin(angles), atol=1e-4)
    np.testing.assert_allclose(out[:, half:], np.cos(angles), atol=1e-4)
    # Hand values: t = 0 gives sin = 0, cos = 1; ω_0 = 1 so feature 0 at t = 1 is sin(1).
    np.testing.assert_array_equal(out[0, :half], 0.0)
    np.testing.assert_array_equal(out[0, half:], 1.0)
    assert out[1, 0] == pytest.approx(math.sin(1.0), abs=1e-6)
    # The last frequency is 1/max_period: t = 10000 makes feature half−1 equal to sin(1).
    last = _np(SinusoidalEmbedding(d)(np.array([10000.0], np.float32)))
    assert last[0, half - 1] == pytest.approx(math.sin(1.0), abs=1e-5)


@pytest.mark.parametrize("dim", [7, 2, 0, 4.0])
def test_sinusoidal_embedding_rejects_bad_dims(dim):
    with pytest.raises(ValueError, match=f"embedding_dim={dim!r}"):
        SinusoidalEmbedding(dim)


def test_sinusoidal_embedding_rejects_bad_max_period():
    with pytest.raises(ValueError, match="max_period=1"):
        SinusoidalEmbedding(8, max_period=1)


# -- TimestepEmbedding -------------------------------------------------------------------------------
def test_timestep_embedding_shapes_and_null_label():
    layer = TimestepEmbedding(16, mlp_width=24, mlp_depth=2, num_classes=5)
    t = np.array([0, 3, 9], np.int32)
    implicit = _np(layer(t))
    explicit = _np(layer(t, np.array([5, 5, 5], np.int32)))
    assert implicit.shape == (3, 16)
    np.testing.assert_array_equal(implicit, explicit)  # labels=None means the null class 5
    real = _np(layer(t, np.array([0, 1, 2], np.int32)))
    assert not np.allclose(real, explicit)
    # Parameters by hand: 16·24+24, 24·24+24, 24·16+16, plus a (5+1)×16 class table.
    assert layer.count_params() == (16 * 24 + 24) + (24 * 24 + 24) + (24 * 16 + 16) + 6 * 16


def test_class_signal_starts_as_strong_as_the_time_signal():
    """Class rows start N(0, 1), norm ≈ √D, the time embedding's order of magnitude (not Keras' U(±0.05))."""
    keras.utils.set_random_seed(0)
    dim = 64
    layer = TimestepEmbedding(dim, mlp_width=256, mlp_depth=2, num_classes=10)
    time_norms = np.linalg.norm(_np(layer(np.arange(0, 400, 40, dtype=np.int32))), axis=1)
    class_norms = np.linalg.norm(_np(layer.class_embedding.embeddings), axis=1)
    assert np.all(np.abs(class_norms / np.sqrt(dim) - 1.0) < 0.3)
    assert class_norms.mean() > 0.5 * time_norms.mean()


def test_timestep_embedding_depth_zero_is_one_dense():
    layer = TimestepEmbedding(8, mlp_depth=0)
    assert _np(layer(np.arange(4))).shape == (4, 8)
    assert layer.count_params() == 8 * 8 + 8


@pytest.mark.parametrize("kwargs,pattern", [(dict(num_classes=0), "num_classes=0"), (dict(mlp_depth=-1), "mlp_depth=-1"),
                                            (dict(mlp_width=0), "mlp_width=0")])
def test_timestep_embedding_rejects_bad_args(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TimestepEmbedding(8, **kwargs)


# -- ConvBlock -----------------------------------------------------------------------------------------
def test_conv_block_output_shape_and_time_dependence():
    block = ConvBlock(7)
    x = _images((2, 12, 10, 5))
    e = np.random.default_rng(1).normal(size=(2, 16)).astype(np.float32)
    y = _np(block(x, e))
    assert y.shape == (2, 12, 10, 7)
    assert block.compute_output_shape((2, 12, 10, 5), (2, 16)) == (2, 12, 10, 7)
    assert np.all(y >= -0.2785)  # SiLU's minimum is −0.27846
    y_other_time = _np(block(x, e + 1.0))
    assert not np.allclose(y, y_other_time)
    assert block.count_params() == (9 * 5 * 7 + 7) + (16 * 7 + 7) + (9 * 7 * 7 + 7)


def test_conv_block_rejects_bad_filters():
    with pytest.raises(ValueError, match="filters=0"):
        ConvBlock(0)


# -- SeedUNet ---------------------------------------------------------------------------------------------
def test_seed_unet_default_param_count():
    net = SeedUNet()
    out = net(np.zeros((1, 28, 28, 1), np.float32), np.array([0], np.int32))
    assert out.shape == (1, 28, 28, 1)
    expected = _seed_unet_param_count((64, 128, 256), 32, 64, 256)
    assert expected == 2_020_353
    assert net.count_params() == 2_020_353


@pytest.mark.parametrize("shape,output_channels", [((2, 28, 28, 1), 1), ((2, 32, 32, 3), 3)])
def test_tiny_seed_unet_output_shape(shape, output_channels):
    net = SeedUNet(**TINY, output_channels=output_channels)
    out = _np(net(_images(shape), np.array([0, 399], np.int32)))
    assert out.shape == shape
    assert np.all(np.isfinite(out))
    assert net.count_params() == _seed_unet_param_count(
        TINY["channels"], 8, 16, 32, in_channels=shape[-1], output_channels=output_channels
    )


def test_seed_unet_output_depends_on_time():
    net = SeedUNet(**TINY)
    x = _images((1, 28, 28, 1))
    a = _np(net(x, np.array([0], np.int32)))
    b = _np(net(x, np.array([200], np.int32)))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("shape", [(1, 30, 28, 1), (1, 28, 26, 1)])
def test_seed_unet_rejects_indivisible_size(shape):
    net = SeedUNet(**TINY)
    with pytest.raises(ValueError, match=re.escape(f"x_shape={shape}")):
        net(_images(shape), np.array([0], np.int32))


def test_seed_unet_rejects_short_channels():
    with pytest.raises(ValueError, match=r"channels=\(8,\)"):
        SeedUNet(channels=(8,))


def test_class_conditional_seed_unet_depends_on_label():
    net = SeedUNet(**TINY, num_classes=10)
    x = np.repeat(_images((1, 28, 28, 1)), 3, axis=0)
    t = np.array([50, 50, 50], np.int32)
    out = _np(net(x, t, np.array([0, 1, 10], np.int32)))  # 10 = null label
    assert out.shape == (3, 28, 28, 1)
    assert not np.allclose(out[0], out[1])
    assert not np.allclose(out[0], out[2])
    # Without labels the network uses the null class.
    unlabeled = _np(net(x[:1], t[:1]))
    np.testing.assert_allclose(unlabeled[0], out[2], rtol=1e-5, atol=1e-6)
    assert net.count_params() == _seed_unet_param_count(TINY["channels"], 8, 16, 32, num_classes=10)


# -- MLPDenoiser -------------------------------------------------------------------------------------
@pytest.mark.parametrize("data_dim", [1, 2])
def test_mlp_denoiser_shapes(data_dim):
    net = MLPDenoiser(data_dim, hidden_units=16, num_hidden_layers=2, time_embedding_dim=8)
    x = _images((5, data_dim))
    out = _np(net(x, np.arange(5, dtype=np.int32)))
    assert out.shape == (5, data_dim)
    # By hand: time MLP 8→32→8, then per layer W (d_in·16+16) and U (8·16+16), output 16·D+D.
    time = (8 * 32 + 32) + (32 * 8 + 8)
    layers_ = (data_dim * 16 + 16) + (16 * 16 + 16) + 2 * (8 * 16 + 16)
    assert net.count_params() == time + layers_ + 16 * data_dim + data_dim


def test_mlp_denoiser_rejects_wrong_width_and_bad_args():
    with pytest.raises(ValueError, match=r"x_shape=\(4, 3\)"):
        MLPDenoiser(2)(_images((4, 3)), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="hidden_units=0"):
        MLPDenoiser(2, hidden_units=0)


def test_class_conditional_mlp_denoiser():
    net = MLPDenoiser(2, hidden_units=16, num_hidden_layers=2, time_embedding_dim=8, num_classes=3)
    x = np.repeat(_images((1, 2)), 2, axis=0)
    out = _np(net(x, np.array([4, 4], np.int32), np.array([0, 3], np.int32)))
    assert out.shape == (2, 2) and not np.allclose(out[0], out[1])


# -- serialisation round trips ---------------------------------------------------------------------
CONFIG_CASES = [
    (SinusoidalEmbedding, dict(embedding_dim=12, max_period=500.0)),
    (TimestepEmbedding, dict(embedding_dim=16, mlp_width=24, mlp_depth=1, activation="silu", num_classes=4)),
    (ConvBlock, dict(filters=6, kernel_size=5)),
    (SeedUNet, dict(**TINY, time_mlp_depth=1, output_channels=3, num_classes=7)),
    (MLPDenoiser, dict(data_dim=2, hidden_units=16, num_hidden_layers=2, time_embedding_dim=8, num_classes=3)),
]


@pytest.mark.parametrize("cls,kwargs", CONFIG_CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_config_json_round_trip(cls, kwargs):
    obj = cls(**kwargs, name="custom_name")
    config = obj.get_config()
    for key, value in kwargs.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert config[key] == expected, key
    clone = cls.from_config(json.loads(json.dumps(config)))
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))
    assert clone.name == "custom_name"


def _round_trip(model, path, inputs):
    expected = _np(model(*inputs))
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    got = _np(loaded(*inputs))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    return loaded


def test_sinusoidal_embedding_keras_file_round_trip(tmp_path):
    t_in = keras.Input(shape=(), dtype="int32")
    model = keras.Model(t_in, SinusoidalEmbedding(12, max_period=500.0, name="emb")(t_in))
    loaded = _round_trip(model, tmp_path / "m.keras", [np.array([0, 5, 99], np.int32)])
    assert loaded.get_layer("emb").max_period == 500.0


def test_timestep_embedding_keras_file_round_trip(tmp_path):
    t_in = keras.Input(shape=(), dtype="int32")
    y_in = keras.Input(shape=(), dtype="int32")
    layer = TimestepEmbedding(16, mlp_width=24, num_classes=4, name="temb")
    model = keras.Model([t_in, y_in], layer(t_in, y_in))
    inputs = [np.array([0, 5, 99], np.int32), np.array([0, 2, 4], np.int32)]
    loaded = _round_trip(model, tmp_path / "m.keras", [inputs])
    assert loaded.get_layer("temb").num_classes == 4


def test_conv_block_keras_file_round_trip(tmp_path):
    x_in = keras.Input(shape=(8, 8, 3))
    e_in = keras.Input(shape=(16,))
    model = keras.Model([x_in, e_in], ConvBlock(6, name="block")(x_in, e_in))
    inputs = [_images((2, 8, 8, 3)), np.random.default_rng(3).normal(size=(2, 16)).astype(np.float32)]
    loaded = _round_trip(model, tmp_path / "m.keras", [inputs])
    assert loaded.get_layer("block").filters == 6


@pytest.mark.parametrize("num_classes", [None, 10])
def test_seed_unet_keras_file_round_trip(tmp_path, num_classes):
    net = SeedUNet(**TINY, num_classes=num_classes)
    inputs = [_images((2, 28, 28, 1)), np.array([3, 300], np.int32)]
    if num_classes is not None:
        inputs.append(np.array([2, 10], np.int32))
    loaded = _round_trip(net, tmp_path / "m.keras", inputs)
    assert loaded.get_config() == net.get_config()
    assert loaded.count_params() == net.count_params()


@pytest.mark.parametrize("num_classes", [None, 3])
def test_mlp_denoiser_keras_file_round_trip(tmp_path, num_classes):
    net = MLPDenoiser(2, hidden_units=16, num_hidden_layers=2, time_embedding_dim=8, num_classes=num_classes)
    inputs = [_images((6, 2)), np.arange(6, dtype=np.int32)]
    if num_classes is not None:
        inputs.append(np.array([0, 1, 2, 3, 0, 1], np.int32))
    loaded = _round_trip(net, tmp_path / "m.keras", inputs)
    assert loaded.get_config() == net.get_config()
