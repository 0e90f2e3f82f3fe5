"""The embeddings FID, KID and precision/recall are computed in, and the cached reference statistics.

    from tfdiffusion import features
    extractor = features.InceptionExtractor()                       # ImageNet weights (Keras cache)
    extractor = features.InceptionExtractor("inception_v3_notop.h5")  # or a weights file
    reference = features.reference_statistics(extractor, real_images, "runs/reference.npz")
    sample_features, _ = extractor(samples)                         # samples in [0, 1] or uint8

Two feature extractors share one interface — `extractor(images, verbose=False)` → (features
float32 [N, d], logits float32 [N, K] or None), `extractor.fingerprint` (names the feature space in
caches), `extractor.kind`:

* **"inception"** (`InceptionExtractor`): the 2048-d average-pool features of Inception-V3, the
  standard FID embedding (Heusel et al. 2017). The images are resized as Parmar et al. (2022,
  "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", clean-fid) argue: quantised to
  uint8 first — the pixels a saved PNG would hold — then resized to 299×299 by bilinear
  interpolation *with* antialiasing (a filter as wide as the downsampling factor: without it a
  downsampled image aliases, high frequencies fold into wrong ones, and FID measures the
  resizer). Grey images are repeated to three channels; Inception's own preprocessing maps
  [0, 255] to [−1, 1]. The weights are `keras.applications.InceptionV3(include_top=False,
  pooling="avg", weights="imagenet")` (from the Keras cache, ~/.keras/models, or downloaded) or a
  weights file of that same model; random weights (`weights=None`) are for tests only.
* **"classifier"** (`FeatureExtractor`): the 128-unit "features" layer of a small CNN trained on
  the dataset (`layers.build_classifier`, trained by `evaluation.train_classifier`), for MNIST-like
  28×28 grey data; its logits give the classifier extras. Same uint8 quantisation first.

Both always run in inference mode (no dropout, batch-norm moving statistics) and in float32.

`reference_statistics` computes the features, mean and covariance of a reference image set once
and caches them in an .npz written atomically, keyed by the extractor's fingerprint and a key of
the source (a hash of the pixels for arrays; the caller's description for a streamed source).
`reference_for` does so for a model's training source — a folder, a TFDS split or an array set,
described by `reference_settings` as `data.training_data` arguments at the samples' size — keyed
by the folder's file list (paths, sizes, modification times) or the split, and decodes the images
(streamed, never all in memory) only when the cache misses:

    settings = features.reference_settings("folder", (64, 64, 3), data_path="data/flowers")
    reference = features.reference_for(extractor, settings)   # ~/.cache/tfdiffusion/reference_inception_….npz
"""

import contextlib
import hashlib
import os
import re
import socket
import warnings

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfdiffusion import checkpoints, data, metrics
from tfdiffusion.layers.classifier import FEATURES_LAYER

FEATURE_KINDS = ("inception", "classifier")
ARRAY_DATASETS = data.IMAGE_DATASET_NAMES  # image sets read whole (IDX files or TFDS); other names: any TFDS set
# The keys of a config's `data` section that say where its images come from.
SOURCE_KEYS = ("name", "split", "source", "idx_dir", "data_dir", "path", "class_subfolders", "on_bad_file")
CACHE_DIR_ENV_VAR = "TFDIFFUSION_CACHE_DIR"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
INCEPTION_RESIZE = "uint8, then bilinear with antialiasing to 299x299, grey repeated to RGB, x/127.5-1"
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"  # Keras' cache name
_DOWNLOAD_TIMEOUT_SECONDS = 20


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


