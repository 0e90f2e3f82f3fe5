"""plots: each figure has the panels it claims, its PNG is that figure drawn, and the arrays behind it are right."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import tfdiffusion as tfd
from tfdiffusion import plots


@pytest.fixture(scope="module")
def digits():
    images, labels = tfd.data.load_digits_dataset()  # 8×8×1 in [−1, 1]
    return images[:12], [int(v) for v in labels[:12]]


@pytest.fixture(scope="module")
def diffusion():
    return tfd.GaussianDiffusion(tfd.schedules.make_betas("linear", 100))


def assert_png_of(path, fig, ink):
    """The PNG at `path` is `fig` drawn, and it shows something.

    Its size is the figure's drawn extent plus savefig's 0.1-inch pad (what bbox_inches="tight" writes),
    computed here on the same host. `ink` is what the data look like: "gray" for image panels (grey
    pixels between black and white cover > 10 % of the picture; a figure whose panels are blank has
    ~1 %, from anti-aliased text), "colour" for plotted data (coloured pixels > 0.2 %; frames and text
    are black, and an empty plot has ~0.05 %, its legend's handle).
    """
    image = matplotlib.image.imread(path)[..., :3]
    bbox = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).padded(0.1)
    assert abs(image.shape[0] - bbox.height * fig.dpi) <= 1 and abs(image.shape[1] - bbox.width * fig.dpi) <= 1
    assert image.std() > 0.05, "a constant picture"
    saturation, luminance = image.max(-1) - image.min(-1), image.mean(-1)
    if ink == "gray":
        assert np.mean((saturation < 0.02) & (luminance > 0.1) & (luminance < 0.9)) > 0.1, "blank image panels"
    else:
        assert np.mean(saturation > 0.3) > 0.002, "no coloured data marks"
    return image


def panel_images(fig):
    """The number of images shown in each panel, in panel order."""
    return [len(ax.images) for ax in fig.axes]


# -- arrays ----------------------------------------------------------------------------------------------
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


def test_read_loss_csv_keeps_the_last_value_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "loss.csv"
    path.write_text("epoch,loss,nonfinite_steps\n0,0.5,0\n1,0.4,0\n1,0.35,0\n2,0.3,0\n")
    epochs, losses = plots.read_loss_csv(path)
    np.testing.assert_array_equal(epochs, [0, 1, 2])
    np.testing.assert_allclose(losses, [0.5, 0.35, 0.3])


# -- figures ---------------------------------------------------------------------------------------------
def test_image_grid_figure(tmp_path, digits):
    images, labels = (digits[0] + 1) / 2, digits[1]
    fig = plots.image_grid_figure(images, columns=4, labels=labels, title="digits")
    assert panel_images(fig) == [1]
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3 * 8, 4 * 8)  # 12 tiles in 3 rows of 4
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [str(labels[i]) for i in (0, 4, 8)]
    path = tmp_path / "grid.png"
    assert plots.save_image_grid(images, path, columns=4, labels=labels, title="digits") == path
    assert_png_of(path, fig, "gray")


def test_samples_figure_draws_images_as_a_grid_and_vectors_as_points(tmp_path, digits):
    grid = plots.samples_figure((digits[0] + 1) / 2)
    assert panel_images(grid) == [1] and grid.axes[0].images[0].get_array().shape == (3 * 8, 4 * 8)  # 4 columns
    assert_png_of(plots.save_samples((digits[0] + 1) / 2, tmp_path / "grid.png"), grid, "gray")

    values = np.random.default_rng(0).standard_normal((300, 1))
    histogram = plots.samples_figure(values, reference=np.zeros((10, 1)))
    assert panel_images(histogram) == [0] and len(histogram.axes[0].patches) == 2 * 80  # two histograms
    assert_png_of(plots.save_samples(values, tmp_path / "hist.png", reference=np.zeros((10, 1))), histogram, "colour")

    points = np.random.default_rng(0).standard_normal((300, 2))
    scatter = plots.samples_figure(points, reference=np.zeros((10, 2)), title="moons")
    assert len(scatter.axes) == 1 and len(scatter.axes[0].collections) == 2  # data and samples
    path = plots.save_samples(points, tmp_path / "scatter.png", reference=np.zeros((10, 2)), title="moons")
    assert_png_of(path, scatter, "colour")


def test_schedules_figure(tmp_path, diffusion):
    betas = {"linear": diffusion.betas, "cosine": tfd.schedules.make_betas("cosine", 100)}
    fig = plots.schedules_figure(betas)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]  # two panels, a curve per schedule in each
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), 1 - diffusion.alphas_cumprod)
    assert_png_of(plots.save_schedules(betas, tmp_path / "schedules.png"), fig, "colour")


def test_forward_process_figure(tmp_path, digits, diffusion):
    timesteps = [0, 10, 50, 99]
    fig = plots.forward_process_figure(digits[0][0], diffusion, timesteps)
    assert panel_images(fig) == [1] * 8  # naive and closed form at 4 timesteps
    assert [ax.get_title() for ax in fig.axes[:4]] == [f"t={t}" for t in timesteps]
    assert_png_of(plots.save_forward_process(digits[0][0], diffusion, timesteps, tmp_path / "forward.png"), fig,
                  "gray")


def test_trajectory_strip_figure(tmp_path):
    trajectory = np.random.default_rng(0).standard_normal((5, 3, 8, 8, 1))
    fig = plots.trajectory_strip_figure(trajectory, every=25, num_timesteps=100)
    assert panel_images(fig) == [1] * 15  # 3 images × 5 frames
    assert [ax.get_title() for ax in fig.axes[:5]] == ["t=99", "t=74", "t=49", "t=24", "x_0"]
    path = plots.save_trajectory_strip(trajectory, tmp_path / "strip.png", every=25, num_timesteps=100)
    assert_png_of(path, fig, "gray")


def test_point_trajectories_figure(tmp_path):
    points = np.random.default_rng(0).standard_normal((4, 50, 2))
    fig = plots.point_trajectories_figure(points, reference=points[0])
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 30 and len(fig.axes[0].collections) == 2
    assert_png_of(plots.save_point_trajectories(points, tmp_path / "paths.png", reference=points[0]), fig, "colour")


def test_vector_field_figure(tmp_path):
    path_points = np.random.default_rng(0).standard_normal((4, 2))

    def eps_fn(x, t):
        return x * (1 + t[:, None])

    fig = plots.vector_field_figure(eps_fn, [0, 5, 9], path_points=path_points)
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == [f"−ε_θ(x, t={t})" for t in (0, 5, 9)]
    quiver = fig.axes[0].collections[0]
    assert quiver.N == 21 * 21
    path = plots.save_vector_field(eps_fn, [0, 5, 9], tmp_path / "field.png", path_points=path_points)
    assert_png_of(path, fig, "colour")


def test_loss_curve_figure(tmp_path):
    curves = {"float32": (np.arange(1, 6), np.linspace(1, 0.1, 5)), "bf16": (np.arange(1, 6), np.linspace(1, 0.2, 5))}
    fig = plots.loss_curve_figure(curves)
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    assert [line.get_label() for line in fig.axes[0].lines] == ["float32", "bf16"]
    assert_png_of(plots.save_loss_curve(curves, tmp_path / "loss.png"), fig, "colour")
