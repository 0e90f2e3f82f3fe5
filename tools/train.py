"""Trains a diffusion model from a config file; resumes when the workdir holds a run.

    python tools/train.py --config=configs/moons.py --workdir=runs/moons [--config.train.steps=N ...]

Writes config.json, checkpoints/, logs/ (TensorBoard), loss.csv, samples.png, model.keras and
summary.json into --workdir. Shows the step, loss, time per step and ETA of the run: one line redrawn
on a terminal, a line every config.train.log_every steps in a log file or CI (`training.ProgressBar`;
--config.train.verbose=False for none). A bad command line, config key or value ends with one line naming it
and the value received, and exit status 1 (`--verbose` shows the traceback); a loss that became
NaN/Inf ends with exit status 3 (the last good checkpoint is kept).
"""

from absl import flags
from ml_collections import config_flags

from tfdiffusion import cli
from tfdiffusion import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (see configs/), with an optional "
                                          "variant: configs/mnist.py:tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and the final model.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.run refuses positional arguments
    from tfdiffusion import training  # imports TensorFlow: after the command line is checked

    return cli.run_job(training.train, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, output_dirs=("workdir",), precheck=lambda: config_lib.validate_config(_CONFIG.value))
