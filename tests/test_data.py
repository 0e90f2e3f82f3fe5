"""Tests for tfdiffusion.data. Offline and deterministic."""

import gzip
import logging
import pathlib
import re
import threading

import numpy as np
import pytest
import tensorflow as tf
from image_folders import write_image, write_image_folder

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
    assert data.resolve_idx_dir("mnist") is None  # it holds no IDX files: TFDS is next
    assert data.resolve_idx_dir("mnist", source="idx") == tmp_path  # asked for IDX files: fails naming them
    _idx_dir(tmp_path)
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


# --- Image folders ------------------------------------------------------------------


def test_list_image_files_recursive_sorted_with_class_labels(tmp_path):
    write_image_folder(tmp_path, classes=("tulip", "rose"), per_class=2)
    write_image(tmp_path / "rose" / "deeper" / "B.PNG", np.zeros((4, 4, 3)))  # any depth, any case
    (tmp_path / "rose" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "rose" / ".hidden.png", np.zeros((4, 4, 3)))
    files, labels, class_names = data.list_image_files(tmp_path, class_subfolders=True)
    relative = [str(pathlib.Path(f).relative_to(tmp_path)) for f in files]
    assert relative == ["rose/000.png", "rose/001.jpg", "rose/deeper/B.PNG", "tulip/000.png", "tulip/001.jpg"]
    assert class_names == ("rose", "tulip")  # sorted: label 0 is "rose"
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    files_only, no_labels, no_names = data.list_image_files(tmp_path)
    assert files_only == files and no_labels is None and no_names is None


def test_missing_empty_and_loose_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Received: path='{tmp_path / 'nowhere'}'"):
        data.list_image_files(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match=f"holds no PNG/JPG/JPEG/BMP/GIF files .*Received: path='{empty}'"):
        data.list_image_files(tmp_path / "empty")
    write_image_folder(tmp_path / "mixed", per_class=1)
    write_image(tmp_path / "mixed" / "loose.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=f"Received: '{tmp_path / 'mixed' / 'loose.png'}'"):
        data.list_image_files(tmp_path / "mixed", class_subfolders=True)


def test_decoded_images_are_the_stored_pixels_scaled(tmp_path):
    written = write_image_folder(tmp_path, classes=None, per_class=4, formats=("png", "bmp"))
    for path, pixels in written.items():
        image = data.decode_image(tf.io.read_file(str(path)))
        np.testing.assert_array_equal(image.numpy(), pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def test_channels_are_converted(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 9, np.uint8)], axis=-1)
    grey = rgb[..., :1]
    read = {name: tf.io.read_file(str(write_image(tmp_path / f"{name}.png", pixels)))
            for name, pixels in (("rgb", rgb), ("rgba", rgba), ("grey", grey))}
    scaled = lambda pixels: pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # noqa: E731
    np.testing.assert_array_equal(data.decode_image(read["rgba"]).numpy(), scaled(rgb))  # alpha dropped
    np.testing.assert_array_equal(data.decode_image(read["grey"], channels=3).numpy(), scaled(np.repeat(grey, 3, -1)))
    luma = data.decode_image(read["rgb"], channels=1).numpy()
    expected = rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140]  # ITU-R 601, as tf.image.rgb_to_grayscale
    np.testing.assert_allclose((luma[..., 0] + 1) * 127.5, expected, atol=1.0)
    gif = tmp_path / "two_frames.gif"
    frames = [rgb[..., 0], 255 - rgb[..., 0]]
    from PIL import Image

    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(frames[1])])
    first = data.decode_image(tf.io.read_file(str(gif)), channels=1).numpy()[..., 0]
    np.testing.assert_allclose((first + 1) * 127.5, frames[0], atol=1.0)  # GIF: the first frame (palette-exact)


def test_resize_scales_the_shorter_side_and_keeps_the_centre():
    pixels = np.zeros((20, 40, 1), np.uint8)
    pixels[:, 10:30] = 200  # the central 20×20 square
    image = data.standardize_images(pixels, image_size=(10, 10)).numpy()
    assert image.shape == (10, 10, 1)
    # 20×40 → 10×20, centre crop = columns 5..15 of the scaled image = the square (antialiased edges aside).
    np.testing.assert_allclose(image[:, 1:-1], 200 / 127.5 - 1, atol=1e-5)
    square = np.arange(400, dtype=np.uint8).reshape(20, 20, 1)
    # (10, 20) from 20×20: the width already fits (scale 1), so this is an exact crop of rows 5..15.
    np.testing.assert_array_equal(data.standardize_images(square, image_size=(10, 20)).numpy(),
                                  square[5:15].astype(np.float32) / np.float32(127.5) - np.float32(1.0))
    assert data.standardize_images(np.zeros((3, 7, 9, 3), np.uint8), image_size=(4, 4)).shape == (3, 4, 4, 3)


