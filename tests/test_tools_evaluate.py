"""tools/evaluate.py: reports for a toy model, an image model and an exported SavedModel; bad input.

The binary itself runs twice (a toy report, and a missing --model that exits before importing
TensorFlow); the other cases call its `evaluate` function in-process to keep the suite short.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfd
from tfdiffusion import data, metrics, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVALUATE = [sys.executable, str(ROOT / "tools" / "evaluate.py")]


def load_config(name, variant="tiny"):
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    return namespace["get_config"](variant)


def load_tool():
    spec = importlib.util.spec_from_file_location("tools_evaluate", ROOT / "tools" / "evaluate.py")
    if "tools_evaluate" not in sys.modules:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["tools_evaluate"] = module
    return sys.modules["tools_evaluate"]


def run_evaluate(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(EVALUATE + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def moons_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("moons")
    config = load_config("moons")
    config.train.verbose = False
    training.train(config, str(workdir))
    return workdir


def test_toy_model_report(moons_workdir, tmp_path):
    output = tmp_path / "eval" / "moons.json"
    result = run_evaluate(f"--model={moons_workdir}", "--num_samples=300", "--batch_size=128", "--sampler=ddpm",
                          f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["dataset"] == "moons"  # from the workdir's config.json
    assert report["num_samples"] == 300 and report["sampler"] == "ddpm" and report["num_steps"] == 10
    assert report["seed"] == 0 and report["seconds"] > 0 and report["model"].endswith("model.keras")
    assert "fid" not in report and "ks_statistic" not in report  # 2-D: energy distance only
    # 200 training steps: far better than noise, not yet at the floor of two data draws.
    assert report["energy_distance_data_floor"] < report["energy_distance"] < report["energy_distance_noise"]
    assert (tmp_path / "eval" / "moons.png").stat().st_size > 1000


def test_missing_model_exits_1_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_evaluate(f"--model={missing}", f"--output={tmp_path / 'r.json'}")
    assert result.returncode == 1
    assert f"Received: --model='{missing}'" in result.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flag, message", [
    ("--num_samples=0", "Received: --num_samples=0"),
    ("--eta=1.5", "Received: --eta=1.5"),
    ("--dataset=cifar100", "Received: --dataset='cifar100'"),
    ("--classifier=/no/such/classifier.keras", "Received: --classifier='/no/such/classifier.keras'"),
])
def test_bad_values_exit_1(tmp_path, flag, message):
    (tmp_path / "model.keras").write_text("not checked: the flags fail first")
    result = run_evaluate(f"--model={tmp_path}", f"--output={tmp_path / 'r.json'}", flag)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr


def test_bad_values_in_process(moons_workdir, tmp_path):
    tool = load_tool()
    common = dict(model=str(moons_workdir), output=str(tmp_path / "r.json"), num_samples=10)
    with pytest.raises(ValueError, match="Received: --sampler='euler'"):
        tool.evaluate(sampler="euler", **common)
    with pytest.raises(ValueError, match=r"--num_steps must be in \[0, 10\] .*Received: --num_steps=11"):
        tool.evaluate(num_steps=11, **common)
    with pytest.raises(ValueError, match="exactly one of --model and --saved_model. Received: --model='m', "
                                         "--saved_model='x'"):
        tool.evaluate(model="m", saved_model="x", output=str(tmp_path / "r.json"))
    with pytest.raises(FileNotFoundError, match="Received: --saved_model='x'"):
        tool.evaluate(saved_model="x", output=str(tmp_path / "r.json"), num_steps=5)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # ~35 s: export + a second binary run
def test_toy_saved_model_report(moons_workdir, tmp_path):
    from tfdiffusion import export

    model = keras.saving.load_model(moons_workdir / "model.keras")
    export_dir = export.export_sampler(model, str(tmp_path / "export"))
    output = tmp_path / "saved.json"
    result = run_evaluate(f"--saved_model={export_dir}", "--num_samples=200", "--num_steps=10", "--sampler=ddim",
                          f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["model_format"] == "saved_model" and report["dataset"] == "moons"  # from the [N, 2] shape
    assert report["energy_distance"] < report["energy_distance_noise"]
    result = run_evaluate(f"--saved_model={export_dir}", "--num_steps=0", f"--output={output}")
    assert result.returncode == 1 and "Received: --num_steps=0" in result.stderr


def test_image_model_report(tmp_path):
    """An untrained tiny 28×28 model and an untrained classifier: checks the plumbing, not the numbers."""
    if data.default_mnist_dir() is None:
        pytest.skip("MNIST IDX files not found")
    keras.utils.set_random_seed(0)
    network = tfd.layers.SeedUNet(channels=(8, 16, 32), initial_channels=8, time_embedding_dim=16, time_mlp_width=32)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)),
                               prediction_type="x0")
    model(tf.zeros((1, 28, 28, 1)), tf.zeros((1,), tf.int32))
    model.save(tmp_path / "model.keras")
    metrics.build_classifier().save(tmp_path / "classifier.keras")
    tool = load_tool()
    args = dict(model=str(tmp_path / "model.keras"), classifier=str(tmp_path / "classifier.keras"), num_samples=24,
                batch_size=10, num_steps=3, reference_num_images=100, kid_subsets=3,
                output=str(tmp_path / "report.json"))
    returned = tool.evaluate(**args)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    for key in ("fid", "kid_mean", "kid_std", "confident_fraction", "label_histogram", "num_samples", "sampler",
                "num_steps", "seed", "seconds", "model", "classifier", "reference_split", "protocol"):
        assert key in report, key
    assert report["dataset"] == "mnist" and report["reference_num_images"] == 100 and report["kid_subset_size"] == 24
    assert np.isfinite(report["fid"]) and report["fid"] >= 0
    assert len(report["label_histogram"]) == 10 and sum(report["label_histogram"]) == pytest.approx(1.0)
    assert (tmp_path / "report.png").exists() and (tmp_path / "reference_mnist_test_100.npz").exists()
    # The classifier is required for images, and that is known before sampling.
    with pytest.raises(ValueError, match="Received: --classifier=None"):
        tool.evaluate(**{**args, "classifier": None})


def test_conditional_image_model_reports_requested_label_accuracy(tmp_path):
    """Labels cycle 0..9, so with N a multiple of 10 the overall accuracy is the mean of the per-class ones."""
    if data.default_mnist_dir() is None:
        pytest.skip("MNIST IDX files not found")
    keras.utils.set_random_seed(0)
    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  num_classes=10)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 20)),
                               prediction_type="x0")
    model(tf.zeros((1, 28, 28, 1)), tf.zeros((1,), tf.int32))
    model.save(tmp_path / "model.keras")
    metrics.build_classifier().save(tmp_path / "classifier.keras")
    report = load_tool().evaluate(model=str(tmp_path / "model.keras"), classifier=str(tmp_path / "classifier.keras"),
                                  num_samples=20, batch_size=20, num_steps=2, guidance_scale=1.0,
                                  reference_num_images=50, kid_subsets=2, output=str(tmp_path / "report.json"))
    per_class = report["requested_label_accuracy_per_class"]
    assert len(per_class) == 10 and all(0.0 <= v <= 1.0 for v in per_class)
    assert report["requested_label_accuracy"] == pytest.approx(np.mean(per_class))
