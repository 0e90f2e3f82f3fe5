r"""Exports a trained tfdiffusion model for TensorFlow Serving.

    python tools/export.py --workdir=/tmp/mnist_run --export_base=/srv/models [--name=mnist] [--version=3]

Loads WORKDIR/model.keras (written by the training binary), writes the SavedModel to
EXPORT_BASE/NAME/VERSION/ and adds NAME to EXPORT_BASE/models.config, then prints the
version directory. NAME defaults to the "name" of WORKDIR/config.json, else to the
basename of WORKDIR; VERSION defaults to the next free integer. See docs/SERVING.md.
"""

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training directory holding model.keras (and config.json).")
flags.DEFINE_string("export_base", None, "TF Serving model base: NAME/VERSION/ and models.config are written here.")
flags.DEFINE_string("name", None, "Serving name of the model (default: config.json's name, else the workdir basename).")
flags.DEFINE_integer("version", None, "Version to write (default: one more than the newest existing version).")
flags.DEFINE_string("serving_base", None, "Where the server sees --export_base (e.g. /models in Docker); "
                    "used for models.config's base_path. Default: the absolute --export_base.")
flags.DEFINE_integer("max_num_samples", None, "Reject requests with more samples than this (default: no bound).")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                  "The network's compute dtype in the export; weights stay float32 (bfloat16 = mixed_bfloat16; "
                  "slower than float32 on CPUs without AMX, see docs/BENCHMARKS.md).")
flags.mark_flags_as_required(["workdir", "export_base"])


def default_name(workdir):
    """config.json's "name" if present, else the basename of `workdir`."""
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as error:
            raise SystemExit(f"Cannot read {config_path}: {error}. Received: --workdir={workdir!r}")
        if isinstance(config, dict) and isinstance(config.get("name"), str) and config["name"]:
            return config["name"]
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments. Received: {argv[1:]}")
    if FLAGS.version is not None and FLAGS.version < 1:
        raise app.UsageError(f"--version must be an integer >= 1. Received: --version={FLAGS.version}")
    if FLAGS.max_num_samples is not None and FLAGS.max_num_samples < 1:
        raise app.UsageError(f"--max_num_samples must be >= 1. Received: --max_num_samples={FLAGS.max_num_samples}")
    model_path = os.path.join(FLAGS.workdir, "model.keras")
    if not os.path.isfile(model_path):
        raise SystemExit(f"No trained model: {model_path} does not exist. Received: --workdir={FLAGS.workdir!r}")
    name = FLAGS.name or default_name(FLAGS.workdir)
    if FLAGS.version is not None:
        version_dir = os.path.abspath(os.path.join(FLAGS.export_base, name, str(FLAGS.version)))
        if os.path.lexists(version_dir):
            raise SystemExit(f"Refusing to overwrite an existing export. Received: --version={FLAGS.version} "
                             f"({version_dir} exists)")

    # After the flag checks: a bad command line fails without loading TensorFlow.
    from tfdiffusion import builders, export

    model = builders.load_model(model_path, compile=False)
    if FLAGS.compute_dtype == "bfloat16":
        model = model.with_dtype_policy("mixed_bfloat16")
    try:
        path = export.export_for_serving(model, FLAGS.export_base, name, FLAGS.version,
                                         serving_base=FLAGS.serving_base, max_num_samples=FLAGS.max_num_samples)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"Export failed: {error}")
    print(path)


if __name__ == "__main__":
    app.run(main)
