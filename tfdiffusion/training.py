"""Training from a config: what `tools/train.py` runs, usable from Python too.

A workdir holds `config.json`, `checkpoints/ckpt-<step>.weights.h5` (model, optimizer and
EMA state), `logs/` (TensorBoard), `loss.csv`, `samples.png` and the final `model.keras`.
Running again with the same workdir resumes from the newest readable checkpoint; the data
order and every training draw are functions of (seed, step), so the resumed run computes
the same steps as an uninterrupted one.
"""

import contextlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import data as data_lib
from tfdiffusion import layers, plots, schedules
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.model import DiffusionModel
from tfdiffusion.optimizers import AdamEMAWarmup

NETWORKS = {"SeedUNet": layers.SeedUNet, "MLPDenoiser": layers.MLPDenoiser, "UNet": layers.UNet, "DiT": layers.DiT}
JIT_SETTINGS = ("auto", True, False)
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Keys that may change between runs in one workdir without `allow_config_change`.
RESUMABLE_CHANGES = (("train", "steps"), ("train", "allow_config_change"))


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or infinite loss."""


class CheckpointError(ValueError):
    """No checkpoint of a workdir can be read."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the value received."""


# -- config ----------------------------------------------------------------------------------
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


def validate_config(config):
    """Checks the values a user can type; raises ConfigError naming the first bad one."""
    _require(lambda: config.network in NETWORKS, "network", config.network, f"one of {tuple(NETWORKS)}")
    _check_int(config, "seed", 0)
    _require(lambda: config.diffusion.name in schedules.SCHEDULE_NAMES, "diffusion.name", config.diffusion.name,
             f"one of {schedules.SCHEDULE_NAMES}")
    _check_int(config, "diffusion.num_timesteps", 1)
    names = data_lib.IMAGE_DATASET_NAMES + data_lib.TOY_DATASET_NAMES + ("digits",)
    _require(lambda: config.data.name in names, "data.name", config.data.name, f"one of {names}")
    _require(lambda: config.data.split in ("train", "test"), "data.split", config.data.split, "'train' or 'test'")
    _require(lambda: config.data.source in ("auto", "idx", "tfds"), "data.source", config.data.source,
             "'auto', 'idx' or 'tfds'")
    for key in ("idx_dir", "data_dir"):
        _require(lambda: isinstance(config.data[key], str), f"data.{key}", config.data[key], "a path string ('' for none)")
    _check_int(config, "data.num_samples", 0)
    _check_int(config, "data.batch_size", 1)
    optimizer = config.optimizer
    _require(lambda: _is_number(optimizer.learning_rate) and optimizer.learning_rate > 0, "optimizer.learning_rate",
             optimizer.learning_rate, "a finite number > 0")
    _require(lambda: optimizer.schedule in ("constant", "cosine"), "optimizer.schedule", optimizer.schedule,
             "'constant' or 'cosine'")
    _check_int(config, "optimizer.warmup_steps", 0)
    _require(lambda: optimizer.clipnorm is None or (_is_number(optimizer.clipnorm) and optimizer.clipnorm > 0),
             "optimizer.clipnorm", optimizer.clipnorm, "None or a finite number > 0")
    _require(lambda: isinstance(optimizer.use_ema, bool), "optimizer.use_ema", optimizer.use_ema, "True or False")
    _require(lambda: _is_number(optimizer.ema_momentum) and 0.0 <= optimizer.ema_momentum < 1.0,
             "optimizer.ema_momentum", optimizer.ema_momentum, "in [0, 1)")
    train = config.train
    steps = _check_int(config, "train.steps", 1)
    _require(lambda: optimizer.warmup_steps < steps, "optimizer.warmup_steps", optimizer.warmup_steps,
             f"smaller than config.train.steps={steps}")
    every = _check_int(config, "train.checkpoint_every", 1)
    _require(lambda: steps % every == 0, "train.checkpoint_every", every, f"a divisor of config.train.steps={steps}")
    _check_int(config, "train.log_every", 1)
    _check_int(config, "train.keep_checkpoints", 1)
    per_execution = _check_int(config, "train.steps_per_execution", 1)
    _require(lambda: every % per_execution == 0, "train.steps_per_execution", per_execution,
             "a divisor of config.train.checkpoint_every")
    _require(lambda: any(train.jit_compile is v or train.jit_compile == v for v in JIT_SETTINGS) and
             isinstance(train.jit_compile, (bool, str)), "train.jit_compile", train.jit_compile, "'auto', True or False")
    _check_int(config, "train.cpu_devices", 0)
    _require(lambda: train.strategy in STRATEGIES, "train.strategy", train.strategy, f"one of {STRATEGIES}")
    _require(lambda: train.mixed_precision in PRECISIONS, "train.mixed_precision", train.mixed_precision,
             f"one of {PRECISIONS}")
    for key in ("deterministic", "allow_config_change", "verbose"):
        _require(lambda: isinstance(train[key], bool), f"train.{key}", train[key], "True or False")
    sample = config.sample
    _check_int(config, "sample.num_samples", 1)
    _check_int(config, "sample.num_steps", 0)
    _check_int(config, "sample.seed", 0)
    _require(lambda: sample.num_steps <= config.diffusion.num_timesteps, "sample.num_steps", sample.num_steps,
             f"at most config.diffusion.num_timesteps={config.diffusion.num_timesteps} (0 for all)")
    _require(lambda: sample.sampler in ("ddpm", "ddim", "dpmpp_2m"), "sample.sampler", sample.sampler,
             "'ddpm', 'ddim' or 'dpmpp_2m'")
    _require(lambda: _is_number(sample.guidance_scale) and sample.guidance_scale >= 0, "sample.guidance_scale",
             sample.guidance_scale, "a finite number >= 0")


