"""The training config: its schema (`base_config`), the `tiny` variant, validation and the workdir comparison.

A config file in `configs/` is a Python file whose `get_config(variant)` returns
`base_config()` with the values it needs changed. Each section maps onto one constructor:
`model` → the network named by `network`, `diffusion` → `schedules.make_betas`, `objective`
→ `DiffusionModel`, `data` → `data.training_data`, `optimizer` → `AdamEMAWarmup`, `train` → the
training loop, `sample` → `DiffusionModel.generate` (see `builders`).

This module imports no TensorFlow, so config files load in milliseconds. The names it
validates against are declared here; `tests/test_config.py` checks that they equal the
registries of `builders`, `schedules`, `samplers` and `data`.
"""

import json
import os

import ml_collections
import numpy as np

from tfdiffusion.precision import PRECISIONS  # noqa: F401  (validated here, resolved by `precision`)

NETWORK_NAMES = ("SeedUNet", "MLPDenoiser", "UNet", "DiT")
SCHEDULE_NAMES = ("linear", "cosine", "polynomial", "sigmoid")
DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "moons", "gmm1d", "digits")
DATA_SOURCES = ("auto", "idx", "tfds", "folder")
BAD_FILE_POLICIES = ("error", "skip")
SPLITS = ("train", "test")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc3", "heun", "dpmpp_2m_sde")
SPACING_NAMES = ("auto", "uniform", "logsnr", "karras", "quadratic")  # "auto": the sampler's own (samplers.py)
JIT_SETTINGS = ("auto", True, False)
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# Keys that may change between runs in one workdir without `allow_config_change`.
RESUMABLE_CHANGES = (("train", "steps"), ("train", "allow_config_change"))
# Sections that only say what to draw after training: a resumed run may change them freely.
RESUMABLE_SECTIONS = ("sample",)
# Keys training records in a workdir's config.json beside the config (not config keys).
RECORDED_KEYS = ("data_shape", "class_names")
VARIANTS = (None, "", "tiny")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the value received."""


def base_config():
    """Every key a training config has, with defaults; config files override what they need."""
    return ml_collections.ConfigDict(
        {
            "name": "run",
            "seed": 0,
            "network": "SeedUNet",
            "model": {},
            "diffusion": {"name": "linear", "num_timesteps": 400},
            "objective": {"prediction_type": "epsilon", "loss_weighting": "none", "label_dropout": 0.0,
                          "data_range": (0.0, 1.0)},
            "data": {"name": "mnist", "split": "train", "source": "auto", "idx_dir": "", "data_dir": "",
                     "num_samples": 0, "batch_size": 64,
                     # Image sources (`data.training_data`): a folder, the size and colour, flips, bad files.
                     # image_size is an int S (S×S) or (H, W), 0 keeping the stored size: hence type object.
                     "path": "", "class_subfolders": False,
                     "image_size": ml_collections.FieldReference(0, field_type=object), "channels": 0,
                     "random_flip": False, "on_bad_file": "error", "cache": False, "synthetic_if_missing": False},
            "optimizer": {"learning_rate": 1e-4, "schedule": "constant", "warmup_steps": 0, "clipnorm": None,
                          "use_ema": False, "ema_momentum": 0.9999},
            "train": {"steps": 1000, "checkpoint_every": 500, "log_every": 100, "keep_checkpoints": 3,
                      "jit_compile": "auto", "steps_per_execution": 1, "mixed_precision": "auto",
                      "deterministic": False, "strategy": "default", "cpu_devices": 0, "allow_config_change": False,
                      "verbose": True, "sample_every": 0},
            "sample": {"num_samples": 16, "sampler": "ddpm", "num_steps": 0, "spacing": "auto", "seed": 0,
                       "guidance_scale": 0.0},
        }
    )


def check_variant(variant):
    """Config files accept one variant, "tiny" (a seconds-long run for tests)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant. Expected 'tiny' or none. Received: variant={variant!r}")


# The run every config's `:tiny` variant shares: 4 steps of batch 8 that checkpoint every 2 and
# log every step (so tests may stop, resume and read the logs anywhere), no warm-up, an EMA that
# follows the weights within those steps, and 4 samples of 5 steps.
_TINY = {
    "data": {"batch_size": 8, "synthetic_if_missing": True},
    "optimizer": {"warmup_steps": 0, "ema_momentum": 0.9},
    "train": {"steps": 4, "checkpoint_every": 2, "log_every": 1, "steps_per_execution": 1},
    "sample": {"num_samples": 4, "num_steps": 5},
}


