"""Evaluates a trained diffusion model: FID/KID for images, energy distance/KS for toys.

    # a workdir (reads model.keras and config.json) or a model.keras path
    python tools/evaluate.py --model=runs/mnist --classifier=runs/classifier/classifier.keras \
        --num_samples=10000 --sampler=ddim --num_steps=50 --output=runs/mnist/eval/ddim50.json
    # an exported SavedModel (tools/export.py): its `sample` signature draws the samples
    python tools/evaluate.py --saved_model=/srv/models/mnist/1 --classifier=... --num_steps=50 --output=...
    # a toy: energy distance (and KS in 1-D) against held-out toy data, no classifier
    python tools/evaluate.py --model=runs/moons --num_samples=2000 --output=runs/moons/eval.json

The protocol is `tfdiffusion.evaluation`'s (its module docstring): batch i of `--batch_size` samples
with seed `batch_seed(--seed, i)`; images quantised to uint8 and embedded by the classifier's
"features" layer, against every image of `--reference_split` (statistics cached beside the
classifier); toys against fresh toy data drawn with `--reference_seed`. FID is biased upwards at
small N: compare numbers at the same N only.

Writes the JSON report to --output and a picture of the samples beside it (same name, .png).
Exit status 1 with one line naming the flag and the value on bad input (missing files, bad values).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A training workdir (holding model.keras) or a model.keras path.")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "With a workdir --model: evaluate checkpoint ckpt-<step> (EMA weights) instead of model.keras.")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "An exported SavedModel directory (instead of --model).")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py (images).")
_DATASET = flags.DEFINE_string("dataset", "auto", "auto (from the workdir's config.json, else from the sample "
                               "shape), or mnist, fashion_mnist, moons or gmm1d.")
_IDX_DIR = flags.DEFINE_string("idx_dir", None, "IDX directory of the reference images (default: the local MNIST).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "Number of samples to draw and evaluate.")
_SAMPLER = flags.DEFINE_string("sampler", "ddim", "Sampler: ddpm, ddim or dpmpp_2m.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Sampling steps; 0 means T (not allowed with --saved_model).")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM η.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 0.0, "Classifier-free guidance weight (conditional models).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of a conditional SavedModel (labels cycle 0..K−1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "Samples per sampler call.")
_REFERENCE_SPLIT = flags.DEFINE_string("reference_split", "test", "Split of the reference images: test or train.")
_REFERENCE_LIMIT = flags.DEFINE_integer("reference_num_images", 0, "Use the first K reference images (0: all).")
_REFERENCE_SEED = flags.DEFINE_integer("reference_seed", 12345, "Seed of the held-out toy data.")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: number of subsets.")
_KID_SUBSET_SIZE = flags.DEFINE_integer("kid_subset_size", 1000, "KID: subset size (capped at the sample count).")
_OUTPUT = flags.DEFINE_string("output", None, "Path of the JSON report; the picture goes beside it (.png).")
flags.mark_flags_as_required(["output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments. Received: {argv[1:]}")
    from tfdiffusion import evaluation  # (imports TensorFlow: after the flags are parsed)

    try:
        report = evaluation.evaluate(
            model=_MODEL.value, saved_model=_SAVED_MODEL.value, checkpoint_step=_CHECKPOINT_STEP.value,
            classifier=_CLASSIFIER.value, dataset=_DATASET.value, idx_dir=_IDX_DIR.value,
            num_samples=_NUM_SAMPLES.value, sampler=_SAMPLER.value, num_steps=_NUM_STEPS.value, eta=_ETA.value,
            guidance_scale=_GUIDANCE.value, num_classes=_NUM_CLASSES.value, seed=_SEED.value,
            batch_size=_BATCH_SIZE.value, reference_split=_REFERENCE_SPLIT.value,
            reference_num_images=_REFERENCE_LIMIT.value, reference_seed=_REFERENCE_SEED.value,
            kid_subsets=_KID_SUBSETS.value, kid_subset_size=_KID_SUBSET_SIZE.value, output=_OUTPUT.value)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in report.items() if k not in ("label_histogram", "protocol")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
