"""tfdiffusion.evaluation: where samples come from, the image (classifier or Inception features) and toy
reports, classifier training on IDX files and labelled folders; and the binaries over it
(tools/evaluate.py, tools/train_classifier.py), each run once end to end and on bad input.

The feature extractors and the reference cache are tested in test_features.py. The library is
called in-process; the binaries run as subprocesses (each imports TensorFlow, so there are only
five such runs). The one test that trains the classifier on real MNIST is slow.
"""

import gzip
import json
import os
import pathlib
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfd
from tfdiffusion import data, evaluation, features, metrics, training
from tfdiffusion.layers import build_classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, variant="tiny"):
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    return namespace["get_config"](variant)


def run_tool(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def write_idx_digits(directory, num_train=320, num_test=80):
    """A small MNIST-named IDX directory whose class k is a bright band at rows 2k..2k+3 (learnable in one epoch)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) < 0.1).astype(np.uint8) * 80
        for image, label in zip(images, labels):
            image[2 * label + 4:2 * label + 8, 4:24] = 255
        with gzip.open(directory / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, n, 28, 28], ">i4").tobytes() + images.tobytes())
        with gzip.open(directory / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, n], ">i4").tobytes() + labels.tobytes())
    return directory


def write_png_folder(directory, images):
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (directory / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return directory


def coloured_folder(directory, colours, per_class=20, size=12, seed=0):
    """A labelled folder: one subfolder per (name, RGB) colour, noisy images of that colour."""
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        noisy = np.clip(np.array(rgb)[None, None, None] + rng.normal(0, 30, (per_class, size, size, 3)), 0, 255)
        write_png_folder(directory / name, noisy.astype(np.uint8))
    return directory


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file of a randomly initialised Inception-V3 (the ImageNet weights cannot be downloaded here)."""
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("inception") / "random_inception.weights.h5"
    features.load_inception(None).save_weights(str(path))
    return str(path)


@pytest.fixture(scope="module")
def moons_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("moons")
    config = load_config("moons")
    config.train.verbose = False
    training.train(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_digits(tmp_path_factory.mktemp("idx"))


def tiny_image_model(path, num_classes=None):
    """An untrained tiny 28×28 model saved at `path`: checks the plumbing, not the numbers."""
    keras.utils.set_random_seed(0)
    channels = (8, 16, 32) if num_classes is None else (8, 16)
    network = tfd.layers.SeedUNet(channels=channels, initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  num_classes=num_classes)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)),
                               prediction_type="x0")
    model(tf.zeros((1, 28, 28, 1)), tf.zeros((1,), tf.int32))
    model.save(path)
    return path


def tiny_rgb_model(path, size=16):
    """An untrained tiny size×size RGB model saved at `path`."""
    keras.utils.set_random_seed(0)
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  output_channels=3)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)),
                               prediction_type="x0")
    model(tf.zeros((1, size, size, 3)), tf.zeros((1,), tf.int32))
    model.save(path)
    return path


