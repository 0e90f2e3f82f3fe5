"""Trains a diffusion model from a config file; resumes when the workdir holds a run.

    python tools/train.py --config=configs/moons.py --workdir=/tmp/moons [--config.train.steps=N ...]

Writes config.json, checkpoints/, logs/ (TensorBoard), loss.csv, samples.png, model.keras and
summary.json into --workdir. Exits with status 1 and a message naming the bad value on invalid
input, and with status 3 when the loss became NaN/Inf (the last good checkpoint is kept).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from tfdiffusion import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and the final model.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments. Received: {argv[1:]}")
    try:
        training.train(_CONFIG.value, _WORKDIR.value)
    except training.NonFiniteLossError as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
