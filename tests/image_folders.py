"""Small folders of image files that tests write (no network, no data directory)."""

import numpy as np
from PIL import Image


def write_image(path, pixels):
    """Writes uint8 pixels [H, W] or [H, W, C] to `path`, the format following its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels, np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(path)
    return path


def write_image_folder(root, *, classes=("cat", "dog"), per_class=6, size=(20, 24), formats=("png", "jpg"),
                       channels=3, seed=0):
    """Random images under root/<class>/ (root/ itself when `classes` is None); returns {path: pixels}.

    The formats alternate through `formats`; JPEG is lossy, so only the PNGs' pixels are exact.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for class_name in classes or (None,):
        directory = root / class_name if class_name else root
        for i in range(per_class):
            pixels = rng.integers(0, 256, size + (channels,), dtype=np.uint8)
            path = directory / f"{i:03d}.{formats[i % len(formats)]}"
            write_image(path, pixels)
            written[path] = pixels
    return written
