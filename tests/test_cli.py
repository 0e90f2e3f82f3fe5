"""Usage errors of the binaries: one line on stderr naming the flag or key and the value, exit 1, no traceback.

Most cases fail before TensorFlow is imported (about half a second each); the one that fails after
it started also checks that TensorFlow's native start-up log shows no CUDA error and no duplicate.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from tfdiffusion import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
TF_STARTED = "oneDNN"  # a line TensorFlow's native start-up prints


def run_tool(name, *args, env=None):
    environment = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV_VAR} | (env or {})
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *args], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=300)


def assert_one_line_error(result, *fragments, before_tensorflow=True):
    """Exit status 1; stderr ends with one `error:` line holding every fragment; no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    if before_tensorflow:
        assert TF_STARTED not in result.stderr, "failed only after TensorFlow started"
    return lines[-1]


def unwritable_directory(tmp_path):
    """A directory nobody may create files in, even root (skips when the host has none)."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        directory = tmp_path / "read_only"
        directory.mkdir()
        directory.chmod(0o500)
        return directory
    for candidate in ("/sys", "/proc"):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return pathlib.Path(candidate)
    pytest.skip("no unwritable directory on this host")


MOONS = "--config=configs/moons.py:tiny"


def test_unknown_config_key_says_did_you_mean(tmp_path):
    result = run_tool("train.py", MOONS, "--config.train.step=100", f"--workdir={tmp_path}")
    assert_one_line_error(result, "config.train has no key 'step'", 'did you mean "steps"',
                          "Received: --config.train.step=100")


def test_unknown_config_section(tmp_path):
    result = run_tool("train.py", MOONS, "--config.trian.steps=100", f"--workdir={tmp_path}")
    assert_one_line_error(result, "config has no section 'trian'", 'did you mean "train"',
                          "Received: --config.trian.steps=100")


def test_missing_config_file(tmp_path):
    result = run_tool("train.py", "--config=configs/nope.py", f"--workdir={tmp_path}")
    assert_one_line_error(result, "'configs/nope.py' does not exist", "Received: --config=configs/nope.py")


def test_bad_variant(tmp_path):
    result = run_tool("train.py", "--config=configs/mnist.py:huge", f"--workdir={tmp_path}")
    assert_one_line_error(result, "Received: variant='huge'", "--config=configs/mnist.py:huge")


def test_bad_config_value_fails_before_tensorflow(tmp_path):
    result = run_tool("train.py", MOONS, "--config.train.steps=-5", f"--workdir={tmp_path}")
    assert_one_line_error(result, "Received: config.train.steps=-5")
    result = run_tool("train.py", MOONS, "--config.train.steps=many", f"--workdir={tmp_path}")
    assert_one_line_error(result, "--config.train.steps=many")


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    result = run_tool("train.py", MOONS, f"--workdir={path}")
    assert_one_line_error(result, "--workdir must be a directory", f"Received: --workdir={str(path)!r}")
    result = run_tool("train.py", MOONS, f"--workdir={path}/run")
    assert_one_line_error(result, "--workdir cannot be created", f"Received: --workdir={str(path / 'run')!r}")


def test_workdir_not_writable(tmp_path):
    workdir = unwritable_directory(tmp_path) / "run"
    result = run_tool("train.py", MOONS, f"--workdir={workdir}")
    assert_one_line_error(result, "--workdir is not writable", f"Received: --workdir={str(workdir)!r}")
    assert not workdir.exists()


def test_unknown_flag_missing_flag_and_stray_argument(tmp_path):
    assert_one_line_error(run_tool("train.py", MOONS, f"--workdir={tmp_path}", "--stepz=3"), "'stepz'")
    assert_one_line_error(run_tool("train.py", MOONS), "--workdir")
    assert_one_line_error(run_tool("train.py", MOONS, f"--workdir={tmp_path}", "extra"), "Received: extra")


def test_other_binaries_share_the_one_line_errors(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert_one_line_error(run_tool("plot.py", f"--workdir={tmp_path}", f"--output_dir={a_file}"),
                          f"Received: --output_dir={str(a_file)!r}")
    assert_one_line_error(run_tool("export.py", f"--workdir={tmp_path}", f"--export_base={a_file}"),
                          f"Received: --export_base={str(a_file)!r}")
    assert_one_line_error(run_tool("export.py", f"--workdir={tmp_path}", f"--export_base={tmp_path}/serving"),
                          "model.keras does not exist", f"Received: --workdir={str(tmp_path)!r}")
    assert_one_line_error(run_tool("train_classifier.py", f"--workdir={a_file}"),
                          f"Received: --workdir={str(a_file)!r}")
    assert_one_line_error(run_tool("evaluate.py", "--output=x.json", "--num_sampels=3"), "'num_sampels'")


def test_verbose_shows_the_traceback(tmp_path):
    for extra, env in ((["--verbose"], None), ([], {cli.VERBOSE_ENV_VAR: "1"})):
        result = run_tool("train.py", MOONS, "--config.train.step=100", f"--workdir={tmp_path}", *extra, env=env)
        assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr[-2000:]
        assert 'Did you mean "steps"' in result.stderr


def test_library_errors_after_tensorflow_starts_are_one_line(tmp_path):
    """An error the library raises (FileNotFoundError from `reports`) also ends in one line, exit 1; and
    TensorFlow's start-up printed no CUDA error (this host has no GPU driver) and each notice once."""
    result = run_tool("plot.py", f"--workdir={tmp_path}/missing")
    assert_one_line_error(result, "Received: workdir=", before_tensorflow=False)
    assert "CUDA error" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count(TF_STARTED) <= 1, result.stderr[-3000:]


# -- quiet start-up ------------------------------------------------------------------------------------
def native(source, message, severity="I"):
    return f"{severity}0000 00:00:1795996704.080853   25475 {source}] {message}"


NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = native("port.cc:153", "oneDNN custom operations are on.")
NO_DRIVER = native("cudart_stub.cc:31", "Could not find cuda drivers on your machine, GPU will not be used.")
CUINIT = native("cuda_platform.cc:52", "failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
                "UNKNOWN ERROR (303)", "E")


def test_filter_drops_duplicates_and_the_driverless_cuinit_error():
    lines = [NOTICE, ONEDNN, NO_DRIVER, NOTICE, ONEDNN, NO_DRIVER, CUINIT, "a real problem"]
    assert cli.filter_startup_lines(lines) == [ONEDNN, NO_DRIVER, "a real problem"]


def test_filter_keeps_the_cuinit_error_when_a_driver_exists():
    other_error = native("cuda_platform.cc:60", "CUDA_ERROR_OUT_OF_MEMORY", "E")
    lines = [ONEDNN, CUINIT, other_error]
    assert cli.filter_startup_lines(lines, driver_missing=False) == lines
    assert cli.filter_startup_lines(lines, driver_missing=True) == [ONEDNN, other_error]
    # Without TensorFlow's "Could not find cuda drivers" line, the driver library itself is looked for.
    expected = [ONEDNN, other_error] if cli.cuda_driver_missing() else lines
    assert cli.filter_startup_lines(lines) == expected


def test_verbose_requested():
    assert cli.verbose_requested(["prog", "--verbose"], environ={})
    assert not cli.verbose_requested(["prog", "--verbose", "--noverbose"], environ={})
    assert cli.verbose_requested(["prog"], environ={cli.VERBOSE_ENV_VAR: "1"})
    assert not cli.verbose_requested(["prog", "--verbose=false"], environ={cli.VERBOSE_ENV_VAR: "1"})
    assert not cli.verbose_requested(["prog", "--", "--verbose"], environ={})
