"""Training throughput: steady-state images/s of one network under `model.fit` (see README.md).

    python benchmarks/train_throughput.py --network=seed_unet --precision=float32 --jit_compile=0 --timed_steps=30

The first `fit` gives the compile time; one more `fit` runs the warm-up and the contention-aware
timed blocks (a callback, so that `fit`'s set-up stays out). Models come from `tfdiffusion.builders`
(`base_config()` with seed_unet, unet or dit, or `--config`'s), or `peers.py` for plain_keras_port.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
import peers  # noqa: E402
from tfdiffusion import builders, config as config_lib, precision  # noqa: E402

NETWORKS = {"seed_unet": "SeedUNet", "unet": "UNet", "dit": "DiT", "plain_keras_port": None}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
PRECISIONS = ("float32", "mixed_bfloat16", "auto")

flags.DEFINE_enum("network", "seed_unet", list(NETWORKS), "The network to time (without --config).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (e.g. configs/fashion_mnist.py): time its model on its image shape.",
    lock_config=False)
flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy; auto: `precision.resolve_precision`.")
flags.DEFINE_bool("jit_compile", False, "XLA (0 = graph mode + oneDNN, the CPU default).")
flags.DEFINE_integer("steps_per_execution", 1, "Steps per `fit` execution (step counts round up to it).",
                     lower_bound=1)
common.define_throughput_flags()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def build_model():
    """(compiled model, network name, image shape, parameter count)."""
    if _CONFIG.value is None and FLAGS.network == "plain_keras_port":
        model = peers.build_plain_keras_port(FLAGS.jit_compile, FLAGS.steps_per_execution, FLAGS.learning_rate)
        return model, FLAGS.network, peers.IMAGE_SHAPE, model.network.count_params()
    if _CONFIG.value is not None:
        config = _CONFIG.value
        name = f"{config.network} ({os.path.basename(config_flags.get_config_filename(FLAGS['config']))})"
    else:
        config, name = config_lib.base_config(), FLAGS.network
        config.network = NETWORKS[name]
    if config.data.name not in IMAGE_SHAPES:
        raise SystemExit(f"--config must train on one of {sorted(IMAGE_SHAPES)}. Received: {config.data.name!r}")
    config.optimizer.learning_rate = FLAGS.learning_rate
    image_shape = IMAGE_SHAPES[config.data.name]
    model = builders.build_compiled_model(config, image_shape, jit_compile=FLAGS.jit_compile,
                                          steps_per_execution=FLAGS.steps_per_execution)
    params = model.network.count_params()
    if name == "seed_unet" and params != peers.TUTORIAL_PARAMS:  # not `assert`: it must hold under -O too
        raise AssertionError(f"SeedUNet has {params} parameters, expected {peers.TUTORIAL_PARAMS}")
    return model, name, image_shape, params


def make_dataset(image_shape, seed=0):
    """Endless batches of uniform noise in [−1, 1] from memory; the cache is filled up front."""
    count = FLAGS.cache_batches * FLAGS.batch_size
    images = np.random.default_rng(seed).uniform(-1.0, 1.0, (count,) + tuple(image_shape)).astype(np.float32)
    cached = tf.data.Dataset.from_tensor_slices(images).batch(FLAGS.batch_size, drop_remainder=True).cache()
    for _ in cached:  # one pass fills the cache, so timed epochs never read the slices
        pass
    return cached.repeat().prefetch(tf.data.AUTOTUNE)


class TimedRepeats(keras.callbacks.Callback):
    """Times blocks of `block_executions` executions after `warmup_executions`, until `common.enough_runs`."""

    def __init__(self, warmup_executions, block_executions):
        super().__init__()
        self.warmup_executions, self.block_executions = warmup_executions, block_executions
        self.runs, self._executions, self._timer, self._times = [], 0, None, []

    def on_train_batch_begin(self, batch, logs=None):
        if self._timer is None and self._executions >= self.warmup_executions:
            self._timer, self._times = common.timed_section().__enter__(), []
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._executions += 1
        if self._timer is None:
            return
        self._times.append(time.perf_counter() - self._start)
        if len(self._times) < self.block_executions:
            return
        self._timer.__exit__(None, None, None)
        self.runs.append({**self._timer.record(), "loss": float((logs or {}).get("loss", float("nan"))),
                          "execution_s_median": statistics.median(self._times),
                          "execution_s_min": min(self._times), "execution_s_max": max(self._times)})
        self._timer = None
        if common.enough_runs(self.runs, FLAGS.repeats, FLAGS.extra_repeats):
            self.model.stop_training = True


def main(argv):
    del argv
    policy, reason = precision.resolve_precision(FLAGS.precision)
    keras.mixed_precision.set_global_policy(policy)
    info, command = common.machine_info(), common.command_line()
    k = FLAGS.steps_per_execution
    timed_steps, warmup_steps = -(-FLAGS.timed_steps // k) * k, -(-FLAGS.warmup_steps // k) * k
    model, name, image_shape, params = build_model()
    dataset = make_dataset(image_shape)
    base = {"benchmark": "train_throughput", "network": name, "batch_size": FLAGS.batch_size, "precision": policy,
            "precision_setting": FLAGS.precision, "precision_reason": reason, "jit_compile": FLAGS.jit_compile,
            "steps_per_execution": k, "timed_steps": timed_steps, "params": params,
            "rss_after_build_mb": common.peak_rss_mb()}

    def fit(steps, callbacks=()):
        history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        return float(history.history["loss"][-1])

    with common.Timer(FLAGS.contention_threshold) as first:
        first_loss = fit(k)
    timed = TimedRepeats(warmup_steps // k, timed_steps // k)
    fit(warmup_steps + (FLAGS.repeats + FLAGS.extra_repeats) * timed_steps, [timed])
    record = common.throughput_summary(base, timed.runs, first, first_loss, first_call_steps=k,
                                       warmup_steps=warmup_steps, command=command, info=info)
    common.append_throughput_row(record, compiler=FLAGS.jit_compile)


if __name__ == "__main__":
    app.run(main)
