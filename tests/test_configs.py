"""Every config in configs/: loads (default and :tiny), validates, builds, runs; tiny image runs end to end."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import builders, training
from tfdiffusion import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The shape of one example of each dataset a config can name.
DATA_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "digits": (8, 8, 1),
               "moons": (2,), "gmm1d": (1,)}


def load_config(name, variant=None):
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    return namespace["get_config"](variant)


# Training configs only: a distillation config (its `distill` section) is tested in test_distillation.
CONFIG_NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.py")
                      if not path.stem.startswith("_") and "distill" not in load_config(path.stem))


def data_shape(config):
    """The shape of one example of the config's data: a folder's from its image_size and channels."""
    if config.data.source == "folder":
        size = config.data.image_size
        return (size, size, config.data.channels) if isinstance(size, int) else tuple(size) + (config.data.channels,)
    return DATA_SHAPES[config.data.name]


def test_the_new_configs_are_found():
    assert {"cifar10", "fashion_mnist", "mnist_cfg", "mnist_dit", "mnist", "moons"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("variant", [None, "tiny"], ids=["default", "tiny"])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_validates_builds_and_runs_one_forward_pass(name, variant):
    config = load_config(name, variant)
    config_lib.validate_config(config)
    shape = data_shape(config)
    assert json.loads(json.dumps(config_lib.config_to_dict(config)))["network"] == config.network
    model = builders.build_model(config, data_shape=shape)
    batch = 2
    x = tf.random.stateless_normal((batch,) + shape, seed=(0, 1))
    labels = None if model.num_classes is None else tf.constant([0, model.num_classes], tf.int32)
    out = model(x, tf.constant([0, config.diffusion.num_timesteps - 1], tf.int32), labels)
    assert tuple(out.shape) == (batch,) + shape
    assert np.all(np.isfinite(out.numpy()))
    params = model.network.count_params()
    print(f"configs/{name}.py{':' + variant if variant else ''}: {config.network} with {params:,} parameters")
    if (config.objective.label_dropout > 0 or config.sample.guidance_scale) and config.data.source == "folder":
        # A folder config is class-conditional exactly when its subfolders are classes.
        assert model.num_classes is None and not config.data.class_subfolders
        config.data.class_subfolders = True
        assert builders.build_model(config, data_shape=shape, class_names=("a", "b", "c")).num_classes == 3
    elif config.objective.label_dropout > 0 or config.sample.guidance_scale:
        assert model.num_classes is not None, "label dropout and guidance need a class-conditional network"


def test_class_conditional_configs_use_guidance():
    for name in ("cifar10", "mnist_cfg"):
        config = load_config(name)
        assert config.model.num_classes == 10
        assert config.objective.label_dropout == 0.1
        assert config.sample.guidance_scale == 3.0


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_unknown_variant_is_refused(name):
    with pytest.raises(ValueError, match="variant='huge'"):
        load_config(name, "huge")


# About 20–40 s each for cifar10 and fashion_mnist on a 2-core machine, 3 s for mnist_dit: only mnist_dit is
# in the fast suite (kept under 15 minutes). tests/test_folder_data.py trains a class-conditional RGB model
# through `training.train` in the fast suite, the path cifar10's run repeats.
@pytest.mark.parametrize(
    "name", [pytest.param("cifar10", marks=pytest.mark.slow), pytest.param("fashion_mnist", marks=pytest.mark.slow),
             "mnist_dit", pytest.param("mnist_cfg", marks=pytest.mark.slow)]
)
def test_tiny_image_config_trains_end_to_end_on_mock_data(tmp_path, name):
    import tensorflow_datasets as tfds

    config = load_config(name, "tiny")
    config.data.source = "tfds"  # MNIST too reads the mocked TFDS, not local IDX files
    config.train.verbose = False
    with tfds.testing.mock_data(num_examples=64):
        summary = training.train(config, str(tmp_path))
    assert summary["steps"] == config.train.steps
    assert np.isfinite(summary["final_loss"])
    for file_name in ("config.json", "model.keras", "samples.png", "loss.csv", "summary.json"):
        assert (tmp_path / file_name).exists(), file_name
    assert (tmp_path / "samples.png").stat().st_size > 1000