def tiny(config, **sections):
    """Turns `config` into its `:tiny` variant, in place; returns it.

    Args:
      config: a full config (from `base_config`).
      **sections: per section, the values that differ from the shared tiny run, e.g.
        `model={"channels": (8, 16, 32)}` for a smaller network. Applied after it.

    Raises:
      ConfigError: if a section or key does not exist in `config` (a tiny variant shrinks
        a config; it does not add keys).
    """
    for overrides in (_TINY, sections):
        for section, values in overrides.items():
            unknown = [key for key in values if section not in config or key not in config[section]]
            if unknown:
                raise ConfigError(f"The tiny variant may only change existing keys. Received: "
                                  f"{', '.join(f'config.{section}.{key}' for key in unknown)}")
            config[section].update(values)
    return config


# -- validation --------------------------------------------------------------------------------
def _require(condition, key, value, expectation):
    """Raises ConfigError unless `condition()` holds (a TypeError counts as not holding)."""
    try:
        holds = bool(condition())
    except (TypeError, ValueError):
        holds = False
    if not holds:
        raise ConfigError(f"config.{key} must be {expectation}. Received: config.{key}={value!r}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)


def _check_int(config, key, minimum):
    value = config[key.split(".")[0]][key.split(".")[1]] if "." in key else config[key]
    _require(lambda: _is_int(value) and value >= minimum, key, value, f"an integer >= {minimum}")
    return value


def _check_one_of(config, key, choices, expectation=None):
    section, name = key.split(".") if "." in key else (None, key)
    value = config[section][name] if section else config[name]
    _require(lambda: value in choices, key, value, expectation or f"one of {choices}")


def validate_config(config):
    """Checks the values a user can type; raises ConfigError naming the first bad one."""
    if "distill" in config:
        raise ConfigError("This is a distillation config (it has a distill section): run it with tools/distill.py. "
                          "Received: a config with sections " + ", ".join(sorted(config.keys())))
    _check_one_of(config, "network", NETWORK_NAMES)
    _check_int(config, "seed", 0)
    _check_one_of(config, "diffusion.name", SCHEDULE_NAMES)
    _check_int(config, "diffusion.num_timesteps", 1)
    _validate_data(config)
    _validate_optimizer(config)
    _validate_train(config)
    _validate_sample(config)


def _validate_data(config):
    data = config.data
    _check_one_of(config, "data.source", DATA_SOURCES, "'auto', 'idx', 'tfds' or 'folder'")
    if data.source in ("auto", "idx"):
        _check_one_of(config, "data.name", DATASET_NAMES,
                      f"one of {DATASET_NAMES} (any TFDS name with config.data.source='tfds')")
        _check_one_of(config, "data.split", SPLITS, "'train' or 'test'")
    else:  # the TFDS name, or a folder's label; any TFDS split string
        for key in ("name", "split"):
            _require(lambda: isinstance(data[key], str) and data[key], f"data.{key}", data[key], "a non-empty string")
    for key in ("idx_dir", "data_dir", "path"):
        _require(lambda: isinstance(data[key], str), f"data.{key}", data[key], "a path string ('' for none)")
    _check_int(config, "data.num_samples", 0)
    _check_int(config, "data.batch_size", 1)
    _require(lambda: _is_image_size(data.image_size), "data.image_size", data.image_size,
             "an integer S >= 1 (S×S), (height, width), or 0 for the stored size")
    _require(lambda: _is_int(data.channels) and data.channels in (0, 1, 3), "data.channels", data.channels,
             "0 (as stored), 1 or 3")
    _check_one_of(config, "data.on_bad_file", BAD_FILE_POLICIES, "'error' or 'skip'")
    for key in ("class_subfolders", "random_flip", "cache", "synthetic_if_missing"):
        _require(lambda: isinstance(data[key], bool), f"data.{key}", data[key], "True or False")


def _is_image_size(value):
    if _is_int(value):
        return value >= 0
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)


