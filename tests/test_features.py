"""tfdiffusion.features: the classifier and Inception-V3 feature extractors, the clean resize, and the
reference statistics of arrays, folders and their cache.

The Inception network is built once per module with random weights (no download here): the tests
check the plumbing and the properties that hold for any weights (shapes, quantisation, FID of a set
with itself, precision/recall), not ImageNet numbers.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import data, features, metrics
from tfdiffusion.layers import build_classifier


def smooth_images(n, size=32, seed=0):
    """RGB images in [0, 1] of a few smooth waves (structure, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    return np.stack([np.stack([0.5 + 0.5 * np.sin(6 * x + p), 0.5 + 0.5 * np.cos(5 * y + p), x * y], axis=-1)
                     for p in rng.uniform(0, 6, n)])


def write_png_folder(directory, images):
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (directory / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return directory


@pytest.fixture(scope="module")
def inception():
    keras.utils.set_random_seed(0)
    return features.InceptionExtractor(weights=None, batch_size=8)


@pytest.fixture
def classifier():
    keras.utils.set_random_seed(0)
    model = build_classifier(dropout=0.5, batch_norm=True)
    # Non-trivial batch-norm moving statistics, so training/inference mode differ visibly.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    return model



# -- the classifier features ------------------------------------------------------------------------
def test_build_classifier_shapes():
    model = build_classifier()
    assert model.get_layer("features").output.shape[-1] == 128
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
    assert build_classifier((12, 12, 3), 4)(np.zeros((1, 12, 12, 3), np.float32)).shape == (1, 4)  # the smallest
    with pytest.raises(ValueError, match=r"H, W >= 12. Received: input_shape=\(11, 11, 3\)"):
        build_classifier((11, 11, 3))


def test_extractor_quantises_before_the_network(classifier):
    extractor = features.FeatureExtractor(classifier, batch_size=16)
    x = np.random.default_rng(7).uniform(size=(20, 28, 28, 1))
    quantised = np.round(x * 255) / 255
    f1, l1 = extractor(x)
    f2, l2 = extractor(quantised.astype(np.float32))
    f3, l3 = extractor(np.round(x * 255).astype(np.uint8))
    f4, _ = extractor(x[..., 0])  # [N, H, W] is accepted
    assert f1.shape == (20, 128) and l1.shape == (20, 10)
    for f, l in ((f2, l2), (f3, l3)):
        np.testing.assert_array_equal(f1, f)
        np.testing.assert_array_equal(l1, l)
    np.testing.assert_array_equal(f1, f4)
    # x differs from its quantised version by < 1/510 per pixel; a bit more changes the features.
    f5, _ = extractor(np.clip(quantised + 0.6 / 255, 0, 1))
    assert not np.array_equal(f1, f5)


def test_extractor_runs_in_inference_mode(classifier):
    extractor = features.FeatureExtractor(classifier, batch_size=7)  # 20 = 7 + 7 + 6: padded last batch
    x = np.random.default_rng(8).uniform(size=(20, 28, 28, 1)).astype(np.float32)
    f1, l1 = extractor(x)
    f2, l2 = extractor(x)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)
    # The extractor did not update the batch-norm moving statistics.
    bn = classifier.get_layer("bn1")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.full(bn.moving_mean.shape, 0.3, np.float32))
    pixels = np.round(x * 255).astype(np.float32)
    inference = classifier(pixels, training=False).numpy()
    np.testing.assert_allclose(l1, inference, rtol=1e-5, atol=1e-5)
    training_mode = classifier(pixels, training=True).numpy()  # (this call does move the statistics)
    assert np.max(np.abs(training_mode - inference)) > 1e-2  # dropout and batch statistics do matter


def test_extractor_rejects_out_of_range_and_wrong_shape(classifier):
    extractor = features.FeatureExtractor(classifier)
    with pytest.raises(ValueError, match=r"\[0, 1\]. Received: values in \[-1"):
        extractor(np.full((2, 28, 28, 1), -1.0))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 32, 32, 1\)"):
        extractor(np.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="no layer named 'pool9'"):
        features.FeatureExtractor(classifier, features_layer="pool9")


