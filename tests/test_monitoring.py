"""Monitoring a run: the progress lines with the ETA, and the TensorBoard grids of EMA samples."""

import io
import pathlib
import re
import types

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import builders, callbacks, data, plots, training

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, variant="tiny"):
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    return namespace["get_config"](variant)


def image_summaries(log_dir):
    """{step: decoded image} of every image summary in the event files of `log_dir`."""
    images = {}
    for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    encoded = tf.make_ndarray(value.tensor)[2]  # [width, height, PNG bytes]
                    images[event.step] = tf.io.decode_png(encoded).numpy()
    return images


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monitored")
    config = load_config("mnist")  # 4 steps, on synthetic 28×28 images: MNIST is not in the empty directories
    config.data.data_dir = str(tmp_path_factory.mktemp("empty_tfds"))
    config.train.update({"sample_every": 2, "verbose": False})
    # A large rate, so that the raw weights move away from their average within 4 steps.
    config.optimizer.update({"use_ema": True, "learning_rate": 0.02, "schedule": "constant"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(data.MNIST_DIR_ENV_VAR, str(tmp_path_factory.mktemp("empty_mnist")))
        training.train(config, str(workdir))
    return workdir, config


def test_sample_grids_are_written_to_tensorboard_every_sample_every_steps(sampled_run):
    workdir, config = sampled_run
    grids = image_summaries(workdir / "logs" / "samples")
    assert sorted(grids) == [2, 4]
    assert grids[2].shape == (56, 56, 1) and grids[2].dtype == np.uint8  # 4 samples of 28×28 in a 2×2 grid
    assert not np.array_equal(grids[2], grids[4])


def test_a_grid_is_the_ema_model_sampled_with_the_fixed_seed(sampled_run):
    workdir, config = sampled_run
    model = builders.model_from_checkpoint(str(workdir), step=4, use_ema=True)
    images = callbacks.sample_images(model, config.sample.to_dict())
    expected = tf.image.convert_image_dtype(plots.image_grid(images), tf.uint8, saturate=True).numpy()
    written = image_summaries(workdir / "logs" / "samples")[4]
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1  # up to the rounding of the PNG
    raw = builders.model_from_checkpoint(str(workdir), step=4, use_ema=False)
    raw_grid = tf.image.convert_image_dtype(plots.image_grid(callbacks.sample_images(raw, config.sample.to_dict())),
                                            tf.uint8, saturate=True).numpy()
    assert np.abs(written.astype(int) - raw_grid.astype(int)).max() > 1  # the grid is not from the raw weights


class _Steps:
    """A stand-in for a model whose optimizer counts the steps a test sets."""

    def __init__(self):
        self.optimizer = types.SimpleNamespace(iterations=tf.Variable(0, dtype=tf.int64))


def _drive(bar, steps):
    model = _Steps()
    bar.set_model(model)
    for step in steps:
        model.optimizer.iterations.assign(step)
        bar.on_train_batch_end(step - 1, {"loss": 0.25})
    bar.on_train_end()


def _clock(seconds_per_call):
    """A clock that advances `seconds_per_call` each time it is read (once per step)."""
    readings = iter(np.arange(10_000) * seconds_per_call + 100.0)
    return lambda: float(next(readings))


def test_progress_lines_with_eta_every_log_every_steps_off_a_terminal():
    stream = io.StringIO()
    _drive(callbacks.ProgressBar(1000, 100, stream=stream, clock=_clock(0.5)), range(501, 1001))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in stream.getvalue()
    assert lines[0] == "step 600/1000 loss 0.2500 · 0.5 s/step · ETA 3:20"  # 400 steps left at 0.5 s
    assert lines[-1] == "step 1000/1000 loss 0.2500 · 0.5 s/step · ETA 0:00"


def test_progress_bar_redraws_one_line_on_a_terminal():
    stream = io.StringIO()
    _drive(callbacks.ProgressBar(100, 10, stream=stream, interactive=True, clock=_clock(0.1)), range(1, 101))
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    frames = text.strip().split("\r")[1:]
    assert 30 <= len(frames) <= 51  # at most 5 redraws a second of the 10 s run, and the last step
    assert re.fullmatch(r"\[=+\] step 100/100 loss 0\.2500 · 0\.1 s/step · ETA 0:00\x1b\[K", frames[-1])
