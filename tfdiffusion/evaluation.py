"""The evaluation protocol: samples in batches, reference images, the image and toy reports.

    from tfdiffusion import evaluation
    report = evaluation.evaluate(model="runs/mnist", classifier="runs/classifier/classifier.keras",
                                 num_samples=10000, sampler="ddim", num_steps=50, output="runs/mnist/eval/ddim50.json")

`tools/evaluate.py` is this module's `evaluate` behind flags; `tools/train_classifier.py` is
`train_classifier`; the quality benchmarks call `draw_samples`, `image_reference` and `image_report`.
The maths (FID, KID, the classifier extras, energy distance, KS) is `tfdiffusion.metrics`.

The protocol, stated once:

* **Samples.** `num_samples` samples are drawn in batches of `batch_size`, batch i with the seed
  `batch_seed(seed, i)`, from a workdir (its `model.keras`), a `model.keras` path, a workdir's
  checkpoint (EMA weights) or an exported SavedModel's `sample` signature. A class-conditional
  model is asked for labels that cycle 0, 1, …, K−1 over the sample index.
* **Features.** A small CNN trained on the dataset (`layers.build_classifier`, trained by
  `train_classifier`), not Inception: its 128-unit "features" layer (post-ReLU) is the embedding,
  its logits give the classifier extras. Images in [0, 1] (or uint8) are *quantised to uint8
  first* — round(x·255) — exactly like the dataset's own pixels, so that a model is not rewarded
  or punished for sub-quantum noise; the classifier takes pixel values in [0, 255]. The network
  always runs in inference mode (dropout off, batch-norm moving statistics).
* **FID** on those features (float64 mean, unbiased covariance); biased upwards at small N, so
  compare numbers only at equal N (the report states N). **KID**: the unbiased MMD² with the
  kernel (x·y/d + 1)³, mean and standard deviation over random subsets.
* **Reference**: every image of one split of the real data (default: test), or its first
  `reference_num_images`; statistics cached beside the classifier in an .npz keyed by the
  classifier's weights and the images (`reference_statistics`).
* **Toys** (1-D/2-D data): the reference is `num_samples` fresh points of the toy dataset drawn
  with `reference_seed` (not the training data's seed); the report also gives the energy distance
  of a second fresh draw (the floor at this N) and of N(0, I) noise, and KS in 1-D.

Bad input raises `EvaluationError` (a ValueError) or FileNotFoundError with one line naming the
argument and the value received, before any sample is drawn.
"""

import hashlib
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import builders, checkpoints, data, metrics, plots, samplers
from tfdiffusion.layers.classifier import FEATURES_LAYER, build_classifier
from tfdiffusion.model import DiffusionModel

IMAGE_DATASETS = ("mnist", "fashion_mnist")  # the 28×28 grey sets `build_classifier` is made for
TOY_DATASETS = data.TOY_DATASET_NAMES
CLASSIFIER_FILENAME = "classifier.keras"
CONFIDENCE_THRESHOLD = 0.9
IMAGE_PROTOCOL = ("features: classifier 'features' layer (128-d, inference mode) of uint8-quantised images; "
                  "FID: float64 mean/unbiased covariance; KID: unbiased MMD², kernel (x·y/d+1)³, "
                  "mean/std over subsets; reference: all images of the split (or the first reference_num_images)")
TOY_PROTOCOL = ("energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (all pairs) against fresh toy data; "
                "floor: a second fresh draw; noise: N(0, I)")


class EvaluationError(ValueError):
    """Bad input to the evaluation; the message names the argument and the value received."""


def _check_integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EvaluationError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")


