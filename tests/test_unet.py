"""Tests for tfdiffusion.layers.unet: shapes, parameter counts, serialisation, training under XLA and bf16."""

import json
import re
import warnings
import zipfile

import keras

import numpy as np
import pytest

from tfdiffusion.layers import AttentionBlock, ResidualBlock, UNet

from network_checks import assert_keras_file_round_trip, fit_once, randomize, to_numpy

# 28 → 14 → 7 with attention at 7 (level 2, and in the middle), GroupNorm(4) on widths 8 and 16.
TINY_28 = dict(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,), num_groups=4,
               num_heads=2)
# 32 → 16 → 8 → 4 with attention at 8 (level 2).
TINY_32 = dict(base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(2,),
               num_groups=4, num_heads=2, output_channels=3)
# 8×8 inputs, 8 → 4 with attention at 4 (level 1, and in the middle).
SMALL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_groups=4,
             num_heads=2)
# For the train steps (the XLA compilations are the slowest tests): one level, attention only in the
# middle; down- and up-sampling are covered by the other tests.
TRAIN = dict(base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(), num_groups=4,
             num_heads=2)


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# -- blocks --------------------------------------------------------------------------------------------
def test_residual_block_shapes_param_count_and_identity_at_init():
    block = ResidualBlock(16, num_groups=4)
    x, e = _images((2, 6, 6, 8)), _images((2, 12), seed=1)
    y = to_numpy(block(x, e))
    assert y.shape == (2, 6, 6, 16)
    # By hand: 2 GroupNorms (γ, β), conv3×3 8→16, Dense 12→32 (FiLM), conv3×3 16→16, 1×1 skip 8→16.
    expected = 2 * 8 + (9 * 8 * 16 + 16) + (12 * 32 + 32) + 2 * 16 + (9 * 16 * 16 + 16) + (8 * 16 + 16)
    assert block.count_params() == expected
    # The second conv starts at zero, so a new block is its skip connection.
    np.testing.assert_allclose(y, to_numpy(block.skip(x)), atol=1e-6)
    same = ResidualBlock(8, num_groups=4)
    np.testing.assert_allclose(to_numpy(same(x, e)), x, atol=1e-6)
    assert same.skip is None


def test_residual_block_film_uses_the_embedding():
    block = ResidualBlock(8, num_groups=2)
    x, e = _images((1, 4, 4, 8)), _images((1, 6), seed=1)
    block(x, e)
    randomize(block)
    assert not np.allclose(to_numpy(block(x, e)), to_numpy(block(x, e + 1.0)))


def test_attention_block_shapes_and_param_count():
    block = AttentionBlock(16, num_heads=4, num_groups=4)
    y = to_numpy(block(_images((2, 5, 3, 16))))
    assert y.shape == (2, 5, 3, 16)
    # GroupNorm γ, β; query/key/value 16→4×4 with bias; output 4×4→16 with bias.
    assert block.count_params() == 2 * 16 + 3 * (16 * 16 + 16) + (16 * 16 + 16)


def test_attention_block_mixes_positions():
    block = AttentionBlock(8, num_heads=2, num_groups=2)
    x = _images((1, 4, 4, 8))
    block(x)
    randomize(block)
    changed = x.copy()
    changed[0, 0, 0] += 1.0
    difference = np.abs(to_numpy(block(changed)) - to_numpy(block(x)))
    assert difference[0, 3, 3].max() > 1e-4  # a far position sees the change


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ResidualBlock(12, num_groups=8), "num_groups=8"),
        (lambda: ResidualBlock(0), "filters=0"),
        (lambda: ResidualBlock(8, num_groups=4, dropout=1.0), "dropout=1.0"),
        (lambda: AttentionBlock(12, num_heads=5, num_groups=4), "num_heads=5"),
        (lambda: AttentionBlock(12, num_heads=4, num_groups=5), "num_groups=5"),
    ],
)
def test_blocks_reject_bad_arguments(make, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        make()


def test_residual_block_rejects_input_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match=re.escape("num_groups=4")):
        ResidualBlock(8, num_groups=4)(_images((1, 4, 4, 6)), _images((1, 3)))