def config_to_dict(config):
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def _differences(saved, requested, prefix=()):
    keys = sorted(set(saved) | set(requested))
    for key in keys:
        path = prefix + (key,)
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, path)
        elif a != b and path not in RESUMABLE_CHANGES:
            yield ".".join(path), a, b


def check_workdir_config(workdir, config):
    """Writes config.json in a new workdir; refuses a different config in an old one."""
    path = os.path.join(workdir, "config.json")
    requested = config_to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changes = list(_differences(saved, requested))
        if changes and not config.train.allow_config_change:
            described = "; ".join(f"config.{k}: saved {a!r}, requested {b!r}" for k, a, b in changes[:5])
            raise ConfigError(
                f"The workdir {workdir} holds a run with a different config ({described}). Use a new --workdir, "
                "or pass --config.train.allow_config_change=True to resume with the new values."
            )
    atomic_write_text(path, json.dumps(requested, indent=2, sort_keys=True))


# -- files -----------------------------------------------------------------------------------
def atomic_write_text(path, text):
    temporary = f"{path}.partial-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path with the same suffix; renames it onto `path` only on success."""
    directory, name = os.path.split(path)
    stem, _, suffix = name.partition(".")
    temporary = os.path.join(directory, f".{stem}.partial-{os.getpid()}.{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class CheckpointManager:
    """Keeps the newest `keep` checkpoints of model + optimizer (+ EMA) state.

    Each checkpoint is written to a temporary file and renamed into place, so a kill at
    any moment leaves every existing checkpoint intact. `restore` falls back to an older
    checkpoint when the newest cannot be read or holds non-finite weights.
    """

    def __init__(self, directory, model, keep=3):
        self.directory = directory
        self.model = model
        self.keep = keep
        os.makedirs(directory, exist_ok=True)

    def path(self, step):
        return os.path.join(self.directory, f"ckpt-{step:09d}.weights.h5")

    def steps(self):
        found = []
        for name in os.listdir(self.directory):
            if name.startswith("ckpt-") and name.endswith(".weights.h5"):
                with contextlib.suppress(ValueError):
                    found.append(int(name[len("ckpt-"):-len(".weights.h5")]))
        return sorted(found)

    def save(self, step):
        with atomic_path(self.path(step)) as temporary:
            self.model.save_weights(temporary)
        for old in self.steps()[: -self.keep]:
            os.remove(self.path(old))

    def restore(self):
        """Loads the newest good checkpoint; returns its step (0 when there is none)."""
        for step in reversed(self.steps()):
            try:
                self.model.load_weights(self.path(step))
            except Exception as error:  # h5py raises OSError, KeyError, ValueError… on damage
                logging.warning("Checkpoint %s is unreadable (%s); trying an older one.", self.path(step), error)
                continue
            if all(np.all(np.isfinite(v.numpy())) for v in self.model.weights):
                logging.info("Restored %s (step %d).", self.path(step), step)
                return step
            logging.warning("Checkpoint %s holds non-finite weights; trying an older one.", self.path(step))
        if self.steps():
            raise CheckpointError(f"No readable checkpoint in {self.directory}; move the damaged files away to start "
                                  f"over. Received: checkpoint steps {self.steps()}")
        return 0


# -- callbacks -----------------------------------------------------------------------------
class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` with `NonFiniteLossError` naming the step (the step's update was skipped)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs and logs.get("nonfinite_steps", 0) > 0:
            step = int(self.model.optimizer.iterations.numpy())
            raise NonFiniteLossError(
                f"The training loss was not finite at step {step}; that update was not applied and training "
                "stopped. Lower the learning rate or check the data."
            )


class CheckpointEveryEpoch(keras.callbacks.Callback):
    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(int(self.model.optimizer.iterations.numpy()))


# -- building --------------------------------------------------------------------------------
def resolve_jit_compile(setting):
    """'auto' → XLA on GPU/TPU, off on CPU (XLA measured slower than oneDNN graph mode there)."""
    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    return bool(setting)


def build_diffusion(diffusion_config):
    return GaussianDiffusion(schedules.make_betas(**diffusion_config))


def build_network(config):
    kwargs = dict(config.model)
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return NETWORKS[config.network](**kwargs)


def build_model(config):
    objective = dict(config.objective)
    if objective.get("data_range") is not None:
        objective["data_range"] = tuple(objective["data_range"])
    return DiffusionModel(build_network(config), build_diffusion(config.diffusion), noise_seed=config.seed, **objective)


def build_optimizer(optimizer_config, total_steps):
    learning_rate = optimizer_config.learning_rate
    if optimizer_config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if optimizer_config.warmup_steps else learning_rate, total_steps - optimizer_config.warmup_steps,
            warmup_target=learning_rate if optimizer_config.warmup_steps else None,
            warmup_steps=optimizer_config.warmup_steps,
        )
    elif optimizer_config.schedule == "constant" and optimizer_config.warmup_steps:
        # A cosine whose floor equals its peak (alpha=1) is a linear warm-up followed by a constant rate.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0, max(total_steps - optimizer_config.warmup_steps, 1), alpha=1.0,
            warmup_target=learning_rate, warmup_steps=optimizer_config.warmup_steps,
        )
    elif optimizer_config.schedule != "constant":
        raise ConfigError(f"config.optimizer.schedule must be 'constant' or 'cosine'. Received: "
                          f"config.optimizer.schedule={optimizer_config.schedule!r}")
    return AdamEMAWarmup(
        learning_rate,
        clipnorm=optimizer_config.clipnorm,
        use_ema=optimizer_config.use_ema,
        ema_momentum=optimizer_config.ema_momentum,
    )


def load_training_data(data_config, seed):
    source = data_config.source
    idx_dir = None
    if data_config.name == "mnist" and source in ("auto", "idx"):
        idx_dir = data_config.idx_dir or data_lib.default_mnist_dir()
        if idx_dir is None and source == "idx":
            raise ConfigError("config.data.source='idx' needs config.data.idx_dir (or $TFDIFFUSION_MNIST_DIR). "
                              "Received: config.data.idx_dir=''")
    return data_lib.load_arrays(
        data_config.name, data_config.split, data_dir=data_config.data_dir or None, idx_dir=idx_dir,
        num_samples=data_config.num_samples, seed=seed,
    )


def make_strategy(name):
    """The `tf.distribute` strategy named by config.train.strategy."""
    if name == "mirrored":
        # All GPUs, else every logical CPU device (see config.train.cpu_devices).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        # Keras `fit` fails under this strategy (keras-team/keras#20585): `_train` uses a custom loop.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the one process that writes checkpoints, logs and outputs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def sample_labels(model, num_samples):
    return None if model.num_classes is None else np.arange(num_samples) % model.num_classes


# -- the run -----------------------------------------------------------------------------------
def train(config, workdir):
    """Trains (or resumes) the run of `config` in `workdir`; returns a summary dict."""
    validate_config(config)
    if config.train.cpu_devices:
        # Splits the CPU into logical devices, to run multi-device code on one machine.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.train.cpu_devices)
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(workdir, config)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    try:
        return _train(config, workdir)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(config, workdir):
    jit_compile = resolve_jit_compile(config.train.jit_compile)
    logging.info("jit_compile=%s (config.train.jit_compile=%r; devices: %s)", jit_compile, config.train.jit_compile,
                 [d.device_type for d in tf.config.list_physical_devices()])
    x, labels = load_training_data(config.data, config.seed)
    if config.data.batch_size > len(x):
        raise ConfigError(f"config.data.batch_size must be <= the dataset size {len(x)}. "
                          f"Received: config.data.batch_size={config.data.batch_size}")
    strategy = make_strategy(config.train.strategy)
    if config.data.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"config.data.batch_size must be divisible by the {strategy.num_replicas_in_sync} replicas. "
                          f"Received: config.data.batch_size={config.data.batch_size}")
    with strategy.scope():
        model = build_model(config)
        model(tf.zeros((1,) + x.shape[1:]), tf.zeros((1,), tf.int32))  # builds every weight
        model.compile(
            optimizer=build_optimizer(config.optimizer, config.train.steps),
            jit_compile=jit_compile,
            steps_per_execution=config.train.steps_per_execution,
        )
        model.optimizer.build(model.trainable_variables)
    manager = CheckpointManager(os.path.join(workdir, "checkpoints"), model, keep=config.train.keep_checkpoints)
    start_step = manager.restore()
    if model.num_classes is None:
        labels = None
    start = time.time()
    final_loss = None
    if start_step < config.train.steps:
        logging.info("Training steps %d → %d in %s (strategy %s, %d replicas)", start_step, config.train.steps,
                     workdir, config.train.strategy, strategy.num_replicas_in_sync)
        if config.train.strategy == "multi_worker":
            final_loss = _custom_loop(model, strategy, x, labels, config, manager, start_step, workdir)
        else:
            final_loss = _keras_fit(model, x, labels, config, manager, start_step, workdir)
    elapsed = time.time() - start
    if not is_chief(strategy):
        return {"name": config.name, "steps": int(model.optimizer.iterations.numpy()), "chief": False}
    if model.optimizer.use_ema:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    with atomic_path(os.path.join(workdir, "model.keras")) as temporary:
        model.save(temporary)
    write_samples(model, config, x, os.path.join(workdir, "samples.png"))
    trained_steps = config.train.steps - start_step
    summary = {
        "name": config.name,
        "steps": int(model.optimizer.iterations.numpy()),
        "resumed_from": start_step,
        "final_loss": final_loss,
        "seconds": elapsed,
        "examples_per_second": trained_steps * config.data.batch_size / elapsed if trained_steps and elapsed else None,
        "jit_compile": jit_compile,
        "replicas": strategy.num_replicas_in_sync,
    }
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    logging.info("Done: %s", summary)
    return summary


def write_samples(model, config, x, path):
    """Draws config.sample.num_samples samples and writes them as a PNG (a grid or a scatter)."""
    labels = sample_labels(model, config.sample.num_samples)
    samples = model.generate(
        config.sample.num_samples, seed=config.sample.seed, sampler=config.sample.sampler,
        num_steps=config.sample.num_steps or None, labels=labels,
        guidance_scale=config.sample.guidance_scale if model.num_classes is not None else None,
    )
    steps = config.sample.num_steps or model.diffusion.num_timesteps
    with atomic_path(path) as temporary:
        plots.save_samples(samples, temporary, reference=x[: len(samples)] if x.ndim == 2 else None, labels=labels,
                           title=f"{config.name}: {config.sample.sampler}, {steps} steps")
    return samples


def _keras_fit(model, x, labels, config, manager, start_step, workdir):
    every = config.train.checkpoint_every
    dataset = data_lib.step_indexed_batches(x, labels, config.data.batch_size, seed=config.seed, start_step=start_step)
    callbacks = [
        StopOnNonFiniteLoss(),
        CheckpointEveryEpoch(manager),
        keras.callbacks.CSVLogger(os.path.join(workdir, "loss.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq=config.train.log_every),
    ]
    history = model.fit(
        dataset, steps_per_epoch=every, epochs=config.train.steps // every, initial_epoch=start_step // every,
        callbacks=callbacks, verbose=2 if config.train.verbose else 0,
    ).history
    return float(history["loss"][-1])


def _custom_loop(model, strategy, x, labels, config, manager, start_step, workdir):
    """`strategy.run(model.train_step)` over per-worker slices of the same global batches.

    Each input pipeline builds the global batch k and keeps the rows of its replicas, so the
    replicas together see exactly the batch a single device sees at step k.
    """
    global_batch = config.data.batch_size

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        replicas_here = global_batch // context.num_input_pipelines // per_replica
        first = context.input_pipeline_id * replicas_here * per_replica
        batches = data_lib.step_indexed_batches(x, labels, global_batch, seed=config.seed, start_step=start_step)

        def split(*batch):
            mine = [b[first:first + replicas_here * per_replica] for b in batch]
            shards = [tf.reshape(b, tf.concat([[replicas_here, per_replica], tf.shape(b)[1:]], 0)) for b in mine]
            return tf.data.Dataset.from_tensor_slices(tuple(shards) if len(shards) > 1 else shards[0])

        return batches.flat_map(split)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def train_step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    chief = is_chief(strategy)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "logs", "train")) if chief else None
    loss = None
    for step in range(start_step, config.train.steps):
        train_step(iterator)
        if model.nonfinite_tracker.result() > 0:
            raise NonFiniteLossError(f"The training loss was not finite at step {step}; that update was not applied "
                                     "and training stopped. Lower the learning rate or check the data.")
        if (step + 1) % config.train.log_every == 0 or (step + 1) % config.train.checkpoint_every == 0:
            loss = float(model.loss_tracker.result())
            model.loss_tracker.reset_state()
            if chief:
                with writer.as_default():
                    tf.summary.scalar("loss", loss, step=step + 1)
                logging.info("step %d loss %.5f", step + 1, loss)
        if (step + 1) % config.train.checkpoint_every == 0 and chief:
            manager.save(step + 1)
    return loss


def base_config():
    """Every key a training config has, with defaults; config files override what they need."""
    import ml_collections

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
                     "num_samples": 0, "batch_size": 64},
            "optimizer": {"learning_rate": 1e-4, "schedule": "constant", "warmup_steps": 0, "clipnorm": None,
                          "use_ema": False, "ema_momentum": 0.9999},
            "train": {"steps": 1000, "checkpoint_every": 500, "log_every": 100, "keep_checkpoints": 3,
                      "jit_compile": "auto", "steps_per_execution": 1, "mixed_precision": "float32",
                      "deterministic": False, "strategy": "default", "cpu_devices": 0, "allow_config_change": False, "verbose": True},
            "sample": {"num_samples": 16, "sampler": "ddpm", "num_steps": 0, "seed": 0, "guidance_scale": 0.0},
        }
    )


def model_from_checkpoint(workdir, step=None, use_ema=True):
    """The model of `workdir` as it was at checkpoint `step` (default: the newest).

    With `use_ema` the optimizer's EMA weights replace the raw ones, as at the end of `fit`.
    """
    import ml_collections

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    x, _ = load_training_data(config.data, config.seed)
    model = build_model(config)
    model(tf.zeros((1,) + x.shape[1:]), tf.zeros((1,), tf.int32))
    model.compile(optimizer=build_optimizer(config.optimizer, config.train.steps))
    model.optimizer.build(model.trainable_variables)
    manager = CheckpointManager(os.path.join(workdir, "checkpoints"), model)
    available = manager.steps()
    step = available[-1] if step is None and available else step
    if step not in available:
        raise FileNotFoundError(f"No checkpoint for that step in {manager.directory} (have {available}). "
                                f"Received: step={step!r}")
    model.load_weights(manager.path(step))
    if use_ema and model.optimizer.use_ema:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return model


def check_variant(variant):
    """Config files accept one variant, "tiny" (a seconds-long run for tests)."""
    if variant not in (None, "", "tiny"):
        raise ValueError(f"Unknown variant. Expected 'tiny' or none. Received: variant={variant!r}")