# ============================================================================================
# Where the samples come from
# ============================================================================================
def batch_seed(seed, index):
    """The seed of batch `index`: distinct streams for every (seed, batch) pair."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _resolve_model_path(model, checkpoint_step):
    """(path to load, workdir) of a `model` argument: a workdir or a model.keras path."""
    if os.path.isdir(model) and checkpoint_step is not None:
        return model, model
    if checkpoint_step is not None:
        raise EvaluationError(f"checkpoint_step needs a workdir as model. Received: model={model!r}, "
                              f"checkpoint_step={checkpoint_step!r}")
    if os.path.isdir(model):
        path = os.path.join(model, "model.keras")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model is a directory without model.keras. Received: model={model!r}")
        return path, model
    if not os.path.isfile(model):
        raise FileNotFoundError(f"model does not exist. Received: model={model!r}")
    if not model.endswith(".keras"):
        raise EvaluationError(f"model must be a workdir or a .keras file. Received: model={model!r}")
    return model, os.path.dirname(os.path.abspath(model))


def _load_resolved_model(path, checkpoint_step, use_ema):
    try:
        if checkpoint_step is not None:
            loaded = builders.model_from_checkpoint(path, checkpoint_step, use_ema=use_ema)
        else:
            loaded = builders.load_model(path)
    except Exception as error:  # a damaged or foreign file, a missing checkpoint
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EvaluationError(f"Could not load model ({first_line}). Received: model={path!r}") from error
    if not isinstance(loaded, DiffusionModel):
        raise EvaluationError(f"model is not a tfdiffusion DiffusionModel. Received: model={path!r}")
    return loaded


def load_model(model, *, checkpoint_step=None, use_ema=True):
    """The `DiffusionModel` of a workdir or a model.keras path.

    Args:
      model: a training workdir (its `model.keras` is loaded) or a `.keras` file.
      checkpoint_step: with a workdir, load checkpoint `ckpt-<step>` instead of `model.keras`.
      use_ema: for a checkpoint, swap in the optimizer's EMA weights (when it keeps them).

    Returns:
      A built `DiffusionModel`.
    """
    path, _ = _resolve_model_path(model, checkpoint_step)
    return _load_resolved_model(path, checkpoint_step, use_ema)


class ModelSampler:
    """Draws samples from a `DiffusionModel` in memory (loaded, restored or being trained).

    Args:
      model: a built `DiffusionModel`.
      sampler: "ddpm", "ddim" or "dpmpp_2m" (checked by `model.generate`, as are eta and guidance_scale).
      num_steps: sampling steps in [0, T]; 0 means T.
      eta: DDIM η.
      guidance_scale: classifier-free guidance weight; ignored for an unconditional model.
      source: what the report names as the model (a path), or None.
      workdir: the model's workdir (its config.json names the dataset), or None.

    Call arguments:
      num_samples, seed, first_index: the batch's size, seed and the index of its first sample.

    Returns:
      float32 samples [num_samples, ...] in data space.
    """

    model_format = "keras"

    def __init__(self, model, *, sampler="ddim", num_steps=0, eta=0.0, guidance_scale=0.0, source=None,
                 workdir=None):
        if not isinstance(model, DiffusionModel) or model.data_shape is None:
            raise EvaluationError(f"model must be a built DiffusionModel. Received: model={model!r}")
        num_timesteps = model.diffusion.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or not 0 <= num_steps <= num_timesteps:
            raise EvaluationError(f"num_steps must be in [0, {num_timesteps}] (0 means T). "
                                  f"Received: num_steps={num_steps!r}")
        self.model, self.sampler, self.eta = model, sampler, eta
        self.num_steps = int(num_steps) or num_timesteps
        self.num_classes = model.num_classes
        self.guidance_scale = guidance_scale if self.num_classes is not None else None
        self.data_shape = tuple(model.data_shape)
        self.source, self.workdir = source, workdir

    def requested_labels(self, first_index, num_samples):
        """The labels asked of a conditional model for samples first_index…, else None."""
        if self.num_classes is None:
            return None
        return np.arange(first_index, first_index + num_samples) % self.num_classes

    def __call__(self, num_samples, seed, first_index):
        return self.model.generate(num_samples, seed=seed, sampler=self.sampler, num_steps=self.num_steps,
                                   eta=self.eta, labels=self.requested_labels(first_index, num_samples),
                                   guidance_scale=self.guidance_scale)


class SavedModelSampler:
    """Draws samples through an exported SavedModel's `sample` signature (`tfdiffusion.export`).

    The request is validated by the signature's graph checks; a refusal becomes an
    `EvaluationError`. Labels cycle 0..num_classes−1 (an unconditional export ignores them), so
    `requested_labels` is None: whether the export is conditional is not known here.

    Args:
      path: the SavedModel directory.
      sampler, num_steps (≥ 1), eta, guidance_scale: the request.
      num_classes: classes of a conditional export.
    """

    model_format = "saved_model"
    workdir = None

    def __init__(self, path, *, sampler="ddim", num_steps=1, eta=0.0, guidance_scale=0.0, num_classes=10):
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"saved_model is not a SavedModel directory. Received: saved_model={path!r}")
        _check_integer("num_steps", num_steps, 1)
        _check_integer("num_classes", num_classes, 1)
        loaded = tf.saved_model.load(path)
        if "sample" not in loaded.signatures:
            raise EvaluationError(f"saved_model has no 'sample' signature (it has {list(loaded.signatures)}). "
                                  f"Received: saved_model={path!r}")
        self._loaded, self._function = loaded, loaded.signatures["sample"]
        self.sampler, self.num_steps, self.eta, self.guidance_scale = sampler, num_steps, eta, guidance_scale
        self.num_classes = num_classes
        self.data_shape = tuple(self._function.structured_outputs["samples"].shape[1:])
        self.source = os.path.abspath(path)

    def requested_labels(self, first_index, num_samples):
        return None

    def __call__(self, num_samples, seed, first_index):
        labels = np.arange(first_index, first_index + num_samples) % self.num_classes
        try:
            out = self._function(
                seed=tf.constant(seed, tf.int64), num_samples=tf.constant(num_samples, tf.int32),
                num_steps=tf.constant(self.num_steps, tf.int32), sampler=tf.constant(self.sampler),
                eta=tf.constant(self.eta, tf.float32), guidance_scale=tf.constant(self.guidance_scale, tf.float32),
                labels=tf.constant(labels, tf.int32))
        except tf.errors.InvalidArgumentError as error:
            raise EvaluationError(f"The SavedModel refused the request: {_assertion_text(error.message)}") from None
        return out["samples"].numpy()


def _assertion_text(message):
    """The message of the failed graph assertion in an InvalidArgumentError's text (else its first line)."""
    found = re.search(r"assertion failed: \[(.*)\]", message)
    return found.group(1) if found else message.strip().splitlines()[0]


