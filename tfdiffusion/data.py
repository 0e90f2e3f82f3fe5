"""Datasets for training and testing diffusion models.

Conventions shared by everything in this module:

* Image pipelines yield float32 images scaled to [-1, 1] (``x / 127.5 - 1`` for
  uint8 pixels), shape ``[H, W, C]``, channels-last (NHWC is the fast layout for
  the oneDNN kernels TensorFlow uses on CPU).
* Toy datasets yield float32 vectors scaled to [-1, 1] (the two-moons set) or
  left in their natural units where the closed-form density is the point of the
  toy (the 1-D Gaussian mixture).

This is the bottom layer of the package and imports nothing from ``tfdiffusion``.
TensorFlow Datasets and scikit-learn are imported lazily because they are slow
to import and only some entry points need them.
"""

import gzip
import os
import pathlib
import threading
import time
import zlib

from absl import logging

import numpy as np
import tensorflow as tf

IMAGE_DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
TOY_DATASET_NAMES = ("moons", "gmm1d")
# Every name `load_arrays` accepts ("digits": scikit-learn's 8×8 digits, offline).
DATASET_NAMES = IMAGE_DATASET_NAMES + TOY_DATASET_NAMES + ("digits",)
# Image sets distributed as IDX files under MNIST's file names (Fashion-MNIST copied MNIST's format).
IDX_DATASET_NAMES = ("mnist", "fashion_mnist")
# Where `load_arrays` reads an image set from: "idx" files, TensorFlow Datasets, or "auto" (IDX when found).
ARRAY_SOURCES = ("auto", "idx", "tfds")
# Where `training_data` reads from: those, or "folder", a directory of image files.
DATA_SOURCES = ARRAY_SOURCES + ("folder",)
# File name endings of the images a folder source reads (GIF: its first frame).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# What a folder or TFDS source does with an image that cannot be decoded.
BAD_FILE_POLICIES = ("error", "skip")
# A TFDS download that receives no bytes for this long is given up (offline machines).
TFDS_STALL_SECONDS = 30.0
_PROGRESS_BYTES = 64 * 1024

# Environment variable that points at a directory holding the four MNIST IDX files.
MNIST_DIR_ENV_VAR = "TFDIFFUSION_MNIST_DIR"

# Magic number -> number of dimensions, for the two unsigned-byte IDX kinds MNIST uses.
_IDX_MAGIC_TO_NDIM = {2051: 3, 2049: 1}

_MNIST_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Noise-free sklearn moons span x in [-1, 2] and y in [-0.5, 1]. Fixed constants
# (instead of the sample min/max) keep the scaling identical for every sample size
# and seed, so a model's outputs can be mapped back to the original units.
MOONS_X_RANGE = (-1.0, 2.0)
MOONS_Y_RANGE = (-0.5, 1.0)


def read_idx(path):
    """Reads one big-endian IDX file of unsigned bytes, gzipped or not.

    Args:
        path: Path to an IDX file. Gzip compression is detected from the file's
            first bytes, so the ``.gz`` suffix is optional.

    Returns:
        A uint8 array: ``[N, rows, cols]`` for an image file (magic 2051) or
        ``[N]`` for a label file (magic 2049).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the magic number is not 2051 or 2049, or the file size does
            not match the shape in its header (truncated or corrupt file).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        is_gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if is_gzipped else open)(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"Could not decompress the IDX file {path!r}: {e}") from e

    if len(raw) < 4:
        raise ValueError(
            f"The IDX file {path!r} is truncated: it has {len(raw)} bytes, fewer "
            "than the 4-byte magic number."
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC_TO_NDIM:
        raise ValueError(
            f"The file {path!r} is not an unsigned-byte IDX image or label file: "
            f"expected magic number 2051 (images) or 2049 (labels). Received: magic={magic}"
        )
    ndim = _IDX_MAGIC_TO_NDIM[magic]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"The IDX file {path!r} is truncated: it has {len(raw)} bytes, fewer "
            f"than its {header_size}-byte header."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise ValueError(
            f"The IDX file {path!r} is truncated or corrupt: its header declares "
            f"shape {shape}, i.e. {expected_size} bytes. Received: {len(raw)} bytes"
        )
    # Copy so callers get a writeable array rather than a view of immutable bytes.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _find_idx_file(directory, stem):
    """Returns the gzipped or raw IDX file named ``stem`` in ``directory``."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST IDX file not found: neither {str(directory / stem)!r}.gz nor "
        f"{str(directory / stem)!r} exists."
    )


def load_mnist_idx(directory, split="train"):
    """Loads MNIST from the original IDX files, without TensorFlow Datasets.

    Args:
        directory: Directory holding ``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and
            ``t10k-labels-idx1-ubyte.gz`` (the un-gzipped names work too).
        split: ``"train"`` (60000 examples) or ``"test"`` (the ``t10k-*`` files,
            10000 examples).

    Returns:
        A tuple ``(images, labels)``: uint8 images ``[N, 28, 28, 1]`` and int32
        labels ``[N]``.

    Raises:
        FileNotFoundError: If the directory or one of its files is missing.
        ValueError: If ``split`` is unknown or the files are malformed or disagree
            on the number of examples.
    """
    if split not in _MNIST_FILE_STEMS:
        raise ValueError(
            f"`split` must be one of {sorted(_MNIST_FILE_STEMS)}. Received: split={split!r}"
        )
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST IDX directory not found: {str(directory)!r}")
    images_stem, labels_stem = _MNIST_FILE_STEMS[split]
    images_path = _find_idx_file(directory, images_stem)
    labels_path = _find_idx_file(directory, labels_stem)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"Expected an image file (3-D) at {str(images_path)!r} and a label file "
            f"(1-D) at {str(labels_path)!r}. Received: shapes {images.shape} and {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{str(images_path)!r} holds {len(images)} images but "
            f"{str(labels_path)!r} holds {len(labels)} labels."
        )
    return images[..., np.newaxis], labels.astype(np.int32)


def default_mnist_dir():
    """Returns a local directory with the MNIST IDX files, or None.

    Looks at the ``TFDIFFUSION_MNIST_DIR`` environment variable first, then at
    ``../shared/data/mnist`` relative to the repository root (the parent of the
    ``tfdiffusion/`` package directory).

    Returns:
        A ``pathlib.Path`` to an existing directory, or None if there is none.

    Raises:
        FileNotFoundError: If ``TFDIFFUSION_MNIST_DIR`` is set but is not a
            directory; a typo there should not silently fall back to another copy.
    """
    from_env = os.environ.get(MNIST_DIR_ENV_VAR)
    if from_env:
        if not os.path.isdir(from_env):
            raise FileNotFoundError(
                f"{MNIST_DIR_ENV_VAR} is set but is not a directory. Received: {from_env!r}"
            )
        return pathlib.Path(from_env)
    return SHARED_MNIST_DIR if SHARED_MNIST_DIR.is_dir() else None


