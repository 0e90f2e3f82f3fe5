"""Evaluates a trained diffusion model: FID/KID for images, energy distance/KS for toys.

    # a workdir (reads model.keras and config.json) or a model.keras path
    python tools/evaluate.py --model=runs/mnist --classifier=runs/classifier/classifier.keras \
        --num_samples=10000 --sampler=ddim --num_steps=50 --output=runs/mnist/eval/ddim50.json
    # an exported SavedModel (tools/export.py): its `sample` signature draws the samples
    python tools/evaluate.py --saved_model=/srv/models/mnist/1 --classifier=... --num_steps=50 --output=...
    # a toy: energy distance (and KS in 1-D) against held-out toy data, no classifier
    python tools/evaluate.py --model=runs/moons --num_samples=2000 --output=runs/moons/eval.json

Protocol (images; see `tfdiffusion.metrics`): `--num_samples` samples are drawn in batches of
`--batch_size`, batch i with seed SeedSequence([--seed, i]); they are quantised to uint8 and
embedded by the classifier's 128-unit "features" layer in inference mode; the reference is
every image of `--reference_split` (default: test; statistics cached beside the classifier).
FID is biased upwards at small N: compare numbers at the same N only.

Toys (1-D/2-D data): the reference is `--num_samples` fresh points of the toy dataset drawn
with `--reference_seed` (not the training data's seed); the report also gives the energy
distance of a second fresh draw (the floor at this N) and of N(0, I) noise.

Writes the JSON report to --output and a picture of the samples beside it (same name, .png).
Exit status 1 with a message naming the value on bad input (missing files, bad values).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

IMAGE_DATASETS = ("mnist", "fashion_mnist")
TOY_DATASETS = ("moons", "gmm1d")

_MODEL = flags.DEFINE_string("model", None, "A training workdir (holding model.keras) or a model.keras path.")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "With a workdir --model: evaluate checkpoint ckpt-<step> (EMA weights) instead of model.keras.")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "An exported SavedModel directory (instead of --model).")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "classifier.keras from tools/train_classifier.py (images).")
_DATASET = flags.DEFINE_string("dataset", "auto", "auto (from the workdir's config.json, else from the sample "
                               f"shape), or one of {IMAGE_DATASETS + TOY_DATASETS}.")
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


class EvaluationError(ValueError):
    """Bad input; the message names the value."""


# -- the model ---------------------------------------------------------------------------------
def resolve_model_path(value, checkpoint_step=None):
    """(model.keras path, workdir or None) of a --model value (the workdir itself for a checkpoint)."""
    if os.path.isdir(value) and checkpoint_step is not None:
        return value, value
    if os.path.isdir(value):
        path = os.path.join(value, "model.keras")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--model is a directory without model.keras. Received: --model={value!r}")
        return path, value
    if not os.path.isfile(value):
        raise FileNotFoundError(f"--model does not exist. Received: --model={value!r}")
    if not value.endswith(".keras"):
        raise EvaluationError(f"--model must be a workdir or a .keras file. Received: --model={value!r}")
    return value, os.path.dirname(os.path.abspath(value))


def batch_seed(seed, index):
    """The seed of batch `index`: distinct streams for every (seed, batch) pair."""
    import numpy as np

    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class KerasSampler:
    def __init__(self, path, *, sampler, num_steps, eta, guidance_scale, checkpoint_step=None):
        import keras

        import tfdiffusion  # noqa: F401  (registers DiffusionModel for deserialisation)
        from tfdiffusion import samplers

        try:
            if checkpoint_step is not None:
                from tfdiffusion import training

                self.model = training.model_from_checkpoint(path, checkpoint_step)
            else:
                self.model = keras.saving.load_model(path)
        except Exception as error:  # a damaged or foreign file
            raise EvaluationError(f"Could not load --model: {error}. Received: --model={path!r}") from error
        if not isinstance(self.model, tfdiffusion.DiffusionModel):
            raise EvaluationError(f"--model is not a tfdiffusion DiffusionModel. Received: --model={path!r}")
        T = self.model.diffusion.num_timesteps
        self.num_steps = num_steps or T
        if not 1 <= self.num_steps <= T:
            raise EvaluationError(f"--num_steps must be in [0, {T}] (0 means T). Received: --num_steps={num_steps}")
        samplers.validate_request(T, sampler=sampler, num_steps=self.num_steps, eta=eta,
                                  guidance_scale=guidance_scale)
        self.sampler, self.eta = sampler, eta
        self.num_classes = self.model.num_classes
        self.data_shape = tuple(self.model.data_shape)
        self.guidance_scale = guidance_scale if self.num_classes is not None else None

    def __call__(self, num_samples, seed, first_index):
        import numpy as np

        labels = None
        if self.num_classes is not None:
            labels = np.arange(first_index, first_index + num_samples) % self.num_classes
        return self.model.generate(num_samples, seed=seed, sampler=self.sampler, num_steps=self.num_steps,
                                   eta=self.eta, labels=labels, guidance_scale=self.guidance_scale)


class SavedModelSampler:
    def __init__(self, path, *, sampler, num_steps, eta, guidance_scale, num_classes):
        import tensorflow as tf

        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"--saved_model is not a SavedModel directory. Received: --saved_model={path!r}")
        if num_steps < 1:
            raise EvaluationError(f"--num_steps must be >= 1 with --saved_model. Received: --num_steps={num_steps}")
        if num_classes < 1:
            raise EvaluationError(f"--num_classes must be >= 1. Received: --num_classes={num_classes}")
        self.loaded = tf.saved_model.load(path)
        if "sample" not in self.loaded.signatures:
            raise EvaluationError(f"--saved_model has no 'sample' signature (it has {list(self.loaded.signatures)}). "
                                  f"Received: --saved_model={path!r}")
        self.function = self.loaded.signatures["sample"]
        self.num_steps, self.sampler, self.eta, self.guidance_scale = num_steps, sampler, eta, guidance_scale
        self.num_classes = num_classes
        self.data_shape = tuple(self.function.structured_outputs["samples"].shape[1:])

    def __call__(self, num_samples, seed, first_index):
        import numpy as np
        import tensorflow as tf

        labels = np.arange(first_index, first_index + num_samples) % self.num_classes
        try:
            out = self.function(
                seed=tf.constant(seed, tf.int64), num_samples=tf.constant(num_samples, tf.int32),
                num_steps=tf.constant(self.num_steps, tf.int32), sampler=tf.constant(self.sampler),
                eta=tf.constant(self.eta, tf.float32), guidance_scale=tf.constant(self.guidance_scale, tf.float32),
                labels=tf.constant(labels, tf.int32))
        except tf.errors.InvalidArgumentError as error:
            raise EvaluationError(f"The SavedModel refused the request: {error.message.strip().splitlines()[0]}") from None
        return out["samples"].numpy()


def requested_labels(sample_fn, num_samples):
    """The labels a conditional Keras model was asked for (they cycle 0..K−1), else None."""
    import numpy as np

    if isinstance(sample_fn, KerasSampler) and sample_fn.num_classes is not None:
        return np.arange(num_samples) % sample_fn.num_classes
    return None


def draw_samples(sample_fn, num_samples, batch_size, seed, verbose=True):
    import keras
    import numpy as np

    progbar = keras.utils.Progbar(num_samples, unit_name="sample") if verbose else None
    parts = []
    for index, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        parts.append(np.asarray(sample_fn(count, batch_seed(seed, index), start)))
        if progbar is not None:
            progbar.add(count)
    return np.concatenate(parts)


# -- the dataset ---------------------------------------------------------------------------------
def infer_dataset(requested, workdir, sample_shape):
    names = IMAGE_DATASETS + TOY_DATASETS
    if requested != "auto":
        if requested not in names:
            raise EvaluationError(f"--dataset must be 'auto' or one of {names}. Received: --dataset={requested!r}")
        return requested
    config_path = os.path.join(workdir, "config.json") if workdir else None
    if config_path and os.path.exists(config_path):
        with open(config_path) as f:
            name = json.load(f).get("data", {}).get("name")
        if name in names:
            return name
    by_shape = {(1,): "gmm1d", (2,): "moons", (28, 28, 1): "mnist"}
    if tuple(sample_shape) in by_shape:
        return by_shape[tuple(sample_shape)]
    raise EvaluationError(f"Cannot tell the dataset from samples of shape {tuple(sample_shape)}; pass --dataset. "
                          "Received: --dataset='auto'")


def reference_images(dataset, split, idx_dir, limit):
    import numpy as np

    from tfdiffusion import data

    if split not in ("train", "test"):
        raise EvaluationError(f"--reference_split must be 'train' or 'test'. Received: --reference_split={split!r}")
    if idx_dir:
        if not os.path.isdir(idx_dir):
            raise FileNotFoundError(f"--idx_dir is not a directory. Received: --idx_dir={idx_dir!r}")
        images, _ = data.load_mnist_idx(idx_dir, split)
    elif dataset == "mnist" and data.default_mnist_dir() is not None:
        images, _ = data.load_mnist_idx(data.default_mnist_dir(), split)
    else:
        x, _ = data.load_arrays(dataset, split)
        images = np.round((x + 1.0) * 127.5).astype(np.uint8)
    return images[:limit] if limit else images


# -- evaluation ------------------------------------------------------------------------------------
def evaluate_images(samples, dataset, *, classifier_path, reference_split, idx_dir, reference_limit, kid_subsets,
                    kid_subset_size, seed, requested_labels=None):
    import keras

    from tfdiffusion import metrics

    if not classifier_path:
        raise EvaluationError(f"--classifier is required for the image dataset {dataset!r}. Received: --classifier=None")
    if not os.path.isfile(classifier_path):
        raise FileNotFoundError(f"--classifier does not exist. Received: --classifier={classifier_path!r}")
    if len(samples) < 2:
        raise EvaluationError(f"FID needs --num_samples >= 2. Received: --num_samples={len(samples)}")
    classifier = keras.saving.load_model(classifier_path)
    extractor = metrics.FeatureExtractor(classifier)
    images = reference_images(dataset, reference_split, idx_dir, reference_limit)
    cache = os.path.join(os.path.dirname(os.path.abspath(classifier_path)),
                         f"reference_{dataset}_{reference_split}{f'_{reference_limit}' if reference_limit else ''}.npz")
    logging.info("Reference statistics of %d %s/%s images (cache %s)", len(images), dataset, reference_split, cache)
    reference = metrics.reference_statistics(extractor, images, cache, verbose=True)
    logging.info("Features of %d samples", len(samples))
    features, logits = extractor(samples, verbose=True)
    subset_size = min(kid_subset_size, len(features), len(reference["features"]))
    kid_mean, kid_std = metrics.kernel_inception_distance(features, reference["features"], num_subsets=kid_subsets,
                                                          subset_size=subset_size, seed=seed)
    num_classes = logits.shape[1]
    report = {}
    if requested_labels is not None:
        overall, per_class = metrics.requested_label_accuracy(logits, requested_labels, num_classes)
        report = {"requested_label_accuracy": overall, "requested_label_accuracy_per_class": per_class.tolist()}
    return report | {
        "fid": metrics.frechet_distance_from_statistics(*metrics.feature_statistics(features), reference["mu"],
                                                        reference["sigma"]),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": kid_subsets,
        "kid_subset_size": subset_size,
        "confident_fraction": metrics.confident_fraction(logits, 0.9),
        "label_histogram": metrics.label_histogram(logits, num_classes).tolist(),
        "reference_confident_fraction": metrics.confident_fraction(reference["logits"], 0.9),
        "classifier": os.path.abspath(classifier_path),
        "reference_split": reference_split,
        "reference_num_images": int(reference["num_images"]),
        "protocol": "features: classifier 'features' layer (128-d, inference mode) of uint8-quantised images; "
                    "FID: float64 mean/unbiased covariance; KID: unbiased MMD², kernel (x·y/d+1)³, "
                    "mean/std over subsets; reference: all images of the split (or the first reference_num_images)",
    }


def evaluate_toy(samples, dataset, reference_seed):
    import numpy as np

    from tfdiffusion import data, metrics

    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    n = len(samples)
    reference = data.toy_dataset(dataset, n, seed=reference_seed)
    if reference.shape[1] != samples.shape[1]:
        raise EvaluationError(f"The samples have {samples.shape[1]} dimensions but {dataset!r} has "
                              f"{reference.shape[1]}. Received: --dataset={dataset!r}")
    floor = data.toy_dataset(dataset, n, seed=reference_seed + 1)
    noise = np.random.default_rng(reference_seed).standard_normal(samples.shape)
    report = {
        "energy_distance": metrics.energy_distance(samples, reference),
        "energy_distance_data_floor": metrics.energy_distance(floor, reference),
        "energy_distance_noise": metrics.energy_distance(noise, reference),
        "reference_seed": reference_seed,
        "reference_num_samples": n,
        "protocol": "energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (all pairs) against fresh toy data; "
                    "floor: a second fresh draw; noise: N(0, I)",
    }
    if samples.shape[1] == 1:
        report["ks_statistic"] = metrics.ks_statistic_1d(samples, reference)
        report["ks_statistic_data_floor"] = metrics.ks_statistic_1d(floor, reference)
    return report, reference


def atomic_write_json(path, payload):
    temporary = path + ".partial"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def evaluate(*, model=None, saved_model=None, classifier=None, dataset="auto", idx_dir=None, num_samples=10000,
             sampler="ddim", num_steps=0, eta=0.0, guidance_scale=0.0, num_classes=10, seed=0, batch_size=500,
             reference_split="test", reference_num_images=0, reference_seed=12345, kid_subsets=100,
             kid_subset_size=1000, output=None, checkpoint_step=None):
    """Runs the evaluation and writes the report; returns the report dict."""
    start = time.time()
    if (model is None) == (saved_model is None):
        raise EvaluationError(f"Pass exactly one of --model and --saved_model. Received: --model={model!r}, "
                              f"--saved_model={saved_model!r}")
    if not output:
        raise EvaluationError(f"--output must be a path. Received: --output={output!r}")
    for name, value, low in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1),
                             ("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                             ("reference_num_images", reference_num_images, 0), ("num_steps", num_steps, 0)):
        if value < low:
            raise EvaluationError(f"--{name} must be >= {low}. Received: --{name}={value}")
    if not 0.0 <= eta <= 1.0:
        raise EvaluationError(f"--eta must be in [0, 1]. Received: --eta={eta}")
    if dataset != "auto" and dataset not in IMAGE_DATASETS + TOY_DATASETS:
        raise EvaluationError(f"--dataset must be 'auto' or one of {IMAGE_DATASETS + TOY_DATASETS}. "
                              f"Received: --dataset={dataset!r}")
    if classifier and not os.path.isfile(classifier):  # fail before sampling, not after
        raise FileNotFoundError(f"--classifier does not exist. Received: --classifier={classifier!r}")
    if model is not None:
        path, workdir = resolve_model_path(model, checkpoint_step)
    from tfdiffusion import samplers  # (imports TensorFlow: the checks above answer at once)

    if sampler not in samplers.SAMPLERS:
        raise EvaluationError(f"--sampler must be one of {samplers.SAMPLERS}. Received: --sampler={sampler!r}")
    if model is not None:
        sample_fn = KerasSampler(path, sampler=sampler, num_steps=num_steps, eta=eta, guidance_scale=guidance_scale,
                                 checkpoint_step=checkpoint_step)
        num_steps = sample_fn.num_steps
        model_path = os.path.abspath(path)
    else:
        sample_fn = SavedModelSampler(saved_model, sampler=sampler, num_steps=num_steps, eta=eta,
                                      guidance_scale=guidance_scale, num_classes=num_classes)
        workdir, model_path = None, os.path.abspath(saved_model)
    dataset = infer_dataset(dataset, workdir, sample_fn.data_shape)
    if dataset in IMAGE_DATASETS and not classifier:
        raise EvaluationError(f"--classifier is required for the image dataset {dataset!r}. Received: --classifier=None")
    logging.info("Drawing %d samples (%s, %d steps) from %s", num_samples, sampler, num_steps, model_path)
    sampling_start = time.time()
    samples = draw_samples(sample_fn, num_samples, batch_size, seed)
    sampling_seconds = time.time() - sampling_start

    from tfdiffusion import plots

    report = {"dataset": dataset, "model": model_path, "model_format": "keras" if model is not None else "saved_model",
              "num_samples": num_samples, "sampler": sampler, "num_steps": int(num_steps), "eta": eta,
              "guidance_scale": guidance_scale, "seed": seed, "batch_size": batch_size}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    picture = os.path.splitext(output)[0] + ".png"
    title = f"{dataset}: {sampler}, {num_steps} steps"
    if dataset in TOY_DATASETS:
        metrics_report, reference = evaluate_toy(samples, dataset, reference_seed)
        plots.save_points(samples.reshape(len(samples), -1), picture, reference=reference, title=title)
    else:
        metrics_report = evaluate_images(samples, dataset, classifier_path=classifier, reference_split=reference_split,
                                         idx_dir=idx_dir, reference_limit=reference_num_images,
                                         kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
                                         requested_labels=requested_labels(sample_fn, num_samples))
        plots.save_image_grid(samples[:64], picture, title=title)
    report.update(metrics_report)
    report.update({"sampling_seconds": sampling_seconds, "seconds": time.time() - start, "picture": picture})
    atomic_write_json(output, report)
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments. Received: {argv[1:]}")
    try:
        report = evaluate(
            model=_MODEL.value, saved_model=_SAVED_MODEL.value, classifier=_CLASSIFIER.value, dataset=_DATASET.value,
            idx_dir=_IDX_DIR.value, num_samples=_NUM_SAMPLES.value, sampler=_SAMPLER.value,
            num_steps=_NUM_STEPS.value, eta=_ETA.value, guidance_scale=_GUIDANCE.value,
            num_classes=_NUM_CLASSES.value, seed=_SEED.value, batch_size=_BATCH_SIZE.value,
            reference_split=_REFERENCE_SPLIT.value, reference_num_images=_REFERENCE_LIMIT.value,
            reference_seed=_REFERENCE_SEED.value, kid_subsets=_KID_SUBSETS.value,
            kid_subset_size=_KID_SUBSET_SIZE.value, output=_OUTPUT.value, checkpoint_step=_CHECKPOINT_STEP.value)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in report.items() if k not in ("label_histogram", "protocol")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