def test_reference_statistics_are_cached_keyed_and_written_atomically(classifier, tmp_path):
    extractor = features.FeatureExtractor(classifier)
    images = np.random.default_rng(9).integers(0, 256, size=(30, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "reference_test.npz"
    first = features.reference_statistics(extractor, images, path)
    assert path.exists() and first["features"].shape == (30, 128) and first["sigma"].shape == (128, 128)
    mtime = path.stat().st_mtime_ns
    second = features.reference_statistics(extractor, images, path)
    assert path.stat().st_mtime_ns == mtime  # served from the cache
    np.testing.assert_array_equal(first["mu"], second["mu"])
    np.testing.assert_array_equal(first["logits"], second["logits"])
    other = features.reference_statistics(extractor, images[:20], path)  # other images: recomputed
    assert other["num_images"] == 20 and path.stat().st_mtime_ns != mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference_test.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="needs a source_key for its cache. Received: source_key=None"):
        features.reference_statistics(extractor, iter([images]), path)


# -- Inception-V3 -------------------------------------------------------------------------------------
def test_resize_is_antialiased():
    # A one-pixel checkerboard downsampled 512 → 299: the antialiased filter averages it to mid-grey;
    # plain bilinear samples it and aliases into a coarse pattern of near-black and near-white.
    board = ((np.indices((512, 512)).sum(axis=0) % 2) * 255).astype(np.uint8)[None, ..., None]
    resized = features.inception_pixels(board).numpy()
    assert resized.shape == (1, 299, 299, 3)
    assert abs(resized.mean() - 127.5) < 1.0 and resized.std() < 3.0
    aliased = tf.image.resize(tf.cast(board, tf.float32), (299, 299), antialias=False).numpy()
    assert aliased.std() > 40.0
    # Grey is repeated to RGB after the resize; an image already 299×299 passes unchanged.
    np.testing.assert_array_equal(resized[..., 0], resized[..., 2])
    same = np.random.default_rng(0).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    np.testing.assert_allclose(features.inception_pixels(same).numpy(), same, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        features.inception_pixels(board.astype(np.float32))


def test_inception_features_fid_and_precision_recall(inception):
    images, noise = smooth_images(8), np.random.default_rng(1).uniform(size=(8, 32, 32, 3))
    real, logits = inception(images)
    fake, _ = inception(noise)
    assert real.shape == (8, features.INCEPTION_FEATURES) and real.dtype == np.float32 and logits is None
    fid_self, fid_noise = metrics.frechet_distance(real, real), metrics.frechet_distance(real, fake)
    assert fid_noise > 0 and fid_self <= 1e-6 * fid_noise
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real, fake) == (0.0, 0.0)


def test_inception_quantises_first_and_repeats_grey(inception):
    images = smooth_images(4)
    np.testing.assert_array_equal(inception(np.round(images * 255) / 255)[0], inception(images)[0])
    grey = images[..., :1]
    np.testing.assert_allclose(inception(grey)[0], inception(np.repeat(grey, 3, axis=-1))[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"grey or RGB images. Received: images.shape=\(4, 32, 32, 2\)"):
        inception(images[..., :2])


def test_inception_weights_file_round_trip_and_fingerprint(inception, tmp_path):
    path = str(tmp_path / "inception.weights.h5")
    inception.model.save_weights(path)
    loaded = features.InceptionExtractor(path, batch_size=8)
    images = smooth_images(3)
    np.testing.assert_allclose(loaded(images)[0], inception(images)[0], rtol=1e-6, atol=1e-8)
    assert loaded.fingerprint == inception.fingerprint
    loaded.model.weights[0].assign(loaded.model.weights[0] + 1e-3)  # other weights, another feature space
    assert features.InceptionExtractor(None, model=loaded.model).fingerprint != inception.fingerprint
    with pytest.raises(FileNotFoundError, match="Received: inception_weights='/no/such.h5'"):
        features.InceptionExtractor("/no/such.h5")
    with pytest.raises(ValueError, match="Received: inception_weights='weights.npz'"):
        features.InceptionExtractor("weights.npz")
    other = str(tmp_path / "classifier.weights.h5")
    build_classifier().save_weights(other)
    with pytest.raises(ValueError, match=rf"Could not load the Inception-V3 weights \(.*\)\. Received: "
                                         rf"inception_weights='{other}'"):
        features.InceptionExtractor(other)


def test_missing_imagenet_weights_raise_one_clear_error(monkeypatch):
    def offline(**kwargs):  # what the download does without a network (here: no DNS)
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] "
                        "Name or service not known")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    with pytest.raises(ValueError, match=r"not in the Keras cache .*Name or service not known.*"
                                         r"Pass inception_weights=FILE \(--inception_weights\).*"
                                         r"Received: inception_weights='imagenet'$"):
        features.InceptionExtractor()


