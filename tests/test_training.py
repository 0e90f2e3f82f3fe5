"""The training library and the `tools/train.py` binary: runs, resume, checkpoints, bad input."""

import json

import keras
import numpy as np
import pytest
from training_runs import checkpoint_arrays, load_config, run_binary, sigkill_then_resume

from tfdiffusion import builders, checkpoints, training
from tfdiffusion import config as config_lib


def test_moons_binary_end_to_end(tmp_path):
    workdir = tmp_path / "moons"
    result = run_binary("--config=configs/moons.py:tiny", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("config.json", "model.keras", "samples.png", "loss.csv", "summary.json", "logs"):
        assert (workdir / name).exists(), name
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 200 and np.isfinite(summary["final_loss"])
    assert summary["jit_compile"] is builders.resolve_jit_compile("auto")
    model = keras.saving.load_model(workdir / "model.keras")
    assert model.generate(5, seed=0).shape == (5, 2)


def write_idx_mnist(directory, num_images=64):
    """A small MNIST directory in the original IDX format (random strokes), so the test needs no network."""
    import gzip

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = (rng.random((num_images, 28, 28)) < 0.15).astype(np.uint8) * 255
    labels = rng.integers(0, 10, num_images).astype(np.uint8)
    for split, stem in (("train", "train"), ("test", "t10k")):
        with gzip.open(directory / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, num_images, 28, 28], ">i4").tobytes() + images.tobytes())
        with gzip.open(directory / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, num_images], ">i4").tobytes() + labels.tobytes())
    return directory


def test_mnist_tiny_binary_end_to_end(tmp_path):
    idx_dir = write_idx_mnist(tmp_path / "idx")
    workdir = tmp_path / "run"
    result = run_binary("--config=configs/mnist.py:tiny", f"--workdir={workdir}", f"--config.data.idx_dir={idx_dir}",
                        "--config.data.source=idx")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "samples.png").stat().st_size > 1000
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["diffusion"] == {"name": "linear", "num_timesteps": 400}
    assert recorded["data_shape"] == [28, 28, 1]  # so that restoring a checkpoint need not read the data


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.steps=0", "Received: config.train.steps=0"),
        ("--config.data.batch_size=-4", "Received: config.data.batch_size=-4"),
        ("--config.diffusion.name=quadratic", "Received: config.diffusion.name='quadratic'"),
        ("--config.train.jit_compile=sometimes", "Received: config.train.jit_compile='sometimes'"),
        ("--config.optimizer.learning_rate=0.0", "Received: config.optimizer.learning_rate=0.0"),
        ("--config.train.stepz=3", "stepz"),
    ],
)
def test_bad_config_values_exit_nonzero_and_leave_no_workdir(tmp_path, flag, message):
    workdir = tmp_path / "run"
    result = run_binary("--config=configs/moons.py:tiny", f"--workdir={workdir}", flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert not workdir.exists()


def test_unknown_config_variant_and_missing_workdir_flag(tmp_path):
    result = run_binary("--config=configs/moons.py:huge", f"--workdir={tmp_path}/x")
    assert result.returncode != 0 and "variant='huge'" in result.stderr
    result = run_binary("--config=configs/moons.py:tiny")
    assert result.returncode != 0 and "workdir" in result.stderr


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    # A constant learning rate: a cosine schedule depends on train.steps, which the two halves change.
    constant = {"optimizer.schedule": "constant", "optimizer.use_ema": True}
    straight = training.train(load_config("moons", **{"train.steps": 200}, **constant), str(tmp_path / "straight"))
    training.train(load_config("moons", **{"train.steps": 100}, **constant), str(tmp_path / "resumed"))
    resumed = training.train(load_config("moons", **{"train.steps": 200}, **constant), str(tmp_path / "resumed"))
    assert straight["resumed_from"] == 0 and resumed["resumed_from"] == 100
    a = checkpoint_arrays(tmp_path / "straight" / "checkpoints" / "ckpt-000000200.weights.h5")
    b = checkpoint_arrays(tmp_path / "resumed" / "checkpoints" / "ckpt-000000200.weights.h5")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)



def test_extra_callbacks_run_in_the_fit_loop_and_can_stop_it(tmp_path):
    class StopAfter(keras.callbacks.Callback):
        def __init__(self, steps):
            super().__init__()
            self.steps, self.seen = steps, []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(int(self.model.optimizer.iterations.numpy()))
            self.model.stop_training = self.seen[-1] >= self.steps

    stop = StopAfter(3)
    summary = training.train(load_config("moons", **{"train.steps": 20, "train.checkpoint_every": 10}),
                             str(tmp_path / "run"), callbacks=[stop])
    # The callback saw every step and its stop ended the run early; the outputs are still written.
    assert stop.seen == [1, 2, 3] and summary["steps"] == 3
    assert (tmp_path / "run" / "model.keras").exists()

def test_changed_config_is_refused_unless_allowed(tmp_path):
    training.train(load_config("moons"), str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match="config.seed: saved 0, requested 1"):
        training.train(_with_seed(1), str(tmp_path))
    allowed = _with_seed(1)
    allowed.train.allow_config_change = True
    assert training.train(allowed, str(tmp_path))["resumed_from"] == 200


