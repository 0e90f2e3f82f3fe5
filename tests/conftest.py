"""Shared pytest setup: quiet TensorFlow logs, the `slow` marker, and subprocesses that import
this checkout's tfdiffusion (not whichever copy is installed)."""

import os
import pathlib
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


def pytest_collection_finish(session):
    """Finds TensorFlow's devices once, as the binaries do, so that no test's captured output holds the
    `failed call to cuInit` error a host without a GPU driver logs at the first device query."""
    if "tensorflow" in sys.modules:
        from tfdiffusion import cli

        cli.start_tensorflow()


@pytest.fixture
def mixed_bfloat16():
    """Runs a test under the mixed_bfloat16 policy and restores float32 afterwards."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
