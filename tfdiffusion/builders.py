"""Config section → object: networks, the diffusion, `DiffusionModel`, optimizer, strategy, data.

Each builder takes the section it needs (`config.optimizer`, `config.data`, …) rather than
the whole config, except `build_model`, which joins four sections into one model. The
restore functions read a workdir written by `training.train`: `model_from_checkpoint`
rebuilds the model from config.json (and its recorded data shape, so no data is read) and
loads a checkpoint; `load_model` reads `model.keras`.
"""

import inspect
import json
import os

import keras
import ml_collections
import tensorflow as tf

from tfdiffusion import checkpoints, layers, schedules
from tfdiffusion import data as data_lib
from tfdiffusion.config import RECORDED_KEYS, ConfigError
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.optimizers import AdamEMAWarmup

NETWORKS = {"SeedUNet": layers.SeedUNet, "MLPDenoiser": layers.MLPDenoiser, "UNet": layers.UNet, "DiT": layers.DiT}


def build_network(name, kwargs):
    """The network class `NETWORKS[name]` built with `kwargs` (a config's `model` section).

    Lists become tuples, since JSON (a workdir's config.json) has no tuples.
    """
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in dict(kwargs).items()}
    return NETWORKS[name](**kwargs)


def build_diffusion(section):
    """The `GaussianDiffusion` of a `diffusion` section (the kwargs of `schedules.make_betas`)."""
    return GaussianDiffusion(schedules.make_betas(**section))


def network_kwargs(network, section, data_shape=None, class_names=None):
    """A `model` section completed by the data where it is silent.

    `output_channels` defaults to the channels of `data_shape` (an image [H, W, C]) and, for data
    with class subfolders, `num_classes` to the number of `class_names`; a stated value that
    contradicts the data raises a ConfigError naming it (an RGB set cannot train a 1-channel output).
    """
    kwargs = dict(section)
    accepted = inspect.signature(NETWORKS[network]).parameters
    from_data = {}
    if data_shape is not None and len(data_shape) == 3 and "output_channels" in accepted:
        from_data["output_channels"] = (int(data_shape[-1]), f"the data's {int(data_shape[-1])} channels")
    if class_names and "num_classes" in accepted:
        from_data["num_classes"] = (len(class_names), f"the data's {len(class_names)} class subfolders")
    for key, (value, meaning) in from_data.items():
        if kwargs.get(key) is None:
            kwargs[key] = value
        elif kwargs[key] != value:
            raise ConfigError(f"config.model.{key} must equal {meaning} (or be left out to follow the data). "
                              f"Received: config.model.{key}={kwargs[key]!r}")
    return kwargs


def build_model(config, data_shape=None, class_names=None):
    """The `DiffusionModel` of `config` (its network, model, diffusion, objective and seed), unbuilt.

    `data_shape` and `class_names` fill what the `model` section leaves out (`network_kwargs`);
    class names count only when `config.data.class_subfolders` made them.
    """
    objective = dict(config.objective)
    if objective.get("data_range") is not None:
        objective["data_range"] = tuple(objective["data_range"])
    class_names = class_names if config.data.get("class_subfolders") else None
    network = build_network(config.network, network_kwargs(config.network, config.model, data_shape, class_names))
    return DiffusionModel(network, build_diffusion(config.diffusion), noise_seed=config.seed, **objective)


def build_optimizer(section, total_steps):
    """The `AdamEMAWarmup` of an `optimizer` section, its schedule spanning `total_steps`."""
    learning_rate = section.learning_rate
    if section.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if section.warmup_steps else learning_rate, total_steps - section.warmup_steps,
            warmup_target=learning_rate if section.warmup_steps else None,
            warmup_steps=section.warmup_steps,
        )
    elif section.schedule == "constant" and section.warmup_steps:
        # A cosine whose floor equals its peak (alpha=1) is a linear warm-up followed by a constant rate.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0, max(total_steps - section.warmup_steps, 1), alpha=1.0,
            warmup_target=learning_rate, warmup_steps=section.warmup_steps,
        )
    elif section.schedule != "constant":
        raise ConfigError(f"config.optimizer.schedule must be 'constant' or 'cosine'. Received: "
                          f"config.optimizer.schedule={section.schedule!r}")
    return AdamEMAWarmup(learning_rate, clipnorm=section.clipnorm, use_ema=section.use_ema,
                         ema_momentum=section.ema_momentum)