# -- where the samples come from ----------------------------------------------------------------
def test_batch_seeds_are_deterministic_and_distinct():
    seeds = {(seed, index): evaluation.batch_seed(seed, index) for seed in range(4) for index in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert evaluation.batch_seed(3, 7) == seeds[(3, 7)]


def test_draw_samples_batches_with_batch_seeds_and_first_indices():
    calls = []

    def sample_fn(count, seed, first_index):
        calls.append((count, seed, first_index))
        return np.full((count, 2), first_index, np.float32)

    samples = evaluation.draw_samples(sample_fn, 25, batch_size=10, seed=5)
    assert [(c, f) for c, _, f in calls] == [(10, 0), (10, 10), (5, 20)]
    assert [s for _, s, _ in calls] == [evaluation.batch_seed(5, i) for i in range(3)]
    assert samples.shape == (25, 2) and samples[24, 0] == 20


def test_checkpoint_step_loads_a_checkpoint_and_names_the_workdir(moons_workdir, tmp_path):
    report = evaluation.evaluate(model=str(moons_workdir), checkpoint_step=100, num_samples=50, batch_size=50,
                                 verbose=False)
    assert report["model"] == os.path.abspath(moons_workdir) and report["dataset"] == "moons"
    assert report["energy_distance"] < report["energy_distance_noise"]
    raw = evaluation.load_model(str(moons_workdir), checkpoint_step=100, use_ema=False)
    assert isinstance(raw, tfd.DiffusionModel) and raw.data_shape == (2,)
    with pytest.raises(ValueError, match="Received: model=.*model.keras', checkpoint_step=100"):
        evaluation.load_model(str(moons_workdir / "model.keras"), checkpoint_step=100)
    with pytest.raises(ValueError, match=r"Could not load model \(No checkpoint .*\). Received: model="):
        evaluation.load_model(str(moons_workdir), checkpoint_step=150)


# -- the reports ------------------------------------------------------------------------------------
def test_toy_report_in_1d_adds_the_ks_statistic():
    samples = data.toy_dataset("gmm1d", 500, seed=3)
    report, reference = evaluation.toy_report(samples, "gmm1d", reference_seed=11)
    assert reference.shape == (500, 1) and report["reference_num_samples"] == 500
    assert report["energy_distance"] < report["energy_distance_noise"]
    assert 0.0 <= report["ks_statistic"] < 0.15 and "ks_statistic_data_floor" in report
    with pytest.raises(ValueError, match="Received: dataset='moons'"):
        evaluation.toy_report(samples, "moons")


@pytest.mark.parametrize("argument, message", [
    (dict(num_samples=0), "Received: num_samples=0"),
    (dict(eta=1.5), "Received: eta=1.5"),
    (dict(dataset="no_such_set"), "TensorFlow Datasets name. Received: dataset='no_such_set'"),
    (dict(classifier="/no/such/classifier.keras"), "Received: classifier='/no/such/classifier.keras'"),
    (dict(dataset="mnist", reference_split="val"), "Received: reference_split='val'"),
    (dict(features="vgg"), "Received: features='vgg'"),
    (dict(features="classifier"), "features='classifier' needs a classifier. Received: classifier=None"),
    (dict(inception_weights="/no/such.h5"), "Received: inception_weights='/no/such.h5'"),
    (dict(data_path="/no/such/folder"), "Received: data_path='/no/such/folder'"),
    (dict(kid_subset_size=1), "Received: kid_subset_size=1"),
    (dict(output=""), "Received: output=''"),
])
def test_bad_values_fail_before_the_model_is_loaded(tmp_path, argument, message):
    (tmp_path / "model.keras").write_text("not checked: the arguments fail first")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluation.evaluate(**{"model": str(tmp_path), "output": str(tmp_path / "r.json"), **argument})
    assert not (tmp_path / "r.json").exists()


def test_bad_values_in_process(moons_workdir, tmp_path):
    common = dict(model=str(moons_workdir), output=str(tmp_path / "r.json"), num_samples=10, verbose=False)
    with pytest.raises(ValueError, match="Received: sampler='euler'"):
        evaluation.evaluate(sampler="euler", **common)
    with pytest.raises(ValueError, match=r"num_steps must be in \[0, 10\] .*Received: num_steps=11"):
        evaluation.evaluate(num_steps=11, **common)
    with pytest.raises(ValueError, match="exactly one of model and saved_model. Received: model='m', "
                                         "saved_model='x'"):
        evaluation.evaluate(model="m", saved_model="x", output=str(tmp_path / "r.json"))
    with pytest.raises(FileNotFoundError, match="Received: saved_model='x'"):
        evaluation.evaluate(saved_model="x", output=str(tmp_path / "r.json"), num_steps=5)
    with pytest.raises(ValueError, match="Received: model='.*not_a_model.txt'"):
        (tmp_path / "not_a_model.txt").write_text("")
        evaluation.evaluate(model=str(tmp_path / "not_a_model.txt"))
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # ~30 s: an export, then sampling through its signature
def test_toy_saved_model_report(moons_workdir, tmp_path):
    from tfdiffusion import export

    model = keras.saving.load_model(moons_workdir / "model.keras")
    export_dir = export.export_sampler(model, str(tmp_path / "export"))
    report = evaluation.evaluate(saved_model=export_dir, num_samples=200, num_steps=10, sampler="ddim",
                                 output=str(tmp_path / "saved.json"), verbose=False)
    assert report["model_format"] == "saved_model" and report["dataset"] == "moons"  # from the [N, 2] shape
    assert report["energy_distance"] < report["energy_distance_noise"]
    assert json.loads((tmp_path / "saved.json").read_text())["model"] == export_dir
    with pytest.raises(ValueError, match="Received: num_steps=0"):
        evaluation.evaluate(saved_model=export_dir, num_steps=0, output=str(tmp_path / "saved.json"))
    with pytest.raises(ValueError, match=r"refused the request: num_steps must be in \[1, 10\]. Received: num_steps=11$"):
        evaluation.evaluate(saved_model=export_dir, num_steps=11, num_samples=4, verbose=False)


def test_image_model_report(tmp_path):
    if data.default_mnist_dir() is None:
        pytest.skip("MNIST IDX files not found")
    build_classifier().save(tmp_path / "classifier.keras")
    args = dict(model=str(tiny_image_model(tmp_path / "model.keras")), classifier=str(tmp_path / "classifier.keras"),
                num_samples=24, batch_size=10, num_steps=3, reference_num_images=100, kid_subsets=3,
                output=str(tmp_path / "report.json"))
    returned = evaluation.evaluate(**args)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "confident_fraction", "label_histogram",
                "reference_confident_fraction", "num_samples", "sampler", "num_steps", "seed", "seconds", "model",
                "classifier", "reference_split", "protocol"):
        assert key in report, key
    assert report["dataset"] == "mnist" and report["reference_num_images"] == 100 and report["kid_subset_size"] == 24
    assert report["features"] == "classifier"  # auto: 28×28×1 samples and a classifier
    assert np.isfinite(report["fid"]) and report["fid"] >= 0 and 0 <= report["precision"] <= 1
    assert len(report["label_histogram"]) == 10 and sum(report["label_histogram"]) == pytest.approx(1.0)
    cache = tmp_path / "reference_classifier_mnist_test_100.npz"  # beside the classifier
    assert (tmp_path / "report.png").exists() and report["reference_cache"] == str(cache) and cache.exists()
    assert "requested_label_accuracy" not in report  # unconditional
    # A classifier of other images is refused before sampling.
    build_classifier((32, 32, 3)).save(tmp_path / "rgb.keras")
    with pytest.raises(ValueError, match=r"takes images of shape \(32, 32, 3\) but the samples have \(28, 28, 1\)"):
        evaluation.evaluate(**{**args, "classifier": str(tmp_path / "rgb.keras")})