@pytest.mark.parametrize("value, pair",
                         [(0, None), (None, None), (64, (64, 64)), ((32, 48), (32, 48)), ([8, 4], (8, 4))])
def test_image_size_pair(value, pair):
    assert data.image_size_pair(value) == pair


@pytest.mark.parametrize("value", [-1, (32,), (0, 5), 2.5, "64", True])
def test_image_size_pair_names_a_bad_value(value):
    with pytest.raises(ValueError, match=re.escape(f"Received: image_size={value!r}")):
        data.image_size_pair(value)


def test_undecodable_file_is_named_or_skipped_and_counted(tmp_path, caplog):
    write_image_folder(tmp_path, per_class=3)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes((tmp_path / "dog" / "000.png").read_bytes()[:60])  # a truncated PNG
    with pytest.raises(ValueError, match=f"1 of the 7 images .* cannot be read or decoded.*Received: '{bad}'"):
        data.image_folder(tmp_path, class_subfolders=True)
    with caplog.at_level(logging.WARNING):
        images = data.image_folder(tmp_path, class_subfolders=True, on_bad_file="skip")
    assert images.num_examples == 6
    assert "Skipping 1 of the 7 images" in caplog.text and str(bad) in caplog.text


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3)))
    write_image(tmp_path / "b.png", np.zeros((8, 6, 3)))
    with pytest.raises(ValueError, match=r"a.png: 8×8, .*b.png: 8×6\).*Received: image_size=0"):
        data.image_folder(tmp_path)
    assert data.image_folder(tmp_path, image_size=(4, 4)).element_shape == (4, 4, 3)


@pytest.fixture(scope="module")
def numbered_folder(tmp_path_factory):
    """12 grey 5×6 PNGs, image i filled with the value 10·i (so a decoded image names its file), 2 classes."""
    root = tmp_path_factory.mktemp("numbered")
    for i in range(12):
        pixels = np.full((5, 6, 1), 10 * i, np.uint8)
        pixels[:, 0] = 255  # a bright left column, to see flips
        write_image(root / ("even" if i % 2 == 0 else "odd") / f"{i:02d}.png", pixels)
    return root


def _file_numbers(images):
    return np.round((images[:, 2, 3, 0] + 1) * 127.5 / 10).astype(int).tolist()


