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
import time

import keras
import tensorflow as tf
from absl import logging

from tfdiffusion import builders, checkpoints, reports
from tfdiffusion.callbacks import (  # noqa: F401  (re-exported: a run's callbacks are part of training's API)
    CheckpointEveryEpoch, NonFiniteLossError, ProgressBar, SampleGrid, StopOnNonFiniteLoss, nonfinite_loss_error,
    sample_images)
from tfdiffusion import config as config_lib
from tfdiffusion import precision


# -- the run -------------------------------------------------------------------------------------
def train(config, workdir, callbacks=()):
    """Trains (or resumes) the run of `config` in `workdir`; returns a summary dict.

    `callbacks`: further Keras callbacks of the `fit` loop (e.g. one that stops at a time budget);
    the multi-worker loop takes none.
    """
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
        return _train(config, workdir, precision_used=(policy, reason), callbacks=callbacks)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(config, workdir, precision_used, callbacks):
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
        final_loss = _run_loop(model, strategy, examples, config, manager, start_step, workdir, callbacks)
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


def _run_loop(model, strategy, examples, config, manager, start_step, workdir, callbacks):
    """Unpacks the config into the arguments of the loop the strategy needs."""
    schedule = {"start_step": start_step, "total_steps": config.train.steps,
                "checkpoint_every": config.train.checkpoint_every, "log_every": config.train.log_every,
                "manager": manager, "workdir": workdir}

    def batches(first_step):  # batch k is a function of (seed, k), wherever the run starts
        return examples.batches(config.data.batch_size, seed=config.seed, start_step=first_step,
                                with_labels=model.num_classes is not None)

    if config.train.strategy == "multi_worker":
        if callbacks:
            raise ValueError(f"The multi-worker loop takes no Keras callbacks. Received: callbacks={list(callbacks)}")
        model.check_first_batch(batches(start_step))  # `fit` checks its own; this loop does not call fit
        return custom_loop(model, strategy, batches, batch_size=config.data.batch_size, **schedule)
    return keras_fit_loop(model, batches(start_step), verbose=config.train.verbose, sample_every=config.train.sample_every,
                          sample=config.sample.to_dict(), callbacks=callbacks, **schedule)


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
                   verbose=True, sample_every=0, sample=None, callbacks=()):
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
      callbacks: further Keras callbacks, after the run's own.
    """
    run_callbacks = [
        StopOnNonFiniteLoss(),
        CheckpointEveryEpoch(manager),
        keras.callbacks.CSVLogger(os.path.join(workdir, "loss.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq=log_every),
    ]
    if verbose:
        run_callbacks.append(ProgressBar(total_steps, log_every))
    if sample_every and model.data_shape is not None and len(model.data_shape) == 3:
        run_callbacks.append(SampleGrid(os.path.join(workdir, "logs", "samples"), sample_every, sample or {}))
    history = model.fit(
        dataset, steps_per_epoch=checkpoint_every, epochs=total_steps // checkpoint_every,
        initial_epoch=start_step // checkpoint_every, callbacks=run_callbacks + list(callbacks), verbose=0,
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
            raise nonfinite_loss_error(step)
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
