r"""Exports a trained tfdiffusion model for TensorFlow Serving.

    python tools/export.py --workdir=runs/moons --export_base=runs/serving [--name=moons] [--version=3]

Loads WORKDIR/model.keras (written by the training binary), writes the SavedModel to
EXPORT_BASE/NAME/VERSION/ and adds NAME to EXPORT_BASE/models.config. Then prints what a request
to this model may ask for (T, classes, sample shape, the bound on num_samples), a REST body the
model accepts, and, last, the version directory. NAME defaults to the "name" of
WORKDIR/config.json, else to the basename of WORKDIR; VERSION defaults to the next free integer.
See docs/SERVING.md. Bad input ends with one line naming the flag and the value received, and
exit status 1.
"""

import json
import os

from absl import flags

from tfdiffusion import cli

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
            raise cli.UsageError(f"Cannot read {config_path}: {error}. Received: --workdir={workdir!r}")
        if isinstance(config, dict) and isinstance(config.get("name"), str) and config["name"]:
            return config["name"]
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def check_flags():
    """The checks that need no TensorFlow: bad values, a missing model, a version that exists."""
    if FLAGS.version is not None and FLAGS.version < 1:
        raise cli.UsageError(f"--version must be an integer >= 1. Received: --version={FLAGS.version}")
    if FLAGS.max_num_samples is not None and FLAGS.max_num_samples < 1:
        raise cli.UsageError(f"--max_num_samples must be >= 1. Received: --max_num_samples={FLAGS.max_num_samples}")
    model_path = os.path.join(FLAGS.workdir, "model.keras")
    if not os.path.isfile(model_path):
        raise cli.UsageError(f"No trained model: {model_path} does not exist. Received: --workdir={FLAGS.workdir!r}")
    if FLAGS.version is not None:
        version_dir = os.path.abspath(os.path.join(FLAGS.export_base, FLAGS.name or default_name(FLAGS.workdir),
                                                   str(FLAGS.version)))
        if os.path.lexists(version_dir):
            raise cli.UsageError(f"Refusing to overwrite an existing export ({version_dir} exists). "
                                 f"Received: --version={FLAGS.version}")


def describe_limits(limits):
    """What a `sample` request may ask for, as printable lines, and a REST body within those limits.

    Args:
      limits: `export.model_limits(model, max_num_samples)`, what the SavedModel's `limits` signature returns.
    """
    T, num_classes = int(limits["num_timesteps"]), int(limits["num_classes"])
    max_num_samples = int(limits["max_num_samples"])
    bound = f"<= {max_num_samples}" if max_num_samples else ">= 1 (no upper bound; --max_num_samples sets one)"
    if num_classes:
        classes = (f"{num_classes} classes: one label per sample in [0, {num_classes}] "
                   f"({num_classes} = no class, for classifier-free guidance)")
        labels, guidance_scale = [0, min(1, num_classes - 1)], 2.0
    else:
        classes = "unconditional: labels and guidance_scale are ignored (send any one label, e.g. [0])"
        labels, guidance_scale = [0], 0.0
    samplers, spacings = (", ".join(str(name) for name in limits[key]) for key in ("samplers", "spacings"))
    lines = [
        f"T = {T}: num_steps in [1, {T}]",
        classes,
        f"samples of shape [num_samples, {', '.join(str(d) for d in limits['data_shape'])}]; num_samples {bound}",
        f"sampler one of {samplers}; spacing one of {spacings}; eta in [0, 1]",
    ]
    body = {"signature_name": "sample",
            "inputs": {"seed": 3, "num_samples": 2, "num_steps": min(T, 20), "sampler": "ddim", "eta": 0.0,
                       "guidance_scale": guidance_scale, "labels": labels, "spacing": str(limits["spacings"][0])}}
    return lines, body


def main(argv):
    del argv  # cli.run refuses positional arguments, and has run check_flags
    from tfdiffusion import builders, export

    name = FLAGS.name or default_name(FLAGS.workdir)
    model = builders.load_model(os.path.join(FLAGS.workdir, "model.keras"), compile=False)
    if FLAGS.compute_dtype == "bfloat16":
        model = model.with_dtype_policy("mixed_bfloat16")
    path = export.export_for_serving(model, FLAGS.export_base, name, FLAGS.version,
                                     serving_base=FLAGS.serving_base, max_num_samples=FLAGS.max_num_samples)
    lines, body = describe_limits(export.model_limits(model, FLAGS.max_num_samples))
    print(f"Exported {name!r}. Requests to its `sample` signature:")
    for line in lines:
        print(f"  {line}")
    print(f"A REST body it accepts (POST /v1/models/{name}:predict): {json.dumps(body)}")
    print(path)


if __name__ == "__main__":
    cli.run(main, output_dirs=("export_base",), precheck=check_flags)
