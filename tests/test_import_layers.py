"""Layers, imports only downward: stats -> model -> data -> training -> evaluation -> lab (studies, with lab/analyses).

The container copies process.py, model/ and weights/ alone, so model/ may import nothing of the project but
itself; stats/ sits below everything; evaluation/ never reaches into training/; nothing imports the studies.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What each package may import of the project (itself always). lab/ (lab/analyses/ included) may import every
# layer; no other layer lists lab, so nothing outside lab/ imports it.
ALLOWED = {
    "stats": set(),
    "model": set(),
    "data": {"model", "stats"},
    "training": {"model", "stats", "data"},
    "evaluation": {"model", "stats", "data"},
    "lab": {"model", "stats", "data", "training", "evaluation"},
}
PROJECT = {"stats", "model", "data", "training", "evaluation", "lab", "process"}


def project_imports(path: Path) -> set[str]:
    """The top-level project packages a module imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(package):
    offending = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = project_imports(path) - ALLOWED[package] - {package}
        if extra:
            offending[str(path.relative_to(ROOT))] = sorted(extra)
    assert not offending, f"{package}/ imports layers above it: {offending}"


def test_the_container_entrypoint_imports_only_the_model():
    assert project_imports(ROOT / "process.py") <= {"model"}


def test_the_import_check_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from training.train import main\n    from . import sibling\n")
    assert project_imports(module) == {"training"}
