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
import zlib

import numpy as np
import tensorflow as tf

IMAGE_DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
TOY_DATASET_NAMES = ("moons", "gmm1d")

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
    repo_root = pathlib.Path(__file__).resolve().parent.parent
    shared_dir = repo_root.parent / "shared" / "data" / "mnist"
    return shared_dir if shared_dir.is_dir() else None


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
        idx_dir: For ``"mnist"`` only: a directory holding the original IDX files
            (see `load_mnist_idx`). When given, TFDS is not used at all, which
            allows offline use (see `default_mnist_dir`).
        with_labels: If True, yield ``(image, label)`` pairs with an int32 label.

    Returns:
        An unbatched ``tf.data.Dataset`` of float32 images ``[H, W, C]`` in
        [-1, 1] (``(28, 28, 1)`` for the MNIST sets, ``(32, 32, 3)`` for
        CIFAR-10), or of ``(image, label)`` pairs. It is not cached:
        `make_training_pipeline` caches the scaled images, and caching here too
        would hold a second full copy in memory.

    Raises:
        ValueError: If ``name`` is unknown, or ``idx_dir`` is given for a dataset
            other than MNIST.
    """
    if name not in IMAGE_DATASET_NAMES:
        raise ValueError(
            f"Unknown image dataset {name!r}. Known names: {', '.join(IMAGE_DATASET_NAMES)}"
        )
    if idx_dir is not None:
        if name != "mnist":
            raise ValueError(
                f"`idx_dir` is only supported for 'mnist'. Received: name={name!r}"
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


def load_arrays(name, split="train", *, data_dir=None, idx_dir=None, num_samples=None, seed=0):
    """Loads a whole dataset into memory, scaled as the pipelines above scale it.

    Args:
        name: an image dataset ("mnist", "fashion_mnist", "cifar10"), "digits" (scikit-learn's
            8×8 digits, offline) or a toy ("moons", "gmm1d").
        split: the split of an image dataset.
        data_dir: TFDS data directory.
        idx_dir: a directory of the original MNIST IDX files (mnist only; no TFDS needed).
        num_samples: size of a toy dataset.
        seed: seed of a toy dataset.

    Returns:
        ``(x, labels)``: float32 data and int32 labels (None for toys).
    """
    if name in TOY_DATASET_NAMES:
        if num_samples is None:
            raise ValueError(f"Toy dataset {name!r} needs num_samples. Received: num_samples=None")
        return toy_dataset(name, num_samples, seed=seed), None
    if name == "digits":
        return load_digits_dataset()
    if name == "mnist" and idx_dir is not None:
        images, labels = load_mnist_idx(idx_dir, split)
        return _scale_uint8_image(images).numpy(), labels
    dataset = load_image_dataset(name, split, data_dir=data_dir, with_labels=True)
    parts = [(x, y) for x, y in dataset.batch(8192).as_numpy_iterator()]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]).astype(np.int32)


def step_indexed_batches(x, labels, batch_size, *, seed=0, start_step=0):
    """An endless dataset whose batch k is a fixed function of (seed, k).

    Epoch e visits the examples in the order of a stateless permutation seeded by (seed, e)
    (`tf.random.experimental.index_shuffle`), so a run resumed at step k reads exactly the
    batches an uninterrupted run reads, with no iterator state to save.

    Args:
        x: array [N, ...] held in memory.
        labels: array [N] or None.
        batch_size: examples per batch, 1 <= batch_size <= N.
        seed: seed of the order.
        start_step: the first batch index produced.

    Returns:
        A `tf.data.Dataset` of ``x`` batches, or ``(x, labels)`` batches.
    """
    n = len(x)
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}] (the dataset size). Received: batch_size={batch_size!r}")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be an integer >= 0. Received: start_step={start_step!r}")
    x = tf.convert_to_tensor(x)
    labels = None if labels is None else tf.convert_to_tensor(labels, tf.int32)
    seed = tf.constant(seed, tf.int64)

    def permuted(index, epoch):
        return tf.random.experimental.index_shuffle(index, tf.stack([seed, epoch]), n - 1)

    def batch_at(step):
        positions = step * batch_size + tf.range(batch_size, dtype=tf.int64)
        first_epoch = positions[0] // n
        # A batch spans at most two epochs since batch_size <= N.
        index = tf.where(
            positions // n == first_epoch, permuted(positions % n, first_epoch), permuted(positions % n, first_epoch + 1)
        )
        batch = tf.gather(x, index)
        return batch if labels is None else (batch, tf.gather(labels, index))

    steps = tf.data.Dataset.counter(start=start_step, dtype=tf.int64)
    return steps.map(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
