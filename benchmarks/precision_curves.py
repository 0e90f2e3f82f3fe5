"""Does `mixed_bfloat16` train like float32? Loss curves of one config in both precisions.

    python benchmarks/precision_curves.py --config=configs/moons.py --steps=4000 --log_every=200
    python benchmarks/precision_curves.py --config=configs/mnist.py --steps=300 --log_every=20

Three runs of `training.train` on the config, each in a fresh workdir under --workdir_base:
float32 with seed s, float32 with seed s + 1 and mixed_bfloat16 with seed s. Batches and
diffusion noise are a function of (seed, step) only, so the bf16 run sees exactly the examples
and noise of the first float32 run: their curves differ by precision alone. The second float32
run measures "noise": how far two float32 curves lie apart when only the seed changes.

Reported: the mean over logged points (after the first tenth of the run) of |bf16 − fp32| and of
|fp32 seed s+1 − fp32|, relative to the fp32 loss; "same curve within noise" means the first is
not larger than the second. Writes the figure `--figure` and a row of --markdown.
"""

import argparse
import math
import os
import sys
import tempfile

import numpy as np

import common


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, e.g. configs/moons.py")
    parser.add_argument("--steps", type=int, required=True, help="training steps of each run")
    parser.add_argument("--log_every", type=int, required=True, help="steps per logged loss (a divisor of --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir_base", default=None, help="where the three workdirs go (default: a temp dir)")
    parser.add_argument("--figure", default=None, help="PNG of the curves (default docs/figures/<name>_precision_loss.png)")
    parser.add_argument("--markdown", default=common.DEFAULT_MARKDOWN, help="results file ('' for none)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.log_every < 1 or args.steps % args.log_every:
        parser.error(f"--log_every must divide --steps (both >= 1). Received: --steps={args.steps}, "
                     f"--log_every={args.log_every}")
    return args


def run_config(args, precision, seed):
    config = common.load_config(args.config)
    config.seed = seed
    config.train.update({"steps": args.steps, "checkpoint_every": args.log_every, "log_every": args.log_every,
                         "mixed_precision": precision, "verbose": False,
                         # Each logged point ends a `fit` execution: it must divide --log_every.
                         "steps_per_execution": math.gcd(config.train.steps_per_execution, args.log_every)})
    config.sample.update({"sampler": "ddim", "num_steps": min(10, config.diffusion.num_timesteps)})  # the PNG only
    if config.optimizer.warmup_steps >= args.steps:
        config.optimizer.warmup_steps = args.steps // 10
    return config


def relative_gap(curve, reference, skip):
    return float(np.mean(np.abs(curve[skip:] - reference[skip:]) / reference[skip:]))


def main(argv=None):
    args = parse_args(argv)
    from tfdiffusion import plots, training  # pylint: disable=import-outside-toplevel

    base = args.workdir_base or tempfile.mkdtemp(prefix="precision_curves_")
    runs = {"float32": ("float32", args.seed), f"float32, seed {args.seed + 1}": ("float32", args.seed + 1),
            "mixed_bfloat16": ("mixed_bfloat16", args.seed)}
    curves, summaries = {}, {}
    for label, (precision, seed) in runs.items():
        config = run_config(args, precision, seed)
        workdir = os.path.join(base, f"{precision}_seed{seed}")
        with common.Timer() as timer:
            summaries[label] = training.train(config, workdir)
        epochs, losses = plots.read_loss_csv(os.path.join(workdir, "loss.csv"))
        curves[label] = ((epochs + 1) * args.log_every, losses)
        common.emit_json({"event": "run", "label": label, "precision": precision, "seed": seed, **timer.record(),
                          "final_loss": float(losses[-1])})
    name = config.name
    figure = args.figure or os.path.join(common.REPO_ROOT, "docs", "figures", f"{name}_precision_loss.png")
    plots.save_loss_curve(curves, figure, xlabel="step", title=f"{name}: float32 vs mixed_bfloat16")
    skip = max(1, len(curves["float32"][1]) // 10)
    fp32 = curves["float32"][1]
    bf16_gap = relative_gap(curves["mixed_bfloat16"][1], fp32, skip)
    seed_gap = relative_gap(curves[f"float32, seed {args.seed + 1}"][1], fp32, skip)
    info = common.machine_info()
    record = {"event": "summary", "benchmark": "precision_curves", "config": args.config, "steps": args.steps,
              "bf16_vs_fp32_relative_gap": bf16_gap, "seed_vs_seed_relative_gap": seed_gap,
              "within_noise": bf16_gap <= seed_gap, "figure": figure,
              "final_losses": {k: float(v[1][-1]) for k, v in curves.items()},
              "seconds": {k: s["seconds"] for k, s in summaries.items()}, "command": common.command_line(),
              "machine": info}
    common.emit_json(record)
    if args.markdown:
        row = {"date": info["date"][:16].replace("T", " "), "config": args.config, "steps": args.steps,
               "final loss fp32 / fp32 seed+1 / bf16": " / ".join(f"{v:.4f}" for v in record["final_losses"].values()),
               "mean abs(bf16 − fp32) / fp32": bf16_gap, "mean abs(seed+1 − seed) / fp32": seed_gap,
               "bf16 within noise": record["within_noise"], "figure": os.path.relpath(figure, common.REPO_ROOT)}
        common.append_markdown_row("Loss curves, float32 vs mixed_bfloat16", row, record["command"],
                                   path=args.markdown, info=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
