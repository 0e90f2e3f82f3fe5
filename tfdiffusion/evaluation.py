"""The evaluation protocol: samples in batches, reference images, the image and toy reports.

    from tfdiffusion import evaluation
    report = evaluation.evaluate(model="runs/mnist", classifier="runs/classifier/classifier.keras",
                                 num_samples=10000, sampler="ddim", num_steps=50, output="runs/mnist/eval/ddim50.json")
    report = evaluation.evaluate(model="runs/flowers", num_samples=10000, output="runs/flowers/eval.json")  # Inception

`tools/evaluate.py` is this module's `evaluate` behind flags; `tools/train_classifier.py` is
`train_classifier`; the quality benchmarks call `image_reference`, `sample_quality` and the editing reports.
The maths (FID, KID, precision/recall, the classifier extras, energy distance, KS) is
`tfdiffusion.metrics`; the feature extractors and the reference statistics are `tfdiffusion.features`.

The protocol, stated once:

* **Samples.** `num_samples` samples are drawn in batches of `batch_size`, batch i with the seed
  `batch_seed(seed, i)`, from a workdir (its `model.keras`), a `model.keras` path, a workdir's
  checkpoint (EMA weights) or an exported SavedModel's `sample` signature. A class-conditional
  model is asked for labels that cycle 0, 1, …, K−1 over the sample index.
* **Features** (`tfdiffusion.features`): Inception-V3's 2048-d pool features — images quantised
  to uint8, then resized to 299×299 bilinearly with antialiasing (clean-fid) — or, for MNIST-like
  data, the 128-d "features" layer of a small CNN trained on the dataset (`train_classifier`),
  whose logits also give the classifier extras. Quantising first — round(x·255), exactly like the
  dataset's own pixels — means a model is neither rewarded nor punished for sub-quantum noise. The
  networks always run in inference mode. `features="auto"` takes the classifier for 28×28×1
  samples when one is given, else Inception.
* **FID** on those features (float64 mean, unbiased covariance); biased upwards at small N, so
  compare numbers only at equal N (the report states N). **KID**: the unbiased MMD² with the
  kernel (x·y/d + 1)³, mean and standard deviation over random subsets. **Precision/recall**
  (Kynkäänniemi et al. 2019): k = 3 nearest-neighbour manifolds of the reference and the samples.
* **Reference**: the model's training source — its folder, its TFDS dataset (training split), or
  for the array sets (MNIST, Fashion-MNIST, CIFAR-10) the test split — at the samples' size and
  channels, resized as training resizes; or its first `reference_num_images`. Its statistics are
  computed once and cached atomically (`features.reference_for`), keyed by the extractor and the
  source: beside the classifier for classifier features, else in `features.default_cache_dir()`.
* **Toys** (1-D/2-D data): the reference is `num_samples` fresh points of the toy dataset drawn
  with `reference_seed` (not the training data's seed); the report also gives the energy distance
  of a second fresh draw (the floor at this N) and of N(0, I) noise, and KS in 1-D.

Bad input raises `EvaluationError` (a ValueError) or FileNotFoundError with one line naming the
argument and the value received, before any sample is drawn.
"""

import os
import re
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import builders, checkpoints, data, metrics, plots, samplers
from tfdiffusion.features import (  # noqa: F401  (quantise_images, reference_statistics: re-exported)
    ARRAY_DATASETS, FEATURE_KINDS, SOURCE_KEYS, FeatureExtractor, InceptionExtractor, check_tfds_name,
    default_cache_dir, quantise_images, reference_for, reference_settings, reference_statistics)
from tfdiffusion.layers.classifier import build_classifier
from tfdiffusion.model import DiffusionModel

TOY_DATASETS = data.TOY_DATASET_NAMES
CLASSIFIER_FILENAME = "classifier.keras"
CONFIDENCE_THRESHOLD = 0.9
PRECISION_RECALL_K = 3  # Kynkäänniemi et al. 2019
FEATURES_PROTOCOL = {
    "inception": "features: Inception-V3 pool (2048-d, inference mode) of uint8-quantised images resized to 299 "
                 "by bilinear with antialiasing (clean-fid)",
    "classifier": "features: classifier 'features' layer (128-d, inference mode) of uint8-quantised images"}
