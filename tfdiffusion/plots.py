"""Figures: each `*_figure` function returns a matplotlib `Figure`, each `save_*` writes one as a PNG.

The figures are `matplotlib.figure.Figure` objects, not pyplot ones: no display or backend is needed
and there is no global list of open figures to close.
"""

import csv
import os

import numpy as np
from matplotlib.figure import Figure


def _figure(rows=1, columns=1, *, figsize, squeeze=True):
    """A Figure at 100 dpi and its axes, as `pyplot.subplots` returns them."""
    fig = Figure(figsize=figsize, dpi=100)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def _save(fig, path):
    """Writes `fig` to `path` as a PNG with its whitespace trimmed; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return path


def image_grid(images, columns=None):
    """Tiles [N, H, W, C] images in [0, 1] into one [rows·H, columns·W, C] array."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * h, columns * w, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return grid


def image_grid_figure(images, *, columns=None, labels=None, title=None):
    """A grid of [N, H, W, C] images in [0, 1], optionally the label of each row's first image as its tick."""
    grid = image_grid(images, columns)
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    fig, ax = _figure(figsize=(max(2.0, grid.shape[1] / 28 * 0.6), max(2.0, grid.shape[0] / 28 * 0.6)))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    if labels is not None:
        h = np.asarray(images).shape[1]
        row_labels = [labels[i] for i in range(0, len(labels), columns)]
        ax.set_yticks([h * (i + 0.5) for i in range(len(row_labels))], [str(v) for v in row_labels])
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


def save_image_grid(images, path, *, columns=None, labels=None, title=None):
    """Writes `image_grid_figure(...)` to `path`; returns `path`."""
    return _save(image_grid_figure(images, columns=columns, labels=labels, title=title), path)


def points_figure(points, *, reference=None, title=None):
    """Scatter of 2-D points (or a histogram of 1-D points) with optional reference data."""
    points = np.asarray(points)
    fig, ax = _figure(figsize=(4, 4))
    if points.shape[-1] == 1:
        bins = 80
        if reference is not None:
            ax.hist(np.asarray(reference)[:, 0], bins=bins, density=True, alpha=0.5, label="data")
        ax.hist(points[:, 0], bins=bins, density=True, alpha=0.5, label="samples")
        ax.legend()
    else:
        if reference is not None:
            ax.scatter(*np.asarray(reference)[:, :2].T, s=2, alpha=0.4, label="data")
        ax.scatter(*points[:, :2].T, s=2, alpha=0.6, label="samples")
        ax.set_aspect("equal")
        ax.legend(markerscale=4)
    if title:
        ax.set_title(title)
    return fig


def save_points(points, path, *, reference=None, title=None):
    """Writes `points_figure(...)` to `path`; returns `path`."""
    return _save(points_figure(points, reference=reference, title=title), path)