def _validate_optimizer(config):
    optimizer = config.optimizer
    _require(lambda: _is_number(optimizer.learning_rate) and optimizer.learning_rate > 0, "optimizer.learning_rate",
             optimizer.learning_rate, "a finite number > 0")
    _check_one_of(config, "optimizer.schedule", LEARNING_RATE_SCHEDULES, "'constant' or 'cosine'")
    _check_int(config, "optimizer.warmup_steps", 0)
    _require(lambda: optimizer.clipnorm is None or (_is_number(optimizer.clipnorm) and optimizer.clipnorm > 0),
             "optimizer.clipnorm", optimizer.clipnorm, "None or a finite number > 0")
    _require(lambda: isinstance(optimizer.use_ema, bool), "optimizer.use_ema", optimizer.use_ema, "True or False")
    _require(lambda: _is_number(optimizer.ema_momentum) and 0.0 <= optimizer.ema_momentum < 1.0,
             "optimizer.ema_momentum", optimizer.ema_momentum, "in [0, 1)")


def _validate_train(config):
    train = config.train
    steps = _check_int(config, "train.steps", 1)
    _require(lambda: config.optimizer.warmup_steps < steps, "optimizer.warmup_steps", config.optimizer.warmup_steps,
             f"smaller than config.train.steps={steps}")
    every = _check_int(config, "train.checkpoint_every", 1)
    _require(lambda: steps % every == 0, "train.checkpoint_every", every, f"a divisor of config.train.steps={steps}")
    _check_int(config, "train.log_every", 1)
    _check_int(config, "train.sample_every", 0)
    _check_int(config, "train.keep_checkpoints", 1)
    per_execution = _check_int(config, "train.steps_per_execution", 1)
    _require(lambda: every % per_execution == 0, "train.steps_per_execution", per_execution,
             "a divisor of config.train.checkpoint_every")
    # `is` as well as `==`: True == 1 would let the integer 1 through.
    _require(lambda: any(train.jit_compile is v or train.jit_compile == v for v in JIT_SETTINGS) and
             isinstance(train.jit_compile, (bool, str)), "train.jit_compile", train.jit_compile, "'auto', True or False")
    _check_int(config, "train.cpu_devices", 0)
    _check_one_of(config, "train.strategy", STRATEGIES)
    _check_one_of(config, "train.mixed_precision", PRECISIONS)
    for key in ("deterministic", "allow_config_change", "verbose"):
        _require(lambda: isinstance(train[key], bool), f"train.{key}", train[key], "True or False")


def _validate_sample(config):
    sample = config.sample
    _check_int(config, "sample.num_samples", 1)
    _check_int(config, "sample.num_steps", 0)
    _check_int(config, "sample.seed", 0)
    _require(lambda: sample.num_steps <= config.diffusion.num_timesteps, "sample.num_steps", sample.num_steps,
             f"at most config.diffusion.num_timesteps={config.diffusion.num_timesteps} (0 for all)")
    _check_one_of(config, "sample.sampler", SAMPLER_NAMES)
    _check_one_of(config, "sample.spacing", SPACING_NAMES)
    _require(lambda: _is_number(sample.guidance_scale) and sample.guidance_scale >= 0, "sample.guidance_scale",
             sample.guidance_scale, "a finite number >= 0")


