"""README.md's code blocks are the files the tests run.

Every python/bash block is preceded by a marker comment: `<!-- examples/NAME -->` for a block that
must equal examples/NAME (which tests/test_examples.py runs), or `<!-- quickstart … -->` for the
opening two commands: the second is the command .ci/run runs, the first trains the main job.
"""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:^(?P<marker><!--.*?-->)\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
RUNNABLE = ("python", "bash", "sh", "shell", "console")


def blocks():
    return [(m["marker"], m["lang"], m["body"]) for m in BLOCK.finditer(README)]


def quickstart_commands():
    marker, lang, body = blocks()[0]
    assert marker and marker.startswith("<!-- quickstart"), "README must open with the quickstart block"
    return [line for line in body.splitlines() if line.strip() and not line.startswith("#")]


def test_every_runnable_block_is_a_file_the_tests_run():
    runnable = [(marker, body) for marker, lang, body in blocks() if lang in RUNNABLE]
    assert len(runnable) >= 5
    for marker, body in runnable:
        assert marker, f"a README block has no marker comment:\n{body[:300]}"
        name = re.fullmatch(r"<!-- (examples/[\w.]+) -->", marker)
        if marker.startswith("<!-- quickstart"):
            continue
        assert name, f"unknown marker {marker!r}"
        assert body == (ROOT / name[1]).read_text(encoding="utf-8"), f"README's copy of {name[1]} differs from the file"


def test_every_example_is_shown():
    shown = set(re.findall(r"^<!-- (examples/[\w.]+) -->$", README, flags=re.MULTILINE))
    files = {f"examples/{p.name}" for p in (ROOT / "examples").iterdir() if p.suffix in (".py", ".sh")}
    assert shown == files


def test_quickstart_tests_command_is_what_ci_runs():
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    install, tests = commands[1].split(" && ")
    assert install == 'python -m pip install -e ".[test]"'
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, f"{tests!r} is not a line of .ci/run"
    assert any(line.startswith("python -m pip install") and '-e ".[test]"' in line for line in ci)


def main_job(workdir):
    """The quickstart's training command, with its workdir moved to `workdir`."""
    install, train = quickstart_commands()[0].split(" && ")
    assert install == "python -m pip install -e ."
    argv = shlex.split(train)
    assert argv[:2] == ["python", "tools/train.py"] and "--workdir=runs/moons" in argv, argv
    return [sys.executable] + [f"--workdir={workdir}" if a == "--workdir=runs/moons" else a for a in argv[1:]]


def test_quickstart_main_job_command_line_parses(tmp_path):
    result = subprocess.run(main_job(tmp_path / "moons") + ["--only_check_args"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]


@pytest.mark.slow
def test_quickstart_main_job_runs(tmp_path):
    workdir = tmp_path / "moons"
    result = subprocess.run(main_job(workdir), capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"samples.png", "model.keras", "loss.csv"} <= {p.name for p in workdir.iterdir()}
