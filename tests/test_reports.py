"""reports / tools/plot.py: the figures of a trained workdir."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from tfdiffusion import reports, training

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moons_workdir(tmp_path_factory):
    namespace = {}
    exec((ROOT / "configs" / "moons.py").read_text(), namespace)
    config = namespace["get_config"]("tiny")
    config.train.verbose = False
    workdir = tmp_path_factory.mktemp("moons")
    training.train(config, str(workdir))
    return workdir


def test_toy_figures(moons_workdir, tmp_path):
    written = reports.write_figures(str(moons_workdir), str(tmp_path))
    assert set(written) == {"schedules", "trajectory", "vector_field", "loss", "samples"}  # no image-only figure
    for name, path in written.items():
        picture = mpimg.imread(path)
        assert picture.ndim == 3 and min(picture.shape[:2]) >= 200, (name, picture.shape)
        assert picture[..., :3].std() > 0.02, f"{name} is a blank picture"


def test_bad_requests_name_the_value(moons_workdir, tmp_path):
    with pytest.raises(ValueError, match=r"Received: figures=\['histogram'\]"):
        reports.write_figures(str(moons_workdir), str(tmp_path), ["histogram"])
    with pytest.raises(FileNotFoundError, match="Received: workdir="):
        reports.write_figures(str(tmp_path / "nothing"), str(tmp_path))


def test_plot_binary(moons_workdir, tmp_path):
    run = [sys.executable, str(ROOT / "tools" / "plot.py"), f"--output_dir={tmp_path}"]
    ok = subprocess.run(run + [f"--workdir={moons_workdir}", "--figures=schedules"], capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "moons_schedules.png").exists(), ok.stderr[-2000:]
    bad = subprocess.run(run + [f"--workdir={tmp_path}/missing"], capture_output=True, text=True)
    assert bad.returncode == 1 and "Received: workdir=" in bad.stderr


def test_guidance_figure_one_row_per_class(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf

    import tfdiffusion as tfd

    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  num_classes=3)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 10)))
    model(tf.zeros((1, 8, 8, 1)), tf.zeros((1,), tf.int32))
    grids = []
    monkeypatch.setattr(reports.plots, "save_image_grid",
                        lambda images, path, **kwargs: grids.append((images, kwargs)) or path)
    reports.guidance_figure(model, str(tmp_path / "g.png"), (0.0, 3.0), per_class=4, num_steps=3)
    (images, kwargs), = grids
    # Rows: 3 classes; columns: 4 samples at w = 0, a blank cell, 4 samples at w = 3.
    assert images.shape == (3 * 9, 8, 8, 1) and kwargs["columns"] == 9
    np.testing.assert_array_equal(kwargs["labels"][::9], np.arange(3))
    rows = images.reshape(3, 9, 8, 8, 1)
    left, blank, right = rows[:, :4], rows[:, 4], rows[:, 5:]
    assert (blank == 1.0).all()
    assert not np.array_equal(left, right)  # guidance changed the samples drawn from the same noise
    same = model.generate(12, seed=0, sampler="dpmpp_2m", num_steps=3, labels=np.repeat(np.arange(3), 4),
                          guidance_scale=0.0)
    np.testing.assert_array_equal(left.reshape(12, 8, 8, 1), same)


def test_write_samples_draws_a_labelled_grid_atomically(tmp_path):
    import tensorflow as tf

    import tfdiffusion as tfd

    network = tfd.layers.SeedUNet(channels=(8, 16), initial_channels=8, time_embedding_dim=16, time_mlp_width=32,
                                  num_classes=3)
    model = tfd.DiffusionModel(network, tfd.GaussianDiffusion(tfd.schedules.make_betas("cosine", 10)))
    model(tf.zeros((1, 8, 8, 1)), tf.zeros((1,), tf.int32))
    path = tmp_path / "samples.png"
    samples = reports.write_samples(model, str(path), name="tiny", num_samples=6, sampler="ddim", num_steps=3,
                                    guidance_scale=2.0)
    assert samples.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(samples, model.generate(6, sampler="ddim", num_steps=3, labels=np.arange(6) % 3,
                                                          guidance_scale=2.0))
    assert mpimg.imread(path)[..., :3].std() > 0.02
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # no temporary left behind
