r"""Exports a trained tfdiffusion model for TensorFlow Serving, as a fixed-step sampler, or for TFLite.

    python tools/export.py --workdir=runs/moons --export_base=runs/serving [--name=moons] [--version=3]
    python tools/export.py --workdir=runs/mnist --export_base=runs/serving --format=fixed|tflite \
        --sampler=dpmpp_2m --num_steps=4 [--spacing=logsnr] [--batch_size=16] [--jit_compile]

Loads WORKDIR/model.keras (written by the training binary) and writes EXPORT_BASE/NAME/VERSION/:
--format=saved_model (default) the SavedModel of every sampler (`sample`, `edit`, ...), --format=fixed
a SavedModel of one frozen request (`sample_fixed`: seed in, --batch_size samples out), both added
to EXPORT_BASE/models.config; --format=tflite model.tflite (the fixed-step graph, noise as inputs,
run by tools/sample_tflite.py; not in models.config). Prints what a request may ask for, a REST
body (or the TFLite command) and, last, the written path. NAME defaults to config.json's "name",
else the basename of WORKDIR (+ _SAMPLER_NUMSTEPS[_tflite] for the fixed formats); VERSION to the
next free integer. See docs/SERVING.md. Bad input: one line naming the flag and value, exit 1.
"""

import json
import os

from absl import flags

from tfdiffusion import cli
from tfdiffusion.config import SAMPLER_NAMES, SPACING_NAMES

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training directory holding model.keras (and config.json).")
flags.DEFINE_string("export_base", None, "Model base: NAME/VERSION/ (and models.config) are written here.")
flags.DEFINE_string("name", None, "Model name (default: config.json's name, else the workdir basename; "
                    "_SAMPLER_NUMSTEPS[_tflite] appended for --format=fixed/tflite).")
flags.DEFINE_integer("version", None, "Version to write (default: one more than the newest existing version).")
flags.DEFINE_string("serving_base", None, "Where the server sees --export_base (e.g. /models in Docker); "
                    "used for models.config's base_path. Default: the absolute --export_base.")
flags.DEFINE_integer("max_num_samples", None, "Reject requests with more samples than this (default: no bound).")
flags.DEFINE_enum("compute_dtype", "auto", ["auto", "float32", "bfloat16"], "The network's compute dtype; weights "
                  "stay float32 (auto: bfloat16 where the hardware has bfloat16 matrix units, tfdiffusion.precision).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "fixed", "tflite"], "What to write (see above).")
flags.DEFINE_enum("sampler", "dpmpp_2m", SAMPLER_NAMES, "The fixed formats' sampler.")
flags.DEFINE_integer("num_steps", None, "The fixed formats' number of steps (required for them).")
flags.DEFINE_enum("spacing", "auto", SPACING_NAMES, "The fixed formats' timestep spacing (auto: the sampler's own).")
flags.DEFINE_float("eta", 0.0, "The fixed formats' DDIM eta in [0, 1].")
flags.DEFINE_integer("batch_size", 16, "The fixed formats' number of samples per request.")
flags.DEFINE_boolean("jit_compile", False, "Compile --format=fixed's steps with XLA (for GPU/TPU serving; slower "
                     "on CPU, see docs/SERVING.md).")
flags.mark_flags_as_required(["workdir", "export_base"])


def default_name(workdir):
    """config.json's "name" if present, else the basename of `workdir`."""
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as error:
            raise cli.UsageError(f"Cannot read {config_path}: {error}. Received: --workdir={workdir!r}")
        if isinstance(config, dict) and isinstance(config.get("name"), str) and config["name"]:
            return config["name"]
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def export_name():
    if FLAGS.name or FLAGS.format == "saved_model":
        return FLAGS.name or default_name(FLAGS.workdir)
    suffix = "_tflite" if FLAGS.format == "tflite" else ""
    return f"{default_name(FLAGS.workdir)}_{FLAGS.sampler}_{FLAGS.num_steps}{suffix}"


def check_flags():
    """The checks that need no TensorFlow: bad values, a missing model, a version that exists."""
    fixed = FLAGS.format != "saved_model"
    for flag, bad, rule in (
            ("version", FLAGS.version is not None and FLAGS.version < 1, "must be >= 1"),
            ("max_num_samples", FLAGS.max_num_samples is not None and (FLAGS.max_num_samples < 1 or fixed),
             "must be >= 1, for --format=saved_model only"),
            ("num_steps", fixed and (FLAGS.num_steps or 0) < 1, f"must be >= 1, and --format={FLAGS.format} needs it"),
            ("batch_size", FLAGS.batch_size < 1, "must be >= 1"), ("eta", not 0 <= FLAGS.eta <= 1, "must be in [0, 1]"),
            ("jit_compile", FLAGS.jit_compile and FLAGS.format != "fixed", "is for --format=fixed only"),
            ("compute_dtype", FLAGS.compute_dtype == "bfloat16" and FLAGS.format == "tflite", "TFLite is float32")):
        if bad:
            raise cli.UsageError(f"--{flag} {rule}. Received: --{flag}={getattr(FLAGS, flag)}")
    model_path = os.path.join(FLAGS.workdir, "model.keras")
    if not os.path.isfile(model_path):
        raise cli.UsageError(f"No trained model: {model_path} does not exist. Received: --workdir={FLAGS.workdir!r}")
    if FLAGS.version is not None:
        version_dir = os.path.abspath(os.path.join(FLAGS.export_base, export_name(), str(FLAGS.version)))
        if os.path.lexists(version_dir):
            raise cli.UsageError(f"Refusing to overwrite an existing export ({version_dir} exists). "
                                 f"Received: --version={FLAGS.version}")


def main(argv):
    del argv  # cli.run refuses positional arguments, and has run check_flags
    from tfdiffusion import builders, export

    name = export_name()
    model = builders.load_model(os.path.join(FLAGS.workdir, "model.keras"), compile=False)
    setting = {"bfloat16": "mixed_bfloat16", "auto": "float32" if FLAGS.format == "tflite" else "auto"}
    model, policy, reason = model.inference_model(setting.get(FLAGS.compute_dtype, FLAGS.compute_dtype))
    print(f"compute precision: {policy} ({reason})")
    fixed = dict(sampler=FLAGS.sampler, num_steps=FLAGS.num_steps, spacing=FLAGS.spacing, eta=FLAGS.eta,
                 batch_size=FLAGS.batch_size)
    if FLAGS.format == "tflite":
        path = export.export_tflite(model, export.version_directory(FLAGS.export_base, name, FLAGS.version), **fixed)
    else:
        fixed_step = dict(fixed, jit_compile=FLAGS.jit_compile) if FLAGS.format == "fixed" else None
        path = export.export_for_serving(model, FLAGS.export_base, name, FLAGS.version, serving_base=FLAGS.serving_base,
                                         max_num_samples=FLAGS.max_num_samples, fixed_step=fixed_step)
    lines, body = export.describe_export(model, FLAGS.format, FLAGS.max_num_samples, fixed)
    print(f"Exported {name!r} ({FLAGS.format}). What it computes and takes:")
    print("\n".join(f"  {line}" for line in lines))
    if FLAGS.format == "tflite":
        print(f"Run it: python tools/sample_tflite.py --model={path} --output=grid.png --seed=0")
    else:
        print(f"A REST body it accepts (POST /v1/models/{name}:predict): {json.dumps(body)}")
    print(path)


if __name__ == "__main__":
    cli.run(main, output_dirs=("export_base",), precheck=check_flags)