def test_conditional_image_model_reports_requested_label_accuracy(tmp_path):
    """Labels cycle 0..9, so with N a multiple of 10 the overall accuracy is the mean of the per-class ones."""
    if data.default_mnist_dir() is None:
        pytest.skip("MNIST IDX files not found")
    build_classifier().save(tmp_path / "classifier.keras")
    model = tiny_image_model(tmp_path / "model.keras", num_classes=10)
    report = evaluation.evaluate(model=str(model), classifier=str(tmp_path / "classifier.keras"), num_samples=20,
                                 batch_size=20, num_steps=2, guidance_scale=1.0, reference_num_images=50,
                                 kid_subsets=2, verbose=False)
    per_class = report["requested_label_accuracy_per_class"]
    assert len(per_class) == 10 and all(0.0 <= v <= 1.0 for v in per_class)
    assert report["requested_label_accuracy"] == pytest.approx(np.mean(per_class))
    assert not list(tmp_path.glob("*.json"))  # no output: no files but the reference cache
    build_classifier(num_classes=4).save(tmp_path / "four.keras")
    with pytest.raises(ValueError, match="tells 4 classes apart but the model draws 10. Received: classifier="):
        evaluation.evaluate(model=str(model), classifier=str(tmp_path / "four.keras"), num_samples=20)


def test_inception_report_against_the_training_folder_of_a_workdir(tmp_path, inception_weights):
    """A workdir trained on a folder: its config.json names the folder, which becomes the reference."""
    rng = np.random.default_rng(0)
    folder = write_png_folder(tmp_path / "photos", rng.integers(0, 256, (12, 20, 24, 3), dtype=np.uint8))
    workdir = tmp_path / "run"
    workdir.mkdir()
    tiny_rgb_model(workdir / "model.keras")
    (workdir / "config.json").write_text(json.dumps({"data": {"source": "folder", "path": str(folder)}}))
    args = dict(model=str(workdir), inception_weights=inception_weights, num_samples=8, batch_size=8, num_steps=2,
                kid_subsets=2, reference_cache_dir=str(tmp_path / "cache"), verbose=False)
    report = evaluation.evaluate(**args, output=str(tmp_path / "report.json"))
    assert report["dataset"] == "folder" and report["features"] == "inception"
    assert report["reference"] == {"source": "folder", "path": str(folder)} and report["reference_num_images"] == 12
    assert report["inception_weights"] == inception_weights and "Inception-V3" in report["protocol"]
    assert np.isfinite(report["fid"]) and report["fid"] > 0 and report["kid_subset_size"] == 8
    assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert "confident_fraction" not in report  # no classifier, no classifier extras
    # The 20×24 photos were resized and centre-cropped to the samples' 16×16 and cached under that size.
    assert report["reference_cache"].startswith(str(tmp_path / "cache")) and report["reference_cache"].endswith(
        "16x16x3.npz") and os.path.exists(report["reference_cache"])
    assert json.loads((tmp_path / "report.json").read_text())["fid"] == report["fid"]


