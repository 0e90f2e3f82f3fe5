"""Training runs that tests start: configs by name, tools/train.py in a subprocess, checkpoints read back,
and the SIGKILL-and-resume loop shared by the array and folder resume tests."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from tfdiffusion import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "tools" / "train.py")]


def load_config(name, variant="tiny", **overrides):
    """configs/<name>.py's config (`variant` of it), with "section.key" overrides."""
    namespace = {}
    exec(compile((ROOT / "configs" / f"{name}.py").read_text(), name, "exec"), namespace)
    config = namespace["get_config"](variant)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def run_binary(*args):
    """tools/train.py with `args`, quiet TensorFlow logs; the CompletedProcess (text output)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(TRAIN + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def checkpoint_arrays(path):
    """{dataset name: array} of every dataset in an .h5 checkpoint."""
    arrays = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def newest_checkpoint(workdir):
    """The step of the newest checkpoint in `workdir` (0 without one)."""
    directory = workdir / "checkpoints"
    steps = checkpoints.CheckpointManager(str(directory), None).steps() if directory.exists() else []
    return steps[-1] if steps else 0


def sigkill_then_resume(flags, tmp_path, *, steps, checkpoint_every, kills, checkpoints_between):
    """Trains `flags` straight through, and again with `kills` SIGKILLs, then resumes to the end.

    Each kill lands after `checkpoints_between` = (low, high) more checkpoints, at a random
    moment within a step or a checkpoint write. Asserts that the final checkpoints of the two
    runs are bitwise equal; returns their workdirs (straight, interrupted).
    """
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_binary(*flags, f"--workdir={straight}").returncode == 0
    rng, reached = random.Random(0), []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    while len(reached) < kills:
        process = subprocess.Popen(TRAIN + flags + [f"--workdir={interrupted}"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = newest_checkpoint(interrupted) + checkpoint_every * rng.randint(*checkpoints_between)
        while process.poll() is None and newest_checkpoint(interrupted) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        assert process.poll() is None, "the run ended before it could be killed; lengthen it"
        process.send_signal(signal.SIGKILL)
        process.wait()
        reached.append(newest_checkpoint(interrupted))
    assert reached == sorted(reached) and reached[-1] < steps
    assert run_binary(*flags, f"--workdir={interrupted}").returncode == 0
    final = f"ckpt-{steps:09d}.weights.h5"
    a, b = checkpoint_arrays(straight / "checkpoints" / final), checkpoint_arrays(interrupted / "checkpoints" / final)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    return straight, interrupted
