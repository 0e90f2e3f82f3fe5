"""Does `mixed_bfloat16` train like float32? Loss curves of one config in both precisions.

    python benchmarks/precision_curves.py --config=configs/moons.py --steps=4000 --log_every=200

Three `training.train` runs on the same (seed, step)-indexed batches and noise: float32 seed s, float32
seed s + 1 (the yardstick) and mixed_bfloat16 seed s; see README.md ("Loss curves in bf16").
"""

import math
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import plots, training  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/moons.py.", lock_config=False)
flags.DEFINE_integer("steps", None, "Training steps of each run.", lower_bound=1, required=True)
flags.DEFINE_integer("log_every", None, "Steps per logged loss (a divisor of --steps).", lower_bound=1, required=True)
flags.DEFINE_integer("seed", 0, "Seed of the first float32 run and of the bf16 run.")
flags.DEFINE_string("workdir_base", None, "Where the three workdirs go (default: a temporary directory).")
flags.DEFINE_string("figure", None, "PNG of the curves (default docs/figures/<name>_precision_loss.png).")
flags.mark_flags_as_required(["config"])
common.define_markdown_flag()
flags.adopt_module_key_flags(common)  # --help lists the shared flags too
flags.register_multi_flags_validator(["steps", "log_every"], lambda f: f["steps"] % f["log_every"] == 0,
                                     "--log_every must divide --steps")
FLAGS = flags.FLAGS


def run_config(precision, seed):
    config = _CONFIG.value.copy_and_resolve_references()
    config.seed = seed
    config.train.update({"steps": FLAGS.steps, "checkpoint_every": FLAGS.log_every, "log_every": FLAGS.log_every,
                         "mixed_precision": precision, "verbose": False,
                         # Each logged point ends a `fit` execution: it must divide --log_every.
                         "steps_per_execution": math.gcd(config.train.steps_per_execution, FLAGS.log_every)})
    config.sample.update({"sampler": "ddim", "num_steps": min(10, config.diffusion.num_timesteps)})  # the PNG only
    if config.optimizer.warmup_steps >= FLAGS.steps:
        config.optimizer.warmup_steps = FLAGS.steps // 10
    return config


def relative_gap(curve, reference, skip):
    return float(np.mean(np.abs(curve[skip:] - reference[skip:]) / reference[skip:]))


def main(argv):
    del argv
    base = FLAGS.workdir_base or tempfile.mkdtemp(prefix="precision_curves_")
    runs = {"float32": ("float32", FLAGS.seed), f"float32, seed {FLAGS.seed + 1}": ("float32", FLAGS.seed + 1),
            "mixed_bfloat16": ("mixed_bfloat16", FLAGS.seed)}
    curves, summaries = {}, {}
    for label, (precision, seed) in runs.items():
        config = run_config(precision, seed)
        workdir = os.path.join(base, f"{precision}_seed{seed}")
        with common.Timer() as timer:
            summaries[label] = training.train(config, workdir)
        epochs, losses = plots.read_loss_csv(os.path.join(workdir, "loss.csv"))
        curves[label] = ((epochs + 1) * FLAGS.log_every, losses)
        common.emit_json({"event": "run", "label": label, "precision": precision, "seed": seed, **timer.record(),
                          "final_loss": float(losses[-1])})
    name = config.name
    figure = FLAGS.figure or os.path.join(common.REPO_ROOT, "docs", "figures", f"{name}_precision_loss.png")
    plots.save_loss_curve(curves, figure, xlabel="step", title=f"{name}: float32 vs mixed_bfloat16")
    skip = max(1, len(curves["float32"][1]) // 10)
    fp32 = curves["float32"][1]
    bf16_gap = relative_gap(curves["mixed_bfloat16"][1], fp32, skip)
    seed_gap = relative_gap(curves[f"float32, seed {FLAGS.seed + 1}"][1], fp32, skip)
    info, config_file = common.machine_info(), config_flags.get_config_filename(FLAGS["config"])
    record = {"event": "summary", "benchmark": "precision_curves", "config": config_file, "steps": FLAGS.steps,
              "bf16_vs_fp32_relative_gap": bf16_gap, "seed_vs_seed_relative_gap": seed_gap,
              "within_noise": bf16_gap <= seed_gap, "figure": figure,
              "final_losses": {k: float(v[1][-1]) for k, v in curves.items()},
              "seconds": {k: s["seconds"] for k, s in summaries.items()}, "command": common.command_line(),
              "machine": info}
    common.emit_json(record)
    row = {"date": common.row_date(info), "config": config_file, "steps": FLAGS.steps,
           "final loss fp32 / fp32 seed+1 / bf16": " / ".join(f"{v:.4f}" for v in record["final_losses"].values()),
           "mean abs(bf16 − fp32) / fp32": bf16_gap, "mean abs(seed+1 − seed) / fp32": seed_gap,
           "bf16 within noise": record["within_noise"], "figure": os.path.relpath(figure, common.REPO_ROOT)}
    common.append_markdown_row("Loss curves, float32 vs mixed_bfloat16", row, record["command"], info)


if __name__ == "__main__":
    app.run(main)