def test_streamed_epochs_are_permutations_and_batches_resume(numbered_folder):
    images = data.image_folder(numbered_folder, class_subfolders=True)
    assert images.element_shape == (5, 6, 1) and images.class_names == ("even", "odd")
    batches = list(images.batches(4, seed=5).take(9).as_numpy_iterator())
    numbers = sum((_file_numbers(x) for x, _ in batches), [])
    for epoch in range(3):  # 12 images in batches of 4: each epoch visits every file once, in a new order
        assert sorted(numbers[12 * epoch:12 * (epoch + 1)]) == list(range(12))
    assert numbers[:12] != numbers[12:24] != numbers[24:]
    for x, labels in batches:  # the label is the class subfolder of the file
        np.testing.assert_array_equal(labels, np.array(_file_numbers(x)) % 2)
    resumed = list(images.batches(4, seed=5, start_step=5).take(4).as_numpy_iterator())
    for (a, la), (b, lb) in zip(batches[5:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert _file_numbers(next(iter(images.batches(4, seed=6)))[0]) != numbers[:4]


def test_streamed_batches_equal_the_cached_ones_bitwise(numbered_folder):
    streamed = data.image_folder(numbered_folder, class_subfolders=True, random_flip=True, image_size=(4, 4))
    cached = data.image_folder(numbered_folder, class_subfolders=True, random_flip=True, image_size=(4, 4), cache=True)
    assert isinstance(cached, data.ArrayData) and cached.x.shape == (12, 4, 4, 1)
    for (a, la), (b, lb) in zip(streamed.batches(8, seed=2, start_step=3).take(4).as_numpy_iterator(),
                                cached.batches(8, seed=2, start_step=3).take(4).as_numpy_iterator()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_random_flip_mirrors_about_half_the_images(numbered_folder):
    images = data.image_folder(numbered_folder, random_flip=True)
    x = np.concatenate([b for b in images.batches(12, seed=0).take(8).as_numpy_iterator()])
    flipped = x[:, 0, -1, 0] == 1.0  # the bright column moved to the right
    assert np.all(flipped | (x[:, 0, 0, 0] == 1.0))  # every image is the file or its mirror image
    assert 0.3 < flipped.mean() < 0.7  # 96 fair coin flips (fixed seed)
    unflipped = data.image_folder(numbered_folder)
    assert all(b[0, 0, 0, 0] == 1.0 for b in unflipped.batches(12, seed=0).take(2).as_numpy_iterator())


# --- TFDS images, synthetic stand-ins, and data that is not there -------------------------


def test_tfds_images_of_any_dataset_with_an_image_feature():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):  # variable-size JPEGs with 102 named classes
        flowers = data.training_data("oxford_flowers102", "train", source="tfds", image_size=12)
        x, labels = next(iter(flowers.batches(4, seed=0)))
    assert flowers.num_examples == 10 and flowers.element_shape == (12, 12, 3)
    assert len(flowers.class_names) == 102 and flowers.class_names[0] == "pink primrose"
    assert x.shape == (4, 12, 12, 3) and labels.dtype == tf.int32
    assert -1.0 <= float(tf.reduce_min(x)) <= float(tf.reduce_max(x)) <= 1.0


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No MNIST anywhere (an empty $TFDIFFUSION_MNIST_DIR, an empty TFDS data_dir) and a download that hangs."""
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / "mnist_dir").mkdir()
    (tmp_path / "tfds").mkdir()
    monkeypatch.setenv(data.MNIST_DIR_ENV_VAR, str(tmp_path / "mnist_dir"))
    monkeypatch.setattr(data, "TFDS_STALL_SECONDS", 1.0)
    hang = lambda self, **kwargs: threading.Event().wait()  # noqa: E731  (an unreachable host)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", hang)
    return str(tmp_path / "tfds")


def test_absent_mnist_stops_with_one_line_saying_what_to_set(offline):
    with pytest.raises(data.DataNotFoundError) as error:
        data.training_data("mnist", data_dir=offline)
    message = str(error.value)
    assert "\n" not in message and "no data arrived for 1 s" in message
    for setting in ("config.data.idx_dir", "$TFDIFFUSION_MNIST_DIR", "config.data.data_dir"):
        assert setting in message
    assert f"Received: idx_dir=None, $TFDIFFUSION_MNIST_DIR='{offline[:-4]}mnist_dir', data_dir='{offline}'" in message


def test_failing_download_is_reported(offline, monkeypatch):
    import tensorflow_datasets as tfds

    def refuse(self, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'\nretrying")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    with pytest.raises(data.DataNotFoundError, match=r"could not download it \(ConnectionError: Failed to resolve "
                                                     r"'storage.googleapis.com'\)\. Set config.data.idx_dir"):
        data.load_arrays("fashion_mnist", data_dir=offline)


def test_absent_data_is_replaced_by_synthetic_images_when_asked(offline, caplog):
    with caplog.at_level(logging.WARNING):
        mnist = data.training_data("mnist", data_dir=offline, synthetic_if_missing=True)
        cifar = data.training_data("cifar10", data_dir=offline, synthetic_if_missing=True, channels=1, image_size=16)
        folder = data.training_data(source="folder", synthetic_if_missing=True, image_size=8, class_subfolders=True)
    assert mnist.element_shape == (28, 28, 1) and mnist.labels.max() < 10
    assert cifar.element_shape == (16, 16, 1)
    assert folder.element_shape == (8, 8, 3) and folder.class_names == ("class_a", "class_b")
    assert caplog.text.count("training on 512 synthetic") == 3 and "mnist is not on disk" in caplog.text
    assert -1.0 <= mnist.x.min() < mnist.x.max() <= 1.0


def test_folder_source_without_a_path():
    with pytest.raises(ValueError, match="set config.data.path. Received: path=''"):
        data.training_data(source="folder")


# --- Checks of data against the model ------------------------------------------------------


def test_data_outside_the_model_space_is_named():
    data.check_in_model_space(tf.constant([-1.0, 0.3, 1.0]))
    with pytest.raises(ValueError, match=r"outside the model space \[-1, 1\].*Received: min=0, max=255$"):
        data.check_in_model_space(tf.constant([[0.0, 255.0]]))

    @tf.function
    def in_a_graph(x):
        data.check_in_model_space(x)
        return x

    in_a_graph(tf.constant([0.5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the model space"):
        in_a_graph(tf.constant([-3.0]))


def test_prediction_of_another_shape_is_named():
    data.check_prediction_shape((8, 8, 3), (8, 8, 3))
    with pytest.raises(ValueError, match="predicts 1 channels but the data has 3.*Received: output_channels=1"):
        data.check_prediction_shape((8, 8, 1), (8, 8, 3), network="SeedUNet")
    with pytest.raises(ValueError, match=r"Received: output shape \(4, 4, 3\)"):
        data.check_prediction_shape((4, 4, 3), (8, 8, 3))


def test_a_flat_folder_of_numbered_pngs_batches_exactly_as_the_arrays_it_came_from(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 7, 7, 1), dtype=np.uint8)
    for i, image in enumerate(pixels):  # MNIST written as PNGs in its own order
        write_image(tmp_path / f"{i:05d}.png", image)
    arrays = data.ArrayData(data.standardize_images(pixels).numpy(), random_flip=True)
    folder = data.image_folder(tmp_path, random_flip=True)
    for a, b in zip(arrays.batches(16, seed=9).take(6).as_numpy_iterator(),
                    folder.batches(16, seed=9).take(6).as_numpy_iterator()):
        np.testing.assert_array_equal(a, b)  # so the same config and seed train bitwise the same model