# -- the classifier ---------------------------------------------------------------------------------
def test_train_classifier_on_idx_files(idx_dir, tmp_path):
    summary = evaluation.train_classifier(str(tmp_path / "classifier"), "mnist", idx_dir=str(idx_dir), epochs=2,
                                          batch_size=32, verbose=0)
    assert summary["num_train"] == 320 and summary["num_test"] == 80 and summary["epochs"] == 2
    assert summary["test_accuracy"] > 0.5  # the bands are easy; chance is 0.1
    written = json.loads((tmp_path / "classifier" / "classifier.json").read_text())
    assert written == json.loads(json.dumps(summary))
    classifier = keras.saving.load_model(summary["classifier"])
    assert classifier.get_layer("features").output.shape[-1] == 128
    assert sorted(p.name for p in (tmp_path / "classifier").iterdir()) == ["classifier.json", "classifier.keras"]


def test_train_classifier_on_a_labelled_folder(tmp_path):
    colours = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
    folder = coloured_folder(tmp_path / "train", colours)
    summary = evaluation.train_classifier(str(tmp_path / "classifier"), data_path=str(folder), test_fraction=0.25,
                                          epochs=4, batch_size=15, verbose=0)
    assert summary["dataset"] == "folder" and summary["class_names"] == ["blue", "green", "red"]
    assert summary["num_train"] == 45 and summary["num_test"] == 15 and summary["image_shape"] == [12, 12, 3]
    assert summary["test_accuracy"] >= 0.9  # plain colours; chance is 1/3
    # A separate test folder must hold the same classes.
    coloured_folder(tmp_path / "test", {"blue": (30, 60, 220), "red": (220, 40, 40)}, per_class=2)
    with pytest.raises(ValueError, match=r"classes differ .*Received: test_path=.* with classes \('blue', 'red'\)"):
        evaluation.train_classifier(str(tmp_path / "other"), data_path=str(folder), test_path=str(tmp_path / "test"))


def test_train_classifier_on_a_tfds_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):  # random JPEGs of every size, 102 named classes
        summary = evaluation.train_classifier(str(tmp_path), "oxford_flowers102", test_split="validation",
                                              image_size=16, epochs=1, batch_size=6, verbose=0)
    assert summary["dataset"] == "oxford_flowers102" and summary["image_shape"] == [16, 16, 3]
    assert len(summary["class_names"]) == 102 and summary["class_names"][0] == "pink primrose"
    assert summary["num_train"] == 12 and summary["num_test"] == 12 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert keras.saving.load_model(summary["classifier"]).output.shape[-1] == 102