def open_sampler(*, model=None, saved_model=None, checkpoint_step=None, sampler="ddim", num_steps=0, eta=0.0,
                 guidance_scale=0.0, num_classes=10):
    """A `ModelSampler` of a workdir, model.keras or checkpoint, or a `SavedModelSampler`.

    Args:
      model: a workdir or a model.keras path (exactly one of model and saved_model).
      saved_model: an exported SavedModel directory.
      checkpoint_step: with a workdir, the checkpoint to restore (EMA weights).
      sampler, num_steps, eta, guidance_scale: the sampling request (num_steps 0 means T, models only).
      num_classes: classes of a conditional SavedModel.

    Returns:
      The sampler adapter; its `source` names the model for the report.
    """
    if (model is None) == (saved_model is None):
        raise EvaluationError(f"Pass exactly one of model and saved_model. Received: model={model!r}, "
                              f"saved_model={saved_model!r}")
    if saved_model is not None:
        return SavedModelSampler(saved_model, sampler=sampler, num_steps=num_steps, eta=eta,
                                 guidance_scale=guidance_scale, num_classes=num_classes)
    path, workdir = _resolve_model_path(model, checkpoint_step)
    return ModelSampler(_load_resolved_model(path, checkpoint_step, use_ema=True), sampler=sampler,
                        num_steps=num_steps, eta=eta, guidance_scale=guidance_scale, source=os.path.abspath(path),
                        workdir=workdir)