# -- UNet ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, kwargs", [((2, 28, 28, 1), TINY_28), ((2, 32, 32, 3), TINY_32)], ids=["28x28x1", "32x32x3"]
)
def test_unet_output_shape(shape, kwargs):
    net = UNet(**kwargs)
    out = to_numpy(net(_images(shape), np.array([0, 19], np.int32)))
    assert out.shape == shape
    np.testing.assert_array_equal(out, 0.0)  # the output convolution is zero-initialised
    randomize(net)
    out = to_numpy(net(_images(shape), np.array([0, 19], np.int32)))
    assert np.all(np.isfinite(out)) and out.std() > 0
    print(f"UNet{kwargs} on {shape[1:]}: {net.count_params():,} parameters")


# Attention after the 2 down and 3 up blocks of levels 1 and 2, in the order of the forward pass.
LEVELS_1_2 = [f"down_{i}_{j}" for i in (1, 2) for j in range(2)] + [f"up_{i}_{j}" for i in (2, 1) for j in range(3)]


def test_unet_creates_attention_at_the_given_levels_before_build():
    net = UNet(**{**TINY_28, "num_res_blocks": 2, "attention_levels": (1, 2)})
    assert not net.built
    assert list(net.attention_blocks) == LEVELS_1_2
    assert [block.channels for block in net.attention_blocks.values()] == [16] * 10  # widths of levels 1 and 2
    assert UNet(**{**TINY_28, "attention_levels": ()}).attention_blocks == {}


def test_unet_architecture_does_not_depend_on_the_input_size():
    def weight_shapes(size):
        net = UNet(**TINY_28, name="unet")
        net.build((1, size, size, 1), (1,))
        return [(w.path, tuple(w.shape)) for w in net.weights]

    assert weight_shapes(28) == weight_shapes(8)


LEGACY_28 = {**{k: v for k, v in TINY_28.items() if k != "attention_levels"}, "num_res_blocks": 2}


def test_deprecated_attention_resolutions_resolve_to_the_same_levels_in_build():
    with pytest.warns(DeprecationWarning, match="attention_levels"):
        legacy = UNet(**LEGACY_28, attention_resolutions=(14, 7), name="unet")
    config = legacy.get_config()  # before build: the form it was given, so from_config gives the same network
    assert config["attention_resolutions"] == [14, 7] and "attention_levels" not in config
    legacy.build((1, 28, 28, 1), (1,))
    assert legacy.attention_levels == (1, 2) and list(legacy.attention_blocks) == LEVELS_1_2
    assert legacy.get_config() == UNet(**LEGACY_28, attention_levels=(1, 2), name="unet").get_config()
    with pytest.raises(ValueError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old key warns before the conflict is refused
        UNet(**LEGACY_28, attention_levels=(1,), attention_resolutions=(7,))


def test_a_file_saved_with_attention_resolutions_loads(tmp_path):
    """A .keras file written before attention_levels existed (its config edited back to the old key)."""
    net = UNet(**TINY_28)
    path = tmp_path / "new.keras"
    assert_keras_file_round_trip(net, path)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["attention_levels"]
                config["config"]["attention_resolutions"] = [7]
                data = json.dumps(config)
            target.writestr(item, data)
    x, t = _images((2, 28, 28, 1)), np.array([3, 17], np.int32)
    with pytest.warns(DeprecationWarning):
        loaded = keras.saving.load_model(old)
    assert loaded.attention_levels == (2,) and list(loaded.attention_blocks) == list(net.attention_blocks)
    np.testing.assert_array_equal(to_numpy(loaded(x, t)), to_numpy(net(x, t)))


def test_unet_output_depends_on_time():
    net = UNet(**TINY_28)
    x = _images((1, 28, 28, 1))
    net(x, np.array([0], np.int32))
    randomize(net)
    assert not np.allclose(to_numpy(net(x, np.array([0], np.int32))), to_numpy(net(x, np.array([15], np.int32))))


def test_class_conditional_unet_depends_on_label_and_accepts_null():
    net = UNet(**TINY_28, num_classes=10)
    x = np.repeat(_images((1, 28, 28, 1)), 3, axis=0)
    t = np.array([5, 5, 5], np.int32)
    net(x, t, np.array([0, 1, 10], np.int32))
    randomize(net)
    out = to_numpy(net(x, t, np.array([0, 1, 10], np.int32)))  # 10 = the null label
    assert out.shape == (3, 28, 28, 1) and np.all(np.isfinite(out))
    assert not np.allclose(out[0], out[1])
    assert not np.allclose(out[0], out[2])
    unlabeled = to_numpy(net(x[:1], t[:1]))  # no labels means the null class
    np.testing.assert_allclose(unlabeled[0], out[2], rtol=1e-5, atol=1e-5)
    # The class table has num_classes + 1 rows of the embedding size (4 · base_channels).
    assert net.time_embedding.class_embedding.embeddings.shape == (11, 32)


def test_dropout_is_active_only_in_training():
    net = UNet(**{**SMALL, "dropout": 0.5})
    x, t = _images((2, 8, 8, 1)), np.array([1, 2], np.int32)
    net(x, t)
    randomize(net)
    np.testing.assert_array_equal(to_numpy(net(x, t)), to_numpy(net(x, t, training=False)))
    assert not np.allclose(to_numpy(net(x, t, training=True)), to_numpy(net(x, t)))


@pytest.mark.parametrize("shape", [(1, 30, 28, 1), (1, 28, 26, 1), (1, 28, 28)])
def test_unet_rejects_indivisible_or_bad_shapes(shape):
    net = UNet(**TINY_28)
    with pytest.raises(ValueError, match=re.escape(f"x_shape={shape}")):
        net.build(shape, (1,))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(num_groups=3), "num_groups=3"),
        (dict(base_channels=0), "base_channels=0"),
        (dict(channel_mult=()), "channel_mult=()"),
        (dict(channel_mult=(1, 0)), "channel_mult=(1, 0)"),
        (dict(num_res_blocks=0), "num_res_blocks=0"),
        (dict(attention_levels=("2",)), "attention_levels=('2',)"),
        (dict(attention_levels=(3,)), "attention_levels=(3,)"),
        (dict(attention_levels=(1, 1)), "attention_levels=(1, 1)"),
        (dict(dropout=-0.1), "dropout=-0.1"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(output_channels=0), "output_channels=0"),
    ],
)
def test_unet_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        UNet(**{**TINY_28, **kwargs})


