"""Tests for tfdiffusion.layers.dit: patches, adaLN-Zero, serialisation, training under XLA and bf16."""

import json
import re

import keras
import numpy as np
import pytest

from tfdiffusion.layers import DiT, DiTBlock
from tfdiffusion.layers.dit import sincos_position_embedding_2d

from network_checks import assert_keras_file_round_trip, fit_once, randomize, to_numpy

TINY = dict(hidden_size=16, depth=2, num_heads=2, mlp_ratio=2.0)


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# -- pieces --------------------------------------------------------------------------------------------
def test_sincos_table_matches_formula():
    table = sincos_position_embedding_2d(8, 2, 3)
    assert table.shape == (6, 8) and table.dtype == np.float32
    omega = np.array([1.0, 10000.0 ** -0.5])  # dim/4 = 2 frequencies
    for token in range(6):
        row, col = divmod(token, 3)  # row-major tokens
        expected = np.concatenate([np.sin(row * omega), np.cos(row * omega), np.sin(col * omega), np.cos(col * omega)])
        np.testing.assert_allclose(table[token], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="dim=6"):
        sincos_position_embedding_2d(6, 2, 2)


def test_dit_block_is_identity_at_init_and_param_count():
    block = DiTBlock(16, num_heads=4, mlp_ratio=2.0)
    x, c = _images((2, 5, 16)), _images((2, 16), seed=1)
    np.testing.assert_allclose(to_numpy(block(x, c)), x, atol=1e-6)  # every gate starts at 0
    # attention: 4 projections 16×16 + bias; MLP 16→32→16; modulation 16→96; LayerNorms have no weights.
    assert block.count_params() == 4 * (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16) + (16 * 96 + 96)
    randomize(block)
    assert not np.allclose(to_numpy(block(x, c)), to_numpy(block(x, c + 1.0)))  # the condition modulates


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: DiTBlock(16, num_heads=3), "num_heads=3"),
        (lambda: DiTBlock(16, mlp_ratio=0), "mlp_ratio=0"),
        (lambda: DiT(patch_size=0), "patch_size=0"),
        (lambda: DiT(hidden_size=18, num_heads=2), "hidden_size=18"),
        (lambda: DiT(hidden_size=16, num_heads=3), "num_heads=3"),
        (lambda: DiT(depth=0), "depth=0"),
        (lambda: DiT(position_embedding="rope"), "position_embedding='rope'"),
        (lambda: DiT(mlp_ratio=-1.0), "mlp_ratio=-1.0"),
        (lambda: DiT(output_channels=0), "output_channels=0"),
    ],
)
def test_rejects_bad_arguments(make, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        make()


def test_learned_position_embedding_allows_any_even_width():
    net = DiT(patch_size=7, hidden_size=18, depth=1, num_heads=2, position_embedding="learned")
    assert to_numpy(net(_images((1, 28, 28, 1)), np.array([0], np.int32))).shape == (1, 28, 28, 1)


# -- DiT -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, patch_size, position_embedding",
    [((2, 28, 28, 1), 4, "sincos"), ((2, 28, 28, 1), 7, "learned"), ((2, 32, 32, 3), 4, "sincos"),
     ((2, 32, 32, 3), 2, "learned")],
)
def test_dit_output_shape_and_param_count(shape, patch_size, position_embedding):
    channels = shape[-1]
    net = DiT(patch_size=patch_size, **TINY, output_channels=channels, position_embedding=position_embedding)
    out = to_numpy(net(_images(shape), np.array([0, 19], np.int32)))
    assert out.shape == shape
    np.testing.assert_array_equal(out, 0.0)  # the final linear layer is zero-initialised
    d, p, tokens = 16, patch_size, (shape[1] // patch_size) * (shape[2] // patch_size)
    block = 4 * (d * d + d) + (d * 2 * d + 2 * d) + (2 * d * d + d) + (d * 6 * d + 6 * d)
    expected = (
        (p * p * channels * d + d)  # patch embedding
        + 2 * (d * d + d)  # time MLP: Dense(d) → SiLU → Dense(d)
        + 2 * block
        + (d * 2 * d + 2 * d)  # final modulation
        + (d * p * p * channels + p * p * channels)  # final linear
        + (tokens * d if position_embedding == "learned" else 0)
    )
    assert net.count_params() == expected
    print(f"DiT(patch_size={p}, {TINY}) on {shape[1:]}: {expected:,} parameters")


def test_unpatchify_puts_each_patch_back_in_place():
    # With the blocks' gates at zero, a token sees only its own patch, so a change inside one
    # input patch must change exactly that output patch: this checks patchify/unpatchify agree.
    net = DiT(patch_size=4, **TINY)
    x, t = _images((1, 28, 28, 1)), np.array([7], np.int32)
    net(x, t)
    net.final_linear.kernel.assign(np.random.default_rng(1).normal(size=net.final_linear.kernel.shape))
    changed = x.copy()
    changed[0, 9, 22, 0] += 3.0  # patch (2, 5): rows 8..11, columns 20..23
    difference = np.abs(to_numpy(net(changed, t)) - to_numpy(net(x, t)))[0, :, :, 0]
    mask = np.zeros((28, 28), bool)
    mask[8:12, 20:24] = True
    assert difference[mask].min() > 0
    assert difference[~mask].max() == 0


def test_attention_mixes_tokens_once_randomized():
    net = DiT(patch_size=7, **TINY)
    x, t = _images((1, 28, 28, 1)), np.array([7], np.int32)
    net(x, t)
    randomize(net)
    changed = x.copy()
    changed[0, 0, 0, 0] += 3.0
    difference = np.abs(to_numpy(net(changed, t)) - to_numpy(net(x, t)))
    assert difference[0, 21:, 21:].max() > 1e-4  # the far corner patch sees the change


def test_output_depends_on_time():
    net = DiT(patch_size=4, **TINY)
    x = _images((1, 28, 28, 1))
    net(x, np.array([0], np.int32))
    randomize(net)
    assert not np.allclose(to_numpy(net(x, np.array([0], np.int32))), to_numpy(net(x, np.array([15], np.int32))))


def test_class_conditional_dit_depends_on_label_and_accepts_null():
    net = DiT(patch_size=7, **TINY, num_classes=10)
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


@pytest.mark.parametrize("shape, patch_size", [((1, 28, 28, 1), 3), ((1, 28, 30, 1), 4), ((1, 32, 32, 3), 7),
                                               ((1, 28, 28), 4)])
def test_dit_rejects_indivisible_or_bad_shapes(shape, patch_size):
    net = DiT(patch_size=patch_size, **TINY)
    with pytest.raises(ValueError, match=re.escape(f"x_shape={shape}")):
        net.build(shape, (1,))


def test_dit_config_json_round_trip():
    kwargs = dict(patch_size=7, hidden_size=24, depth=3, num_heads=3, mlp_ratio=3.0, output_channels=3,
                  num_classes=5, position_embedding="learned")
    net = DiT(**kwargs, name="custom_name")
    config = net.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    clone = DiT.from_config(json.loads(json.dumps(config)))
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))
    assert clone.name == "custom_name"


@pytest.mark.parametrize("num_classes, position_embedding", [(None, "sincos"), (10, "learned")])
def test_dit_keras_file_round_trip(tmp_path, num_classes, position_embedding):
    net = DiT(patch_size=4, **TINY, num_classes=num_classes, position_embedding=position_embedding)
    assert_keras_file_round_trip(net, tmp_path / "dit.keras", num_classes)


# -- training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_weighting", ["none", "min_snr"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_jit_compiled_train_step(prediction_type, loss_weighting):
    model, loss = fit_once(DiT(patch_size=4, hidden_size=16, depth=1, num_heads=2), prediction_type, loss_weighting)
    assert np.isfinite(loss) and loss > 0
    assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("position_embedding", ["sincos", "learned"])
def test_mixed_bfloat16_train_step(mixed_bfloat16, position_embedding):
    net = DiT(patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=3, position_embedding=position_embedding)
    labels = np.arange(8, dtype=np.int32) % 3
    _, loss = fit_once(net, "v", "min_snr", jit_compile=False, labels=labels)
    assert np.isfinite(loss) and loss > 0
    assert net.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in net.weights)
    out = net(_images((1, 8, 8, 1)), np.array([3], np.int32))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