def draw_samples(sample_fn, num_samples, *, batch_size=500, seed=0, verbose=False):
    """`num_samples` samples in batches of `batch_size`, batch i with seed `batch_seed(seed, i)`.

    Args:
      sample_fn: a sampler adapter (`ModelSampler`, `SavedModelSampler`) or any callable
        `(count, seed, first_index) → samples [count, ...]`.
      num_samples, batch_size: integers ≥ 1.
      seed: the run's seed.
      verbose: show a `keras.utils.Progbar`.

    Returns:
      The samples [num_samples, ...] as one NumPy array.
    """
    progbar = keras.utils.Progbar(num_samples, unit_name="sample") if verbose else None
    parts = []
    for index, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        parts.append(np.asarray(sample_fn(count, batch_seed(seed, index), start)))
        if progbar is not None:
            progbar.add(count)
    return np.concatenate(parts)


# ============================================================================================
# The data: which dataset, and its real images
# ============================================================================================
def _infer_dataset(dataset, workdir, sample_shape):
    """`dataset`, or for "auto" the workdir's config.json data name, else a guess from the sample shape."""
    if dataset != "auto":
        return dataset
    if workdir and os.path.exists(os.path.join(workdir, "config.json")):
        config, _ = builders.read_workdir_config(workdir)
        name = config.get("data", {}).get("name")
        if name in IMAGE_DATASETS + TOY_DATASETS:
            return name
    by_shape = {(1,): "gmm1d", (2,): "moons", (28, 28, 1): "mnist"}
    if tuple(sample_shape) in by_shape:
        return by_shape[tuple(sample_shape)]
    raise EvaluationError(f"Cannot tell the dataset from samples of shape {tuple(sample_shape)}; pass dataset. "
                          "Received: dataset='auto'")


def reference_images(dataset, split="test", *, idx_dir=None, num_images=0):
    """The reference images of an image dataset: uint8 [N, H, W, C], all of `split` or its first `num_images`.

    Read by `data.load_arrays`: from the IDX files in `idx_dir`, else the local MNIST copy for mnist,
    else TFDS.
    """
    images, _ = data.load_arrays(dataset, split, idx_dir=idx_dir or None, uint8=True)
    return images[:num_images] if num_images else images


# ============================================================================================
# Features: the classifier's embedding of quantised images, and the cached reference statistics
# ============================================================================================
def quantise_images(images):
    """Images in [0, 1] (float) or uint8 → uint8 [N, H, W, C] by round(x·255).

    Floats may stray outside [0, 1] by at most 1e-3 (round-off) and are clipped; anything
    further out raises (e.g. data still in the model's [−1, 1] space).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C]. Received: shape={images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must be float in [0, 1] or uint8. Received: dtype={images.dtype}")
    images = images.astype(np.float64)
    if images.size:
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(f"Float images must lie in [0, 1]. Received: values in [{low:.4g}, {high:.4g}]")
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


class FeatureExtractor:
    """Classifier features and logits for FID/KID, always in inference mode.

    Args:
      classifier: a `keras.Model` from `layers.build_classifier` (or any model taking pixel values
        in [0, 255] with a layer named `features_layer`), e.g.
        `keras.saving.load_model("runs/classifier/classifier.keras")`.
      features_layer: the name of the embedding layer.
      batch_size: images per forward pass.

    Call arguments:
      images: [N, H, W(, C)] floats in [0, 1] or uint8. Quantised to uint8 first.
      verbose: show a `keras.utils.Progbar`.

    Returns:
      (features float32 [N, 128], logits float32 [N, num_classes]).
    """

    def __init__(self, classifier, *, features_layer=FEATURES_LAYER, batch_size=500):
        if not isinstance(classifier, keras.Model):
            raise ValueError(f"classifier must be a keras.Model. Received: classifier={classifier!r}")
        try:
            features = classifier.get_layer(features_layer).output
        except ValueError as error:
            raise ValueError(f"The classifier has no layer named {features_layer!r}. Received: layers "
                             f"{[layer.name for layer in classifier.layers]}") from error
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
        self.classifier = classifier
        self.batch_size = int(batch_size)
        self.input_shape = tuple(classifier.inputs[0].shape[1:])
        self._model = keras.Model(classifier.inputs, [features, classifier.outputs[0]])
        self._forward = tf.function(lambda x: self._model(x, training=False), reduce_retracing=True)
        self._fingerprint = None

    @property
    def fingerprint(self):
        """A SHA-1 of the classifier's weights (names the feature space in caches)."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for weight in self.classifier.weights:
                digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __call__(self, images, *, verbose=False):
        pixels = quantise_images(images)
        if pixels.shape[1:] != self.input_shape:
            raise ValueError(
                f"The classifier takes images of shape {self.input_shape}. Received: images.shape={pixels.shape}")
        n = len(pixels)
        if n == 0:
            raise ValueError(f"images is empty. Received: images.shape={pixels.shape}")
        progbar = keras.utils.Progbar(n, unit_name="image") if verbose else None
        features, logits = [], []
        for start in range(0, n, self.batch_size):
            batch = pixels[start:start + self.batch_size].astype(np.float32)
            count = len(batch)
            if count < self.batch_size and n > self.batch_size:  # pad: one traced shape
                batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:], np.float32)])
            batch_features, batch_logits = self._forward(tf.constant(batch))
            features.append(batch_features.numpy()[:count])
            logits.append(batch_logits.numpy()[:count])
            if progbar is not None:
                progbar.add(count)
        return np.concatenate(features).astype(np.float32), np.concatenate(logits).astype(np.float32)


