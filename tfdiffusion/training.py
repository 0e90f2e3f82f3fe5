"""Training from a config: what `tools/train.py` runs, usable from Python too.

A workdir holds `config.json` (the config, plus the shape of one training example as
"data_shape" and the data's "class_names"), `checkpoints/ckpt-<step>.weights.h5` (model, optimizer
and EMA state), `logs/` (TensorBoard: the loss, and with `config.train.sample_every` a grid of
EMA samples), `loss.csv`, `samples.png` and the final `model.keras`. Running again with the
same workdir resumes from the newest readable checkpoint; the data order and every training
draw are functions of (seed, step), so the resumed run computes the same steps as an
uninterrupted one.

`train` reads the config; the two loops it calls (`keras_fit_loop`, and `custom_loop` for the
multi-worker strategy) receive only what they use.
"""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import builders, checkpoints, plots, reports
from tfdiffusion import config as config_lib
from tfdiffusion import data as data_lib
from tfdiffusion import precision


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or infinite loss."""


def _nonfinite_loss_error(step):
    return NonFiniteLossError(f"The training loss was not finite at step {step}; that update was not applied and "
                              "training stopped. Lower the learning rate or check the data.")


# -- callbacks -----------------------------------------------------------------------------------
class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` with `NonFiniteLossError` naming the step (the step's update was skipped)."""

    def on_train_batch_end(self, batch, logs=None):
        if logs and logs.get("nonfinite_steps", 0) > 0:
            raise _nonfinite_loss_error(int(self.model.optimizer.iterations.numpy()))


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves a checkpoint through `manager` at the end of every `fit` epoch (`checkpoint_every` steps)."""

    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(int(self.model.optimizer.iterations.numpy()))


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar(keras.callbacks.Callback):
    """The run's step, loss, time per step and ETA, after every `fit` step.

    On a terminal one line is redrawn in place (at most 5 times a second); elsewhere (CI logs,
    files) a line is printed every `log_every` steps and at the end, so that logs stay readable.
    Time per step and the ETA leave out the first call, which includes tracing the graph.

    Args:
      total_steps: the step the run ends at.
      log_every: steps between lines when not on a terminal.
      stream: where to write (default sys.stdout).
      interactive: redraw in place (default: whether `stream` is a terminal).
      clock: seconds, as `time.monotonic`.
    """

    def __init__(self, total_steps, log_every, stream=None, interactive=None, clock=time.monotonic):
        super().__init__()
        self.total_steps, self.log_every = total_steps, log_every
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self._timed_from = None
        self._last_draw = 0.0

    def on_train_batch_end(self, batch, logs=None):
        step, now = int(self.model.optimizer.iterations.numpy()), self.clock()
        if self._timed_from is None:
            self._timed_from = (step, now)
        first_step, started = self._timed_from
        per_step = (now - started) / (step - first_step) if step > first_step else None
        loss = float((logs or {}).get("loss", float("nan")))
        line = f"step {step}/{self.total_steps} loss {loss:.4f}"
        if per_step is not None:
            line += f" · {per_step:.3g} s/step · ETA {_duration(per_step * (self.total_steps - step))}"
        if self.interactive:
            if now - self._last_draw >= 0.2 or step >= self.total_steps:
                done = int(30 * step / self.total_steps)
                print(f"\r[{'=' * done}{'.' * (30 - done)}] {line}\033[K", end="", file=self.stream, flush=True)
                self._last_draw = now
        elif step % self.log_every == 0 or step >= self.total_steps:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, logs=None):
        if self.interactive:
            print(file=self.stream, flush=True)


def sample_images(model, sample):
    """`model.generate` of a config's `sample` section, cycling through the classes of a conditional model."""
    request = dict(sample)
    num_samples = request.pop("num_samples")
    labels = None if model.num_classes is None else np.arange(num_samples) % model.num_classes
    guidance_scale = request.pop("guidance_scale", 0.0)
    request["num_steps"] = request.get("num_steps") or None
    return model.generate(num_samples, labels=labels, guidance_scale=guidance_scale if labels is not None else None,
                          **request)


class SampleGrid(keras.callbacks.Callback):
    """Every `every` steps, a grid of samples drawn with the EMA weights to TensorBoard (`tf.summary.image`).

    The request (a config's `sample` section, seed included) is the same every time, so the grids
    show how the same noise is denoised as training goes on.

    Args:
      log_dir: the TensorBoard run directory (e.g. workdir/logs/samples).
      every: steps between grids.
      sample: the request of `sample_images`.
    """

    def __init__(self, log_dir, every, sample):
        super().__init__()
        self.log_dir, self.every, self.sample = log_dir, every, dict(sample)
        self._writer = None
        self._written = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self._written is None:
            self._written = (step - 1) // self.every
        if step // self.every > self._written:
            self._written = step // self.every
            self.write(step)

    def write(self, step):
        with self.model.ema_weights():
            images = sample_images(self.model, self.sample)
        low, high = self.model.data_range or (-1.0, 1.0)
        grid = plots.image_grid((images - low) / (high - low))
        self._writer = self._writer or tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image("samples (EMA weights)", grid[np.newaxis], step=step)
        self._writer.flush()


