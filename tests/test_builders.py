"""tfdiffusion.builders: config sections → objects, and restoring a workdir's model without its data."""

import json
import pathlib
import runpy

import numpy as np
import pytest

from tfdiffusion import builders, training

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, variant="tiny"):
    return runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"](variant)


def test_build_network_takes_json_lists_as_tuples():
    network = builders.build_network("SeedUNet", {"channels": [8, 16], "initial_channels": 8, "time_embedding_dim": 16,
                                                  "time_mlp_width": 32})
    assert network.channels == (8, 16)


def test_build_compiled_model_creates_every_weight_and_optimizer_slot():
    config = load_config("moons")
    config.optimizer.use_ema = True
    model = builders.build_compiled_model(config, (2,), steps_per_execution=3)
    assert model.built and model.data_shape == (2,)
    assert model.steps_per_execution == 3
    # Adam's two moments and an EMA copy per trainable weight, plus the step counter.
    assert len(model.optimizer.variables) >= 3 * len(model.trainable_variables)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_load_training_data_follows_the_data_section(tmp_path):
    config = load_config("moons")
    x, labels = builders.load_training_data(config.data, seed=0)
    assert x.shape == (10_000, 2) and labels is None
    config = load_config("mnist")
    config.data.source = "idx"
    config.data.idx_dir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing"):
        builders.load_training_data(config.data, seed=0)


def test_make_strategy_default_and_is_chief():
    strategy = builders.make_strategy("default")
    assert strategy.num_replicas_in_sync == 1 and builders.is_chief(strategy)


@pytest.fixture(scope="module")
def moons_workdir(tmp_path_factory):
    config = load_config("moons")
    config.train.update({"steps": 4, "checkpoint_every": 2, "verbose": False})
    config.optimizer.use_ema = True
    workdir = tmp_path_factory.mktemp("moons")
    training.train(config, str(workdir))
    return workdir


def _no_data(*args, **kwargs):
    raise AssertionError("restoring a model read the training data")


def test_model_from_checkpoint_does_not_read_the_data(moons_workdir, monkeypatch):
    assert json.loads((moons_workdir / "config.json").read_text())["data_shape"] == [2]
    monkeypatch.setattr(builders, "load_training_data", _no_data)
    raw = builders.model_from_checkpoint(str(moons_workdir), step=4, use_ema=False)
    ema = builders.model_from_checkpoint(str(moons_workdir))
    assert raw.data_shape == ema.data_shape == (2,)
    assert int(raw.optimizer.iterations.numpy()) == 4
    final = builders.load_model(moons_workdir / "model.keras")  # written with the EMA weights
    for a, b in zip(ema.get_weights(), final.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(raw.get_weights(), final.get_weights()))
    with pytest.raises(FileNotFoundError, match="Received: step=3"):
        builders.model_from_checkpoint(str(moons_workdir), step=3)


def test_model_from_checkpoint_of_an_old_workdir_reads_the_data_shape_from_the_data(moons_workdir, tmp_path,
                                                                                  monkeypatch):
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    recorded = json.loads((moons_workdir / "config.json").read_text())
    del recorded["data_shape"]
    (old / "config.json").write_text(json.dumps(recorded))
    for path in (moons_workdir / "checkpoints").iterdir():
        (old / "checkpoints" / path.name).write_bytes(path.read_bytes())
    calls = []
    original = builders.load_training_data
    monkeypatch.setattr(builders, "load_training_data", lambda *args: calls.append(args) or original(*args))
    model = builders.model_from_checkpoint(str(old), step=2)
    assert len(calls) == 1 and model.data_shape == (2,)
