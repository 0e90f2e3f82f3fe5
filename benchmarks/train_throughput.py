"""Training throughput: steady-state images/s of one network under `model.fit` (see README.md).

    python benchmarks/train_throughput.py --network=seed_unet --precision=float32 --jit_compile=0 --timed_steps=30

The first `fit` gives the compile time; one more `fit` runs the warm-up and the contention-aware
timed blocks (`tfdiffusion.machine.time_fit`). Models come from `tfdiffusion.builders`
(`base_config()` with seed_unet, unet or dit, or `--config`'s), or `peers.py` for plain_keras_port.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
import peers  # noqa: E402
from tfdiffusion import builders, config as config_lib, data, machine, precision  # noqa: E402

NETWORKS = {"seed_unet": "SeedUNet", "unet": "UNet", "dit": "DiT", "plain_keras_port": None}
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
    image_shape = data.IMAGE_DATASET_SHAPES.get(config.data.name)
    if image_shape is None:
        raise SystemExit(f"--config must train on one of {sorted(data.IMAGE_DATASET_SHAPES)}. "
                         f"Received: {config.data.name!r}")
    config.optimizer.learning_rate = FLAGS.learning_rate
    model = builders.build_compiled_model(config, image_shape, jit_compile=FLAGS.jit_compile,
                                          steps_per_execution=FLAGS.steps_per_execution)
    params = model.network.count_params()
    if name == "seed_unet" and params != peers.TUTORIAL_PARAMS:  # not `assert`: it must hold under -O too
        raise AssertionError(f"SeedUNet has {params} parameters, expected {peers.TUTORIAL_PARAMS}")
    return model, name, image_shape, params


def main(argv):
    del argv
    policy, reason = precision.resolve_precision(FLAGS.precision)
    keras.mixed_precision.set_global_policy(policy)
    info, command = common.machine_info(), common.command_line()
    k = FLAGS.steps_per_execution
    timed_steps, warmup_steps = -(-FLAGS.timed_steps // k) * k, -(-FLAGS.warmup_steps // k) * k
    model, name, image_shape, params = build_model()
    base = {"benchmark": "train_throughput", "network": name, "batch_size": FLAGS.batch_size, "precision": policy,
            "precision_setting": FLAGS.precision, "precision_reason": reason, "jit_compile": FLAGS.jit_compile,
            "steps_per_execution": k, "timed_steps": timed_steps, "params": params,
            "rss_after_build_mb": common.peak_rss_mb()}
    dataset = machine.noise_batches(image_shape, FLAGS.batch_size, FLAGS.cache_batches)
    first, first_loss, runs = machine.time_fit(model, dataset, common.repeat_policy(), warmup_steps=warmup_steps,
                                               timed_steps=timed_steps, steps_per_execution=k)
    record = common.throughput_summary(base, runs, first, first_loss, first_call_steps=k,
                                       warmup_steps=warmup_steps, command=command, info=info)
    common.append_throughput_row(record, compiler=FLAGS.jit_compile)


if __name__ == "__main__":
    app.run(main)
