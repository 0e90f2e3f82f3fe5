"""Tests for tfdiffusion.data. Offline and deterministic."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import data

MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _idx_bytes(array, magic):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload, gzipped):
    if gzipped:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def mnist_dir():
    directory = data.default_mnist_dir()
    if directory is None:
        pytest.skip("No local MNIST IDX directory (set TFDIFFUSION_MNIST_DIR).")
    return directory


# --- IDX reading ----------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_round_trip(tmp_path, gzipped):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    suffix = ".gz" if gzipped else ""
    images_path = _write(tmp_path / f"images{suffix}", _idx_bytes(images, 2051), gzipped)
    labels_path = _write(tmp_path / f"labels{suffix}", _idx_bytes(labels, 2049), gzipped)

    read_images = data.read_idx(images_path)
    read_labels = data.read_idx(str(labels_path))

    assert read_images.dtype == np.uint8 and read_labels.dtype == np.uint8
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_bad_magic_names_path_and_value(tmp_path, gzipped):
    path = _write(tmp_path / "bad.idx", _idx_bytes(np.zeros((2, 2, 2)), 2052), gzipped)
    with pytest.raises(ValueError, match="2052") as error:
        data.read_idx(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_truncated_payload_names_path(tmp_path, gzipped):
    payload = _idx_bytes(np.zeros((3, 4, 4)), 2051)[:-5]
    path = _write(tmp_path / "short.idx", payload, gzipped)
    with pytest.raises(ValueError, match="truncated") as error:
        data.read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_truncated_gzip_stream_names_path(tmp_path):
    compressed = gzip.compress(_idx_bytes(np.arange(200).reshape(2, 10, 10), 2051))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError) as error:
        data.read_idx(path)
    assert str(path) in str(error.value)


def test_load_mnist_idx_errors(tmp_path):
    with pytest.raises(ValueError, match="Received: split='foo'"):
        data.load_mnist_idx(tmp_path, split="foo")
    missing_dir = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_mnist_idx(missing_dir)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist_idx(tmp_path)


def test_load_mnist_idx_accepts_raw_file_names(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(images, 2051), gzipped=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.array([3, 7]), 2049), gzipped=False)
    read_images, read_labels = data.load_mnist_idx(tmp_path, split="test")
    assert read_images.shape == (2, 28, 28, 1) and read_images.dtype == np.uint8
    assert read_labels.dtype == np.int32
    np.testing.assert_array_equal(read_labels, [3, 7])


def test_default_mnist_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(data.MNIST_DIR_ENV_VAR, str(tmp_path))
    assert data.default_mnist_dir() == tmp_path
    monkeypatch.setenv(data.MNIST_DIR_ENV_VAR, str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="typo"):
        data.default_mnist_dir()


# --- Real MNIST files (skipped when absent) -------------------------------------


@pytest.mark.parametrize(
    "split, num_examples, label_counts",
    [("train", 60000, MNIST_TRAIN_LABEL_COUNTS), ("test", 10000, MNIST_TEST_LABEL_COUNTS)],
)
def test_mnist_idx_matches_published_counts(mnist_dir, split, num_examples, label_counts):
    images, labels = data.load_mnist_idx(mnist_dir, split)
    assert images.shape == (num_examples, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (num_examples,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), label_counts)


def test_load_image_dataset_from_idx(mnist_dir):
    dataset = data.load_image_dataset("mnist", "test", idx_dir=mnist_dir, with_labels=True)
    images, labels = next(iter(dataset.batch(8)))
    assert images.shape == (8, 28, 28, 1)
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    # MNIST digits have pure-black background and at least some saturated ink.
    assert float(tf.reduce_min(images)) == -1.0
    assert float(tf.reduce_max(images)) == 1.0


# --- TFDS path, via mock data -----------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))],
)
@pytest.mark.parametrize("with_labels", [False, True])
def test_load_image_dataset_tfds(name, shape, with_labels):
    tfds = pytest.importorskip("tensorflow_datasets")
    num_examples = 6
    with tfds.testing.mock_data(num_examples=num_examples):
        dataset = data.load_image_dataset(name, "train", with_labels=with_labels)
        examples = list(dataset)
    assert len(examples) == num_examples
    for example in examples:
        image, label = example if with_labels else (example, None)
        assert image.shape == shape and image.dtype == tf.float32
        assert -1.0 <= float(tf.reduce_min(image)) <= float(tf.reduce_max(image)) <= 1.0
        if with_labels:
            assert label.shape == () and label.dtype == tf.int32
            assert 0 <= int(label) < 10


def test_load_image_dataset_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="svhn.*mnist, fashion_mnist, cifar10"):
        data.load_image_dataset("svhn")


def test_load_image_dataset_idx_dir_only_for_mnist(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        data.load_image_dataset("cifar10", idx_dir=tmp_path)


# --- Training pipeline -------------------------------------------------------------


def _first_batches(seed, num_batches=3):
    dataset = tf.data.Dataset.range(100)
    pipeline = data.make_training_pipeline(dataset, 8, shuffle_buffer=100, seed=seed)
    return [batch.numpy() for batch in pipeline.take(num_batches)]


def test_training_pipeline_batches_and_repeats():
    digits, _ = data.load_digits_dataset()
    dataset = tf.data.Dataset.from_tensor_slices(digits[:20])
    batches = list(data.make_training_pipeline(dataset, 8, seed=1).take(5))
    # 5 batches of 8 from 20 examples: the stream repeats, every batch full.
    assert [tuple(batch.shape) for batch in batches] == [(8, 8, 8, 1)] * 5

    finite = data.make_training_pipeline(dataset, 8, repeat=False, drop_remainder=False)
    assert [int(batch.shape[0]) for batch in finite] == [8, 8, 4]


def test_training_pipeline_seeded_order_is_reproducible():
    first = _first_batches(seed=3)
    np.testing.assert_array_equal(first, _first_batches(seed=3))
    assert not np.array_equal(first, _first_batches(seed=4))
    # Each batch is a shuffle, not the input order.
    assert not np.array_equal(first[0], np.arange(8))


def test_training_pipeline_reshuffles_each_epoch():
    dataset = tf.data.Dataset.range(16)
    pipeline = data.make_training_pipeline(dataset, 16, shuffle_buffer=16, seed=0)
    epoch_1, epoch_2 = (batch.numpy() for batch in pipeline.take(2))
    np.testing.assert_array_equal(np.sort(epoch_1), np.arange(16))
    np.testing.assert_array_equal(np.sort(epoch_2), np.arange(16))
    assert not np.array_equal(epoch_1, epoch_2)


def test_training_pipeline_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.make_training_pipeline(tf.data.Dataset.range(4), 0)


# --- Toys ---------------------------------------------------------------------------------


def test_moons_noise_free_fills_unit_square_exactly():
    # 501 points per moon: sklearn's evenly spaced angles then include the apex at pi/2.
    points = data.make_moons_dataset(1002, noise=0.0)
    assert points.shape == (1002, 2) and points.dtype == np.float32
    np.testing.assert_allclose(points.min(axis=0), [-1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(points.max(axis=0), [1.0, 1.0], atol=1e-6)


def test_moons_two_clusters_around_scaled_centre():
    points = data.make_moons_dataset(4000, seed=0)
    assert np.all(np.abs(points) <= 1.2)  # Noise may step slightly outside [-1, 1].
    # Undo the documented fixed scaling to recover sklearn's units.
    x = (points[:, 0] + 1) / 2 * 3.0 - 1.0
    y = (points[:, 1] + 1) / 2 * 1.5 - 0.5
    # Each point lies near one of the two unit half-circles: the upper moon centred at
    # (0, 0) or the lower moon centred at (1, 0.5).
    distance_to_upper = np.abs(np.hypot(x, y) - 1.0)
    distance_to_lower = np.abs(np.hypot(x - 1.0, y - 0.5) - 1.0)
    assert np.all(np.minimum(distance_to_upper, distance_to_lower) < 0.3)
    # Both moons are present in equal parts: x < 0 holds only the left half of the upper
    # moon and x > 1 only the right half of the lower moon, a quarter of the points each.
    left, right = x < 0.0, x > 1.0
    assert abs(left.mean() - 0.25) < 0.03 and abs(right.mean() - 0.25) < 0.03
    assert y[left].mean() > 0.4 and y[right].mean() < 0.1
    # The two moons' mean is (0.5, 0.25), which the constants map to the origin.
    np.testing.assert_allclose(points.mean(axis=0), [0.0, 0.0], atol=0.03)


def test_moons_is_seeded():
    np.testing.assert_array_equal(data.make_moons_dataset(50, seed=7), data.make_moons_dataset(50, seed=7))
    assert not np.array_equal(data.make_moons_dataset(50, seed=7), data.make_moons_dataset(50, seed=8))


def test_gmm1d_matches_closed_form_moments():
    means = np.array([-2.0, 0.5, 2.0])
    stds = np.array([0.3, 0.4, 0.2])
    weights = np.array([0.3, 0.4, 0.3])
    num_samples = 200_000
    samples = data.make_gmm1d_dataset(num_samples, seed=0)
    assert samples.shape == (num_samples, 1) and samples.dtype == np.float32

    mixture_mean = np.sum(weights * means)
    mixture_var = np.sum(weights * (stds**2 + means**2)) - mixture_mean**2
    samples = samples[:, 0].astype(np.float64)
    # Five Monte-Carlo standard errors: the mean's and (from the sample 4th moment) the variance's.
    mean_tolerance = 5 * np.sqrt(mixture_var / num_samples)
    fourth_moment = np.mean((samples - samples.mean()) ** 4)
    var_tolerance = 5 * np.sqrt((fourth_moment - samples.var() ** 2) / num_samples)
    assert abs(samples.mean() - mixture_mean) < mean_tolerance
    assert abs(samples.var() - mixture_var) < var_tolerance


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weights=(0.5, 0.4, 0.3)), r"weights=\[0.5, 0.4, 0.3\]"),
        (dict(weights=(1.2, -0.2, 0.0)), r"weights=\[1.2, -0.2, 0.0\]"),
        (dict(stds=(0.3, 0.0, 0.2)), r"stds=\[0.3, 0.0, 0.2\]"),
        (dict(means=(0.0, 1.0)), r"means=\[0.0, 1.0\]"),
    ],
)
def test_gmm1d_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.make_gmm1d_dataset(10, **kwargs)


def test_toy_dataset_dispatch():
    assert data.toy_dataset("moons", 10).shape == (10, 2)
    assert data.toy_dataset("gmm1d", 10).shape == (10, 1)
    np.testing.assert_array_equal(data.toy_dataset("moons", 10, seed=2), data.make_moons_dataset(10, seed=2))
    with pytest.raises(ValueError, match="'spiral'.*moons, gmm1d"):
        data.toy_dataset("spiral", 10)


def test_load_digits_dataset():
    images, labels = data.load_digits_dataset()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() == -1.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))


# --- load_arrays: the one loader of whole datasets -------------------------------


def _idx_dir(directory, num_images=3):
    images = (np.arange(num_images * 28 * 28).reshape(num_images, 28, 28) * 7) % 256
    for stem in ("train", "t10k"):
        _write(directory / f"{stem}-images-idx3-ubyte.gz", _idx_bytes(images, 2051), gzipped=True)
        _write(directory / f"{stem}-labels-idx1-ubyte.gz", _idx_bytes(np.arange(num_images), 2049), gzipped=True)
    return directory


def test_resolve_idx_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv(data.MNIST_DIR_ENV_VAR, str(tmp_path))
    assert data.resolve_idx_dir("mnist") == tmp_path  # $TFDIFFUSION_MNIST_DIR
    assert data.resolve_idx_dir("mnist", idx_dir="/given") == "/given"  # the argument first
    assert data.resolve_idx_dir("mnist", source="tfds", idx_dir="/given") is None
    assert data.resolve_idx_dir("fashion_mnist") is None  # MNIST's directory is not Fashion-MNIST's
    assert data.resolve_idx_dir("fashion_mnist", idx_dir="/fashion") == "/fashion"
    assert data.resolve_idx_dir("cifar10") is None and data.resolve_idx_dir("moons", source="idx") is None
    with pytest.raises(ValueError, match="Received: name='fashion_mnist', idx_dir=None"):
        data.resolve_idx_dir("fashion_mnist", source="idx")
    with pytest.raises(ValueError, match="Received: name='cifar10', source='idx'"):
        data.resolve_idx_dir("cifar10", source="idx")
    with pytest.raises(ValueError, match="Received: source='ftp'"):
        data.resolve_idx_dir("mnist", source="ftp")


def test_load_arrays_from_idx_scaled_and_uint8(tmp_path):
    directory = _idx_dir(tmp_path)
    pixels, labels = data.load_arrays("fashion_mnist", "test", idx_dir=directory, uint8=True)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(labels, [0, 1, 2])
    x, _ = data.load_arrays("mnist", "test", source="idx", idx_dir=directory)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def test_load_arrays_tfds_scaled_and_uint8():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        pixels, labels = data.load_arrays("cifar10", "train", uint8=True)
        x, same_labels = data.load_arrays("cifar10", "train")
    assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, same_labels)
    np.testing.assert_array_equal(x, pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def test_load_arrays_other_datasets_and_errors():
    x, labels = data.load_arrays("moons", num_samples=7, seed=1)
    assert x.shape == (7, 2) and labels is None
    assert data.load_arrays("digits")[0].shape == (1797, 8, 8, 1)
    with pytest.raises(ValueError, match="Received: name='svhn'"):
        data.load_arrays("svhn")
    with pytest.raises(ValueError, match="Received: num_samples=None"):
        data.load_arrays("gmm1d")
    with pytest.raises(ValueError, match="Received: name='moons', uint8=True"):
        data.load_arrays("moons", num_samples=3, uint8=True)