def _with_seed(seed):
    config = load_config("moons")
    config.seed = seed
    return config


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    config = load_config("moons")
    training.train(config, str(tmp_path))
    checkpoint_dir = tmp_path / "checkpoints"
    latest, previous = checkpoint_dir / "ckpt-000000200.weights.h5", checkpoint_dir / "ckpt-000000100.weights.h5"
    expected = checkpoint_arrays(previous)
    size = latest.stat().st_size
    with open(latest, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.write(b"\0" * size)
    model = builders.build_compiled_model(config, (2,))
    assert checkpoints.CheckpointManager(str(checkpoint_dir), model).restore() == 100
    kernel = model.network.output_layer.kernel.numpy()
    restored = [v for k, v in expected.items() if v.shape == kernel.shape and np.array_equal(v, kernel)]
    assert restored, "the output layer's kernel is the one stored in the step-100 checkpoint"
    assert int(model.optimizer.iterations.numpy()) == 100


def test_huge_learning_rate_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path):
    config = load_config("moons", **{"optimizer.learning_rate": 1e30, "train.steps": 200})
    config.optimizer.schedule = "constant"
    config.train.checkpoint_every = 1
    config.train.log_every = 1
    with pytest.raises(training.NonFiniteLossError, match=r"not finite at step \d+"):
        training.train(config, str(tmp_path))
    steps = checkpoints.CheckpointManager(str(tmp_path / "checkpoints"), None).steps()
    assert steps, "at least one checkpoint was written before the loss blew up"
    for name, value in checkpoint_arrays(tmp_path / "checkpoints" / f"ckpt-{steps[-1]:09d}.weights.h5").items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    assert not (tmp_path / "model.keras").exists()


def test_nonfinite_exit_code_of_the_binary(tmp_path):
    result = run_binary(
        "--config=configs/moons.py:tiny", f"--workdir={tmp_path}", "--config.optimizer.learning_rate=1e30",
        "--config.optimizer.schedule=constant",
    )
    assert result.returncode == 3
    assert "not finite at step" in result.stderr


def test_resolve_jit_compile():
    import tensorflow as tf

    assert builders.resolve_jit_compile(True) is True
    assert builders.resolve_jit_compile(False) is False
    accelerated = bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    assert builders.resolve_jit_compile("auto") is accelerated


@pytest.mark.slow
def test_sigkill_five_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    flags = [
        "--config=configs/moons.py:tiny", "--config.train.steps=600", "--config.train.checkpoint_every=10",
        "--config.train.log_every=10", "--config.optimizer.use_ema=True", "--config.optimizer.ema_momentum=0.9",
        "--config.optimizer.schedule=constant", "--config.train.deterministic=True", "--config.train.verbose=False",
        "--config.sample.num_samples=8",
    ]
    straight, interrupted = sigkill_then_resume(flags, tmp_path, steps=600, checkpoint_every=10, kills=5,
                                                checkpoints_between=(1, 8))
    final = checkpoint_arrays(straight / "checkpoints" / "ckpt-000000600.weights.h5")
    assert any(name.startswith("optimizer") for name in final)  # Adam moments and the EMA weights were compared too
    ema_a = keras.saving.load_model(straight / "model.keras").get_weights()
    ema_b = keras.saving.load_model(interrupted / "model.keras").get_weights()
    for x, y in zip(ema_a, ema_b):
        np.testing.assert_array_equal(x, y)


def _fuzz_values():
    from hypothesis import strategies as st

    return st.one_of(
        st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
        st.text(max_size=12), st.none(), st.lists(st.integers(-3, 300), max_size=4),
    )


def test_random_config_values_are_accepted_or_named():
    """200+ random (key, value) overrides: each validates or raises an error naming the key and value."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = load_config("mnist")
    keys = [f"{section}.{key}" for section in ("data", "optimizer", "train", "sample", "diffusion")
            for key in base[section].keys()] + ["network", "seed"]

    @settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(keys), value=_fuzz_values())
    def check(key, value):
        config = load_config("mnist")
        *section, name = key.split(".")
        target = config[section[0]] if section else config
        try:
            with target.ignore_type():
                target[name] = value
        except Exception as error:  # a value the ConfigDict itself refuses, e.g. None for a locked type
            assert name in str(error) or type(error).__name__ in ("TypeError", "ValueError", "KeyError")
            return
        try:
            config_lib.validate_config(config)
            builders.build_diffusion(config.diffusion)
        except (config_lib.ConfigError, ValueError, TypeError) as error:
            message = str(error)
            assert name in message and ("Received" in message or "got" in message), message

    check()


def test_all_checkpoints_damaged_exits_1_and_keeps_the_files(tmp_path):
    training.train(load_config("moons"), str(tmp_path))
    checkpoints = sorted((tmp_path / "checkpoints").glob("ckpt-*.weights.h5"))
    for path in checkpoints:
        path.write_bytes(b"not a checkpoint")
    result = run_binary("--config=configs/moons.py:tiny", f"--workdir={tmp_path}")
    assert result.returncode == 1 and "No readable checkpoint" in result.stderr
    assert all(path.read_bytes() == b"not a checkpoint" for path in checkpoints)


def test_network_that_cannot_take_the_data_shape_exits_1(tmp_path):
    idx_dir = write_idx_mnist(tmp_path / "idx")
    result = run_binary("--config=configs/mnist.py:tiny", f"--workdir={tmp_path}/run", f"--config.data.idx_dir={idx_dir}",
                        "--config.model.channels=(8, 16, 32, 64)")
    assert result.returncode == 1
    assert "divisible by 8" in result.stderr and "Received: x_shape=(1, 28, 28, 1)" in result.stderr
