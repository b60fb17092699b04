"""The installable package (pyproject.toml): the same pins as the requirements files, every package listed,
entry points that resolve, and a container application (process.py + model/) that needs no installation."""

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def pins(path):
    """The requirement lines of a requirements file (comments and -r includes left out)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def test_dependencies_are_the_pins_of_requirements_txt():
    assert PROJECT["dependencies"] == pins(ROOT / "requirements.txt")
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", pin) for pin in PROJECT["dependencies"])


def test_dev_extra_is_requirements_dev_txt():
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert PROJECT["optional-dependencies"]["dev"] == pins(ROOT / "requirements-dev.txt")


def test_every_package_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    tops = ("stats", "model", "data", "training", "evaluation", "lab")
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for top in tops for init in (ROOT / top).rglob("__init__.py")}
    assert listed == found


@pytest.mark.parametrize("name", sorted(PROJECT["scripts"]))
def test_entry_point_resolves(name):
    module_name, function = PROJECT["scripts"][name].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function)), PROJECT["scripts"][name]


def test_training_entry_points_run_existing_modules():
    from training import cli

    source = (ROOT / "training" / "cli.py").read_text()
    for module in re.findall(r'_run\("([\w.]+)"\)', source):
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        assert "__main__" in (ROOT / spec.origin).read_text(), f"{module} has no __main__ block"
    assert set(re.findall(r"training\.cli:(\w+)", (ROOT / "pyproject.toml").read_text())) <= set(dir(cli))


def test_the_package_is_installed():
    """scripts/venv.sh installs the project: it imports from any directory, not only the checkout."""
    code = "import stats, model, data, training, evaluation, process; print(model.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + "\n(pip install -e . --no-deps; scripts/venv.sh does it)"
    assert done.stdout.strip() == str(ROOT / "model" / "__init__.py")


def test_the_container_application_needs_only_requirements_txt():
    """The Dockerfile copies process.py and model/ without installing the project: they import nothing
    but the standard library, requirements.txt's packages and model itself."""
    allowed = set(sys.stdlib_module_names) | {"model", "torch", "torchvision", "numpy", "PIL", "tifffile",
                                              "SimpleITK", "safetensors", "tqdm"}
    files = [ROOT / "process.py", *sorted((ROOT / "model").rglob("*.py"))]
    imported = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], path.relative_to(ROOT))
    assert {name: str(path) for name, path in imported.items() if name not in allowed} == {}


def test_no_script_shadows_a_package():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a file there named like one of the
    project's packages would hide the installed package from every script beside it."""
    names = {"stats", "model", "data", "training", "evaluation", "lab", "process"}
    clashes = [str(path.relative_to(ROOT)) for folder in ("lab/analyses", "benchmarks", "scripts", "test")
               for path in sorted((ROOT / folder).glob("*.py")) if path.stem in names]
    assert clashes == []
