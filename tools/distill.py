"""Progressive distillation of a trained model into students that sample in N/2, N/4, … steps; resumes a workdir.

    python tools/distill.py --config=configs/mnist_distill.py --config.distill.teacher=TEACHER_WORKDIR \
        --workdir=runs/mnist_distill [--config.distill.final_steps=2 ...]

TEACHER_WORKDIR is a finished `tools/train.py` run (its model.keras is the teacher) or a .keras file.
Writes config.json, round_K/ (checkpoints/, logs/, loss.csv, samples.png, round.json and the student
model.keras, which samples in its N steps) for each round, then model.keras (the last student) and
summary.json into --workdir (`tfdiffusion.distillation`). Rerunning with the same workdir resumes
where the run stopped, with the same result as an uninterrupted run. A bad command line, config key
or value, or a missing teacher, ends with one line naming it and the value received, and exit status
1 (`--verbose` shows the traceback); a loss that became NaN/Inf ends with exit status 3 (the last good
checkpoint is kept).
"""

from absl import flags
from ml_collections import config_flags

from tfdiffusion import cli
from tfdiffusion import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a distillation config file, with an optional "
                                          "variant: configs/mnist_distill.py:tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the rounds' checkpoints, logs and models.")
flags.mark_flags_as_required(["config", "workdir"])


def precheck():
    """The checks that need no TensorFlow: the config's values and the teacher's model.keras."""
    config_lib.validate_distill_config(_CONFIG.value)
    config_lib.distill_teacher_path(_CONFIG.value.distill.teacher)


def main(argv):
    del argv  # cli.run refuses positional arguments
    from tfdiffusion import distillation  # imports TensorFlow: after the command line is checked

    return cli.run_job(distillation.distill, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, output_dirs=("workdir",), precheck=precheck)
