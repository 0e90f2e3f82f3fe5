"""Evaluates a trained diffusion model: FID, KID, precision/recall for images; energy distance/KS for toys.

    # any image model: Inception-V3 features against its training source (folder, TFDS split…)
    python tools/evaluate.py --model=runs/flowers --num_samples=10000 --output=runs/flowers/eval.json
    # offline: the weights file of keras.applications.InceptionV3(include_top=False), copied here
    python tools/evaluate.py --model=runs/flowers --inception_weights=inception_v3_notop.h5 --output=...
    # MNIST-like data: the small classifier's features (tools/train_classifier.py) and its extras
    python tools/evaluate.py --model=runs/mnist --classifier=runs/classifier/classifier.keras \
        --num_samples=10000 --sampler=ddim --num_steps=50 --output=runs/mnist/eval/ddim50.json
    # an exported SavedModel (tools/export.py), against a folder of images
    python tools/evaluate.py --saved_model=/srv/models/faces/1 --data_path=data/faces --num_steps=50 --output=...
    # a toy: energy distance (and KS in 1-D) against held-out toy data
    python tools/evaluate.py --model=runs/moons --num_samples=2000 --output=runs/moons/eval.json

The protocol is `tfdiffusion.evaluation`'s (its module docstring): batch i of `--batch_size` samples
with seed `batch_seed(--seed, i)`, quantised to uint8; `--features=inception` resizes them to 299
(bilinear, antialiased; clean-fid) for Inception-V3's 2048-d pool features, `--features=classifier`
uses the classifier's 128-d "features" layer (the default for 28×28×1 samples when --classifier is
given). The reference is the model's training source (from the workdir's config.json, or
--dataset/--data_path) at the samples' size; its statistics are computed once and cached
(--reference_cache_dir; default beside the classifier, else ~/.cache/tfdiffusion). Toys use fresh
toy data drawn with --reference_seed. FID and precision/recall depend on N: compare at equal N.
The ImageNet weights come from the Keras cache (~/.keras/models) or a download; with neither,
pass --inception_weights.

Writes the JSON report to --output and a picture of the samples beside it (same name, .png).
Exit status 1 with one line naming the flag and the value on bad input (missing files, bad values).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdiffusion import cli  # noqa: E402  (imports no TensorFlow)
from tfdiffusion.config import SAMPLER_NAMES, SPACING_NAMES  # noqa: E402  (imports no TensorFlow)

_MODEL = flags.DEFINE_string("model", None, "A training workdir (holding model.keras) or a model.keras path.")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "With a workdir --model: evaluate checkpoint ckpt-<step> (EMA weights) instead of model.keras.")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "An exported SavedModel directory (instead of --model).")
_FEATURES = flags.DEFINE_string("features", "auto", "inception, classifier, or auto (the classifier for 28×28×1 "
                                "samples when --classifier is given, else inception).")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py.")
_INCEPTION_WEIGHTS = flags.DEFINE_string("inception_weights", "imagenet", "imagenet (Keras cache or download) or "
                                         "an .h5 file of keras.applications.InceptionV3(include_top=False).")
_DATASET = flags.DEFINE_string("dataset", "auto", "auto (the workdir's training source, else the sample shape), "
                               "folder, mnist, fashion_mnist, cifar10, moons, gmm1d or any TFDS name.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "A folder of reference images (searched recursively).")
_IDX_DIR = flags.DEFINE_string("idx_dir", None, "IDX directory of the reference images (default: the local MNIST).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory of the reference images.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "Number of samples to draw and evaluate.")
_SAMPLER = flags.DEFINE_string("sampler", "ddim", f"Sampler: {', '.join(SAMPLER_NAMES)}.")
_SPACING = flags.DEFINE_enum("spacing", "auto", SPACING_NAMES, "Timestep spacing (auto: the sampler's own).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Sampling steps; 0 means T (not allowed with --saved_model).")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM η.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 0.0, "Classifier-free guidance weight (conditional models).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of a conditional SavedModel (labels cycle 0..K−1).")
_PRECISION = flags.DEFINE_enum("mixed_precision", "auto", ["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                               "Compute precision of the model's network calls (auto: bfloat16 where it pays).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "Samples per sampler call.")
_REFERENCE_SPLIT = flags.DEFINE_string("reference_split", None, "Split of the reference images (default: test for "
                                       "the IDX/array sets, else the training split).")
_REFERENCE_LIMIT = flags.DEFINE_integer("reference_num_images", 0, "Use the first K reference images (0: all).")
_REFERENCE_CACHE_DIR = flags.DEFINE_string("reference_cache_dir", None, "Where reference statistics are cached.")
_REFERENCE_SEED = flags.DEFINE_integer("reference_seed", 12345, "Seed of the held-out toy data.")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: number of subsets.")
_KID_SUBSET_SIZE = flags.DEFINE_integer("kid_subset_size", 1000, "KID: subset size (capped at the sample count).")
_OUTPUT = flags.DEFINE_string("output", None, "Path of the JSON report; the picture goes beside it (.png).")
flags.mark_flags_as_required(["output"])


def main(argv):
    del argv  # cli.run refuses positional arguments, and ends a ValueError with one line and exit status 1
    from tfdiffusion import evaluation  # (imports TensorFlow: after the flags are parsed)

    report = evaluation.evaluate(
        model=_MODEL.value, saved_model=_SAVED_MODEL.value, checkpoint_step=_CHECKPOINT_STEP.value,
        features=_FEATURES.value, classifier=_CLASSIFIER.value, inception_weights=_INCEPTION_WEIGHTS.value,
        dataset=_DATASET.value, data_path=_DATA_PATH.value, idx_dir=_IDX_DIR.value, data_dir=_DATA_DIR.value,
        num_samples=_NUM_SAMPLES.value, sampler=_SAMPLER.value, num_steps=_NUM_STEPS.value, eta=_ETA.value,
        guidance_scale=_GUIDANCE.value, spacing=_SPACING.value, num_classes=_NUM_CLASSES.value, seed=_SEED.value,
        mixed_precision=_PRECISION.value,
        batch_size=_BATCH_SIZE.value, reference_split=_REFERENCE_SPLIT.value,
        reference_num_images=_REFERENCE_LIMIT.value, reference_cache_dir=_REFERENCE_CACHE_DIR.value,
        reference_seed=_REFERENCE_SEED.value, kid_subsets=_KID_SUBSETS.value,
        kid_subset_size=_KID_SUBSET_SIZE.value, output=_OUTPUT.value)
    shown = {k: v for k, v in report.items()
             if k not in ("label_histogram", "protocol", "requested_label_accuracy_per_class")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main)