# The copy of MNIST beside this repository's development checkout; a normal clone has none.
SHARED_MNIST_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def _holds_idx_files(directory):
    """True when `directory` holds MNIST's training images under their IDX name (gzipped or not)."""
    stem = pathlib.Path(directory) / _MNIST_FILE_STEMS["train"][0]
    return stem.is_file() or stem.with_name(stem.name + ".gz").is_file()


def _scale_uint8_image(image):
    """Maps uint8 pixels in [0, 255] to float32 in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def load_image_dataset(name, split="train", *, data_dir=None, idx_dir=None, with_labels=False):
    """Loads an image dataset as single float32 examples in [-1, 1].

    Args:
        name: One of ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        split: Split name, passed to ``tfds.load`` (so slices such as
            ``"train[:10%]"`` work). With ``idx_dir``: ``"train"`` or ``"test"``.
        data_dir: TFDS data directory; None uses the TFDS default.
        idx_dir: For ``"mnist"`` and ``"fashion_mnist"`` only: a directory holding
            the original IDX files (see `load_mnist_idx`). When given, TFDS is not
            used at all, which allows offline use (see `default_mnist_dir`).
        with_labels: If True, yield ``(image, label)`` pairs with an int32 label.

    Returns:
        An unbatched ``tf.data.Dataset`` of float32 images ``[H, W, C]`` in
        [-1, 1] (``(28, 28, 1)`` for the MNIST sets, ``(32, 32, 3)`` for
        CIFAR-10), or of ``(image, label)`` pairs. It is not cached:
        `make_training_pipeline` caches the scaled images, and caching here too
        would hold a second full copy in memory.

    Raises:
        ValueError: If ``name`` is unknown, or ``idx_dir`` is given for a dataset
            not distributed as IDX files.
    """
    if name not in IMAGE_DATASET_NAMES:
        raise ValueError(
            f"Unknown image dataset {name!r}. Known names: {', '.join(IMAGE_DATASET_NAMES)}"
        )
    if idx_dir is not None:
        if name not in IDX_DATASET_NAMES:
            raise ValueError(
                f"`idx_dir` is only supported for {IDX_DATASET_NAMES}. Received: name={name!r}"
            )
        images, labels = load_mnist_idx(idx_dir, split)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        import tensorflow_datasets as tfds

        dataset = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)

    def scale(image, label):
        image = _scale_uint8_image(image)
        return (image, tf.cast(label, tf.int32)) if with_labels else image

    return dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)


def make_training_pipeline(
    dataset,
    batch_size,
    *,
    shuffle_buffer=10_000,
    seed=0,
    repeat=True,
    drop_remainder=True,
    cache=True,
):
    """Turns a dataset of single examples into a shuffled, batched training stream.

    Applies, in order: cache, shuffle, repeat, batch, prefetch. Caching before
    the shuffle means decoding and scaling run once, and the shuffle sees the
    same input order every epoch, so a fixed ``seed`` gives a reproducible
    stream. The order is reshuffled every epoch.

    Args:
        dataset: An unbatched ``tf.data.Dataset``, e.g. from `load_image_dataset`.
        batch_size: Examples per batch, at least 1.
        shuffle_buffer: Shuffle buffer size, at least 1. A buffer at least as
            large as the dataset gives a uniform shuffle.
        seed: Shuffle seed; the same seed gives the same order in a new pipeline.
        repeat: If True, repeat forever (each epoch freshly shuffled).
        drop_remainder: If True, drop a final partial batch so every batch has a
            static shape (one trace of a compiled train step).
        cache: If True, cache the examples in memory. Set False when the dataset
            does not fit in memory or is already cached.

    Returns:
        A batched, prefetching ``tf.data.Dataset``.

    Raises:
        ValueError: If ``batch_size`` or ``shuffle_buffer`` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
    if shuffle_buffer < 1:
        raise ValueError(
            f"`shuffle_buffer` must be at least 1. Received: shuffle_buffer={shuffle_buffer}"
        )
    if cache:
        dataset = dataset.cache()
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_num_samples(num_samples):
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be at least 1. Received: num_samples={num_samples}")


def _to_unit_range(values, value_range):
    """Linearly maps ``value_range`` = (low, high) onto [-1, 1]."""
    low, high = value_range
    return 2.0 * (values - low) / (high - low) - 1.0


def make_moons_dataset(num_samples, *, noise=0.05, seed=0):
    """Samples the two-moons toy set, scaled to [-1, 1] per axis.

    The points come from ``sklearn.datasets.make_moons``. Its noise-free moons
    span x in [-1, 2] and y in [-0.5, 1] (`MOONS_X_RANGE`, `MOONS_Y_RANGE`);
    these fixed ranges are mapped linearly onto [-1, 1], i.e.
    ``x' = (x - 0.5) / 1.5`` and ``y' = (y - 0.25) / 0.75``. The Gaussian
    ``noise`` can push a few points slightly outside [-1, 1]; they are not
    clipped, since clipping would pile probability mass onto the boundary.

    Args:
        num_samples: Number of points, at least 1 (split evenly between moons).
        noise: Standard deviation of the Gaussian noise, in the original units.
        seed: Random seed.

    Returns:
        A float32 array of shape ``[num_samples, 2]``.
    """
    from sklearn.datasets import make_moons

    _check_num_samples(num_samples)
    points, _ = make_moons(n_samples=num_samples, noise=noise, random_state=seed)
    scaled = np.stack(
        [
            _to_unit_range(points[:, 0], MOONS_X_RANGE),
            _to_unit_range(points[:, 1], MOONS_Y_RANGE),
        ],
        axis=1,
    )
    return scaled.astype(np.float32)