def build_compiled_model(config, data_shape, *, class_names=None, jit_compile=False, steps_per_execution=1):
    """`build_model(config, data_shape, class_names)` with every weight and optimizer slot created.

    Calls the model once on zeros of `data_shape` (one example, no batch axis) to create its
    weights — refusing a network whose output is not of the data's shape — compiles it with
    `build_optimizer(config.optimizer, config.train.steps)` and builds the optimizer's variables
    (Adam moments, EMA weights), so that a checkpoint's optimizer state can be loaded into it,
    ready to train or restore. Call it inside a strategy's scope to place the variables there.
    """
    model = build_model(config, data_shape, class_names)
    prediction = model(tf.zeros((1,) + tuple(data_shape)), tf.zeros((1,), tf.int32))
    data_lib.check_prediction_shape(prediction.shape[1:], data_shape, network=config.network)
    model.compile(optimizer=build_optimizer(config.optimizer, config.train.steps), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    model.optimizer.build(model.trainable_variables)
    return model


def resolve_jit_compile(setting):
    """'auto' → XLA on GPU/TPU, off on CPU (XLA measured slower than oneDNN graph mode there)."""
    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    return bool(setting)


def training_data(section, seed):
    """The training examples of a `data` section, in memory or streamed (`data.training_data`).

    The section's keys are its arguments, except `batch_size` (the training loop's).
    """
    kwargs = {key: section[key] for key in section.keys() if key != "batch_size"}
    return data_lib.training_data(**kwargs, seed=seed)


def load_training_data(section, seed):
    """(x, labels) of a `data` section, in memory (a streamed source decoded whole)."""
    examples = training_data(section, seed).in_memory()
    return examples.x, examples.labels


# -- distribution ------------------------------------------------------------------------------
def _mirrored_strategy():
    # All GPUs, else every logical CPU device (see config.train.cpu_devices).
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


STRATEGIES = {
    "default": tf.distribute.get_strategy,
    "mirrored": _mirrored_strategy,
    # Keras `fit` fails under this strategy (keras-team/keras#20585): training uses a custom loop.
    "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
    "tpu": _tpu_strategy,
}


def make_strategy(name):
    """The `tf.distribute` strategy named by config.train.strategy (one of `STRATEGIES`)."""
    return STRATEGIES[name]()


def is_chief(strategy):
    """True on the one process that writes checkpoints, logs and outputs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


# -- restoring -----------------------------------------------------------------------------------
def read_workdir_record(workdir):
    """(config, recorded) of `workdir`'s config.json: the config, and what `training.train` recorded
    beside it (`config.RECORDED_KEYS`: "data_shape", "class_names"; None where absent)."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        saved = json.load(f)
    recorded = {key: saved.pop(key, None) for key in RECORDED_KEYS}
    return ml_collections.ConfigDict(saved), recorded


def read_workdir_config(workdir):
    """(config, data shape or None) recorded in `workdir`'s config.json by `training.train`."""
    config, recorded = read_workdir_record(workdir)
    return config, None if recorded["data_shape"] is None else tuple(recorded["data_shape"])


def read_class_names(workdir):
    """The class names of `workdir`'s training data (a label is an index into them), or None.

    E.g. `labels=[read_class_names(workdir).index("tulip")] * 8` samples tulips.
    """
    return read_workdir_record(workdir)[1]["class_names"]


def model_from_checkpoint(workdir, step=None, use_ema=True):
    """The model of `workdir` as it was at checkpoint `step` (default: the newest).

    With `use_ema` the optimizer's EMA weights replace the raw ones, as at the end of `fit`.
    The data shape comes from config.json; only workdirs written before it was recorded
    there load their training data to learn it.
    """
    config, recorded = read_workdir_record(workdir)
    data_shape = recorded["data_shape"]
    if data_shape is None:
        data_shape = load_training_data(config.data, config.seed)[0].shape[1:]
    model = build_compiled_model(config, tuple(data_shape), class_names=recorded["class_names"])
    manager = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), model)
    available = manager.steps()
    step = available[-1] if step is None and available else step
    if step not in available:
        raise FileNotFoundError(f"No checkpoint for that step in {manager.directory} (have {available}). "
                                f"Received: step={step!r}")
    model.load_weights(manager.path(step))
    if use_ema and model.optimizer.use_ema:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return model


def load_model(path, *, compile=True):
    """`keras.saving.load_model(path)` of a saved `DiffusionModel` (e.g. a workdir's model.keras).

    Importing this module registers every tfdiffusion class that a `.keras` file can name.
    """
    return keras.saving.load_model(path, compile=compile)