def _weights_fingerprint(model, prefix):
    digest = hashlib.sha1(prefix.encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class _BatchedExtractor:
    """The loop shared by the extractors: quantise, run `_forward` on fixed-size batches, concatenate."""

    batch_size = 1

    def _check_pixels(self, pixels):
        pass

    def __call__(self, images, *, verbose=False):
        pixels = quantise_images(images)
        if len(pixels) == 0:
            raise ValueError(f"images is empty. Received: images.shape={pixels.shape}")
        self._check_pixels(pixels)
        n = len(pixels)
        progbar = keras.utils.Progbar(n, unit_name="image") if verbose else None
        outputs = []
        for start in range(0, n, self.batch_size):
            batch = pixels[start:start + self.batch_size]
            count = len(batch)
            if count < self.batch_size and n > self.batch_size:  # pad: one traced shape
                batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:], np.uint8)])
            outputs.append([None if part is None else part.numpy()[:count]
                            for part in self._forward(tf.constant(batch))])
            if progbar is not None:
                progbar.add(count)
        return tuple(None if parts[0] is None else np.concatenate(parts).astype(np.float32)
                     for parts in zip(*outputs))

    def extract_batches(self, batches, *, verbose=False):
        """(features, logits) of a stream of image batches (each as `__call__` takes them), concatenated."""
        progbar = keras.utils.Progbar(None, unit_name="image") if verbose else None
        outputs = []
        for batch in batches:
            outputs.append(self(batch))
            if progbar is not None:
                progbar.add(len(outputs[-1][0]))
        if not outputs:
            raise ValueError("The image source is empty. Received: 0 batches")
        logits = None if outputs[0][1] is None else np.concatenate([l for _, l in outputs])
        return np.concatenate([f for f, _ in outputs]), logits


class FeatureExtractor(_BatchedExtractor):
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

    kind = "classifier"

    def __init__(self, classifier, *, features_layer=FEATURES_LAYER, batch_size=500):
        if not isinstance(classifier, keras.Model):
            raise ValueError(f"classifier must be a keras.Model. Received: classifier={classifier!r}")
        try:
            features = classifier.get_layer(features_layer).output
        except ValueError as error:
            raise ValueError(f"The classifier has no layer named {features_layer!r}. Received: layers "
                             f"{[layer.name for layer in classifier.layers]}") from error
        _check_batch_size(batch_size)
        self.classifier = classifier
        self.batch_size = int(batch_size)
        self.input_shape = tuple(classifier.inputs[0].shape[1:])
        self.num_classes = int(classifier.outputs[0].shape[-1])
        model = keras.Model(classifier.inputs, [features, classifier.outputs[0]])
        self._forward = tf.function(lambda pixels: model(tf.cast(pixels, tf.float32), training=False),
                                    reduce_retracing=True)
        self._fingerprint = None

    @property
    def fingerprint(self):
        """A SHA-1 of the classifier's weights (names the feature space in caches)."""
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.classifier, "")
        return self._fingerprint

    def _check_pixels(self, pixels):
        if pixels.shape[1:] != self.input_shape:
            raise ValueError(
                f"The classifier takes images of shape {self.input_shape}. Received: images.shape={pixels.shape}")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")


# ============================================================================================
# Inception-V3
# ============================================================================================
def inception_pixels(pixels):
    """uint8 images [N, H, W, 1 or 3] → float32 [N, 299, 299, 3] in [0, 255], resized as clean-fid argues.

    Bilinear with antialiasing: when downsampling, the kernel is stretched by the scale factor
    so every input pixel contributes (a low-pass filter before sampling); upsampling is plain
    bilinear. Grey images are repeated to three channels after the resize.
    """
    pixels = tf.convert_to_tensor(pixels)
    if pixels.dtype != tf.uint8 or pixels.shape.rank != 4 or pixels.shape[-1] not in (1, 3, None):
        raise ValueError(f"inception_pixels takes uint8 [N, H, W, 1 or 3]. Received: {pixels.dtype.name} "
                         f"of shape {tuple(pixels.shape)}")
    resized = tf.image.resize(tf.cast(pixels, tf.float32), (INCEPTION_SIZE, INCEPTION_SIZE),
                              method="bilinear", antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 255.0)  # (the bilinear kernel is positive: only round-off)
    rgb = tf.tile(resized, [1, 1, 1, 3 // tf.shape(resized)[-1]])  # grey → RGB; RGB unchanged
    return tf.ensure_shape(rgb, [None, INCEPTION_SIZE, INCEPTION_SIZE, 3])


@contextlib.contextmanager
def _float32_and_download_timeout():
    """Builds in float32 whatever the global policy (mixed precision during training) and lets a dead
    network fail within seconds instead of hanging (the timeout applies per socket operation)."""
    policy, timeout = keras.config.dtype_policy(), socket.getdefaulttimeout()
    keras.config.set_dtype_policy("float32")
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)
        socket.setdefaulttimeout(timeout)


def load_inception(weights="imagenet"):
    """`keras.applications.InceptionV3(include_top=False, pooling="avg")` with `weights`.

    Args:
      weights: "imagenet" (Keras' cached file, ~/.keras/models/`INCEPTION_WEIGHTS_FILE`, else a
        download), the path of an .h5 / .weights.h5 file of this same model, or None (random
        weights: tests only, the features then mean nothing).

    Returns:
      A float32 functional model: images [N, 299, 299, 3] in [−1, 1] → features [N, 2048].

    Raises:
      ValueError: the weights cannot be had; the message says what to pass.
    """
    if weights is None:
        return _build_inception(None)
    if weights != "imagenet":
        if not str(weights).endswith(".h5"):
            raise ValueError(f"inception_weights must be 'imagenet' or an .h5 / .weights.h5 file of "
                             f"InceptionV3(include_top=False). Received: inception_weights={weights!r}")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"inception_weights does not exist. Received: inception_weights={weights!r}")
    try:
        return _build_inception(weights)
    except Exception as error:  # no cache and no network; a file of another model
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if weights == "imagenet":
            raise ValueError(
                f"No Inception-V3 ImageNet weights: not in the Keras cache (~/.keras/models/{INCEPTION_WEIGHTS_FILE}) "
                f"and the download failed ({first_line}). Pass inception_weights=FILE (--inception_weights), "
                "an .h5 of keras.applications.InceptionV3(include_top=False), or use the classifier features. "
                "Received: inception_weights='imagenet'") from error
        raise ValueError(f"Could not load the Inception-V3 weights ({first_line}). "
                         f"Received: inception_weights={weights!r}") from error


