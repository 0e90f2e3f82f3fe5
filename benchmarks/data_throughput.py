"""Data throughput: images/s of the folder pipeline, and a training step fed from a folder against from memory.

    python benchmarks/data_throughput.py

Folders of PNG and JPEG images are written to a temporary directory; see README.md ("Data throughput").
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import builders, data, machine  # noqa: E402

flags.DEFINE_integer("num_images", 2048, "Images per folder.", lower_bound=1)
flags.DEFINE_integer("stored_size", 64, "Side of the stored images.", lower_bound=1)
flags.DEFINE_integer("image_size", 64, "Side the pipeline resizes to.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Images per batch (the pipeline's and the training step's).", lower_bound=1)
flags.DEFINE_integer("timed_batches", 20, "Batches per timed pipeline block.", lower_bound=1)
flags.DEFINE_integer("train_warmup_steps", 3, "Untimed training steps (after the compiling one).", lower_bound=1)
flags.DEFINE_integer("train_timed_steps", 10, "Training steps per timed block.", lower_bound=1)
_CONFIG = config_flags.DEFINE_config_file("config", "configs/images.py", "The config whose training step is timed.",
                                          lock_config=False)
common.define_timing_flags()
FLAGS = flags.FLAGS


def write_folder(directory, image_format):
    """`--num_images` images of `--stored_size`² in `directory` (made by `write_file`), encoded as `image_format`."""
    smooth, _ = data.synthetic_images((FLAGS.stored_size, FLAGS.stored_size, 3), FLAGS.num_images, seed=0)
    pixels = np.clip((smooth + 1.0) * 127.5 + np.random.default_rng(1).normal(0.0, 6.0, smooth.shape), 0, 255)
    for i, image in enumerate(pixels.astype(np.uint8)):
        encoded = tf.io.encode_png(image) if image_format == "png" else tf.io.encode_jpeg(image, quality=90)
        tf.io.write_file(os.path.join(directory, f"{i:06d}.{image_format}"), encoded)
    return directory


def pipeline_runs(folder):
    """Timer records of blocks of `--timed_batches` batches from the streamed folder pipeline."""
    iterator = iter(data.image_folder(folder, image_size=(FLAGS.image_size,) * 2, channels=3,
                                      random_flip=True).batches(FLAGS.batch_size, seed=0))
    next(iterator), next(iterator)  # fills the parallel map's and the prefetch buffers

    def block():
        for _ in range(FLAGS.timed_batches):
            next(iterator)
        return {}

    return common.measure(block)


def training_runs(config, examples):
    """Timer records of blocks of `--train_timed_steps` training steps fed by `examples`."""
    model = builders.build_compiled_model(config, examples.element_shape, class_names=examples.class_names)
    dataset = examples.batches(FLAGS.batch_size, seed=0, with_labels=model.num_classes is not None)
    return machine.time_fit(model, dataset, common.repeat_policy(), warmup_steps=FLAGS.train_warmup_steps,
                            timed_steps=FLAGS.train_timed_steps)[2]


def report(table, label, runs, per_block, unit, info, command):
    """Emits the runs as JSON and appends a row of their median to `table` of --markdown."""
    summary = common.summarize(runs)
    value = per_block / summary["median_wall_s"] if unit == "images/s" else 1000 * summary["median_wall_s"] / per_block
    row = {"date": common.row_date(info), "what": label, unit: value, "runs": summary["num_runs"],
           "other CPU": summary["median_other_cpu_fraction"], "contended": summary["contended"],
           "environment": common.short_environment(info)}
    common.emit_json({"benchmark": "data_throughput", "table": table, **row, "runs": runs})
    common.append_markdown_row(table, row, command, info)


def main(_):
    info, command = common.machine_info(), common.command_line()
    root = tempfile.mkdtemp(prefix="data_throughput_")
    sizes = f"{FLAGS.stored_size}² → {FLAGS.image_size}², batch {FLAGS.batch_size}"
    folders = {fmt: write_folder(os.path.join(root, fmt), fmt) for fmt in ("png", "jpeg")}
    for fmt, folder in folders.items():
        report("Data throughput", f"{fmt.upper()} folder, {sizes}, decode+resize+flip", pipeline_runs(folder),
               FLAGS.timed_batches * FLAGS.batch_size, "images/s", info, command)
    config = _CONFIG.value
    config.data.update({"path": folders["png"], "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size})
    streamed = builders.training_data(config.data, config.seed)
    for label, examples in (("streamed from the PNG folder", streamed), ("from memory", streamed.in_memory())):
        report("Folder vs memory training step", f"{config.name} ({config.network}), {sizes}: {label}",
               training_runs(config, examples), FLAGS.train_timed_steps, "ms/step", info, command)


if __name__ == "__main__":
    app.run(main)
