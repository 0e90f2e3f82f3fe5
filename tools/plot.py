"""Draws the figures of a trained workdir as PNG files, into WORKDIR/figures unless --output_dir is given.

    python tools/plot.py --workdir=runs/moons [--output_dir=DIR] [--figures=schedules,trajectory]

Figures: schedules (β and 1 − ᾱ, linear vs polynomial vs cosine), forward (naive iterative noising
vs the closed form, images only), trajectory (x_t strip for images, 2-D paths for toys),
vector_field (−ε_θ(x, t) on a grid, 2-D toys), loss (from loss.csv), samples (grid or scatter),
guidance (one row per class at increasing guidance, class-conditional models). Prints one
`name: path` line per figure written. Bad input ends with one line naming the flag and the value
received, and exit status 1.
"""

import os

from absl import flags

from tfdiffusion import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by tools/train.py.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the PNG files go (default: WORKDIR/figures).")
_FIGURES = flags.DEFINE_list("figures", None, "Which figures to draw (default: every one that applies to the model; "
                             "names in tfdiffusion.reports.FIGURES).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples drawn.")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv  # cli.run refuses positional arguments
    from tfdiffusion import reports  # imports TensorFlow: after the command line is checked

    output_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "figures")
    figures = _FIGURES.value or reports.FIGURES
    written = reports.write_figures(_WORKDIR.value, output_dir, figures, seed=_SEED.value)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    cli.run(main, output_dirs=("output_dir",))
