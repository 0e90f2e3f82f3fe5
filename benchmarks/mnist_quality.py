"""Sample quality of an MNIST run: FID over checkpoints, FID against sampler steps, and a grid.

    python benchmarks/mnist_quality.py --workdir=/work/runs/mnist --classifier=CLS --num_samples=500 \
        --checkpoints=500,1000,2000 --sweep=ddpm:400,ddim:20,dpmpp_2m:10,dpmpp_2m:20

`tfdiffusion.evaluation`'s protocol against the 10,000 MNIST test images; checkpoints with their raw
weights. Appends a table to --report and writes the DDPM-400 vs DPM-Solver++-20 grid (--figure).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
from tfdiffusion import evaluation, plots  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "An MNIST workdir written by tools/train.py.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per FID.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Samples per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first batch.")
_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "Checkpoint steps to evaluate with DPM-Solver++(2M), 20 steps.")
_SWEEP = flags.DEFINE_list("sweep", [], "sampler:steps pairs evaluated on the final model.keras.")
_REPORT = flags.DEFINE_string("report", "docs/RESULTS.md", "Markdown report (appended).")
_FIGURE = flags.DEFINE_string("figure", "docs/figures/mnist_ddpm400_vs_dpmpp20.png", "Side-by-side grids.")
flags.mark_flags_as_required(["workdir", "classifier"])


def quality(model, extractor, reference, sampler, steps, label):
    """One row of the report: the FID of --num_samples samples of `model` (printed as a JSON line too)."""
    _, point = common.sample_quality(model, extractor, reference, sampler=sampler, num_steps=steps,
                                     num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value)
    row = {"model": label, "sampler": sampler, "steps": steps, "num_samples": _NUM_SAMPLES.value, **point}
    common.emit_json(row)
    return row


def main(argv):
    del argv
    extractor, reference = evaluation.image_reference(_CLASSIFIER.value, "mnist")
    rows = []
    for step in _CHECKPOINTS.value:
        model = evaluation.load_model(_WORKDIR.value, checkpoint_step=int(step), use_ema=False)
        rows.append(quality(model, extractor, reference, "dpmpp_2m", 20, f"checkpoint {step} (raw weights)"))
    final = evaluation.load_model(_WORKDIR.value)
    for pair in _SWEEP.value:
        sampler, steps = pair.split(":")
        rows.append(quality(final, extractor, reference, sampler, int(steps), "final model.keras"))
    if _FIGURE.value:
        request = {"num_samples": 16, "batch_size": 16, "seed": _SEED.value}
        ddpm, ddpm_seconds = common.draw_timed(final, sampler="ddpm", num_steps=400, **request)
        fast, fast_seconds = common.draw_timed(final, sampler="dpmpp_2m", num_steps=20, **request)
        side_by_side = np.concatenate([ddpm, np.ones((16, 28, 4, 1), np.float32), fast], axis=2)
        plots.save_image_grid(side_by_side, _FIGURE.value, columns=4, title=f"left: DDPM 400 steps "
                              f"({ddpm_seconds:.1f} s); right: DPM-Solver++ 20 ({fast_seconds:.1f} s)")
        common.emit_json({"figure": _FIGURE.value, "ddpm_400_seconds": ddpm_seconds, "dpmpp_20_seconds": fast_seconds})
    with open(_REPORT.value, "a") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{_WORKDIR.value}`\n\n")
        f.write("| model | sampler | steps | N | FID | confident > 0.9 | sampling s |\n|---|---|---|---|---|---|---|\n")
        for row in rows:
            f.write(f"| {row['model']} | {row['sampler']} | {row['steps']} | {row['num_samples']} | "
                    f"{row['fid']:.2f} | {row['confident_fraction']:.3f} | {row['sampling_seconds']:.1f} |\n")
    return 0


if __name__ == "__main__":
    app.run(main)