_STATISTICS = ("mu", "sigma", "features", "logits")


def _read_cached_statistics(cache_path, key):
    """The statistics cached at `cache_path` under `key`, or None (missing, stale, unreadable)."""
    if cache_path is None or not os.path.exists(cache_path):
        return None
    try:
        with np.load(cache_path) as cached:
            if str(cached["key"]) == key:
                return {name: cached[name] for name in _STATISTICS} | {"num_images": int(cached["num_images"])}
    except (OSError, KeyError, ValueError):
        pass  # unreadable or old-format cache: recompute
    return None


def reference_statistics(extractor, images, cache_path=None, *, verbose=False):
    """Features and (μ, Σ) of a reference image set, cached in an .npz.

    The cache is keyed by the classifier's weights and the quantised images: a stale file
    (another classifier, other images) is recomputed and replaced (`checkpoints.atomic_path`).

    Args:
      extractor: a `FeatureExtractor`.
      images: the reference images ([0, 1] floats or uint8), e.g. one whole dataset split.
      cache_path: an .npz path (one per dataset split and classifier), or None.
      verbose: progress bar while extracting.

    Returns:
      A dict with "mu" [d], "sigma" [d, d] (float64), "features" [N, d] and "logits" [N, K]
      (float32, the features are what KID needs) and "num_images".
    """
    pixels = quantise_images(images)
    key = f"{extractor.fingerprint}:{hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()}"
    cached = _read_cached_statistics(cache_path, key)
    if cached is not None:
        return cached
    features, logits = extractor(pixels, verbose=verbose)
    mu, sigma = metrics.feature_statistics(features)
    stats = {"mu": mu, "sigma": sigma, "features": features, "logits": logits, "num_images": len(pixels)}
    if cache_path is not None:
        with checkpoints.atomic_path(cache_path) as temporary, open(temporary, "wb") as f:
            np.savez(f, key=np.array(key), **stats)
    return stats


def image_reference(classifier, dataset="mnist", *, split="test", idx_dir=None, num_images=0, verbose=False):
    """The feature extractor of a classifier.keras and the reference statistics of a dataset split.

    The statistics are cached beside the classifier in `reference_<dataset>_<split>[_<num_images>].npz`.

    Args:
      classifier: path of a classifier.keras (`train_classifier`).
      dataset: an image dataset, one of `IMAGE_DATASETS`.
      split: "test" or "train".
      idx_dir: IDX directory of the reference images (default: the local MNIST copy, else TFDS).
      num_images: use the first K images of the split (0: all).
      verbose: log and show progress.

    Returns:
      (`FeatureExtractor`, the `reference_statistics` dict).
    """
    extractor = FeatureExtractor(keras.saving.load_model(classifier))
    images = reference_images(dataset, split, idx_dir=idx_dir, num_images=num_images)
    cache = os.path.join(os.path.dirname(os.path.abspath(classifier)),
                         f"reference_{dataset}_{split}{f'_{num_images}' if num_images else ''}.npz")
    if verbose:
        logging.info("Reference statistics of %d %s/%s images (cache %s)", len(images), dataset, split, cache)
    return extractor, reference_statistics(extractor, images, cache, verbose=verbose)


