"""tfdiffusion.config: the schema loads without TensorFlow, its names match the registries, `tiny`, the workdir diff."""

import pathlib
import subprocess
import sys

import pytest

from tfdiffusion import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_loading_a_config_file_does_not_import_tensorflow():
    script = (
        "import runpy, sys; "
        "config = runpy.run_path('configs/mnist.py')['get_config']('tiny'); "
        "import tfdiffusion.config; tfdiffusion.config.validate_config(config); "
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tfdiffusion.data', 'tfdiffusion.model') if m in sys.modules); "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_package_still_exposes_its_names_on_first_use():
    script = ("import sys, tfdiffusion as tfd; assert 'tensorflow' not in sys.modules; "
              "print(tfd.DiffusionModel.__name__, tfd.layers.SeedUNet.__name__, tfd.sample.__name__, "
              "tfd.GaussianDiffusion.__name__, tfd.schedules.make_betas.__name__)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["DiffusionModel", "SeedUNet", "sample", "GaussianDiffusion", "make_betas"]


def test_declared_names_equal_the_registries():
    import keras

    from tfdiffusion import builders, data, samplers, schedules

    assert config_lib.NETWORK_NAMES == tuple(builders.NETWORKS)
    assert config_lib.SCHEDULE_NAMES == schedules.SCHEDULE_NAMES
    assert config_lib.SAMPLER_NAMES == samplers.SAMPLERS
    assert config_lib.SPACING_NAMES == samplers.SPACING_CHOICES
    assert config_lib.DATASET_NAMES == data.DATASET_NAMES
    assert config_lib.DATA_SOURCES == data.DATA_SOURCES
    assert config_lib.STRATEGIES == tuple(builders.STRATEGIES)
    for precision in config_lib.PRECISIONS[1:]:
        assert keras.mixed_precision.DTypePolicy(precision).name == precision
    assert config_lib.PRECISIONS[0] == "auto" and config_lib.base_config().train.mixed_precision == "auto"


def test_tiny_applies_the_shared_run_then_the_overrides():
    config = config_lib.tiny(config_lib.base_config(), optimizer={"warmup_steps": 2}, sample={"sampler": "ddim"})
    assert (config.data.batch_size, config.train.steps, config.train.checkpoint_every, config.train.log_every) == (8, 4, 2, 1)
    assert (config.sample.num_samples, config.sample.num_steps, config.sample.sampler) == (4, 5, "ddim")
    assert (config.optimizer.warmup_steps, config.optimizer.ema_momentum) == (2, 0.9)
    config_lib.validate_config(config)


def test_tiny_refuses_keys_the_config_does_not_have():
    with pytest.raises(config_lib.ConfigError, match="Received: config.train.stepz"):
        config_lib.tiny(config_lib.base_config(), train={"stepz": 3})


def test_validation_names_key_and_value():
    config = config_lib.base_config()
    config.train.steps = -5
    with pytest.raises(config_lib.ConfigError, match=r"Received: config.train.steps=-5$"):
        config_lib.validate_config(config)
    config = config_lib.base_config()
    config.data.source = "ftp"
    with pytest.raises(config_lib.ConfigError, match="Received: config.data.source='ftp'"):
        config_lib.validate_config(config)


def test_unknown_variant():
    config_lib.check_variant("tiny")
    with pytest.raises(ValueError, match="Received: variant='huge'"):
        config_lib.check_variant("huge")


def test_config_differences_ignore_resumable_and_recorded_keys():
    saved = config_lib.config_to_dict(config_lib.base_config()) | {"data_shape": [28, 28, 1]}
    requested = config_lib.config_to_dict(config_lib.base_config())
    requested["train"]["steps"] = 5000
    assert config_lib.config_differences(saved, requested) == []
    config_lib.check_same_run(saved, requested, "/w")
    requested["seed"] = 3
    requested["model"] = {"channels": [8, 16]}
    assert config_lib.config_differences(saved, requested) == [("model.channels", None, [8, 16]), ("seed", 0, 3)]
    with pytest.raises(config_lib.ConfigError, match="config.model.channels: saved None, requested"):
        config_lib.check_same_run(saved, requested, "/w")
    requested["train"]["allow_config_change"] = True
    config_lib.check_same_run(saved, requested, "/w")