# -- the workdir's record ------------------------------------------------------------------------
def config_to_dict(config):
    """The config as plain JSON types (tuples become lists), as a workdir's config.json holds it."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def config_differences(saved, requested):
    """[(dotted key, saved value, requested value)] of two config dicts, in key order.

    Keys in `RESUMABLE_CHANGES`, `RESUMABLE_SECTIONS` and `RECORDED_KEYS` are not compared, nor keys the schema gained
    after `saved` was written that are requested at their `base_config` default.
    """
    defaults = config_to_dict(base_config())
    return [(".".join(path), a, b) for path, a, b in _differences(saved, requested, ())
            if path not in RESUMABLE_CHANGES and path[0] not in RECORDED_KEYS + RESUMABLE_SECTIONS
            and not (_lookup(saved, path) is _MISSING and _lookup(defaults, path) == b)]


_MISSING = object()


def _lookup(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _differences(saved, requested, prefix):
    for key in sorted(set(saved) | set(requested)):
        path = prefix + (key,)
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, path)
        elif a != b:
            yield path, a, b


def check_same_run(saved, requested, workdir):
    """Raises ConfigError when `requested` (a config dict) differs from the one `workdir` was trained with.

    Changes are allowed when the requested `train.allow_config_change` is True.
    """
    changes = config_differences(saved, requested)
    if changes and not requested["train"]["allow_config_change"]:
        described = "; ".join(f"config.{k}: saved {a!r}, requested {b!r}" for k, a, b in changes[:5])
        raise ConfigError(
            f"The workdir {workdir} holds a run with a different config ({described}). Use a new --workdir, "
            "or pass --config.train.allow_config_change=True to resume with the new values."
        )


# -- distillation ----------------------------------------------------------------------------------
PREDICTION_TYPES = ("epsilon", "x0", "v")  # as `diffusion.PREDICTION_TYPES`, which needs TensorFlow


def base_distill_config():
    """Every key of a progressive-distillation config (`tfdiffusion.distillation.distill`, tools/distill.py).

    `distill` → the rounds (the teacher's workdir, the step counts, the student's prediction type),
    `data` and `optimizer` as in `base_config` (the optimizer is made anew for each round), `train` →
    the loop of each round, `sample` → each round's samples.png.
    """
    config = base_config()
    return ml_collections.ConfigDict({
        "name": "distill",
        "seed": 0,
        "distill": {"teacher": "", "initial_steps": 256, "final_steps": 4, "steps_per_round": 1000,
                    "prediction_type": "v"},
        "data": config.data.to_dict(),
        "optimizer": config.optimizer.to_dict(),
        "train": {key: config.train[key] for key in ("checkpoint_every", "log_every", "keep_checkpoints", "jit_compile",
                                                     "steps_per_execution", "mixed_precision", "deterministic",
                                                     "allow_config_change", "verbose")},
        "sample": {"num_samples": 16, "seed": 0},
    })


def distill_teacher_path(teacher):
    """The teacher's model.keras: `teacher` (config.distill.teacher) is a training workdir holding one, or the file.

    Raises:
      FileNotFoundError: there is no such file.
    """
    path = teacher if teacher.endswith(".keras") else os.path.join(teacher, "model.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.distill.teacher must be a training workdir holding model.keras (or a .keras "
                                f"file); {path} does not exist. Received: config.distill.teacher={teacher!r}")
    return path


def validate_distill_config(config):
    """Checks a distillation config's values; raises ConfigError naming the first bad one.

    initial_steps / final_steps must be a power of two ≥ 2 (each round halves the steps); that
    initial_steps is at most the teacher's T is checked where the teacher is loaded.
    """
    if "distill" not in config:
        raise ConfigError("This is a training config (it has no distill section): run it with tools/train.py. "
                          "Received: a config with sections " + ", ".join(sorted(config.keys())))
    distill = config.distill
    _check_int(config, "seed", 0)
    _require(lambda: isinstance(distill.teacher, str) and distill.teacher, "distill.teacher", distill.teacher,
             "the teacher's workdir (holding model.keras)")
    initial = _check_int(config, "distill.initial_steps", 2)
    final = _check_int(config, "distill.final_steps", 1)
    ratio = initial // final if initial % final == 0 else 0
    _require(lambda: ratio >= 2 and ratio & (ratio - 1) == 0, "distill.final_steps", final,
             f"config.distill.initial_steps={initial} halved one or more times")
    steps = _check_int(config, "distill.steps_per_round", 1)
    _check_one_of(config, "distill.prediction_type", PREDICTION_TYPES)
    _check_one_of(config, "train.mixed_precision", PRECISIONS)
    _validate_data(config)
    _validate_optimizer(config)
    _require(lambda: config.optimizer.warmup_steps < steps, "optimizer.warmup_steps", config.optimizer.warmup_steps,
             f"smaller than config.distill.steps_per_round={steps}")
    every = _check_int(config, "train.checkpoint_every", 1)
    _require(lambda: steps % every == 0, "train.checkpoint_every", every,
             f"a divisor of config.distill.steps_per_round={steps}")
    _check_int(config, "train.log_every", 1)
    _check_int(config, "train.keep_checkpoints", 1)
    per_execution = _check_int(config, "train.steps_per_execution", 1)
    _require(lambda: every % per_execution == 0, "train.steps_per_execution", per_execution,
             "a divisor of config.train.checkpoint_every")
    _require(lambda: any(config.train.jit_compile is v or config.train.jit_compile == v for v in JIT_SETTINGS) and
             isinstance(config.train.jit_compile, (bool, str)), "train.jit_compile", config.train.jit_compile,
             "'auto', True or False")
    for key in ("deterministic", "allow_config_change", "verbose"):
        _require(lambda: isinstance(config.train[key], bool), f"train.{key}", config.train[key], "True or False")
    _check_int(config, "sample.num_samples", 1)
    _check_int(config, "sample.seed", 0)