# ============================================================================================
# The reports
# ============================================================================================
def image_report(samples, extractor, reference, *, kid_subsets=100, kid_subset_size=1000, seed=0,
                 requested_labels=None, verbose=False):
    """FID, KID and the classifier extras of image samples against reference statistics.

    Args:
      samples: images [N ≥ 2, H, W(, C)] in [0, 1] (or uint8).
      extractor: a `FeatureExtractor`.
      reference: `reference_statistics` of the real images under the same extractor.
      kid_subsets: KID subsets.
      kid_subset_size: KID subset size, capped at N and at the reference's size.
      seed: seed of the KID subsets.
      requested_labels: for a class-conditional model, the label each sample was asked for.
      verbose: show progress while extracting features.

    Returns:
      A dict: "fid", "kid_mean", "kid_std", "kid_subsets", "kid_subset_size", "confident_fraction",
      "label_histogram", "reference_confident_fraction", "reference_num_images", "protocol", and
      with `requested_labels` "requested_label_accuracy" and "requested_label_accuracy_per_class".
    """
    features, logits = extractor(samples, verbose=verbose)
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
        "confident_fraction": metrics.confident_fraction(logits, CONFIDENCE_THRESHOLD),
        "label_histogram": metrics.label_histogram(logits, num_classes).tolist(),
        "reference_confident_fraction": metrics.confident_fraction(reference["logits"], CONFIDENCE_THRESHOLD),
        "reference_num_images": int(reference["num_images"]),
        "protocol": IMAGE_PROTOCOL,
    }


def toy_report(samples, dataset, reference_seed=12345):
    """Energy distance (and KS in 1-D) of toy samples against fresh draws of the toy dataset.

    Args:
      samples: points [N, d] (or [N]).
      dataset: one of `TOY_DATASETS`.
      reference_seed: seed of the reference draw (the floor's draw uses reference_seed + 1).

    Returns:
      (report dict, the reference points [N, d]).
    """
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    n = len(samples)
    reference = data.toy_dataset(dataset, n, seed=reference_seed)
    if reference.shape[1] != samples.shape[1]:
        raise EvaluationError(f"The samples have {samples.shape[1]} dimensions but {dataset!r} has "
                              f"{reference.shape[1]}. Received: dataset={dataset!r}")
    floor = data.toy_dataset(dataset, n, seed=reference_seed + 1)
    noise = np.random.default_rng(reference_seed).standard_normal(samples.shape)
    report = {
        "energy_distance": metrics.energy_distance(samples, reference),
        "energy_distance_data_floor": metrics.energy_distance(floor, reference),
        "energy_distance_noise": metrics.energy_distance(noise, reference),
        "reference_seed": reference_seed,
        "reference_num_samples": n,
        "protocol": TOY_PROTOCOL,
    }
    if samples.shape[1] == 1:
        report["ks_statistic"] = metrics.ks_statistic_1d(samples, reference)
        report["ks_statistic_data_floor"] = metrics.ks_statistic_1d(floor, reference)
    return report, reference