# -- the run -------------------------------------------------------------------------------------
def train(config, workdir):
    """Trains (or resumes) the run of `config` in `workdir`; returns a summary dict."""
    config_lib.validate_config(config)
    if config.train.cpu_devices:
        # Splits the CPU into logical devices, to run multi-device code on one machine.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.train.cpu_devices)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config_lib.check_same_run(json.load(f), config_lib.config_to_dict(config), workdir)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    policy, reason = precision.resolve_precision(config.train.mixed_precision)
    logging.info("Compute precision %s (config.train.mixed_precision=%r: %s)", policy, config.train.mixed_precision,
                 reason)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(config, workdir, precision_used=(policy, reason))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(config, workdir, precision_used):
    jit_compile = builders.resolve_jit_compile(config.train.jit_compile)
    logging.info("jit_compile=%s (config.train.jit_compile=%r; devices: %s)", jit_compile, config.train.jit_compile,
                 [d.device_type for d in tf.config.list_physical_devices()])
    examples = builders.training_data(config.data, config.seed)
    logging.info("Training data: %s", examples.description)
    # Recorded so that `builders.model_from_checkpoint` need not read the data, and labels have names.
    class_names = None if examples.class_names is None else list(examples.class_names)
    checkpoints.atomic_write_json(os.path.join(workdir, "config.json"), config_lib.config_to_dict(config) | {
        "data_shape": list(examples.element_shape), "class_names": class_names})
    if config.data.batch_size > examples.num_examples:
        raise config_lib.ConfigError(f"config.data.batch_size must be <= the dataset size {examples.num_examples}. "
                                     f"Received: config.data.batch_size={config.data.batch_size}")
    strategy = builders.make_strategy(config.train.strategy)
    if config.data.batch_size % strategy.num_replicas_in_sync:
        raise config_lib.ConfigError(f"config.data.batch_size must be divisible by the "
                                     f"{strategy.num_replicas_in_sync} replicas. "
                                     f"Received: config.data.batch_size={config.data.batch_size}")
    with strategy.scope():
        model = builders.build_compiled_model(config, examples.element_shape, class_names=examples.class_names,
                                              jit_compile=jit_compile,
                                              steps_per_execution=config.train.steps_per_execution)
    manager = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), model,
                                            keep=config.train.keep_checkpoints)
    start_step = manager.restore()
    if model.num_classes is not None and examples.labels is None:
        raise config_lib.ConfigError(f"A class-conditional network needs labelled data (a folder needs "
                                     f"config.data.class_subfolders=True). Received: config.model.num_classes="
                                     f"{model.num_classes} and unlabelled data ({examples.description})")
    start = time.time()
    final_loss = None
    if start_step < config.train.steps:
        logging.info("Training steps %d → %d in %s (strategy %s, %d replicas)", start_step, config.train.steps,
                     workdir, config.train.strategy, strategy.num_replicas_in_sync)
        final_loss = _run_loop(model, strategy, examples, config, manager, start_step, workdir)
    elapsed = time.time() - start
    if not builders.is_chief(strategy):
        return {"name": config.name, "steps": int(model.optimizer.iterations.numpy()), "chief": False}
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
        "mixed_precision": precision_used[0],
        "mixed_precision_reason": precision_used[1],
    }
    _write_outputs(model, config, examples, workdir, summary)
    return summary


def _run_loop(model, strategy, examples, config, manager, start_step, workdir):
    """Unpacks the config into the arguments of the loop the strategy needs."""
    schedule = {"start_step": start_step, "total_steps": config.train.steps,
                "checkpoint_every": config.train.checkpoint_every, "log_every": config.train.log_every,
                "manager": manager, "workdir": workdir}

    def batches(first_step):  # batch k is a function of (seed, k), wherever the run starts
        return examples.batches(config.data.batch_size, seed=config.seed, start_step=first_step,
                                with_labels=model.num_classes is not None)

    dataset = batches(start_step)
    if model.data_range is not None:  # images; a toy's model space is unbounded
        first = next(iter(dataset.take(1)))
        data_lib.check_in_model_space(first[0] if isinstance(first, tuple) else first)
    if config.train.strategy == "multi_worker":
        return custom_loop(model, strategy, batches, batch_size=config.data.batch_size, **schedule)
    return keras_fit_loop(model, dataset, verbose=config.train.verbose, sample_every=config.train.sample_every,
                          sample=config.sample.to_dict(), **schedule)