IMAGE_PROTOCOL = ("FID: float64 mean/unbiased covariance; KID: unbiased MMD², kernel (x·y/d+1)³, mean/std over "
                  "subsets; precision/recall: k=3 nearest-neighbour manifolds; reference: the training source's "
                  "images at the samples' size (or the first reference_num_images)")
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
      sampler: one of `samplers.SAMPLERS` (checked by `model.generate`, as are eta, guidance_scale and spacing).
      num_steps: sampling steps in [0, T]; 0 means T.
      eta: DDIM η.
      guidance_scale: classifier-free guidance weight; ignored for an unconditional model.
      spacing: the timestep spacing, one of `samplers.SPACING_CHOICES` ("auto": the sampler's own).
      source: what the report names as the model (a path), or None.
      workdir: the model's workdir (its config.json names the dataset), or None.
      mixed_precision: the compute precision of the network calls ("auto": bfloat16 where it pays,
        `DiffusionModel.inference_model`), or None to sample with the model as it is.

    Call arguments:
      num_samples, seed, first_index: the batch's size, seed and the index of its first sample.

    Returns:
      float32 samples [num_samples, ...] in data space.
    """

    model_format = "keras"

    def __init__(self, model, *, sampler="ddim", num_steps=0, eta=0.0, guidance_scale=0.0,
                 spacing=samplers.DEFAULT_SPACING, source=None, workdir=None, mixed_precision=None):
        if not isinstance(model, DiffusionModel) or model.data_shape is None:
            raise EvaluationError(f"model must be a built DiffusionModel. Received: model={model!r}")
        self.precision = None
        if mixed_precision is not None:
            model, policy, reason = model.inference_model(mixed_precision)
            self.precision = {"policy": policy, "reason": reason}
            logging.info("Sampling computes in %s (mixed_precision=%r: %s)", policy, mixed_precision, reason)
        num_timesteps = model.diffusion.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or not 0 <= num_steps <= num_timesteps:
            raise EvaluationError(f"num_steps must be in [0, {num_timesteps}] (0 means T). "
                                  f"Received: num_steps={num_steps!r}")
        self.model, self.sampler, self.eta = model, sampler, eta
        self.spacing = samplers.resolve_spacing(sampler, spacing)
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
                                   spacing=self.spacing, eta=self.eta,
                                   labels=self.requested_labels(first_index, num_samples),
                                   guidance_scale=self.guidance_scale)


class SavedModelSampler:
    """Draws samples through an exported SavedModel's `sample` signature (`tfdiffusion.export`).

    The request is validated by the signature's graph checks; a refusal becomes an
    `EvaluationError`. Labels cycle 0..num_classes−1 (an unconditional export ignores them), so
    `requested_labels` is None: whether the export is conditional is not known here.

    Args:
      path: the SavedModel directory.
      sampler, num_steps (≥ 1), eta, guidance_scale, spacing: the request.
      num_classes: classes of a conditional export.
    """

    model_format = "saved_model"
    precision = None  # computes as it was exported
    workdir = None

    def __init__(self, path, *, sampler="ddim", num_steps=1, eta=0.0, guidance_scale=0.0,
                 spacing=samplers.DEFAULT_SPACING, num_classes=10):
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
        self.spacing = samplers.resolve_spacing(sampler, spacing)  # what an older export accepts too
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
                spacing=tf.constant(self.spacing),
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
                 guidance_scale=0.0, spacing=samplers.DEFAULT_SPACING, num_classes=10, mixed_precision="auto"):
    """A `ModelSampler` of a workdir, model.keras or checkpoint, or a `SavedModelSampler`.

    Args:
      model: a workdir or a model.keras path (exactly one of model and saved_model).
      saved_model: an exported SavedModel directory.
      checkpoint_step: with a workdir, the checkpoint to restore (EMA weights).
      sampler, num_steps, eta, guidance_scale, spacing: the sampling request (num_steps 0 means T, models only).
      num_classes: classes of a conditional SavedModel.
      mixed_precision: the network's compute precision for a model (`ModelSampler`); a SavedModel
        computes as it was exported.

    Returns:
      The sampler adapter; its `source` names the model for the report.
    """
    if (model is None) == (saved_model is None):
        raise EvaluationError(f"Pass exactly one of model and saved_model. Received: model={model!r}, "
                              f"saved_model={saved_model!r}")
    if saved_model is not None:
        return SavedModelSampler(saved_model, sampler=sampler, num_steps=num_steps, eta=eta,
                                 guidance_scale=guidance_scale, spacing=spacing, num_classes=num_classes)
    path, workdir = _resolve_model_path(model, checkpoint_step)
    return ModelSampler(_load_resolved_model(path, checkpoint_step, use_ema=True), sampler=sampler,
                        num_steps=num_steps, eta=eta, guidance_scale=guidance_scale, spacing=spacing,
                        source=os.path.abspath(path), workdir=workdir, mixed_precision=mixed_precision)


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
# The reference: the model's training source, at the samples' size
# ============================================================================================
def _training_data_section(workdir):
    """The `data` section of a workdir's config.json (the training source), or {}."""
    if workdir and os.path.exists(os.path.join(workdir, "config.json")):
        config, _ = builders.read_workdir_config(workdir)
        return {key: value for key, value in dict(config.get("data", {})).items() if key in SOURCE_KEYS}
    return {}


def _infer_dataset(dataset, training, sample_shape, data_path=None):
    """`dataset`, or for "auto": "folder" with data_path, else the training source, else a guess by shape."""
    if dataset != "auto":
        return dataset
    if data_path or training.get("source") == "folder":
        return "folder"
    name = training.get("name")
    if (training.get("source") == "tfds" and name) or name in ARRAY_DATASETS + TOY_DATASETS:
        return name
    by_shape = {(1,): "gmm1d", (2,): "moons", (28, 28, 1): "mnist"}
    if tuple(sample_shape) in by_shape:
        return by_shape[tuple(sample_shape)]
    raise EvaluationError(f"Cannot tell the dataset from samples of shape {tuple(sample_shape)}; pass dataset or "
                          "data_path. Received: dataset='auto'")


def image_reference(classifier, dataset="mnist", *, split="test", idx_dir=None, num_images=0, verbose=False):
    """The `FeatureExtractor` of a classifier.keras and the reference statistics of an array set's split.

    The statistics are cached beside the classifier (`reference_for`).

    Args:
      classifier: path of a classifier.keras (`train_classifier`).
      dataset: one of `ARRAY_DATASETS`.
      split: "test" or "train".
      idx_dir: IDX directory of the reference images (default: the local MNIST copy, else TFDS).
      num_images: use the first K images of the split (0: all).
      verbose: log and show progress.

    Returns:
      (`FeatureExtractor`, the `reference_statistics` dict).
    """
    extractor = load_classifier_extractor(classifier)
    settings = reference_settings(dataset, extractor.input_shape, split=split, idx_dir=idx_dir)
    return extractor, reference_for(extractor, settings, cache_dir=os.path.dirname(os.path.abspath(classifier)),
                                    num_images=num_images, verbose=verbose)


def load_classifier_extractor(path):
    """The `FeatureExtractor` of a classifier.keras (`train_classifier`)."""
    try:
        classifier = keras.saving.load_model(path)
    except Exception as error:  # a damaged or foreign file
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EvaluationError(f"Could not load the classifier ({first_line}). Received: classifier={path!r}") from error
    return FeatureExtractor(classifier)


# ============================================================================================
# The reports
# ============================================================================================
def _classifier_extras(logits, requested_labels):
    """What a classifier's logits say about the samples: confidence, classes, requested-class accuracy."""
    num_classes = logits.shape[1]
    extras = {"confident_fraction": metrics.confident_fraction(logits, CONFIDENCE_THRESHOLD),
              "label_histogram": metrics.label_histogram(logits, num_classes).tolist()}
    if requested_labels is not None:
        overall, per_class = metrics.requested_label_accuracy(logits, requested_labels, num_classes)
        extras |= {"requested_label_accuracy": overall, "requested_label_accuracy_per_class": per_class.tolist()}
    return extras


def image_report(samples, extractor, reference, *, kid_subsets=100, kid_subset_size=1000, seed=0,
                 requested_labels=None, classifier=None, verbose=False):
    """FID, KID, precision/recall (and, with a classifier, its extras) of image samples against a reference.

    Args:
      samples: images [N ≥ 4, H, W(, C)] in [0, 1] (or uint8).
      extractor: a `FeatureExtractor` or `InceptionExtractor`.
      reference: `reference_statistics` of the real images under the same extractor.
      kid_subsets: KID subsets.
      kid_subset_size: KID subset size, capped at N and at the reference's size.
      seed: seed of the KID subsets.
      requested_labels: for a class-conditional model, the label each sample was asked for.
      classifier: a `FeatureExtractor` whose logits give the extras when `extractor` has none.
      verbose: show progress while extracting features.

    Returns:
      A dict: "fid", "kid_mean", "kid_std", "kid_subsets", "kid_subset_size", "precision",
      "recall", "features", "reference_num_images", "protocol"; with classifier logits also
      "confident_fraction", "label_histogram" (and "reference_confident_fraction" when the
      features are the classifier's), with `requested_labels` "requested_label_accuracy" and
      "requested_label_accuracy_per_class".
    """
    features, logits = extractor(samples, verbose=verbose)
    subset_size = min(kid_subset_size, len(features), len(reference["features"]))
    kid_mean, kid_std = metrics.kernel_inception_distance(features, reference["features"], num_subsets=kid_subsets,
                                                          subset_size=subset_size, seed=seed)
    precision, recall = metrics.precision_recall(reference["features"], features, k=PRECISION_RECALL_K)
    report = {"fid": metrics.frechet_distance_to_statistics(features, reference["mu"], reference["sigma"]),
              "kid_mean": kid_mean, "kid_std": kid_std, "kid_subsets": kid_subsets, "kid_subset_size": subset_size,
              "precision": precision, "recall": recall, "features": extractor.kind,
              "reference_num_images": int(reference["num_images"]),
              "protocol": f"{FEATURES_PROTOCOL[extractor.kind]}; {IMAGE_PROTOCOL}"}
    if logits is None and classifier is not None:
        logits = classifier(samples)[1]
    if logits is not None:
        report |= _classifier_extras(logits, requested_labels)
    if reference.get("logits") is not None:
        report["reference_confident_fraction"] = metrics.confident_fraction(reference["logits"], CONFIDENCE_THRESHOLD)
    return report



def sample_quality(model, extractor, reference, *, num_samples, batch_size=500, seed=0, **request):
    """{fid, kid_mean, confident_fraction, sampling_seconds} of `num_samples` samples of `model`.

    Drawn by this module's protocol (`draw_samples` of a `ModelSampler(model, **request)`), scored
    by `image_report`: the quality benchmarks' cell.
    """
    start = time.perf_counter()
    samples = draw_samples(ModelSampler(model, **request), num_samples, batch_size=batch_size, seed=seed)
    seconds = time.perf_counter() - start
    report = image_report(samples, extractor, reference, seed=seed)
    return {"fid": report["fid"], "kid_mean": report["kid_mean"], "confident_fraction": report["confident_fraction"],
            "sampling_seconds": seconds}


# -- editing: inpainting and image-to-image, read back by a classifier --------------------------
def edit_images(model, count, request, *, batch_size=500, seed=0, **edit):
    """`model.generate`'s edits of `count` images, drawn as `draw_samples` draws (chunk i: `batch_seed(seed, i)`).

    Args:
      model: a built `DiffusionModel`; a class-conditional one edits unconditionally (the null class).
      request: `generate`'s sampler, num_steps, spacing.
      edit: `generate`'s editing arguments: per-image arrays (init_images, mask) are cut into chunks
        alongside the samples, scalars (strength) passed as they are; none for plain samples.
    """
    null = model.num_classes

    def generate(chunk, chunk_seed, first):
        edits = {k: v[first:first + chunk] if isinstance(v, np.ndarray) else v for k, v in edit.items()}
        labels = None if null is None else np.full(chunk, null)
        return model.generate(chunk, seed=chunk_seed, labels=labels, **request, **edits)

    return draw_samples(generate, count, batch_size=batch_size, seed=seed)


def reads_as(extractor, images, labels):
    """The fraction of `images` a classifier `FeatureExtractor` reads as `labels`."""
    return float(np.mean(np.argmax(extractor(images)[1], axis=1) == labels))


def inpainting_report(model, extractor, images, labels, mask, request, *, batch_size=500, seed=0, jumps=None):
    """(report, completions) of inpainting `images` where `mask` is 1 (kept), read back by the classifier.

    The report gives the fraction read as the original's label of the completions (with RePaint's
    resampling `jumps`, if given), of plain samples with the same seeds (the chance level), of the
    masked inputs and of the originals.
    """
    resampling = {} if jumps is None else {"jumps": tuple(jumps)}
    completions = edit_images(model, len(images), request, batch_size=batch_size, seed=seed, init_images=images,
                              mask=mask, **resampling)
    plain = edit_images(model, len(images), request, batch_size=batch_size, seed=seed)
    return {"num_images": len(images), "completion_reads_as_original": reads_as(extractor, completions, labels),
            "plain_sample_reads_as_original": reads_as(extractor, plain, labels),
            "uniform_chance": 1.0 / extractor.num_classes,
            "masked_input_reads_as_original": reads_as(extractor, images * mask, labels),
            "original_reads_as_original": reads_as(extractor, images, labels)}, completions


def img2img_report(model, extractor, images, labels, strengths, request, *, batch_size=500, seed=0):
    """(rows, outputs) of image-to-image at each strength: mean |change| and the fraction read as the original."""
    outputs = [edit_images(model, len(images), request, batch_size=batch_size, seed=seed, init_images=images,
                           strength=strength) for strength in strengths]
    return [{"strength": strength, "num_images": len(images), "mean_abs_change": float(np.abs(out - images).mean()),
             "reads_as_original": reads_as(extractor, out, labels)} for strength, out in zip(strengths, outputs)], outputs

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


def _check_evaluate_arguments(*, features, classifier, inception_weights, dataset, data_path, idx_dir, num_samples,
                              sampler, num_steps, eta, batch_size, reference_split, reference_num_images, kid_subsets,
                              kid_subset_size, output):
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
    if features not in ("auto",) + FEATURE_KINDS:
        raise EvaluationError(f"features must be 'auto' or one of {FEATURE_KINDS}. Received: features={features!r}")
    if features == "classifier" and not classifier:
        raise EvaluationError(f"features='classifier' needs a classifier. Received: classifier={classifier!r}")
    if dataset not in ("auto", "folder") + ARRAY_DATASETS + TOY_DATASETS:
        check_tfds_name(dataset)
    if dataset in ARRAY_DATASETS and reference_split not in (None, "train", "test"):
        raise EvaluationError(f"reference_split of {dataset!r} must be 'train' or 'test'. "
                              f"Received: reference_split={reference_split!r}")
    for name, value in (("idx_dir", idx_dir), ("data_path", data_path)):
        if value and not os.path.isdir(value):
            raise FileNotFoundError(f"{name} is not a directory. Received: {name}={value!r}")
    if classifier and not os.path.isfile(classifier):
        raise FileNotFoundError(f"classifier does not exist. Received: classifier={classifier!r}")
    if inception_weights not in (None, "imagenet") and not os.path.isfile(inception_weights):
        raise FileNotFoundError(f"inception_weights does not exist. Received: inception_weights={inception_weights!r}")


def prepare_image_evaluation(dataset, image_shape, *, features="auto", classifier=None, inception_weights="imagenet",
                             training=None, data_path=None, split=None, idx_dir=None, data_dir=None, num_images=0,
                             cache_dir=None, model_classes=None, verbose=False):
    """The feature extractor, the reference statistics and the classifier for samples of `image_shape`.

    Args:
      dataset, training, data_path, split, idx_dir, data_dir: the reference (`reference_settings`).
      image_shape: (H, W, C) (or (H, W)) of the samples.
      features: "inception", "classifier" or "auto" (the classifier for 28×28×1 images when one is
        given, else Inception).
      classifier: a classifier.keras path; with Inception features its logits still give the extras.
      inception_weights: see `features.load_inception`.
      num_images: the reference's first K images only (0: all).
      cache_dir: where reference statistics are cached (None: beside the classifier for classifier
        features, else `default_cache_dir()`).
      model_classes: the classes of a class-conditional model (the classifier must have as many), or None.
      verbose: log and show progress.

    Returns:
      (extractor, `reference_for` statistics, the classifier's `FeatureExtractor` or None).
    """
    image_shape = tuple(int(d) for d in image_shape) + ((1,) if len(image_shape) == 2 else ())
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
        raise EvaluationError(f"Image features need grey or RGB samples [H, W, 1 or 3]. Received: sample shape "
                              f"{image_shape}")
    judge = load_classifier_extractor(classifier) if classifier else None
    if judge is not None and judge.input_shape != image_shape:
        raise EvaluationError(f"The classifier takes images of shape {judge.input_shape} but the samples have "
                              f"{image_shape}. Received: classifier={classifier!r}")
    if judge is not None and model_classes is not None and judge.num_classes != model_classes:
        raise EvaluationError(f"The classifier tells {judge.num_classes} classes apart but the model draws "
                              f"{model_classes}. Received: classifier={classifier!r}")
    if features == "auto":
        features = "classifier" if judge is not None and image_shape == (28, 28, 1) else "inception"
    if features == "classifier":
        extractor, default_dir = judge, os.path.dirname(os.path.abspath(classifier))
    else:
        extractor, default_dir = InceptionExtractor(inception_weights), default_cache_dir()
    settings = reference_settings(dataset, image_shape, training=training, data_path=data_path, split=split,
                                  idx_dir=idx_dir, data_dir=data_dir)
    reference = reference_for(extractor, settings, cache_dir=cache_dir or default_dir, num_images=num_images,
                              verbose=verbose)
    return extractor, reference | {"settings": settings}, judge


def evaluate(*, model=None, saved_model=None, checkpoint_step=None, features="auto", classifier=None,
             inception_weights="imagenet", dataset="auto", data_path=None, idx_dir=None, data_dir=None,
             num_samples=10000, sampler="ddim", num_steps=0, eta=0.0, guidance_scale=0.0,
             spacing=samplers.DEFAULT_SPACING, num_classes=10, mixed_precision="auto", seed=0,
             batch_size=500, reference_split=None, reference_num_images=0, reference_cache_dir=None,
             reference_seed=12345, kid_subsets=100, kid_subset_size=1000, output=None, verbose=True):
    """Draws samples from a model and reports their quality (the module docstring's protocol).

    Args:
      model, saved_model, checkpoint_step: the model (see `open_sampler`).
      features, classifier, inception_weights: the image features (see `prepare_image_evaluation`).
      dataset: "auto" (the workdir's training source, else the sample shape), "folder", a toy, one
        of `ARRAY_DATASETS` or a TFDS name.
      data_path, idx_dir, data_dir: a folder of reference images (default for a folder-trained
        workdir: its folder), the IDX and TFDS directories.
      num_samples, batch_size, seed: how many samples, per sampler call, and the run's seed.
      sampler, num_steps, eta, guidance_scale, spacing, num_classes: the sampling request.
      mixed_precision: the network's compute precision while sampling ("auto": bfloat16 where it
        pays); recorded in the report.
      reference_split, reference_num_images, reference_cache_dir: the image reference
        (`reference_settings`; all images when 0) and its cache (`prepare_image_evaluation`).
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
        features=features, classifier=classifier, inception_weights=inception_weights, dataset=dataset,
        data_path=data_path, idx_dir=idx_dir, num_samples=num_samples, sampler=sampler, num_steps=num_steps, eta=eta,
        batch_size=batch_size, reference_split=reference_split, reference_num_images=reference_num_images,
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, output=output)
    sample_fn = open_sampler(model=model, saved_model=saved_model, checkpoint_step=checkpoint_step, sampler=sampler,
                             num_steps=num_steps, eta=eta, guidance_scale=guidance_scale, spacing=spacing,
                             num_classes=num_classes, mixed_precision=mixed_precision)
    training = _training_data_section(sample_fn.workdir)
    dataset = _infer_dataset(dataset, training, sample_fn.data_shape, data_path)
    image = None
    if dataset not in TOY_DATASETS:  # the reference first: a missing folder or weights fail before sampling
        _check_integer("num_samples", num_samples, PRECISION_RECALL_K + 1)
        image = prepare_image_evaluation(
            dataset, sample_fn.data_shape, features=features, classifier=classifier,
            inception_weights=inception_weights, training=training, data_path=data_path, split=reference_split,
            idx_dir=idx_dir, data_dir=data_dir, num_images=reference_num_images, cache_dir=reference_cache_dir,
            model_classes=sample_fn.num_classes if sample_fn.model_format == "keras" else None, verbose=verbose)
    samples, report = _draw_and_record(sample_fn, dataset, num_samples, batch_size=batch_size, seed=seed, eta=eta,
                                       guidance_scale=guidance_scale, verbose=verbose)
    toy_reference = None
    if image is None:
        quality, toy_reference = toy_report(samples, dataset, reference_seed)
    else:
        quality = _image_quality(samples, image, sample_fn, classifier=classifier, kid_subsets=kid_subsets,
                                 kid_subset_size=kid_subset_size, seed=seed, verbose=verbose)
    return _finish_report(report | quality, samples, output, toy_reference, start)


def _draw_and_record(sample_fn, dataset, num_samples, *, batch_size, seed, eta, guidance_scale, verbose):
    """(`draw_samples`, the report's record of how they were drawn)."""
    if verbose:
        logging.info("Drawing %d samples (%s, %d steps) from %s", num_samples, sample_fn.sampler,
                     sample_fn.num_steps, sample_fn.source)
    start = time.time()
    samples = draw_samples(sample_fn, num_samples, batch_size=batch_size, seed=seed, verbose=verbose)
    return samples, {"dataset": dataset, "model": sample_fn.source, "model_format": sample_fn.model_format,
                     "num_samples": num_samples, "sampler": sample_fn.sampler, "num_steps": int(sample_fn.num_steps),
                     "spacing": sample_fn.spacing, "eta": eta, "guidance_scale": guidance_scale, "seed": seed, "batch_size": batch_size,
                     "sampling_seconds": time.time() - start,
                     "compute_precision": sample_fn.precision}


def _finish_report(report, samples, output, toy_reference, start):
    """The report with its picture (beside `output`) and total seconds, written to `output` when given."""
    if output is not None:
        title = f"{report['dataset']}: {report['sampler']}, {report['num_steps']} steps"
        report["picture"] = _save_picture(samples, output, title, toy_reference)
    report["seconds"] = time.time() - start
    if output is not None:
        write_report(output, report)
    return report


def _image_quality(samples, image, sample_fn, *, classifier, kid_subsets, kid_subset_size, seed, verbose):
    """`image_report` of the samples, with what the reference was."""
    extractor, reference, judge = image
    quality = image_report(samples, extractor, reference, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                           seed=seed, verbose=verbose, classifier=judge,
                           requested_labels=sample_fn.requested_labels(0, len(samples)))
    settings = reference["settings"]
    described = {key: value for key, value in settings.items() if key in ("source", "name", "split", "path")}
    quality |= {"reference": described, "reference_split": settings.get("split"), "reference_cache": reference["cache"]}
    if classifier:
        quality["classifier"] = os.path.abspath(classifier)
    if extractor.kind == "inception":
        quality["inception_weights"] = extractor.weights
    return quality


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
def _held_out(source, fraction, seed):
    """(train, test): a seeded random `fraction` of a labelled source's examples held out for testing."""
    n = source.num_examples
    num_test = int(round(n * fraction))
    if not 1 <= num_test < n:
        raise EvaluationError(f"test_fraction leaves no test or no training example of the {n} images. "
                              f"Received: test_fraction={fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    parts = []
    for indices in (np.sort(order[num_test:]), np.sort(order[:num_test])):
        if isinstance(source, data.EncodedImages):
            parts.append(data.EncodedImages(
                source.contents.numpy()[indices], source.labels[indices], read_files=source.read_files,
                image_size=source.image_size, channels=source.channels, class_names=source.class_names,
                description=f"{len(indices)} of {source.description}"))
        else:
            parts.append(data.ArrayData(source.x[indices], source.labels[indices], class_names=source.class_names))
    return tuple(parts)


def labelled_sources(dataset="mnist", *, data_path=None, test_path=None, split="train", test_split="test",
                     test_fraction=0.1, idx_dir=None, data_dir=None, image_size=0, channels=0, seed=0):
    """(train, test) labelled image sources (`data.training_data` objects) for `train_classifier`.

    - `data_path` (or dataset "folder"): a folder whose first-level subfolders are the classes;
      the test set is `test_path` (a folder with the same classes) or a held-out `test_fraction`.
    - one of `ARRAY_DATASETS`: its `split` and `test_split`, read whole (IDX files or TFDS).
    - any other name: that TFDS dataset's `split` and `test_split` (e.g. "train[:90%]", "train[90%:]").

    The test set takes the training set's size and channels.
    """
    resize = {"image_size": image_size, "channels": channels}
    if data_path or dataset == "folder":
        train = data.training_data(source="folder", path=data_path or "", class_subfolders=True, **resize)
        same = {"image_size": train.element_shape[:2], "channels": train.element_shape[2]}
        if not test_path:
            return _held_out(train, test_fraction, seed)
        test = data.training_data(source="folder", path=test_path, class_subfolders=True, **same)
        if test.class_names != train.class_names:
            raise EvaluationError(f"The test folder's classes differ from the training folder's {train.class_names}. "
                                  f"Received: test_path={test_path!r} with classes {test.class_names}")
        return train, test
    where = ({"source": "auto", "idx_dir": idx_dir or "", "data_dir": data_dir or ""} if dataset in ARRAY_DATASETS
             else {"source": "tfds", "data_dir": data_dir or ""})
    train = data.training_data(dataset, split, **where, **resize)
    if train.labels is None:
        raise EvaluationError("The dataset has no class labels to train a classifier on. "
                              f"Received: dataset={dataset!r}")
    same = {"image_size": train.element_shape[:2], "channels": train.element_shape[2]}
    return train, data.training_data(dataset, test_split, **where, **same)


def _as_pixels(images, labels):
    """[−1, 1] images → the uint8 pixel values (as float32) the classifier sees, exactly as `FeatureExtractor`."""
    return tf.round((images + 1.0) * 127.5), labels


def _check_train_classifier_arguments(dataset, data_path, test_path, idx_dir, epochs, batch_size, learning_rate,
                                      test_fraction):
    _check_integer("epochs", epochs, 1)
    _check_integer("batch_size", batch_size, 1)
    if not learning_rate > 0:
        raise EvaluationError(f"learning_rate must be > 0. Received: learning_rate={learning_rate!r}")
    if not 0.0 < test_fraction < 1.0:
        raise EvaluationError(f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction!r}")
    for name, value in (("idx_dir", idx_dir), ("data_path", data_path), ("test_path", test_path)):
        if value and not os.path.isdir(value):
            raise FileNotFoundError(f"{name} is not a directory. Received: {name}={value!r}")
    if dataset == "folder" and not data_path:
        raise EvaluationError(f"dataset='folder' needs data_path. Received: data_path={data_path!r}")
    if not data_path and dataset not in ("folder",) + ARRAY_DATASETS:
        check_tfds_name(dataset)


def train_classifier(workdir, dataset="mnist", *, data_path=None, test_path=None, split="train", test_split="test",
                     test_fraction=0.1, idx_dir=None, data_dir=None, image_size=0, channels=0, epochs=2, batch_size=128,
                     learning_rate=1e-3, seed=0, verbose=2):
    """Trains, tests and saves a classifier (`layers.build_classifier`) on any labelled image source.

    The training images are the uint8 pixels the source yields, quantised exactly as
    `FeatureExtractor` quantises generated images; the test accuracy is measured as the extractor
    sees it (inference mode, uint8 pixels). Batch k of training is a function of (seed, k).

    Args:
      workdir: where `classifier.keras` and `classifier.json` go (both written atomically).
      dataset, data_path, test_path, split, test_split, test_fraction, idx_dir, data_dir: the data
        (`labelled_sources`).
      image_size, channels: resize (shorter side, centre crop) and convert the images (0: as stored).
      epochs, batch_size, learning_rate: Adam training (batch_size ≤ the training set's size).
      seed: seed of the initialisation, dropout, data order and held-out split.
      verbose: `keras.Model.fit`'s verbosity.

    Returns:
      The summary dict written to classifier.json (test accuracy, class names, seconds, sizes, path).
    """
    _check_train_classifier_arguments(dataset, data_path, test_path, idx_dir, epochs, batch_size, learning_rate,
                                      test_fraction)
    keras.utils.set_random_seed(seed)
    train, test = labelled_sources(dataset, data_path=data_path, test_path=test_path, split=split,
                                   test_split=test_split, test_fraction=test_fraction, idx_dir=idx_dir,
                                   data_dir=data_dir, image_size=image_size, channels=channels, seed=seed)
    if batch_size > train.num_examples:
        raise EvaluationError(f"batch_size must be <= the training set size {train.num_examples}. "
                              f"Received: batch_size={batch_size}")
    class_names = train.class_names
    num_classes = len(class_names) if class_names else int(max(train.labels.max(), test.labels.max())) + 1
    classifier = build_classifier(train.element_shape, num_classes)
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.time()
    classifier.fit(train.batches(batch_size, seed=seed).map(_as_pixels), epochs=epochs, verbose=verbose,
                   steps_per_epoch=-(-train.num_examples // batch_size), shuffle=False)  # (already permuted)
    seconds = time.time() - start
    extractor, hits = FeatureExtractor(classifier), 0
    for images, labels in test.examples(500).as_numpy_iterator():
        hits += int(np.sum(np.argmax(extractor((images + 1.0) / 2.0)[1], axis=1) == labels))
    path = os.path.join(workdir, CLASSIFIER_FILENAME)
    with checkpoints.atomic_path(path) as temporary:
        classifier.save(temporary)
    summary = {"dataset": "folder" if data_path else dataset, "data_path": data_path, "image_shape":
               list(train.element_shape), "class_names": list(class_names) if class_names else None,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
               "test_accuracy": hits / test.num_examples, "train_seconds": seconds, "num_train": train.num_examples,
               "num_test": test.num_examples, "classifier": path}
    checkpoints.atomic_write_json(os.path.join(workdir, "classifier.json"), summary)
    return summary
