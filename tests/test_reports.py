"""reports / tools/plot.py: the figures of a trained workdir."""

import pathlib
import subprocess
import sys

import pytest

from tfdiffusion import reports, training

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moons_workdir(tmp_path_factory):
    namespace = {}
    exec((ROOT / "configs" / "moons.py").read_text(), namespace)
    config = namespace["get_config"]("tiny")
    config.train.verbose = False
    workdir = tmp_path_factory.mktemp("moons")
    training.train(config, str(workdir))
    return workdir


def test_toy_figures(moons_workdir, tmp_path):
    written = reports.write_figures(str(moons_workdir), str(tmp_path))
    assert set(written) == {"schedules", "trajectory", "vector_field", "loss", "samples"}  # no image-only figure
    for path in written.values():
        assert pathlib.Path(path).stat().st_size > 5000


def test_bad_requests_name_the_value(moons_workdir, tmp_path):
    with pytest.raises(ValueError, match=r"Received: figures=\['histogram'\]"):
        reports.write_figures(str(moons_workdir), str(tmp_path), ["histogram"])
    with pytest.raises(FileNotFoundError, match="Received: workdir="):
        reports.write_figures(str(tmp_path / "nothing"), str(tmp_path))


def test_plot_binary(moons_workdir, tmp_path):
    run = [sys.executable, str(ROOT / "tools" / "plot.py"), f"--output_dir={tmp_path}"]
    ok = subprocess.run(run + [f"--workdir={moons_workdir}", "--figures=schedules"], capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "moons_schedules.png").exists(), ok.stderr[-2000:]
    bad = subprocess.run(run + [f"--workdir={tmp_path}/missing"], capture_output=True, text=True)
    assert bad.returncode == 1 and "Received: workdir=" in bad.stderr
