"""Sample quality of an MNIST run: FID over checkpoints, FID against sampler steps, and grids.

    python benchmarks/mnist_quality.py --workdir=/work/runs/mnist \
        --classifier=/work/runs/classifier/classifier.keras --num_samples=500 \
        --checkpoints=500,1000,2000 --sweep=ddpm:400,ddim:10,ddim:20,ddim:50,dpmpp_2m:10,dpmpp_2m:20,dpmpp_2m:50

Protocol: samples drawn in batches of `--batch_size` with seed `--seed` + batch index; FID of the
classifier features (tfdiffusion.metrics) against all 10,000 MNIST test images (statistics cached
beside the classifier). Checkpoints use the raw weights (the EMA of short runs lags). Prints JSON
lines and writes a markdown report (--report) and the DDPM-400 vs DPM-Solver++-20 grid (--figure).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from tfdiffusion import data, metrics, plots, training  # noqa: E402

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


def draw(model, sampler, steps, num_samples):
    batches, start = [], time.time()
    for index, first in enumerate(range(0, num_samples, _BATCH_SIZE.value)):
        size = min(_BATCH_SIZE.value, num_samples - first)
        batches.append(model.generate(size, seed=_SEED.value + index, sampler=sampler, num_steps=steps))
    return np.concatenate(batches), time.time() - start


def main(argv):
    del argv
    extractor = metrics.FeatureExtractor(keras.saving.load_model(_CLASSIFIER.value))
    test_images, _ = data.load_mnist_idx(data.default_mnist_dir(), "test")
    cache = os.path.join(os.path.dirname(os.path.abspath(_CLASSIFIER.value)), "reference_mnist_test.npz")
    reference = metrics.reference_statistics(extractor, test_images, cache)
    rows = []

    def fid_of(model, sampler, steps, label):
        samples, seconds = draw(model, sampler, steps, _NUM_SAMPLES.value)
        features, logits = extractor(samples)
        fid = metrics.frechet_distance_from_statistics(*metrics.feature_statistics(features), reference["mu"],
                                                       reference["sigma"])
        row = {"model": label, "sampler": sampler, "steps": steps, "num_samples": _NUM_SAMPLES.value, "fid": fid,
               "confident_fraction": metrics.confident_fraction(logits, 0.9), "sampling_seconds": seconds}
        print(json.dumps(row), flush=True)
        rows.append(row)
        return samples

    for step in _CHECKPOINTS.value:
        model = training.model_from_checkpoint(_WORKDIR.value, int(step), use_ema=False)
        fid_of(model, "dpmpp_2m", 20, f"checkpoint {step} (raw weights)")
    final = keras.saving.load_model(os.path.join(_WORKDIR.value, "model.keras"))
    for pair in _SWEEP.value:
        sampler, steps = pair.split(":")
        fid_of(final, sampler, int(steps), "final model.keras")
    if _FIGURE.value:
        ddpm, ddpm_seconds = draw(final, "ddpm", 400, 16)
        fast, fast_seconds = draw(final, "dpmpp_2m", 20, 16)
        gap = np.ones((16, 28, 4, 1), np.float32)
        side_by_side = np.concatenate([ddpm, gap, fast], axis=2)
        plots.save_image_grid(side_by_side, _FIGURE.value, columns=4,
                              title=f"left: DDPM 400 steps ({ddpm_seconds:.1f} s); right: DPM-Solver++ 20 ({fast_seconds:.1f} s)")
        rows.append({"figure": _FIGURE.value, "ddpm_400_seconds": ddpm_seconds, "dpmpp_20_seconds": fast_seconds})
        print(json.dumps(rows[-1]), flush=True)
    with open(_REPORT.value, "a") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{_WORKDIR.value}`\n\n")
        f.write("| model | sampler | steps | N | FID | confident > 0.9 | sampling s |\n|---|---|---|---|---|---|---|\n")
        for row in rows:
            if "fid" in row:
                f.write(f"| {row['model']} | {row['sampler']} | {row['steps']} | {row['num_samples']} | "
                        f"{row['fid']:.2f} | {row['confident_fraction']:.3f} | {row['sampling_seconds']:.1f} |\n")
    return 0


if __name__ == "__main__":
    app.run(main)
