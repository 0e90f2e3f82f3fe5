"""Figures as PNG files (matplotlib's Agg backend: no display needed)."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
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


def save_image_grid(images, path, *, columns=None, labels=None, title=None):
    """Writes a grid of [N, H, W, C] images in [0, 1] (optionally one label per row) to `path`."""
    grid = image_grid(images, columns)
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    fig, ax = plt.subplots(figsize=(max(2.0, grid.shape[1] / 28 * 0.6), max(2.0, grid.shape[0] / 28 * 0.6)), dpi=100)
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
    return _save(fig, path)


def save_points(points, path, *, reference=None, title=None):
    """Scatter of 2-D points (or a histogram of 1-D points) with optional reference data."""
    points = np.asarray(points)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
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
    return _save(fig, path)


def save_samples(samples, path, *, reference=None, labels=None, title=None):
    """Images → a grid, vectors → a scatter/histogram."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        return save_image_grid(samples, path, labels=labels, title=title)
    return save_points(samples, path, reference=reference, title=title)
