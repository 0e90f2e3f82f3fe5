"""tf.distribute: MirroredStrategy over two logical CPUs and two MultiWorkerMirroredStrategy
processes on localhost end with the weights of single-device training on the same global batch."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = [
    "--config=configs/moons.py:tiny",
    "--config.train.steps=20",
    "--config.train.checkpoint_every=10",
    "--config.train.log_every=5",
    "--config.data.batch_size=64",
    "--config.optimizer.use_ema=True",
    "--config.sample.num_samples=16",
]


def train(workdir, *flags, env=None):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "train.py"), f"--workdir={workdir}", *COMMON, *flags],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def weights(workdir, step=20):
    arrays = {}
    with h5py.File(workdir / "checkpoints" / f"ckpt-{step:09d}.weights.h5") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    floats = [name for name in a if a[name].dtype.kind == "f"]
    assert len(floats) > 10
    for name in floats:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    finish(train(workdir))
    return weights(workdir)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_over_two_logical_cpus_matches_single_device(tmp_path, single_device):
    finish(train(tmp_path, "--config.train.strategy=mirrored", "--config.train.cpu_devices=2"))
    assert json.loads((tmp_path / "summary.json").read_text())["replicas"] == 2
    assert_same_weights(weights(tmp_path), single_device, atol=1e-5)


def test_two_multi_worker_processes_match_single_device(tmp_path, single_device):
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = [
        train(tmp_path / "chief" if index == 0 else tmp_path / "worker", "--config.train.strategy=multi_worker",
              env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    for process in processes:
        finish(process)
    summary = json.loads((tmp_path / "chief" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 20
    assert not (tmp_path / "worker" / "model.keras").exists()  # only the chief writes outputs
    assert_same_weights(weights(tmp_path / "chief"), single_device, atol=1e-5)