def _build_inception(weights):
    """The network; a weights file that leaves layers at their random initialisation (Keras only warns) raises."""
    with _float32_and_download_timeout(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.applications.InceptionV3(include_top=False, pooling="avg", weights=weights,
                                               input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
    skipped = [w for w in caught if "freshly-initialized" in str(w.message) or "could not be loaded" in str(w.message)]
    if skipped:
        raise ValueError(f"{len(skipped)} parts of the network found no weights in the file, e.g. "
                         f"{str(skipped[0].message).splitlines()[0][:160]}")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


class InceptionExtractor(_BatchedExtractor):
    """Inception-V3 average-pool features (2048-d) of images resized as the module docstring says.

    Args:
      weights: see `load_inception` ("imagenet", a weights file, or None for random weights).
      batch_size: images per forward pass (a batch of 299×299 images costs ~100 MB per 32).
      model: an already built `load_inception` model to share (then `weights` only names it).

    Call arguments:
      images: [N, H, W(, C)] with C 1 or 3, floats in [0, 1] or uint8, any H and W.
      verbose: show a `keras.utils.Progbar`.

    Returns:
      (features float32 [N, 2048], None): Inception has no logits here.
    """

    kind = "inception"

    def __init__(self, weights="imagenet", *, batch_size=32, model=None):
        _check_batch_size(batch_size)
        self.model = model if model is not None else load_inception(weights)
        self.weights = weights
        self.batch_size = int(batch_size)
        self._forward = tf.function(self._features, reduce_retracing=True)
        self._fingerprint = None

    def _features(self, pixels):
        images = keras.applications.inception_v3.preprocess_input(inception_pixels(pixels))  # x/127.5 − 1
        return self.model(images, training=False), None

    @property
    def fingerprint(self):
        """A SHA-1 of the resize protocol and the network's weights."""
        if self._fingerprint is None:
            self._fingerprint = _weights_fingerprint(self.model, INCEPTION_RESIZE)
        return self._fingerprint

    def _check_pixels(self, pixels):
        if pixels.shape[-1] not in (1, 3):
            raise ValueError(f"Inception takes grey or RGB images. Received: images.shape={pixels.shape}")


# ============================================================================================
# Reference statistics, cached
# ============================================================================================
_STATISTICS = ("mu", "sigma", "features", "logits")


def _read_cached_statistics(cache_path, key):
    """The statistics cached at `cache_path` under `key`, or None (missing, stale, unreadable)."""
    if cache_path is None or not os.path.exists(cache_path):
        return None
    try:
        with np.load(cache_path) as cached:
            if str(cached["key"]) == key:
                stats = {name: cached[name] for name in _STATISTICS if name in cached.files}
                return {"logits": None} | stats | {"num_images": int(cached["num_images"])}
    except (OSError, KeyError, ValueError):
        pass  # unreadable or old-format cache: recompute
    return None


def reference_statistics(extractor, images, cache_path=None, *, source_key=None, verbose=False):
    """Features and (μ, Σ) of a reference image set, computed once and cached in an .npz.

    The cache is keyed by (`extractor.fingerprint`, the source): a stale file (another
    extractor or other images) is recomputed and replaced atomically (`checkpoints.atomic_path`).

    Args:
      extractor: a `FeatureExtractor` or `InceptionExtractor`.
      images: the reference images ([0, 1] floats or uint8 [N, H, W(, C)]), or an iterable of such
        batches (e.g. a `tf.data.Dataset` streaming a folder; read only when the cache misses).
      cache_path: an .npz path, or None.
      source_key: what identifies a streamed source (required for one, e.g. its files, sizes and
        resize settings); for arrays the default is a hash of the quantised pixels.
      verbose: progress while extracting.

    Returns:
      A dict with "mu" [d], "sigma" [d, d] (float64), "features" [N, d] (float32: what KID and
      precision/recall need), "logits" [N, K] (float32, or None for Inception) and "num_images".
    """
    if isinstance(images, np.ndarray):
        images = quantise_images(images)
        if source_key is None:
            source_key = "pixels:" + hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()
    elif source_key is None:
        raise ValueError("A streamed reference source needs a source_key for its cache. Received: source_key=None")
    key = f"{extractor.kind}:{extractor.fingerprint}:{source_key}"
    cached = _read_cached_statistics(cache_path, key)
    if cached is not None:
        return cached
    if isinstance(images, np.ndarray):
        features, logits = extractor(images, verbose=verbose)
    else:
        features, logits = extractor.extract_batches(_numpy_batches(images), verbose=verbose)
    mu, sigma = metrics.feature_statistics(features)
    stats = {"mu": mu, "sigma": sigma, "features": features, "logits": logits, "num_images": len(features)}
    if cache_path is not None:
        stored = {name: value for name, value in stats.items() if value is not None}
        with checkpoints.atomic_path(cache_path) as temporary, open(temporary, "wb") as f:
            np.savez(f, key=np.array(key), **stored)
    return stats


def _numpy_batches(batches):
    for batch in batches:
        yield batch.numpy() if isinstance(batch, tf.Tensor) else np.asarray(batch)


# ============================================================================================
# The reference images: the model's training source, at the samples' size
# ============================================================================================
def check_tfds_name(dataset):
    """Raises ValueError unless `dataset` is a known image source name or a TensorFlow Datasets name."""
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(dataset.split(":")[0].split("/")[0])
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"Unknown dataset: not 'folder', one of {ARRAY_DATASETS + data.TOY_DATASET_NAMES} or a "
                         f"TensorFlow Datasets name. Received: dataset={dataset!r}") from None


def reference_settings(dataset, image_shape, *, training=None, data_path=None, split=None, idx_dir=None,
                       data_dir=None):
    """The `data.training_data` arguments of the reference images of `dataset`, at `image_shape`.

    Args:
      dataset: "folder", one of `ARRAY_DATASETS` (IDX files or TFDS, read whole) or a TFDS name.
      image_shape: (H, W, C) of the samples: the reference is resized (shorter side, centre crop)
        and converted to it exactly as training data is.
      training: the model's training `data` section (its `SOURCE_KEYS` are read), or None.
      data_path: a folder of images (overrides the training folder).
      split: the split: default "test" for `ARRAY_DATASETS` (the classifier protocol), else the
        training split ("train" when unknown). A folder has no splits.
      idx_dir, data_dir: IDX and TFDS directories.

    Returns:
      A dict of `data.training_data` keyword arguments.
    """
    training = {key: value for key, value in dict(training or {}).items() if key in SOURCE_KEYS}
    if dataset == "folder":
        settings = {**training, "source": "folder"} if not data_path else {"source": "folder", "path": data_path}
        if not settings.get("path"):
            raise ValueError("A folder reference needs the folder: pass data_path. Received: data_path=None")
    elif dataset in ARRAY_DATASETS:
        # A folder of the dataset's images (e.g. MNIST written as PNGs) is not its IDX/TFDS source.
        same = {key: training[key] for key in ("source", "idx_dir", "data_dir")
                if training.get("name") == dataset and training.get("source") != "folder" and key in training}
        settings = {"name": dataset, "split": split or "test", "source": "auto", **same}
    else:
        same = training.get("name") == dataset
        settings = {"name": dataset, "source": "tfds", "split": split or (same and training.get("split")) or "train",
                    "data_dir": training.get("data_dir", "") if same else ""}
    settings.update({key: value for key, value in (("idx_dir", idx_dir), ("data_dir", data_dir)) if value})
    return settings | {"image_size": tuple(int(d) for d in image_shape[:2]), "channels": int(image_shape[2])}


def _folder_signature(settings):
    """What a folder reference depends on: its files' relative paths, sizes and modification times."""
    files, _, _ = data.list_image_files(settings["path"], settings.get("class_subfolders", False))
    digest = hashlib.sha1()
    for file in files:
        status = os.stat(file)
        digest.update(f"{os.path.relpath(file, settings['path'])}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return f"{len(files)} files {digest.hexdigest()}"


def _reference_label_and_key(settings, num_images):
    """(a cache file label, the source's cache key) — the key found without decoding any image."""
    height, width = settings["image_size"]
    shape = f"{height}x{width}x{settings['channels']}" + (f"_{num_images}" if num_images else "")
    if settings["source"] == "folder":
        path = os.path.abspath(os.path.expanduser(settings["path"]))
        label = f"folder-{os.path.basename(path)}-{hashlib.sha1(path.encode()).hexdigest()[:8]}_{shape}"
        return label, f"folder:{path}:{_folder_signature(settings)}:{settings.get('on_bad_file', 'error')}:{shape}"
    split = re.sub(r"[^A-Za-z0-9_.-]+", "-", settings["split"])
    if settings["name"] in ARRAY_DATASETS:  # keyed by the pixels; the size named only when resized
        stored = data.IMAGE_DATASET_SHAPES[settings["name"]] == (height, width, settings["channels"])
        return f"{settings['name']}_{split}" + ("" if stored else f"_{shape.split('_')[0]}") + (
            f"_{num_images}" if num_images else ""), None
    return f"{settings['name']}_{split}_{shape}", f"tfds:{settings['name']}:{settings['split']}:{shape}"


def _reference_batches(settings, num_images, batch_size=256):
    """The reference images as uint8 batches, decoded lazily (only when a cache misses)."""
    remaining = num_images or None
    source = data.training_data(**settings)
    for batch in source.examples(batch_size, with_labels=False).as_numpy_iterator():
        batch = batch[:remaining] if remaining is not None else batch
        yield quantise_images((batch + 1.0) / 2.0)  # [−1, 1] → [0, 1] → round(x·255): the stored pixels exactly
        if remaining is not None:
            remaining -= len(batch)
            if remaining <= 0:
                return


def default_cache_dir():
    """Where Inception reference statistics are cached: $TFDIFFUSION_CACHE_DIR, else ~/.cache/tfdiffusion."""
    return os.environ.get(CACHE_DIR_ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "tfdiffusion")


def reference_for(extractor, settings, *, cache_dir=None, num_images=0, verbose=False):
    """The reference statistics of the images `settings` describe (`reference_settings`), cached.

    The cache file is `<cache_dir>/reference_<kind>_<source>.npz`, keyed by the extractor's
    fingerprint and the source: the pixels of an array set, or a folder's file list (paths, sizes,
    modification times) or a TFDS split, with the size and colour. A folder or TFDS split is
    streamed through `data.training_data` only when the cache misses.

    Args:
      extractor: a `FeatureExtractor` or `InceptionExtractor`.
      settings: `data.training_data` arguments.
      cache_dir: directory of the cache (None: `default_cache_dir()`).
      num_images: the first K images only (0: all).
      verbose: log and show progress.

    Returns:
      The `reference_statistics` dict, plus "cache" (its path).
    """
    cache_dir = cache_dir or default_cache_dir()
    label, key = _reference_label_and_key(settings, num_images)
    cache = os.path.join(cache_dir, f"reference_{extractor.kind}_{label}.npz")
    if verbose:
        logging.info("Reference statistics of %s (cache %s)", label, cache)
    if key is None:  # an array set: read whole (fast), keyed by its pixels
        images = np.concatenate(list(_reference_batches(settings, num_images)))
    else:
        images = _reference_batches(settings, num_images)
    os.makedirs(cache_dir, exist_ok=True)
    return reference_statistics(extractor, images, cache, source_key=key, verbose=verbose) | {"cache": cache}