def _check_evaluate_arguments(*, classifier, dataset, idx_dir, num_samples, sampler, num_steps, eta, batch_size,
                              reference_split, reference_num_images, kid_subsets, kid_subset_size, output):
    """`evaluate`'s checks of everything known before a model is loaded."""
    if output is not None and not output:
        raise EvaluationError(f"output must be a path or None. Received: output={output!r}")
    for name, value, minimum in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1),
                                 ("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                                 ("reference_num_images", reference_num_images, 0), ("num_steps", num_steps, 0)):
        _check_integer(name, value, minimum)
    if sampler not in samplers.SAMPLERS:
        raise EvaluationError(f"sampler must be one of {samplers.SAMPLERS}. Received: sampler={sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise EvaluationError(f"eta must be in [0, 1]. Received: eta={eta!r}")
    if dataset not in ("auto",) + IMAGE_DATASETS + TOY_DATASETS:
        raise EvaluationError(f"dataset must be 'auto' or one of {IMAGE_DATASETS + TOY_DATASETS}. "
                              f"Received: dataset={dataset!r}")
    if reference_split not in ("train", "test"):
        raise EvaluationError(f"reference_split must be 'train' or 'test'. Received: reference_split={reference_split!r}")
    if idx_dir and not os.path.isdir(idx_dir):
        raise FileNotFoundError(f"idx_dir is not a directory. Received: idx_dir={idx_dir!r}")
    if classifier and not os.path.isfile(classifier):
        raise FileNotFoundError(f"classifier does not exist. Received: classifier={classifier!r}")


def _check_dataset_needs(dataset, classifier, num_samples):
    if dataset in IMAGE_DATASETS and not classifier:
        raise EvaluationError(f"classifier is required for the image dataset {dataset!r}. "
                              f"Received: classifier={classifier!r}")
    if dataset in IMAGE_DATASETS and num_samples < 2:
        raise EvaluationError(f"FID needs num_samples >= 2. Received: num_samples={num_samples}")


def evaluate(*, model=None, saved_model=None, checkpoint_step=None, classifier=None, dataset="auto", idx_dir=None,
             num_samples=10000, sampler="ddim", num_steps=0, eta=0.0, guidance_scale=0.0, num_classes=10, seed=0,
             batch_size=500, reference_split="test", reference_num_images=0, reference_seed=12345, kid_subsets=100,
             kid_subset_size=1000, output=None, verbose=True):
    """Draws samples from a model and reports their quality (the module docstring's protocol).

    Args:
      model, saved_model, checkpoint_step: the model (see `open_sampler`).
      classifier: classifier.keras path (required for image datasets).
      dataset: "auto" (the workdir's config.json, else the sample shape) or a dataset name.
      idx_dir: IDX directory of the reference images.
      num_samples, batch_size, seed: how many samples, per sampler call, and the run's seed.
      sampler, num_steps, eta, guidance_scale, num_classes: the sampling request.
      reference_split, reference_num_images: the image reference (all of the split when 0).
      reference_seed: seed of the toy reference.
      kid_subsets, kid_subset_size: KID's subsets.
      output: where `write_report` writes the JSON report, with a picture of the samples beside it
        (same name, .png); None writes nothing.
      verbose: log and show progress.

    Returns:
      The report dict.
    """
    start = time.time()
    _check_evaluate_arguments(
        classifier=classifier, dataset=dataset, idx_dir=idx_dir, num_samples=num_samples, sampler=sampler,
        num_steps=num_steps, eta=eta, batch_size=batch_size, reference_split=reference_split,
        reference_num_images=reference_num_images, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
        output=output)
    sample_fn = open_sampler(model=model, saved_model=saved_model, checkpoint_step=checkpoint_step, sampler=sampler,
                             num_steps=num_steps, eta=eta, guidance_scale=guidance_scale, num_classes=num_classes)
    dataset = _infer_dataset(dataset, sample_fn.workdir, sample_fn.data_shape)
    _check_dataset_needs(dataset, classifier, num_samples)
    if verbose:
        logging.info("Drawing %d samples (%s, %d steps) from %s", num_samples, sampler, sample_fn.num_steps,
                     sample_fn.source)
    sampling_start = time.time()
    samples = draw_samples(sample_fn, num_samples, batch_size=batch_size, seed=seed, verbose=verbose)
    report = {"dataset": dataset, "model": sample_fn.source, "model_format": sample_fn.model_format,
              "num_samples": num_samples, "sampler": sampler, "num_steps": int(sample_fn.num_steps), "eta": eta,
              "guidance_scale": guidance_scale, "seed": seed, "batch_size": batch_size,
              "sampling_seconds": time.time() - sampling_start}
    toy_reference = None
    if dataset in TOY_DATASETS:
        quality, toy_reference = toy_report(samples, dataset, reference_seed)
    else:
        extractor, reference = image_reference(classifier, dataset, split=reference_split, idx_dir=idx_dir,
                                               num_images=reference_num_images, verbose=verbose)
        quality = image_report(samples, extractor, reference, kid_subsets=kid_subsets,
                               kid_subset_size=kid_subset_size, seed=seed, verbose=verbose,
                               requested_labels=sample_fn.requested_labels(0, num_samples))
        quality |= {"classifier": os.path.abspath(classifier), "reference_split": reference_split}
    report.update(quality)
    if output is not None:
        report["picture"] = _save_picture(samples, output, f"{dataset}: {sampler}, {sample_fn.num_steps} steps",
                                          toy_reference)
    report["seconds"] = time.time() - start
    if output is not None:
        write_report(output, report)
    return report


def _save_picture(samples, output, title, toy_reference):
    """Saves the samples (a grid of the first 64 images, or the points over the reference) beside `output`."""
    picture = os.path.splitext(output)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(picture)), exist_ok=True)
    if toy_reference is not None:
        plots.save_points(samples.reshape(len(samples), -1), picture, reference=toy_reference, title=title)
    else:
        plots.save_image_grid(samples[:64], picture, title=title)
    return picture