def test_unet_rejects_heads_not_dividing_an_attention_level():
    # The middle (width 16) takes 16 heads, level 0 of width 24 with attention does not: found in __init__.
    with pytest.raises(ValueError, match="num_heads=16"):
        UNet(base_channels=8, channel_mult=(3, 2), num_res_blocks=1, attention_levels=(0,), num_groups=4,
             num_heads=16)


def test_unet_config_json_round_trip():
    kwargs = dict(**TINY_32, dropout=0.1, time_embedding_dim=24, num_classes=7)
    net = UNet(**kwargs, name="custom_name")
    config = net.get_config()
    for key, value in kwargs.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    clone = UNet.from_config(json.loads(json.dumps(config)))
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))
    assert clone.name == "custom_name" and clone.channel_mult == (1, 2, 2, 2)


@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_keras_file_round_trip(tmp_path, num_classes):
    net = UNet(**TINY_28, num_classes=num_classes)
    loaded = assert_keras_file_round_trip(net, tmp_path / "unet.keras", num_classes)
    assert list(loaded.attention_blocks) == list(net.attention_blocks) == ["down_2_0", "up_2_0", "up_2_1"]


# -- training --------------------------------------------------------------------------------------------


# About 13 s each on 2 cores: two combinations in the fast suite, the other four with the slow tests.
@pytest.mark.parametrize("prediction_type, loss_weighting", [
    ("epsilon", "none"), ("v", "min_snr"),
    *(pytest.param(p, w, marks=pytest.mark.slow)
      for p, w in (("epsilon", "min_snr"), ("x0", "none"), ("x0", "min_snr"), ("v", "none"))),
])
def test_jit_compiled_train_step(prediction_type, loss_weighting):
    model, loss = fit_once(UNet(**TRAIN), prediction_type, loss_weighting)
    assert np.isfinite(loss) and loss > 0
    assert int(model.optimizer.iterations.numpy()) == 1


def test_mixed_bfloat16_train_step(mixed_bfloat16):
    net = UNet(**TRAIN, num_classes=3)
    labels = np.arange(8, dtype=np.int32) % 3
    model, loss = fit_once(net, "v", "min_snr", jit_compile=False, labels=labels)
    assert np.isfinite(loss) and loss > 0
    assert net.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in net.weights)
    # The down- and up-sampling path in bfloat16 too: a forward pass of the two-level network.
    small = UNet(**SMALL, num_classes=3)
    out = small(_images((2, 8, 8, 1)), np.array([3, 9], np.int32), np.array([0, 3], np.int32))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in small.weights)
    assert np.all(np.isfinite(to_numpy(keras.ops.cast(out, "float32"))))
