"""plots: PNG files are written and the arrays behind them hold what they claim."""

import matplotlib.image
import numpy as np
import pytest

import tfdiffusion as tfd
from tfdiffusion import plots


def read_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def test_image_grid_tiles_row_major():
    images = np.stack([np.full((2, 3, 1), v / 10, np.float32) for v in range(5)])
    grid = plots.image_grid(images, columns=3)
    assert grid.shape == (4, 9, 1)
    assert grid[0, 3, 0] == pytest.approx(0.1) and grid[2, 0, 0] == pytest.approx(0.3)
    assert np.all(grid[2:, 6:] == 1.0)  # the empty sixth cell stays white


def test_naive_iterative_noising_never_forgets_x0():
    betas = tfd.schedules.make_betas("linear", 400)
    image = np.full((4000,), 0.7)
    final = plots.naive_iterative_noising(image, betas, seed=0)[-1]
    # x_T = x_0 + Σ √β_t ε_t: mean x_0 and variance Σ β_t, not N(0, 1).
    assert abs(final.mean() - 0.7) < 4 * np.sqrt(betas.sum() / 4000)
    assert abs(final.var() / betas.sum() - 1) < 0.08


def test_every_figure_is_written(tmp_path):
    diffusion = tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 100))
    digits, labels = tfd.data.load_digits_dataset()
    read_png(plots.save_image_grid((digits[:12] + 1) / 2, tmp_path / "grid.png", labels=list(labels[:12])))
    read_png(plots.save_schedules({"linear": diffusion.betas, "cosine": tfd.schedules.make_betas("cosine", 100)},
                                  tmp_path / "schedules.png"))
    read_png(plots.save_forward_process(digits[0], diffusion, [0, 10, 50, 99], tmp_path / "forward.png"))
    trajectory = np.random.default_rng(0).standard_normal((5, 3, 8, 8, 1))
    read_png(plots.save_trajectory_strip(trajectory, tmp_path / "strip.png", every=25, num_timesteps=100))
    points = np.random.default_rng(0).standard_normal((4, 50, 2))
    read_png(plots.save_point_trajectories(points, tmp_path / "paths.png", reference=points[0]))
    read_png(plots.save_vector_field(lambda x, t: x * (1 + t[:, None]), [0, 5], tmp_path / "field.png",
                                     path_points=points[:, 0]))
    read_png(plots.save_loss_curve({"run": (np.arange(1, 6), np.linspace(1, 0.1, 5))}, tmp_path / "loss.png"))
    read_png(plots.save_samples(np.random.default_rng(0).standard_normal((300, 1)), tmp_path / "hist.png",
                                reference=np.zeros((10, 1))))


def test_read_loss_csv_keeps_the_last_value_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "loss.csv"
    path.write_text("epoch,loss,nonfinite_steps\n0,0.5,0\n1,0.4,0\n1,0.35,0\n2,0.3,0\n")
    epochs, losses = plots.read_loss_csv(path)
    np.testing.assert_array_equal(epochs, [0, 1, 2])
    np.testing.assert_allclose(losses, [0.5, 0.35, 0.3])