def write_report(path, report):
    """Writes a report as indented JSON, atomically (`checkpoints.atomic_write_json`); returns `path`."""
    return checkpoints.atomic_write_json(path, report)


# ============================================================================================
# The classifier behind the features
# ============================================================================================
def train_classifier(workdir, dataset="mnist", *, idx_dir=None, epochs=2, batch_size=128, learning_rate=1e-3,
                     seed=0, verbose=2):
    """Trains, tests and saves the feature classifier (`layers.build_classifier`).

    The training images are uint8, quantised exactly as `FeatureExtractor` quantises generated
    images; the test accuracy is measured as the extractor sees it (inference mode, uint8 pixels).

    Args:
      workdir: where `classifier.keras` and `classifier.json` go (both written atomically).
      dataset: one of `IMAGE_DATASETS`.
      idx_dir: IDX directory of the images (default: the local MNIST copy for mnist, else TFDS).
      epochs, batch_size, learning_rate: Adam training (batch_size ≤ the training set's size).
      seed: seed of the initialisation, dropout and data order.
      verbose: `keras.Model.fit`'s verbosity.

    Returns:
      The summary dict written to classifier.json (test accuracy, seconds, sizes, path).
    """
    if dataset not in IMAGE_DATASETS:
        raise EvaluationError(f"dataset must be one of {IMAGE_DATASETS}. Received: dataset={dataset!r}")
    _check_integer("epochs", epochs, 1)
    _check_integer("batch_size", batch_size, 1)
    if not learning_rate > 0:
        raise EvaluationError(f"learning_rate must be > 0. Received: learning_rate={learning_rate!r}")
    if idx_dir and not os.path.isdir(idx_dir):
        raise FileNotFoundError(f"idx_dir is not a directory. Received: idx_dir={idx_dir!r}")
    keras.utils.set_random_seed(seed)
    x_train, y_train = data.load_arrays(dataset, "train", idx_dir=idx_dir or None, uint8=True)
    x_test, y_test = data.load_arrays(dataset, "test", idx_dir=idx_dir or None, uint8=True)
    if batch_size > len(x_train):
        raise EvaluationError(f"batch_size must be <= the training set size {len(x_train)}. "
                              f"Received: batch_size={batch_size}")
    classifier = build_classifier(x_train.shape[1:], int(y_train.max()) + 1)
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.time()
    classifier.fit(x_train.astype(np.float32), y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
                   shuffle=True)
    seconds = time.time() - start
    _, logits = FeatureExtractor(classifier)(x_test)
    path = os.path.join(workdir, CLASSIFIER_FILENAME)
    with checkpoints.atomic_path(path) as temporary:
        classifier.save(temporary)
    summary = {"dataset": dataset, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "seed": seed, "test_accuracy": float(np.mean(np.argmax(logits, axis=1) == y_test)),
               "train_seconds": seconds, "num_train": len(x_train), "num_test": len(x_test), "classifier": path}
    checkpoints.atomic_write_json(os.path.join(workdir, "classifier.json"), summary)
    return summary