def test_a_weights_file_that_loads_only_partly_is_refused(monkeypatch, tmp_path):
    def partly(**kwargs):  # what Keras does with a file that misses some layers: it warns and goes on
        import warnings
        warnings.warn("Skipping nested container at 'mixed9': no matching group found in the saved file. "
                      "Affected layers will retain their freshly-initialized weights.", UserWarning)
        return "a half-random network"

    monkeypatch.setattr(keras.applications, "InceptionV3", partly)
    (tmp_path / "old.weights.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\(1 parts of the network found no weights in the file, e.g. Skipping "
                                         r"nested container at 'mixed9'.*Received: inception_weights="):
        features.load_inception(str(tmp_path / "old.weights.h5"))


# -- reference statistics of a folder ---------------------------------------------------------------
def test_folder_reference_round_trips_pixels_and_is_cached_by_its_files(tmp_path):
    keras.utils.set_random_seed(0)
    extractor = features.FeatureExtractor(build_classifier((16, 16, 3)))
    pixels = np.round(smooth_images(10, size=16, seed=3) * 255).astype(np.uint8)
    folder = write_png_folder(tmp_path / "images", pixels)
    settings = features.reference_settings("folder", (16, 16, 3), data_path=str(folder))
    first = features.reference_for(extractor, settings, cache_dir=str(tmp_path / "cache"))
    # The stored size: decoded, scaled to [−1, 1] and back, the pixels are exactly the PNGs'.
    np.testing.assert_array_equal(first["features"], extractor(pixels)[0])
    cache = first["cache"]
    assert os.path.basename(cache).startswith("reference_classifier_folder-images-") and cache.endswith("16x16x3.npz")
    mtime = os.stat(cache).st_mtime_ns
    assert features.reference_for(extractor, settings, cache_dir=str(tmp_path / "cache"))["num_images"] == 10
    assert os.stat(cache).st_mtime_ns == mtime  # served from the cache
    write_png_folder(folder / "more", pixels[:1])  # a new file: recomputed
    assert features.reference_for(extractor, settings, cache_dir=str(tmp_path / "cache"))["num_images"] == 11
    some = features.reference_for(extractor, settings, cache_dir=str(tmp_path / "cache"), num_images=4)
    assert some["num_images"] == 4 and some["cache"] != cache
    # Resized like training data: the 16×16 folder at 8×8 is what data.training_data yields.
    small = features.reference_settings("folder", (8, 8, 3), data_path=str(folder))
    expected = data.training_data(**small).examples(with_labels=False)
    expected = np.concatenate(list(expected.as_numpy_iterator()))
    flat = keras.Input((8, 8, 3))
    embedding = keras.layers.Dense(16, name="features")(keras.layers.Flatten()(flat))
    small_extractor = features.FeatureExtractor(keras.Model(flat, keras.layers.Dense(3)(embedding)))
    reference = features.reference_for(small_extractor, small, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(reference["features"], small_extractor((expected + 1) / 2)[0])


def test_tfds_reference_at_the_samples_size(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    flat = keras.Input((16, 16, 3))
    embedding = keras.layers.Dense(8, name="features")(keras.layers.Flatten()(flat))
    extractor = features.FeatureExtractor(keras.Model(flat, keras.layers.Dense(2)(embedding)))
    training = {"name": "oxford_flowers102", "source": "tfds", "split": "train[:50%]", "batch_size": 64}
    settings = features.reference_settings("oxford_flowers102", (16, 16, 3), training=training)
    assert settings == {"name": "oxford_flowers102", "source": "tfds", "split": "train[:50%]", "data_dir": "",
                        "image_size": (16, 16), "channels": 3}  # the training split, at the samples' size
    with tfds.testing.mock_data(num_examples=10):  # random JPEGs of every size
        reference = features.reference_for(extractor, settings, cache_dir=str(tmp_path), num_images=7)
    assert reference["num_images"] == 7 and reference["features"].shape == (7, 8)
    assert os.path.basename(reference["cache"]) == "reference_classifier_oxford_flowers102_train-50-_16x16x3_7.npz"


def test_named_dataset_reference_of_a_folder_trained_model_is_the_dataset_itself():
    """MNIST written as PNGs and trained through the folder source is still compared with MNIST's test split."""
    folder_run = {"name": "mnist", "source": "folder", "path": "/data/mnist_png", "channels": 1}
    settings = features.reference_settings("mnist", (28, 28, 1), training=folder_run, idx_dir="/idx")
    assert settings == {"name": "mnist", "split": "test", "source": "auto", "idx_dir": "/idx",
                        "image_size": (28, 28), "channels": 1}
    idx_run = {"name": "mnist", "source": "idx", "idx_dir": "/idx"}
    assert features.reference_settings("mnist", (28, 28, 1), training=idx_run)["source"] == "idx"
