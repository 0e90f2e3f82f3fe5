"""Training on a folder of images and without data on disk: exact resume, the data checks, offline tiny runs."""

import json
import os
import subprocess

import numpy as np
import pytest
from image_folders import write_image_folder
from training_runs import ROOT, TRAIN, checkpoint_arrays, load_config, sigkill_then_resume

from tfdiffusion import builders, training
from tfdiffusion import config as config_lib
from tfdiffusion import data as data_lib

# Training configs only: a distillation config (its `distill` section) is tested in test_distillation.
CONFIG_NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.py")
                      if not path.stem.startswith("_") and "distill" not in load_config(path.stem))


@pytest.fixture(scope="module")
def flower_folder(tmp_path_factory):
    """16 RGB images of two sizes (PNG and JPEG) in two class subfolders."""
    root = tmp_path_factory.mktemp("flowers")
    write_image_folder(root, classes=("rose", "tulip"), per_class=5, size=(20, 24))
    write_image_folder(root / "tulip" / "more", classes=None, per_class=3, size=(16, 16), seed=1)
    write_image_folder(root / "rose" / "more", classes=None, per_class=3, size=(30, 18), seed=2)
    return root


def folder_config(path, **overrides):
    # A constant learning rate: a cosine schedule depends on train.steps, which the two halves change.
    return load_config("images", **{"data.path": str(path), "data.class_subfolders": True, "train.verbose": False,
                                    "train.sample_every": 0, "optimizer.schedule": "constant", **overrides})


def grey_folder_config(path, **overrides):
    """mnist.py's tiny SeedUNet (cheaper to trace than a UNet) on the folder as 16×16 grey, flipped, by class."""
    # A constant rate without warm-up: both would depend on train.steps, which the two halves change.
    return load_config("mnist", **{"data.source": "folder", "data.path": str(path), "data.class_subfolders": True,
                                   "data.channels": 1, "data.image_size": 16, "data.random_flip": True,
                                   "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
                                   "optimizer.use_ema": True, "train.verbose": False, **overrides})


def test_resumed_folder_run_equals_an_uninterrupted_one(flower_folder, tmp_path):
    straight = training.train(grey_folder_config(flower_folder), str(tmp_path / "straight"))
    training.train(grey_folder_config(flower_folder, **{"train.steps": 2}), str(tmp_path / "resumed"))
    resumed = training.train(grey_folder_config(flower_folder), str(tmp_path / "resumed"))
    assert straight["resumed_from"] == 0 and resumed["resumed_from"] == 2 and resumed["steps"] == 4
    a = checkpoint_arrays(tmp_path / "straight" / "checkpoints" / "ckpt-000000004.weights.h5")
    b = checkpoint_arrays(tmp_path / "resumed" / "checkpoints" / "ckpt-000000004.weights.h5")
    assert a.keys() == b.keys() and any(name.startswith("optimizer") for name in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    recorded = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert recorded["data_shape"] == [16, 16, 1] and recorded["class_names"] == ["rose", "tulip"]
    assert builders.read_class_names(str(tmp_path / "resumed")) == ["rose", "tulip"]
    model = builders.model_from_checkpoint(str(tmp_path / "resumed"))  # conditional on the recorded classes
    assert model.num_classes == 2 and model.data_shape == (16, 16, 1)


def test_rgb_data_and_a_one_channel_network_are_refused(flower_folder, tmp_path):
    with pytest.raises(config_lib.ConfigError, match="must equal the data's 3 channels.*"
                                                     "Received: config.model.output_channels=1$"):
        training.train(folder_config(flower_folder, **{"model.output_channels": 1}), str(tmp_path / "a"))
    mnist_as_rgb = load_config("mnist", **{"data.channels": 3, "train.verbose": False})
    with pytest.raises(config_lib.ConfigError, match="Received: config.model.output_channels=1$"):
        training.train(mnist_as_rgb, str(tmp_path / "b"))


def test_a_conditional_network_needs_labels(flower_folder, tmp_path):
    config = folder_config(flower_folder, **{"data.class_subfolders": False})
    config.model.num_classes = 2
    with pytest.raises(config_lib.ConfigError, match="Received: config.model.num_classes=2 and unlabelled data"):
        training.train(config, str(tmp_path))


def test_first_batch_outside_the_model_space_is_named(tmp_path, monkeypatch):
    x, _ = data_lib.synthetic_images((8, 8, 3), 16)
    unscaled = data_lib.ArrayData((x + 1.0) * 127.5)  # pixels left in [0, 255]
    monkeypatch.setattr(builders, "training_data", lambda section, seed: unscaled)
    with pytest.raises(ValueError, match=r"The first training batch lies outside the model space \[-1, 1\].*"
                                         r"Received: min=\d.*, max=2\d\d\.\d*$"):
        training.train(load_config("images", **{"train.verbose": False}), str(tmp_path))
    assert not list((tmp_path / "checkpoints").glob("*.h5"))


# -- no data on disk: every tiny variant runs on synthetic data; a full run stops with one message ------
@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """An empty $TFDIFFUSION_MNIST_DIR, no ../shared, an empty TFDS data_dir, and downloads that fail."""
    import tensorflow_datasets as tfds

    (tmp_path / "mnist_dir").mkdir()
    (tmp_path / "tfds").mkdir()
    monkeypatch.setenv(data_lib.MNIST_DIR_ENV_VAR, str(tmp_path / "mnist_dir"))
    monkeypatch.setattr(data_lib, "SHARED_MNIST_DIR", tmp_path / "no_shared")
    monkeypatch.setattr(data_lib, "TFDS_STALL_SECONDS", 1.0)

    def offline(self, **kwargs):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    return str(tmp_path / "tfds")


# The toys need no data. cifar10, fashion_mnist and mnist_cfg take mnist's path (a named set not on disk), and
# images' (a folder source without a path) trains in test_monitoring: their UNets' tracing makes them slow here.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("cifar10", "fashion_mnist", "mnist_cfg", "images") else n
                                  for n in CONFIG_NAMES if n not in ("moons", "gmm1d")])