def make_gmm1d_dataset(
    num_samples,
    *,
    means=(-2.0, 0.5, 2.0),
    stds=(0.3, 0.4, 0.2),
    weights=(0.3, 0.4, 0.3),
    seed=0,
):
    """Samples a 1-D mixture of Gaussians.

    The samples are not rescaled: the point of this toy is comparing a model's
    samples with a density known in closed form, whose mean is
    ``sum(w * mu)`` and variance ``sum(w * (sigma**2 + mu**2)) - mean**2``.

    Args:
        num_samples: Number of samples, at least 1.
        means: Component means.
        stds: Component standard deviations, all > 0.
        weights: Component probabilities, all >= 0, summing to 1.
        seed: Random seed.

    Returns:
        A float32 array of shape ``[num_samples, 1]``.

    Raises:
        ValueError: If the parameters have different lengths, a std is not
            positive, or the weights are negative or do not sum to 1.
    """
    _check_num_samples(num_samples)
    means = np.asarray(means, dtype=np.float64)
    stds = np.asarray(stds, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if not (means.ndim == stds.ndim == weights.ndim == 1) or not (
        len(means) == len(stds) == len(weights) > 0
    ):
        raise ValueError(
            "`means`, `stds` and `weights` must be non-empty sequences of equal "
            f"length. Received: means={means.tolist()}, stds={stds.tolist()}, "
            f"weights={weights.tolist()}"
        )
    if np.any(stds <= 0):
        raise ValueError(f"All `stds` must be > 0. Received: stds={stds.tolist()}")
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, rtol=0.0, atol=1e-6):
        raise ValueError(
            "`weights` must be non-negative and sum to 1. "
            f"Received: weights={weights.tolist()} (sum {weights.sum():.6g})"
        )
    rng = np.random.default_rng(seed)
    components = rng.choice(len(weights), size=num_samples, p=weights / weights.sum())
    samples = rng.normal(means[components], stds[components])
    return samples.astype(np.float32)[:, np.newaxis]


def toy_dataset(name, num_samples, seed=0):
    """Samples a toy dataset by name with its default parameters.

    Args:
        name: ``"moons"`` (2-D, see `make_moons_dataset`) or ``"gmm1d"`` (1-D,
            see `make_gmm1d_dataset`).
        num_samples: Number of samples, at least 1.
        seed: Random seed.

    Returns:
        A float32 array of shape ``[num_samples, dim]``.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name == "moons":
        return make_moons_dataset(num_samples, seed=seed)
    if name == "gmm1d":
        return make_gmm1d_dataset(num_samples, seed=seed)
    raise ValueError(f"Unknown toy dataset {name!r}. Known names: {', '.join(TOY_DATASET_NAMES)}")


def load_digits_dataset():
    """Loads scikit-learn's 8x8 digits, a tiny offline image set for tests.

    Returns:
        A tuple ``(images, labels)``: float32 images ``[1797, 8, 8, 1]`` in
        [-1, 1] (pixel values 0..16 mapped linearly) and int32 labels ``[1797]``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The digits' pixels are counts from 0 to 16, not bytes from 0 to 255.
    images = digits.images / 8.0 - 1.0
    return images[..., np.newaxis].astype(np.float32), digits.target.astype(np.int32)


def resolve_idx_dir(name, source="auto", idx_dir=None):
    """The IDX directory `load_arrays` reads ``name`` from, or None for TensorFlow Datasets.

    Args:
        name: a dataset name (see `DATASET_NAMES`).
        source: "auto" (IDX files when a directory is known, else TFDS), "idx" or "tfds".
        idx_dir: a directory of IDX files; None looks for MNIST's at `default_mnist_dir`
            (``$TFDIFFUSION_MNIST_DIR``, else ``../shared/data/mnist``). With source "auto"
            a directory found there that holds no IDX files is passed over (TFDS is next).

    Returns:
        A path, or None when the data comes from TFDS (or is not an IDX image set).

    Raises:
        ValueError: If ``source`` is unknown, or "idx" is asked for without a directory
            or for a dataset not distributed as IDX files.
    """
    if source not in ARRAY_SOURCES:
        raise ValueError(f"`source` must be one of {ARRAY_SOURCES}. Received: source={source!r}")
    if source == "tfds" or name not in IMAGE_DATASET_NAMES:
        return None
    if name not in IDX_DATASET_NAMES:
        if source == "idx" or idx_dir:
            raise ValueError(f"IDX files exist only for {IDX_DATASET_NAMES}. Received: name={name!r}, "
                             f"source={source!r}, idx_dir={idx_dir!r}")
        return None
    directory = idx_dir or (default_mnist_dir() if name == "mnist" else None)
    if directory is not None and not idx_dir and source == "auto" and not _holds_idx_files(directory):
        logging.info("%s holds no MNIST IDX files; looking in the TFDS cache next.", directory)
        directory = None
    elif directory is not None and not idx_dir and pathlib.Path(directory) == SHARED_MNIST_DIR:
        logging.info("Reading MNIST from %s (beside this checkout; $%s overrides it).", directory, MNIST_DIR_ENV_VAR)
    if directory is None and source == "idx":
        raise ValueError(f"source='idx' needs the directory of the IDX files: pass idx_dir (or set "
                         f"${MNIST_DIR_ENV_VAR} for MNIST). Received: name={name!r}, idx_dir={idx_dir!r}")
    return directory


class DataNotFoundError(FileNotFoundError):
    """The data is neither on disk nor downloadable; the message says what to set."""


def _bytes_under(directories):
    """Total size of the files below `directories` (missing ones count 0)."""
    total = 0
    for directory in directories:
        for root, _, files in os.walk(directory):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:  # a temporary file renamed while we looked
                    pass
    return total


def _download_while_progressing(builder, stall_seconds):
    """Runs `builder.download_and_prepare()`; returns None, or why it failed or stalled.

    The download runs in a daemon thread watched from here: TFDS retries an unreachable host for
    minutes, so the attempt is given up once no byte has arrived (in the download directory or the
    dataset's directory) for `stall_seconds`. A given-up thread is left to die with the process.
    """
    root = os.fspath(builder.data_dir_root)
    download_dir = os.path.join(root, "downloads")
    watched = (download_dir, os.path.join(root, builder.name))
    outcome = {}

    def download():
        try:
            builder.download_and_prepare(download_dir=download_dir)
        except Exception as error:  # noqa: BLE001  (reported to the caller as the reason)
            outcome["error"] = error

    thread = threading.Thread(target=download, name=f"tfds-download-{builder.name}", daemon=True)
    thread.start()
    received, last_progress = _bytes_under(watched), time.monotonic()
    while thread.is_alive():
        thread.join(0.5)
        size = _bytes_under(watched)
        # Each failed retry leaves a few small bookkeeping files: only real data counts as progress.
        if size >= received + _PROGRESS_BYTES:
            received, last_progress = size, time.monotonic()
        elif time.monotonic() - last_progress > stall_seconds:
            return f"no data arrived for {stall_seconds:g} s"
    if "error" in outcome:
        first_line = (str(outcome["error"]).strip().splitlines() or [""])[0]
        return f"{type(outcome['error']).__name__}: {first_line[:200]}"
    return None


