"""Draws the figures of a trained workdir as PNG files.

    python tools/plot.py --workdir=/tmp/moons --output_dir=docs/figures [--figures=schedules,trajectory]

Figures: schedules (β and 1 − ᾱ, linear vs polynomial vs cosine), forward (naive iterative noising
vs the closed form, images only), trajectory (x_t strip for images, 2-D paths for toys),
vector_field (−ε_θ(x, t) on a grid, 2-D toys), loss (from loss.csv), samples (grid or scatter).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tfdiffusion import reports  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tools/train.py.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "docs/figures", "Where the PNG files go.")
_FIGURES = flags.DEFINE_list("figures", list(reports.FIGURES), "Which figures to draw.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples drawn.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments. Received: {argv[1:]}")
    try:
        written = reports.write_figures(_WORKDIR.value, _OUTPUT_DIR.value, _FIGURES.value, seed=_SEED.value)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
