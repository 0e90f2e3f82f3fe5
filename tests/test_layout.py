"""The package's layout: every import runs down (or sideways within a floor), never up.

Floors, bottom to top (README's Layout section lists the modules in this order):

    0  schedules, layers/, data, config, optimizers, precision
    1  diffusion, analytic
    2  samplers, metrics, plots
    3  model
    4  builders, checkpoints, callbacks, features, evaluation, export, training, reports, cli
    5  tools/, benchmarks/, examples/

Imports inside functions count too. A module that is not declared here fails the test, so a
new module has to be given its floor.
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOORS = {
    "schedules": 0, "layers": 0, "data": 0, "config": 0, "optimizers": 0, "precision": 0, "machine": 0,
    "results": 0,
    "diffusion": 1,
    "samplers": 2, "analytic": 2, "metrics": 2, "plots": 2,
    "model": 3,
    "builders": 4, "checkpoints": 4, "callbacks": 4, "features": 4, "evaluation": 4, "export": 4, "training": 4, "reports": 4,
    "distillation": 4, "cli": 4,
}
TOP_FLOOR = 5
SCRIPT_DIRS = ("tools", "benchmarks", "examples", "configs")


def module_key(path):
    """The floor name of a file: 'diffusion' for tfdiffusion/diffusion.py, 'layers' for layers/*."""
    relative = path.relative_to(ROOT / "tfdiffusion")
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_tfdiffusion_modules(path):
    """The floor names of every tfdiffusion module `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "tfdiffusion" else [f"tfdiffusion.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import (use absolute `tfdiffusion.` imports)")
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tfdiffusion" and len(parts) > 1:
                found.add(parts[1])
    return found


def library_files():
    return sorted(p for p in (ROOT / "tfdiffusion").rglob("*.py") if p.name != "__init__.py" or p.parent.name == "layers")


def test_every_library_module_has_a_floor():
    undeclared = sorted({module_key(p) for p in library_files()} - set(FLOORS))
    assert not undeclared, f"give these modules a floor in FLOORS (and a line in README's Layout): {undeclared}"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_imports_run_down(path):
    floor = FLOORS[module_key(path)]
    upward = {name: FLOORS.get(name) for name in imported_tfdiffusion_modules(path) if FLOORS.get(name, 99) > floor}
    assert not upward, f"{path.relative_to(ROOT)} (floor {floor}) imports from higher floors: {upward}"


def test_scripts_import_only_declared_modules():
    for directory in SCRIPT_DIRS:
        for path in sorted((ROOT / directory).glob("*.py")):
            unknown = imported_tfdiffusion_modules(path) - set(FLOORS) - {"__version__"}
            assert not unknown, f"{path.relative_to(ROOT)} imports undeclared modules {unknown}"


def test_configs_import_only_the_config_module():
    for path in sorted((ROOT / "configs").glob("*.py")):
        assert imported_tfdiffusion_modules(path) <= {"config"}, path.name


def test_scripts_do_not_edit_sys_path():
    for directory in SCRIPT_DIRS:
        for path in sorted((ROOT / directory).glob("*.py")):
            assert "sys.path" not in path.read_text(encoding="utf-8"), f"{path.relative_to(ROOT)} edits sys.path"


def test_readme_layout_lists_every_module_in_import_order():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^  (\w+)(?:\.py|/)\s", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(FLOORS), f"README's Layout lists {listed}"
    floors = [FLOORS[name] for name in listed]
    assert floors == sorted(floors), f"README's Layout is not in import order: {list(zip(listed, floors))}"


def test_loading_a_config_does_not_import_tensorflow():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mnist_config', {str(ROOT / 'configs' / 'mnist.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "module.get_config(); module.get_config('tiny')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout[-2000:]