def _write_outputs(model, config, examples, workdir, summary):
    """model.keras (EMA weights when the optimizer keeps them), samples.png and summary.json."""
    if model.optimizer.use_ema:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    with checkpoints.atomic_path(os.path.join(workdir, "model.keras")) as temporary:
        model.save(temporary)
    x = getattr(examples, "x", None)
    reports.write_samples(model, os.path.join(workdir, "samples.png"), name=config.name,
                          reference=x if x is not None and x.ndim == 2 else None, **config.sample)
    checkpoints.atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("Done: %s", summary)


# -- the loops -----------------------------------------------------------------------------------
def keras_fit_loop(model, dataset, *, start_step, total_steps, checkpoint_every, log_every, manager, workdir,
                   verbose=True, sample_every=0, sample=None):
    """Steps `start_step` → `total_steps` of `model.fit` over `dataset`; returns the last epoch's loss.

    Args:
      model: a compiled `DiffusionModel` (see `builders.build_compiled_model`).
      dataset: the endless batches from step `start_step` on (`data.ArrayData.batches`,
        `data.EncodedImages.batches`: batch k a function of the seed and k).
      start_step, total_steps: multiples of `checkpoint_every`, one `fit` epoch each.
      checkpoint_every: steps between checkpoints written through `manager`.
      log_every: steps between TensorBoard loss points in `workdir`/logs.
      manager: a `checkpoints.CheckpointManager` of `model`.
      workdir: where loss.csv (appended to on resume) and logs/ go.
      verbose: show the progress (`ProgressBar`).
      sample_every: steps between sample grids in TensorBoard (`SampleGrid`; 0 for none).
      sample: the `generate` request of the grids (a config's `sample` section).
    """
    callbacks = [
        StopOnNonFiniteLoss(),
        CheckpointEveryEpoch(manager),
        keras.callbacks.CSVLogger(os.path.join(workdir, "loss.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq=log_every),
    ]
    if verbose:
        callbacks.append(ProgressBar(total_steps, log_every))
    if sample_every and model.data_shape is not None and len(model.data_shape) == 3:
        callbacks.append(SampleGrid(os.path.join(workdir, "logs", "samples"), sample_every, sample or {}))
    history = model.fit(
        dataset, steps_per_epoch=checkpoint_every, epochs=total_steps // checkpoint_every,
        initial_epoch=start_step // checkpoint_every, callbacks=callbacks, verbose=0,
        shuffle=False,  # the batch order is the dataset's (step-indexed); Keras warns when told to shuffle one
    ).history
    return float(history["loss"][-1])


def custom_loop(model, strategy, batches, *, batch_size, start_step, total_steps, checkpoint_every, log_every,
                manager, workdir):
    """`strategy.run(model.train_step)` over per-worker slices of the same global batches.

    Each input pipeline builds the global batches with `batches(start_step)` (e.g. an
    `ArrayData.batches` of `batch_size`, batch k a function of the seed and k) and keeps the rows
    of its replicas, so the replicas together see exactly the batch a single device sees at step
    k. Only the chief logs and writes checkpoints. The other arguments are those of
    `keras_fit_loop`. Returns the loss averaged over the last logging interval.
    """
    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: _replica_rows(context, batches, batch_size, start_step)))

    @tf.function
    def train_step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    chief = builders.is_chief(strategy)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "logs", "train")) if chief else None
    loss = None
    for step in range(start_step, total_steps):
        train_step(iterator)
        if model.nonfinite_tracker.result() > 0:
            raise _nonfinite_loss_error(step)
        if (step + 1) % log_every == 0 or (step + 1) % checkpoint_every == 0:
            loss = float(model.loss_tracker.result())
            model.loss_tracker.reset_state()
            if chief:
                with writer.as_default():
                    tf.summary.scalar("loss", loss, step=step + 1)
                logging.info("step %d loss %.5f", step + 1, loss)
        if (step + 1) % checkpoint_every == 0 and chief:
            manager.save(step + 1)
    return loss


def _replica_rows(context, make_batches, batch_size, start_step):
    """The dataset of one input pipeline: its replicas' rows of every global batch, one replica per element."""
    per_replica = context.get_per_replica_batch_size(batch_size)
    replicas_here = batch_size // context.num_input_pipelines // per_replica
    first = context.input_pipeline_id * replicas_here * per_replica
    batches = make_batches(start_step)

    def split(*batch):
        mine = [b[first:first + replicas_here * per_replica] for b in batch]
        shards = [tf.reshape(b, tf.concat([[replicas_here, per_replica], tf.shape(b)[1:]], 0)) for b in mine]
        return tf.data.Dataset.from_tensor_slices(tuple(shards) if len(shards) > 1 else shards[0])

    return batches.flat_map(split)