def samples_figure(samples, *, reference=None, labels=None, title=None):
    """Images [N, H, W, C] → `image_grid_figure`, vectors [N, D] → `points_figure`."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        return image_grid_figure(samples, labels=labels, title=title)
    return points_figure(samples, reference=reference, title=title)


def save_samples(samples, path, *, reference=None, labels=None, title=None):
    """Writes `samples_figure(...)` to `path`; returns `path`."""
    return _save(samples_figure(samples, reference=reference, labels=labels, title=title), path)


def schedules_figure(betas_by_name):
    """β_t and 1 − ᾱ_t of several schedules, two panels side by side (the two-moons guide's figure 5)."""
    fig, (left, right) = _figure(1, 2, figsize=(9, 3.5))
    for name, betas in betas_by_name.items():
        betas = np.asarray(betas, np.float64)
        steps = np.arange(len(betas))
        left.plot(steps, betas, marker="." if len(betas) <= 50 else None, label=name)
        right.plot(steps, 1.0 - np.cumprod(1.0 - betas), marker="." if len(betas) <= 50 else None, label=name)
    left.set(title="β_t", xlabel="t")
    right.set(title="1 − ᾱ_t (variance of q(x_t | x_0))", xlabel="t")
    left.legend()
    return fig


def save_schedules(betas_by_name, path):
    """Writes `schedules_figure(...)` to `path`; returns `path`."""
    return _save(schedules_figure(betas_by_name), path)


def naive_iterative_noising(image, betas, seed=0):
    """x_t = x_{t−1} + √β_t ε: the JAX tutorial's flawed first attempt (it never forgets x_0)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(image, np.float64)
    frames = []
    for beta in betas:
        x = x + np.sqrt(beta) * rng.standard_normal(x.shape)
        frames.append(x.copy())
    return np.stack(frames)


def forward_process_figure(image, diffusion, timesteps, seed=0):
    """One image at increasing t: the naive iterative noising above the closed form q(x_t | x_0).

    Two rows of len(timesteps) panels.
    """
    image = np.asarray(image, np.float64)
    naive = naive_iterative_noising(image, diffusion.betas, seed)
    noise = np.random.default_rng(seed + 1).standard_normal(image.shape)
    fig, axes = _figure(2, len(timesteps), figsize=(1.4 * len(timesteps), 3.2), squeeze=False)
    for column, t in enumerate(timesteps):
        closed = np.sqrt(diffusion.alphas_cumprod[t]) * image + np.sqrt(1 - diffusion.alphas_cumprod[t]) * noise
        for row, frame in enumerate((naive[t], closed)):
            axes[row, column].imshow(np.clip((frame[..., 0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"t={t}", fontsize=8)
    axes[0, 0].set_ylabel("naive", fontsize=8)
    axes[1, 0].set_ylabel("q(x_t|x_0)", fontsize=8)
    return fig


def save_forward_process(image, diffusion, timesteps, path, seed=0):
    """Writes `forward_process_figure(...)` to `path`; returns `path`."""
    return _save(forward_process_figure(image, diffusion, timesteps, seed), path)


def trajectory_strip_figure(trajectory, *, every, num_timesteps, rows=3):
    """x_t before every `every`-th step and x_0 for `rows` images ([frames, N, H, W, C], model space).

    `rows` rows of `frames` panels.
    """
    trajectory = np.asarray(trajectory)
    frames = trajectory.shape[0]
    fig, axes = _figure(rows, frames, figsize=(0.9 * frames, 0.95 * rows), squeeze=False)
    for row in range(rows):
        for column in range(frames):
            ax = axes[row, column]
            ax.imshow(np.clip((trajectory[column, row, ..., 0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                t = num_timesteps - 1 - column * every if column < frames - 1 else 0
                ax.set_title("x_0" if column == frames - 1 else f"t={max(t, 0)}", fontsize=7)
    return fig


def save_trajectory_strip(trajectory, path, *, every, num_timesteps, rows=3):
    """Writes `trajectory_strip_figure(...)` to `path`; returns `path`."""
    return _save(trajectory_strip_figure(trajectory, every=every, num_timesteps=num_timesteps, rows=rows), path)


def point_trajectories_figure(trajectory, *, reference=None, num_paths=30):
    """2-D samples ([frames, N, 2]) at their last step, with the paths of the first `num_paths`."""
    trajectory = np.asarray(trajectory)
    fig, ax = _figure(figsize=(4.5, 4.5))
    if reference is not None:
        ax.scatter(*np.asarray(reference)[:, :2].T, s=2, alpha=0.3, color="gray", label="data")
    ax.scatter(*trajectory[-1, :, :2].T, s=2, alpha=0.6, label="samples")
    for i in range(min(num_paths, trajectory.shape[1])):
        ax.plot(trajectory[:, i, 0], trajectory[:, i, 1], lw=0.7, alpha=0.8)
    ax.set_aspect("equal")
    ax.legend(markerscale=4)
    ax.set_title("reverse trajectories")
    return fig


def save_point_trajectories(trajectory, path, *, reference=None, num_paths=30):
    """Writes `point_trajectories_figure(...)` to `path`; returns `path`."""
    return _save(point_trajectories_figure(trajectory, reference=reference, num_paths=num_paths), path)


def vector_field_figure(eps_fn, timesteps, *, path_points=None, extent=1.6, grid=21, reference=None):
    """The reverse-process direction −ε_θ(x, t) on a grid at several t (the two-moons guide's figure 4).

    Args:
      eps_fn: callable (x [M, 2], t [M]) → ε̂ [M, 2] as NumPy.
      timesteps: the t of each panel (one panel each, side by side).
      path_points: optional [frames, 2] trajectory of one sample, drawn in every panel.
      extent: the panels show [−extent, extent]².
      grid: arrows per side.
      reference: optional [M, 2] data drawn in grey.
    """
    axis = np.linspace(-extent, extent, grid)
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    fig, axes = _figure(1, len(timesteps), figsize=(3.2 * len(timesteps), 3.2), squeeze=False)
    for ax, t in zip(axes[0], timesteps):
        direction = -np.asarray(eps_fn(points, np.full(len(points), t, np.int32)))
        # Unit arrows show the direction; ε̂'s length (≈ 1 everywhere) would only shrink them.
        direction = direction / np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-8)
        if reference is not None:
            ax.scatter(*np.asarray(reference)[:, :2].T, s=1, alpha=0.2, color="gray")
        ax.quiver(points[:, 0], points[:, 1], direction[:, 0], direction[:, 1], angles="xy", scale=1.6 * grid,
                  width=0.004, color="tab:red", alpha=0.8)
        if path_points is not None:
            ax.plot(*np.asarray(path_points)[:, :2].T, color="tab:blue", lw=1.5, marker=".")
        ax.set(title=f"−ε_θ(x, t={t})", xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal")
    return fig


def save_vector_field(eps_fn, timesteps, path, *, path_points=None, extent=1.6, grid=21, reference=None):
    """Writes `vector_field_figure(...)` to `path`; returns `path`."""
    fig = vector_field_figure(eps_fn, timesteps, path_points=path_points, extent=extent, grid=grid,
                              reference=reference)
    return _save(fig, path)


def read_loss_csv(path):
    """(epochs, losses) from a Keras CSVLogger file; a resumed run's repeated epochs keep the last."""
    by_epoch = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            by_epoch[int(row["epoch"])] = float(row["loss"])
    epochs = sorted(by_epoch)
    return np.array(epochs), np.array([by_epoch[e] for e in epochs])


def loss_curve_figure(curves, *, xlabel="step", ylabel="loss", title="training loss"):
    """Curves on a log y axis: {label: (x, y)} (losses, or FID against training time)."""
    fig, ax = _figure(figsize=(5, 3.2))
    for label, (x, loss) in curves.items():
        ax.plot(x, loss, marker="." if len(x) < 50 else None, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log", title=title)
    ax.legend()
    return fig


def save_loss_curve(curves, path, *, xlabel="step", ylabel="loss", title="training loss"):
    """Writes `loss_curve_figure(...)` to `path`; returns `path`."""
    return _save(loss_curve_figure(curves, xlabel=xlabel, ylabel=ylabel, title=title), path)