@pytest.mark.parametrize("argument, message", [
    (dict(dataset="no_such_set"), "Received: dataset='no_such_set'"),
    (dict(dataset="folder"), "dataset='folder' needs data_path. Received: data_path=None"),
    (dict(data_path="/no/such/folder"), "Received: data_path='/no/such/folder'"),
    (dict(test_fraction=1.0), "Received: test_fraction=1.0"),
    (dict(epochs=0), "Received: epochs=0"),
    (dict(learning_rate=0.0), "Received: learning_rate=0.0"),
    (dict(idx_dir="/no/such/dir"), "Received: idx_dir='/no/such/dir'"),
    (dict(batch_size=1000), "training set size 320. Received: batch_size=1000"),
])
def test_train_classifier_bad_values(idx_dir, tmp_path, argument, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluation.train_classifier(str(tmp_path), **{"idx_dir": str(idx_dir), **argument})
    assert not (tmp_path / "classifier.keras").exists()


# -- the binaries ---------------------------------------------------------------------------------
def test_evaluate_binary_toy_report(moons_workdir, tmp_path):
    output = tmp_path / "eval" / "moons.json"
    result = run_tool("evaluate.py", f"--model={moons_workdir}", "--num_samples=300", "--batch_size=128",
                      "--sampler=ddpm", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert f'"energy_distance": {report["energy_distance"]!r}' in result.stdout  # the report, printed
    assert report["dataset"] == "moons"  # from the workdir's config.json
    assert report["num_samples"] == 300 and report["sampler"] == "ddpm" and report["num_steps"] == 10
    assert report["seed"] == 0 and report["seconds"] > 0 and report["model"].endswith("model.keras")
    assert "fid" not in report and "ks_statistic" not in report  # 2-D: energy distance only
    # 200 training steps: far better than noise, not yet at the floor of two data draws.
    assert report["energy_distance_data_floor"] < report["energy_distance"] < report["energy_distance_noise"]
    assert (tmp_path / "eval" / "moons.png").stat().st_size > 1000


def test_evaluate_binary_missing_model_exits_1_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_tool("evaluate.py", f"--model={missing}", f"--output={tmp_path / 'r.json'}")
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and f"Received: model='{missing}'" in error_lines(result)[0]
    assert not (tmp_path / "r.json").exists()


def test_evaluate_binary_feature_flags_reach_the_library(moons_workdir, tmp_path):
    result = run_tool("evaluate.py", f"--model={moons_workdir}", "--features=classifier",
                      f"--output={tmp_path / 'r.json'}")
    assert result.returncode == 1 and len(error_lines(result)) == 1
    assert "features='classifier' needs a classifier. Received: classifier=None" in error_lines(result)[0]


@pytest.mark.slow  # ~50 s here: the binary builds Inception-V3 and embeds 12 + 8 images at 299×299
def test_evaluate_binary_inception_report_against_a_folder(tmp_path, inception_weights):
    folder = write_png_folder(tmp_path / "photos", np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3),
                                                                                     dtype=np.uint8))
    output = tmp_path / "eval.json"
    result = run_tool("evaluate.py", f"--model={tiny_rgb_model(tmp_path / 'model.keras')}", f"--data_path={folder}",
                      f"--inception_weights={inception_weights}", f"--reference_cache_dir={tmp_path / 'cache'}",
                      "--num_samples=8", "--num_steps=2", "--kid_subsets=2", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["features"] == "inception" and report["dataset"] == "folder" and report["reference_num_images"] == 12
    assert f'"precision": {report["precision"]!r}' in result.stdout and np.isfinite(report["fid"])


def test_train_classifier_binary_end_to_end(idx_dir, tmp_path):
    result = run_tool("train_classifier.py", f"--workdir={tmp_path}", f"--idx_dir={idx_dir}", "--epochs=1",
                      "--batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "classifier.json").read_text())
    assert f"test accuracy {summary['test_accuracy']:.4f} after 1 epochs" in result.stdout
    assert summary["batch_size"] == 64 and (tmp_path / "classifier.keras").exists()


def test_train_classifier_binary_bad_value_exits_1(tmp_path):
    result = run_tool("train_classifier.py", f"--workdir={tmp_path}", "--dataset=no_such_set")
    assert result.returncode == 1
    assert len(error_lines(result)) == 1 and "Received: dataset='no_such_set'" in error_lines(result)[0]
    assert not list(tmp_path.iterdir())


# -- the real thing (slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fid_on_mnist_separates_real_from_broken_images():
    directory = data.default_mnist_dir()
    if directory is None:
        pytest.skip("MNIST IDX files not found (set TFDIFFUSION_MNIST_DIR)")
    train_x, train_y = data.load_mnist_idx(directory, "train")
    test_x, test_y = data.load_mnist_idx(directory, "test")
    keras.utils.set_random_seed(0)
    classifier = build_classifier()
    classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.time()
    classifier.fit(train_x[:20000].astype(np.float32), train_y[:20000], batch_size=128, epochs=1, verbose=0)
    extractor = evaluation.FeatureExtractor(classifier)
    n = 2000
    rng = np.random.default_rng(0)
    reference, _ = extractor(train_x[:n])
    test_features, test_logits = extractor(test_x[:n])
    noise, _ = extractor(rng.uniform(size=(n, 28, 28, 1)))
    shuffled_images = np.stack([image.reshape(-1)[rng.permutation(784)].reshape(28, 28, 1) for image in test_x[:n]])
    shuffled, _ = extractor(shuffled_images)
    fid = {name: metrics.frechet_distance(features, reference)
           for name, features in (("test", test_features), ("noise", noise), ("shuffled", shuffled))}
    accuracy = float(np.mean(np.argmax(test_logits, 1) == test_y[:n]))
    print(f"N={n}, accuracy {accuracy:.4f}, FID {fid}, {time.time() - start:.0f} s")
    assert accuracy > 0.95
    assert fid["test"] < 0.05 * fid["noise"] and fid["test"] < 0.05 * fid["shuffled"]
    assert metrics.kernel_inception_distance(test_features, reference)[0] < \
        0.05 * metrics.kernel_inception_distance(shuffled, reference)[0]