def test_every_tiny_config_trains_without_data_on_disk(name, no_data_anywhere, tmp_path, caplog):
    config = load_config(name, **{"data.data_dir": no_data_anywhere, "train.verbose": False,
                                  "sample.num_samples": 2, "sample.num_steps": 2})
    with caplog.at_level("WARNING"):
        summary = training.train(config, str(tmp_path / "run"))
    assert summary["steps"] == config.train.steps and np.isfinite(summary["final_loss"])
    assert "synthetic_if_missing=True" in caplog.text


def test_absent_mnist_stops_a_full_run_with_what_to_set(no_data_anywhere, tmp_path):
    config = load_config("mnist", None, **{"data.data_dir": no_data_anywhere})
    with pytest.raises(data_lib.DataNotFoundError) as error:
        training.train(config, str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "ConnectionError: offline (test)" in message
    for setting in ("config.data.idx_dir", "$TFDIFFUSION_MNIST_DIR", "config.data.data_dir"):
        assert setting in message


def test_tiny_binary_runs_offline_with_empty_data_directories(tmp_path):
    (tmp_path / "mnist_dir").mkdir()
    (tmp_path / "tfds").mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFDIFFUSION_MNIST_DIR=str(tmp_path / "mnist_dir"),
               TFDS_DATA_DIR=str(tmp_path / "tfds"))
    result = subprocess.run(TRAIN + ["--config=configs/mnist.py:tiny", f"--workdir={tmp_path / 'run'}"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training on 512 synthetic 28×28×1 images instead" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4


# -- kill and resume on a folder --------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_three_times_on_a_folder_then_resume_equals_an_uninterrupted_run(flower_folder, tmp_path):
    flags = ["--config=configs/mnist.py:tiny", "--config.data.source=folder", f"--config.data.path={flower_folder}",
             "--config.data.class_subfolders=True", "--config.data.channels=1", "--config.data.image_size=16",
             "--config.data.random_flip=True", "--config.train.steps=120", "--config.train.checkpoint_every=2",
             "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
             "--config.optimizer.use_ema=True", "--config.train.deterministic=True", "--config.train.verbose=False"]
    sigkill_then_resume(flags, tmp_path, steps=120, checkpoint_every=2, kills=3, checkpoints_between=(3, 12))