def _what_to_set(name, idx_dir, data_dir):
    """The one-line advice of a `DataNotFoundError`: the settings that can point at `name`'s data."""
    options = []
    if name in IDX_DATASET_NAMES:
        options.append("config.data.idx_dir (a directory of the four IDX files)")
    if name == "mnist":
        options.append(f"${MNIST_DIR_ENV_VAR} (the same, for every run)")
    options.append(f"config.data.data_dir (a TFDS data directory where {name} is prepared, e.g. copied from a "
                   "machine with internet)")
    received = [f"data_dir={data_dir!r}"]
    if name in IDX_DATASET_NAMES:
        received.insert(0, f"idx_dir={idx_dir!r}")
    if name == "mnist":
        received.insert(1, f"${MNIST_DIR_ENV_VAR}={os.environ.get(MNIST_DIR_ENV_VAR)!r}")
    return f"Set {' or '.join(options)}. Received: {', '.join(received)}"


def prepared_tfds_builder(name, data_dir=None, *, idx_dir=None, stall_seconds=None):
    """The TFDS builder of `name` with its data prepared: from the TFDS cache, else downloaded now.

    Args:
        name: a TFDS dataset name (e.g. "cifar10", "oxford_flowers102").
        data_dir: TFDS data directory; None searches TFDS's default ones.
        idx_dir: only named in the error message (the IDX directory that was tried).
        stall_seconds: give the download up after this long without a byte
            (default `TFDS_STALL_SECONDS`).

    Raises:
        ValueError: If TFDS has no dataset of that name.
        DataNotFoundError: If the data is not in the cache and the download fails or stalls; the
            message says which settings can point at the data.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"TensorFlow Datasets has no dataset of that name. Received: name={name!r}") from None
    if builder.is_prepared():
        return builder
    stall_seconds = TFDS_STALL_SECONDS if stall_seconds is None else stall_seconds
    logging.info("%s is not in the TFDS cache %s: downloading it (given up after %g s without data).", name,
                 builder.data_dir_root, stall_seconds)
    failure = _download_while_progressing(builder, stall_seconds)
    if failure:
        raise DataNotFoundError(f"{name} is not on disk and TFDS could not download it ({failure}). "
                                f"{_what_to_set(name, idx_dir, data_dir)}")
    return builder


def image_set_on_disk(name, *, source="auto", idx_dir=None, data_dir=None):
    """True when `load_arrays(name, source=…)` would read files already here, without a download."""
    if resolve_idx_dir(name, source, idx_dir) is not None:
        return True
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=data_dir).is_prepared()


def load_arrays(name, split="train", *, source="auto", idx_dir=None, data_dir=None, num_samples=None, seed=0,
                uint8=False):
    """Loads a whole dataset into memory: the one way tfdiffusion reads training and reference data.

    Image sets come from IDX files when `resolve_idx_dir` finds a directory (offline),
    else from TensorFlow Datasets: its cache, else a download that stops with a
    `DataNotFoundError` naming what to set once no data arrives for `TFDS_STALL_SECONDS`.

    Args:
        name: an image dataset ("mnist", "fashion_mnist", "cifar10"), "digits" (scikit-learn's
            8×8 digits, offline) or a toy ("moons", "gmm1d").
        split: the split of an image dataset ("train" or "test" for IDX files).
        source: "auto", "idx" or "tfds" (see `resolve_idx_dir`).
        idx_dir: a directory of IDX files (see `resolve_idx_dir`).
        data_dir: TFDS data directory; None uses the TFDS default.
        num_samples: size of a toy dataset.
        seed: seed of a toy dataset.
        uint8: return an image set's stored pixels, uint8 in [0, 255], instead of
            float32 in [-1, 1] (what classifiers and FID references use).

    Returns:
        ``(x, labels)``: float32 data (uint8 images with ``uint8``) and int32 labels (None
        for toys).

    Raises:
        ValueError: If ``name`` is unknown, a toy has no ``num_samples``, ``uint8`` is asked
            of a dataset that has no uint8 pixels, or the source cannot be resolved.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset. Expected one of {DATASET_NAMES}. Received: name={name!r}")
    if uint8 and name not in IMAGE_DATASET_NAMES:
        raise ValueError(f"Only {IMAGE_DATASET_NAMES} are stored as uint8 pixels. Received: name={name!r}, uint8=True")
    if name in TOY_DATASET_NAMES:
        if num_samples is None:
            raise ValueError(f"Toy dataset {name!r} needs num_samples. Received: num_samples=None")
        return toy_dataset(name, num_samples, seed=seed), None
    if name == "digits":
        return load_digits_dataset()
    directory = resolve_idx_dir(name, source, idx_dir)
    if directory is not None:
        images, labels = load_mnist_idx(directory, split)
    else:
        builder = prepared_tfds_builder(name, data_dir, idx_dir=idx_dir)
        dataset = builder.as_dataset(split=split, as_supervised=True)
        parts = list(dataset.batch(8192).as_numpy_iterator())
        images, labels = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]).astype(np.int32)
    return (images if uint8 else _scale_uint8_image(images).numpy()), labels


def _check_batching(n, batch_size, start_step):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}] (the dataset size). Received: batch_size={batch_size!r}")
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be an integer >= 0. Received: start_step={start_step!r}")


def _permuted(position, epoch, seed, n):
    """Where `position` of epoch `epoch` falls in the stateless permutation of (seed, epoch)."""
    return tf.random.experimental.index_shuffle(position, tf.stack([seed, epoch]), n - 1)


# Folded into the data seed for the flips, so that they are independent of the order.
_FLIP_STREAM = 0x666C6970


def _flip_batch(images, seed, step):
    """Mirrors each image of batch `step` left-right with probability 1/2: a function of (seed, step, row)."""
    key = tf.random.experimental.stateless_fold_in(tf.stack([seed, tf.constant(_FLIP_STREAM, tf.int64)]), step)
    flip = tf.random.stateless_uniform(tf.shape(images)[:1], key) < 0.5
    return tf.where(tf.reshape(flip, [-1, 1, 1, 1]), tf.reverse(images, axis=[2]), images)


