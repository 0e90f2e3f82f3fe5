"""The files in examples/ (which README.md shows verbatim) run as written, offline, with small step counts.

Each example writes into a temporary directory (EXAMPLE_OUTPUT / RUNS), never into the repository.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(command, env, timeout=600):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ | env, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_fit_example_trains_samples_and_saves(tmp_path):
    result = run([sys.executable, "examples/fit.py"], {"EXAMPLE_STEPS": "20", "EXAMPLE_OUTPUT": str(tmp_path)})
    written = sorted(p.name for p in (tmp_path / "fit").iterdir())
    assert written == ["ddpm.png", "dpmpp_2m.png", "model.keras"], written
    assert f"to {tmp_path / 'fit'}" in result.stdout


def test_resume_example_continues_from_the_optimizer_step(tmp_path):
    env = {"EXAMPLE_STEPS": "5", "EXAMPLE_OUTPUT": str(tmp_path)}
    first = run([sys.executable, "examples/resume.py"], env | {"EXAMPLE_EPOCHS": "2"})
    assert "started at step 0; checkpoints at steps [5, 10]" in first.stdout, first.stdout[-2000:]
    second = run([sys.executable, "examples/resume.py"], env | {"EXAMPLE_EPOCHS": "4"})
    # Numbered by the optimizer's step: the second run starts at 10 and keeps the newest three.
    assert "started at step 10; checkpoints at steps [10, 15, 20]" in second.stdout, second.stdout[-2000:]


def test_moons_script_trains_plots_evaluates_and_exports(tmp_path):
    result = run(["bash", "examples/moons.sh"], {"CONFIG": "configs/moons.py:tiny", "RUNS": str(tmp_path)})
    moons = tmp_path / "moons"
    assert {"model.keras", "samples.png", "eval.json", "figures"} <= {p.name for p in moons.iterdir()}
    assert (moons / "figures" / "moons_samples.png").exists()
    report = json.loads((moons / "eval.json").read_text())
    assert report["energy_distance"] < report["energy_distance_noise"] / 2, report  # closer to moons than N(0, I)

    # The REST body export.py prints, and docs/SERVING.md's, are bodies the exported model accepts.
    printed = json.loads(re.search(r"A REST body it accepts \(POST [^)]*\): (\{.*\})", result.stdout)[1])
    serving_md = (ROOT / "docs" / "SERVING.md").read_text(encoding="utf-8")
    documented = json.loads(re.search(r"curl -X POST http://localhost:8501/v1/models/moons:predict -d '(\{.*?\})'",
                                      serving_md, flags=re.DOTALL)[1])
    version_dir = result.stdout.strip().splitlines()[-1]
    assert version_dir == str(tmp_path / "serving" / "moons" / "1")
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    for body in (printed, documented):
        sample = loaded.signatures[body["signature_name"]]
        dtypes = {name: spec.dtype for name, spec in sample.structured_input_signature[1].items()}
        samples = sample(**{name: tf.constant(value, dtypes[name]) for name, value in body["inputs"].items()})
        assert samples["samples"].shape == (body["inputs"]["num_samples"], 2), body
        assert np.all(np.isfinite(samples["samples"].numpy())), body


def test_mnist_script_command_lines_parse(tmp_path):
    """MNIST training takes minutes, so only each command line is checked (absl's --only_check_args parses
    the flags and loads the config file, then exits before main)."""
    check_only = 'python() { command python "$@" --only_check_args; }; export -f python; bash examples/mnist.sh'
    result = run(["bash", "-c", check_only], {"RUNS": str(tmp_path)}, timeout=120)
    assert result.stderr.strip() == "", result.stderr[-2000:]
    assert not list(tmp_path.iterdir())