def _with_flips(batches, seed, start_step):
    """`batches` (batch k = step start_step + k) with `_flip_batch` applied to their images."""
    steps = tf.data.Dataset.counter(start=start_step, dtype=tf.int64)

    def flip(batch, step):
        if isinstance(batch, tuple):
            return _flip_batch(batch[0], seed, step), batch[1]
        return _flip_batch(batch, seed, step)

    return tf.data.Dataset.zip(batches, steps).map(flip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def step_indexed_batches(x, labels, batch_size, *, seed=0, start_step=0, random_flip=False):
    """An endless dataset whose batch k is a fixed function of (seed, k).

    Epoch e visits the examples in the order of a stateless permutation seeded by (seed, e)
    (`tf.random.experimental.index_shuffle`), so a run resumed at step k reads exactly the
    batches an uninterrupted run reads, with no iterator state to save.

    Args:
        x: array [N, ...] held in memory.
        labels: array [N] or None.
        batch_size: examples per batch, 1 <= batch_size <= N.
        seed: seed of the order (and of the flips).
        start_step: the first batch index produced.
        random_flip: mirror each image [H, W, C] left-right with probability 1/2, a stateless
            function of (seed, k, row) (the flips of `EncodedImages.batches` too).

    Returns:
        A `tf.data.Dataset` of ``x`` batches, or ``(x, labels)`` batches.
    """
    n = len(x)
    _check_batching(n, batch_size, start_step)
    x = tf.convert_to_tensor(x)
    labels = None if labels is None else tf.convert_to_tensor(labels, tf.int32)
    seed = tf.constant(seed, tf.int64)

    def batch_at(step):
        positions = step * batch_size + tf.range(batch_size, dtype=tf.int64)
        first_epoch = positions[0] // n
        # A batch spans at most two epochs since batch_size <= N.
        index = tf.where(positions // n == first_epoch, _permuted(positions % n, first_epoch, seed, n),
                         _permuted(positions % n, first_epoch + 1, seed, n))
        batch = tf.gather(x, index)
        if random_flip:
            batch = _flip_batch(batch, seed, step)
        return batch if labels is None else (batch, tf.gather(labels, index))

    steps = tf.data.Dataset.counter(start=start_step, dtype=tf.int64)
    return steps.map(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# -- image sources: folders, TFDS, synthetic; decoded as batches are read ------------------------
# The shape of one example of each named image set (the synthetic stand-in takes it).
IMAGE_DATASET_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def image_size_pair(image_size):
    """(height, width) of an `image_size` setting: S means (S, S); 0 or None keeps the stored size (None)."""
    if image_size is None or (_is_int(image_size) and image_size == 0):
        return None
    if _is_int(image_size) and image_size >= 1:
        return int(image_size), int(image_size)
    pair = isinstance(image_size, (tuple, list)) and len(image_size) == 2
    if pair and all(_is_int(v) and v >= 1 for v in image_size):
        return int(image_size[0]), int(image_size[1])
    raise ValueError("image_size must be an integer >= 1, (height, width), or 0 for the stored size. "
                     f"Received: image_size={image_size!r}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def list_image_files(path, class_subfolders=False):
    """The images below `path`, searched recursively, in the order of their relative paths.

    Files whose names end in one of `IMAGE_EXTENSIONS` (any case) count; hidden files and folders
    (names starting with ".") are passed over.

    Args:
        path: a directory.
        class_subfolders: the first-level subfolder of an image names its class; classes are
            numbered in the sorted order of their names.

    Returns:
        ``(files, labels, class_names)``: paths (str), and with ``class_subfolders`` an int32
        label per file and the sorted class names (else None and None).

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        ValueError: If it holds no image, or (with ``class_subfolders``) an image lies outside
            every class subfolder.
    """
    root = pathlib.Path(os.path.expanduser(os.fspath(path)))
    if not root.is_dir():
        raise FileNotFoundError(f"The image folder does not exist or is not a directory. Received: path={str(path)!r}")
    relative = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        base = pathlib.PurePosixPath(pathlib.Path(directory).relative_to(root).as_posix())
        relative += [base / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    relative.sort()
    if not relative:
        raise ValueError(f"The image folder holds no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} files "
                         f"(searched recursively). Received: path={str(path)!r}")
    files = [str(root / p) for p in relative]
    if not class_subfolders:
        return files, None, None
    loose = [p for p in relative if len(p.parts) == 1]
    if loose:
        raise ValueError(f"With class_subfolders=True every image must lie in a class subfolder of {str(path)!r}; "
                         f"{len(loose)} lie at its top level. Received: {str(root / loose[0])!r}")
    class_names = tuple(sorted({p.parts[0] for p in relative}))
    index = {name: i for i, name in enumerate(class_names)}
    return files, np.array([index[p.parts[0]] for p in relative], np.int32), class_names


def _to_channels(image, channels):
    """uint8 [..., c], c in 1–4 → [..., channels]: alpha dropped, grey repeated or colour → luma (ITU-R 601)."""
    stored = tf.shape(image)[-1]
    image = image[..., : tf.where(stored >= 3, 3, 1)]
    if channels == 3:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.repeat(image, 3, axis=-1), lambda: image)
    elif channels == 1:
        image = tf.cond(tf.shape(image)[-1] == 3, lambda: tf.image.rgb_to_grayscale(image), lambda: image)
    if channels:
        image = tf.ensure_shape(image, image.shape[:-1].concatenate([channels]))
    return image


def _resize_and_crop(image, size):
    """float32 [..., h, w, C] → [..., H, W, C]: scaled (antialiased bilinear) until it covers (H, W), centre kept.

    For a square size that is "resize the shorter side to S, crop the centre". An image already
    of the size is returned unchanged (so stored pixels stay exact).
    """
    height, width = size
    stored = tf.shape(image)[-3:-1]
    scale = tf.maximum(height / tf.cast(stored[0], tf.float64), width / tf.cast(stored[1], tf.float64))
    scaled = tf.maximum(tf.cast(tf.math.ceil(tf.cast(stored, tf.float64) * scale - 1e-9), tf.int32), [height, width])
    image = tf.cond(tf.reduce_all(scaled == stored), lambda: image,
                    lambda: tf.image.resize(image, scaled, method="bilinear", antialias=True))
    top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
    cropped = image[..., top:top + height, left:left + width, :]
    return tf.ensure_shape(cropped, image.shape[:-3].concatenate([height, width]).concatenate(image.shape[-1:]))


def standardize_images(pixels, *, image_size=None, channels=0):
    """uint8 pixels [..., h, w, c] → float32 [..., H, W, channels] in [−1, 1]: what every image source yields.

    Args:
        pixels: one image or a batch of equally sized ones, 1 to 4 channels (an alpha channel is dropped).
        image_size: (H, W), or None to keep the stored size (see `image_size_pair`).
        channels: 1 or 3 to convert to, 0 to keep the stored colour channels.

    Returns:
        ``resized / 127.5 − 1``; without resizing exactly `load_arrays`' scaling of the same pixels.
    """
    image = tf.cast(_to_channels(tf.convert_to_tensor(pixels), channels), tf.float32)
    if image_size is not None:
        image = tf.clip_by_value(_resize_and_crop(image, image_size), 0.0, 255.0)
    return image / 127.5 - 1.0


def decode_image(contents, *, image_size=None, channels=0):
    """Encoded PNG/JPEG/BMP/GIF bytes (GIF: the first frame) → `standardize_images` of the pixels."""
    pixels = tf.io.decode_image(contents, expand_animations=False)
    return standardize_images(pixels, image_size=image_size, channels=channels)


def _stored_shapes(contents, read_files):
    """[N, 3] (height, width, channels) of every image as stored; a row of −1 where it cannot be read or decoded.

    One parallel pass that decodes every image once, so that a bad file is found before training
    rather than at some batch k (which would make the batches depend on where the run started).
    """
    def shape_of(index, item):
        encoded = tf.io.read_file(item) if read_files else item
        return index, tf.shape(tf.io.decode_image(encoded, expand_animations=False), out_type=tf.int64)

    dataset = tf.data.Dataset.from_tensor_slices(contents).enumerate()
    dataset = dataset.map(shape_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    shapes = np.full((int(contents.shape[0]), 3), -1, np.int64)
    for index, shape in dataset.batch(1024).as_numpy_iterator():
        shapes[index] = shape
    return shapes


def _decodable(names, shapes, on_bad_file, where):
    """The mask of decodable images; raises on a bad one ("error") or logs how many are skipped ("skip")."""
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}. Received: on_bad_file={on_bad_file!r}")
    good = shapes[:, 0] >= 0
    bad = np.flatnonzero(~good)
    if len(bad) and on_bad_file == "error":
        raise ValueError(f"{len(bad)} of the {len(names)} images in {where} cannot be read or decoded; remove them "
                         f"or set on_bad_file='skip' (config.data.on_bad_file). Received: {names[bad[0]]!r}")
    if len(bad):
        logging.warning("Skipping %d of the %d images in %s that cannot be read or decoded "
                        "(on_bad_file='skip'), e.g. %s", len(bad), len(names), where, names[bad[0]])
    if not good.any():
        raise ValueError(f"None of the {len(names)} images in {where} can be decoded. Received: {names[0]!r}")
    return good


def _common_size(shapes, names, image_size):
    """(H, W) of the examples: `image_size`, else the one size all stored images share."""
    if image_size is not None:
        return image_size
    sizes = {tuple(s[:2]) for s in shapes.tolist()}
    if len(sizes) > 1:
        first = tuple(shapes[0, :2])
        other = next(i for i, s in enumerate(shapes.tolist()) if tuple(s[:2]) != first)
        raise ValueError(f"The images differ in size ({names[0]}: {first[0]}×{first[1]}, {names[other]}: "
                         f"{shapes[other, 0]}×{shapes[other, 1]}); set image_size (config.data.image_size) to "
                         "resize them. Received: image_size=0")
    return tuple(int(v) for v in shapes[0, :2])


class ArrayData:
    """Training examples held in memory, batched by `step_indexed_batches`.

    Args:
        x: array [N, ...]: images [N, H, W, C] in [−1, 1], or toy vectors.
        labels: int array [N], or None.
        class_names: the name of each label, or None.
        random_flip: mirror images left-right at random (stateless, see `step_indexed_batches`).
        description: what the examples are, for logs.
    """

    def __init__(self, x, labels=None, *, class_names=None, random_flip=False, description=""):
        if random_flip and np.ndim(x) != 4:
            raise ValueError(f"random_flip applies to images [N, H, W, C]. Received: random_flip=True for data of "
                             f"shape {np.shape(x)}")
        self.x, self.labels = x, labels
        self.class_names = None if class_names is None else tuple(class_names)
        self.random_flip = random_flip
        self.element_shape = tuple(int(d) for d in np.shape(x)[1:])
        self.num_examples = len(x)
        self.description = description or f"{self.num_examples} examples of shape {self.element_shape} in memory"

    def batches(self, batch_size, *, seed=0, start_step=0, with_labels=True):
        """Endless batches, batch k a function of (seed, k) (see `step_indexed_batches`)."""
        labels = self.labels if with_labels else None
        return step_indexed_batches(self.x, labels, batch_size, seed=seed, start_step=start_step,
                                    random_flip=self.random_flip)

    def examples(self, batch_size=256, *, with_labels=True):
        """Every example once, in stored order, unflipped: (x, labels) batches, or x batches."""
        parts = (self.x, self.labels) if with_labels and self.labels is not None else self.x
        return tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)

    def in_memory(self):
        return self


class EncodedImages:
    """Training images kept encoded (paths of files, or the bytes of a TFDS split) and decoded as batches are read.

    Batch k holds the examples at positions kB … kB+B−1 of an endless stream whose epoch e is the
    stateless permutation (seed, e) of the N images — the order `step_indexed_batches` gives an
    array — each decoded, converted to `channels`, resized to `image_size` and (with `random_flip`)
    mirrored by `_flip_batch`. Decoding runs in parallel with a deterministic order, so batch k is
    a function of (seed, k) and only the batches in flight are in memory: a run resumed at step k
    reads what an uninterrupted one reads.

    Args:
        contents: string array [N]: file paths (`read_files`) or encoded images.
        labels: int array [N], or None.
        read_files: whether `contents` holds paths.
        image_size: (H, W) of the examples.
        channels: 1 or 3.
        random_flip: mirror left-right at random.
        class_names: the name of each label, or None.
        description: what the images are, for logs.
    """

    def __init__(self, contents, labels=None, *, read_files, image_size, channels, random_flip=False,
                 class_names=None, description=""):
        self.contents = tf.constant(contents, tf.string)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.read_files = read_files
        self.image_size, self.channels = tuple(image_size), channels
        self.random_flip = random_flip
        self.class_names = None if class_names is None else tuple(class_names)
        self.element_shape = self.image_size + (channels,)
        self.num_examples = int(self.contents.shape[0])
        self.description = description

    def _example(self, index):
        encoded = self.contents[index]
        if self.read_files:
            encoded = tf.io.read_file(encoded)
        # Also checks at run time that a file of the stored size has not changed since it was scanned.
        return tf.ensure_shape(decode_image(encoded, image_size=self.image_size, channels=self.channels),
                               self.element_shape)

    def batches(self, batch_size, *, seed=0, start_step=0, with_labels=True):
        """Endless batches [B, H, W, C] (with labels: (images, labels)); batch k a function of (seed, k)."""
        n = self.num_examples
        _check_batching(n, batch_size, start_step)
        seed = tf.constant(seed, tf.int64)
        labels = tf.constant(self.labels) if with_labels and self.labels is not None else None

        def example_at(position):
            index = _permuted(position % n, position // n, seed, n)
            image = self._example(index)
            return image if labels is None else (image, tf.gather(labels, index))

        positions = tf.data.Dataset.counter(start=start_step * batch_size, dtype=tf.int64)
        batches = positions.map(example_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = batches.batch(batch_size, drop_remainder=True)
        if self.random_flip:
            batches = _with_flips(batches, seed, start_step)
        return batches.prefetch(tf.data.AUTOTUNE)

    def examples(self, batch_size=256, *, with_labels=True):
        """Every image once, in stored order, unflipped: (images, labels) batches, or image batches."""
        indices = tf.data.Dataset.range(self.num_examples)
        labels = tf.constant(self.labels) if with_labels and self.labels is not None else None

        def example(index):
            image = self._example(index)
            return image if labels is None else (image, tf.gather(labels, index))

        return indices.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

    def in_memory(self):
        """The same examples decoded once into an `ArrayData` (the `cache` option): the same batches, bitwise."""
        parts = list(self.examples(with_labels=False).as_numpy_iterator())
        x = np.concatenate(parts) if parts else np.zeros((0,) + self.element_shape, np.float32)
        return ArrayData(x, self.labels, class_names=self.class_names, random_flip=self.random_flip,
                         description=f"{self.description}, decoded into memory")


def _checked_encoded_images(contents, labels, names, *, read_files, where, image_size, channels, random_flip,
                            on_bad_file, class_names, cache):
    """`EncodedImages` of the decodable `contents` (after one checking pass), or their `in_memory` copy."""
    started = time.monotonic()
    shapes = _stored_shapes(tf.constant(contents, tf.string), read_files)
    good = _decodable(names, shapes, on_bad_file, where)
    contents, shapes = [c for c, ok in zip(contents, good) if ok], shapes[good]
    labels = None if labels is None else np.asarray(labels, np.int32)[good]
    size = _common_size(shapes, [n for n, ok in zip(names, good) if ok], image_size)
    channels = channels or (3 if (shapes[:, 2] >= 3).any() else 1)
    classes = "" if class_names is None else f" in {len(class_names)} classes"
    description = f"{len(contents)} images{classes} from {where} → {size[0]}×{size[1]}×{channels}"
    logging.info("%s (checked in %.1f s)", description, time.monotonic() - started)
    images = EncodedImages(contents, labels, read_files=read_files, image_size=size, channels=channels,
                           random_flip=random_flip, class_names=class_names, description=description)
    return images.in_memory() if cache else images


def image_folder(path, *, class_subfolders=False, image_size=None, channels=0, random_flip=False,
                 on_bad_file="error", cache=False):
    """The images of a folder (`list_image_files`), streamed as `EncodedImages` (or in memory with `cache`).

    Every file is decoded once first: an undecodable one raises a ValueError naming it
    (``on_bad_file="error"``) or is left out and counted in the log (``"skip"``).

    Args:
        path: the folder, searched recursively.
        class_subfolders: first-level subfolder names are the class labels (sorted).
        image_size: S or (H, W) to resize (shorter side) and centre-crop to, or None (or 0) for the
          stored size (all equal).
        channels: 1 or 3 (converted), or 0 for 3 when any image has colour, else 1.
        random_flip: mirror left-right at random (a function of seed and step).
        on_bad_file: "error" or "skip".
        cache: decode everything once into memory (small sets): the same batches, bitwise.
    """
    image_size = image_size_pair(image_size)
    files, labels, class_names = list_image_files(path, class_subfolders)
    return _checked_encoded_images(files, labels, files, read_files=True, where=os.fspath(path),
                                   image_size=image_size, channels=channels, random_flip=random_flip,
                                   on_bad_file=on_bad_file, class_names=class_names, cache=cache)


def _tfds_image_and_label_keys(name, features):
    """The keys of the first Image feature and of the ClassLabel feature (preferring "label"), or None."""
    import tensorflow_datasets as tfds

    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not images:
        raise ValueError(f"The TFDS dataset has no image feature. Received: name={name!r} with features "
                         f"{sorted(features)}")
    labels = sorted((k != "label", k) for k, f in features.items() if isinstance(f, tfds.features.ClassLabel))
    return images[0], labels[0][1] if labels else None


def tfds_images(name, split="train", *, data_dir=None, image_size=None, channels=0, random_flip=False,
                on_bad_file="error", cache=False):
    """Any TFDS dataset with an image feature (and its class label when it has one) as `EncodedImages`.

    The split's encoded images (PNG/JPEG bytes as TFDS stores them, far smaller than the decoded
    pixels) are read into memory once and decoded, resized and flipped as batches are read; a split
    larger than memory belongs in a folder (`image_folder`). The data comes from the TFDS cache or
    a download (see `prepared_tfds_builder`). Arguments are those of `image_folder`, plus the TFDS
    `name`, `split` (any split string, e.g. "train[:90%]") and `data_dir`.
    """
    import tensorflow_datasets as tfds

    builder = prepared_tfds_builder(name, data_dir)
    image_key, label_key = _tfds_image_and_label_keys(name, builder.info.features)
    dataset = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    keys = (image_key,) if label_key is None else (image_key, label_key)
    dataset = dataset.map(lambda example: tuple(example[k] for k in keys))
    parts = list(dataset.batch(4096).as_numpy_iterator())
    if not parts:
        raise ValueError(f"The TFDS split is empty. Received: name={name!r}, split={split!r}")
    contents = np.concatenate([p[0] for p in parts]).tolist()
    labels = np.concatenate([p[1] for p in parts]) if label_key else None
    class_names = builder.info.features[label_key].names if label_key else None
    names = [f"{name}/{split}[{i}]" for i in range(len(contents))]
    return _checked_encoded_images(contents, labels, names, read_files=False, where=f"TFDS {name}/{split}",
                                   image_size=image_size, channels=channels, random_flip=random_flip,
                                   on_bad_file=on_bad_file, class_names=class_names, cache=cache)


def synthetic_images(shape, num_examples=256, *, num_classes=None, seed=0):
    """Smooth random images of `shape` (H, W, C) in [−1, 1], and random labels: a stand-in for absent data.

    Bilinearly upsampled 4×4 noise, so that the images have some spatial structure to learn.
    Returns ``(x, labels)`` with labels None when `num_classes` is None.
    """
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    coarse = rng.uniform(-1.0, 1.0, (num_examples, 4, 4, channels)).astype(np.float32)
    x = tf.clip_by_value(tf.image.resize(coarse, (height, width), method="bilinear"), -1.0, 1.0).numpy()
    labels = None if num_classes is None else rng.integers(0, num_classes, num_examples).astype(np.int32)
    return x, labels


def _synthetic_stand_in(shape, why, *, class_names=None, num_classes=None, random_flip=False, seed=0):
    """`synthetic_images` as `ArrayData`, announced in one log line."""
    num_classes = len(class_names) if class_names else num_classes
    x, labels = synthetic_images(shape, 512, num_classes=num_classes, seed=seed)
    description = f"{len(x)} synthetic {'×'.join(map(str, shape))} images"
    logging.warning("%s; training on %s instead (config.data.synthetic_if_missing=True).", why, description)
    return ArrayData(x, labels, class_names=class_names, random_flip=random_flip, description=description)


def training_data(name="mnist", split="train", *, source="auto", idx_dir="", data_dir="", num_samples=0, path="",
                  class_subfolders=False, image_size=0, channels=0, random_flip=False, on_bad_file="error",
                  cache=False, synthetic_if_missing=False, seed=0):
    """The training examples of a config's `data` section: its keys are the arguments (but `batch_size`).

    - source "folder": `image_folder(path, …)`, a directory of image files;
    - source "tfds": `tfds_images(name, split, …)`, any TFDS dataset with an image feature;
    - source "auto" or "idx": `load_arrays` — the named image sets (IDX files, the TFDS cache or a
      download), scikit-learn's digits and the toys — images passed through `standardize_images`.

    Every image source takes `image_size` (0: as stored), `channels` (0: as stored) and
    `random_flip`. With `synthetic_if_missing` (every config's `:tiny` variant), a named image set
    that is not on disk, or a folder source without a path, is replaced by `synthetic_images` of its
    shape, said in one log line, so the run needs neither a download nor a data directory.

    Returns:
        An `ArrayData` or `EncodedImages`: `element_shape`, `num_examples`, `labels`, `class_names`,
        `batches(batch_size, seed=, start_step=, with_labels=)` (batch k a function of (seed, k)),
        `examples()` (each example once, in order) and `in_memory()`.
    """
    size = image_size_pair(image_size)
    images = {"image_size": size, "channels": channels, "random_flip": random_flip}
    if source == "folder":
        if not path and synthetic_if_missing:
            shape = (size or (32, 32)) + (channels or 3,)
            return _synthetic_stand_in(shape, "No image folder given (config.data.path='')", seed=seed,
                                       class_names=("class_a", "class_b") if class_subfolders else None,
                                       random_flip=random_flip)
        if not path:
            raise ValueError("source='folder' needs a directory of images: set config.data.path. Received: path=''")
        return image_folder(path, class_subfolders=class_subfolders, on_bad_file=on_bad_file, cache=cache, **images)
    if source == "tfds":
        return tfds_images(name, split, data_dir=data_dir or None, on_bad_file=on_bad_file, cache=cache, **images)
    arrays = {"source": source, "idx_dir": idx_dir or None, "data_dir": data_dir or None}
    if name in IMAGE_DATASET_NAMES:
        if synthetic_if_missing and not image_set_on_disk(name, **arrays):
            shape = tuple(int(d) for d in standardize_images(np.zeros(IMAGE_DATASET_SHAPES[name], np.uint8),
                                                             image_size=size, channels=channels).shape)
            return _synthetic_stand_in(shape, f"{name} is not on disk (no IDX files found, not in the TFDS cache)",
                                       num_classes=10, random_flip=random_flip, seed=seed)
        pixels, labels = load_arrays(name, split, uint8=True, **arrays)
        x = standardize_images(pixels, image_size=size, channels=channels).numpy()
        return ArrayData(x, labels, random_flip=random_flip, description=f"{name}/{split}: {len(x)} images")
    x, labels = load_arrays(name, split, num_samples=num_samples or None, seed=seed, **arrays)
    return ArrayData(x, labels, random_flip=random_flip, description=f"{name}: {len(x)} examples")


# -- checks of data against a model -------------------------------------------------------------
# How far past [−1, 1] data may lie before it counts as outside the model space (float round-off).
MODEL_SPACE_TOLERANCE = 1e-3


def check_in_model_space(x, low=-1.0, high=1.0, *, what="The first training batch"):
    """Raises ValueError when `x` leaves the model space [low, high], naming the observed min and max.

    Images left in 0–255 (or standardised to mean 0, std 1) train without error but learn the
    wrong thing. Eagerly this raises a ValueError (and logs a warning for data in [0, 1], likely
    unscaled); inside a `tf.function` it returns a `tf.debugging.Assert` op with the same message.
    Non-finite values are left to the training step's non-finite guard (`DiffusionModel.train_step`).
    """
    values = tf.reshape(x, [-1])
    values = tf.boolean_mask(values, tf.math.is_finite(values))
    minimum, maximum = tf.reduce_min(values), tf.reduce_max(values)  # ±inf (inside) when none is finite
    inside = tf.logical_and(minimum >= low - MODEL_SPACE_TOLERANCE, maximum <= high + MODEL_SPACE_TOLERANCE)
    message = (f"{what} lies outside the model space [{low:g}, {high:g}]: scale the data to it (x / 127.5 - 1 "
               "for uint8 pixels).")
    if not tf.executing_eagerly():
        return tf.debugging.Assert(inside, [message, "Received: min =", minimum, "max =", maximum])
    minimum, maximum = float(minimum), float(maximum)
    if not bool(inside):
        raise ValueError(f"{message} Received: min={minimum:.6g}, max={maximum:.6g}")
    if 0.0 <= minimum <= maximum <= 1.0 and low < 0.0:
        logging.warning("%s lies in [%g, %g]: data in [0, 1] is probably unscaled (the model space is [%g, %g]).",
                        what, minimum, maximum, low, high)
    return None


def check_prediction_shape(prediction_shape, data_shape, *, network="the network"):
    """Raises ValueError unless a prediction has the data's shape (e.g. a 1-channel output for RGB data).

    Shapes exclude the batch axis; a channel mismatch names `output_channels`.
    """
    prediction_shape, data_shape = tuple(prediction_shape), tuple(data_shape)
    if prediction_shape == data_shape:
        return
    if prediction_shape[:-1] == data_shape[:-1]:
        raise ValueError(f"{network} predicts {prediction_shape[-1]} channels but the data has {data_shape[-1]}: "
                         f"set its output_channels to {data_shape[-1]} (config.model.output_channels). "
                         f"Received: output_channels={prediction_shape[-1]}")
    raise ValueError(f"{network}'s output shape differs from the data's {data_shape}. "
                     f"Received: output shape {prediction_shape}")
