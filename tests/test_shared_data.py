"""Tests that need ../shared/data skip in a user's fresh clone without it, and fail under CI=true, where it is
always there (tests/conftest.py: require_shared_data, the shared_data mark, needs_amibr, needs_sample_stack)."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import (
    AMIBR,
    ROOT,
    SAMPLE_STACK,
    needs_amibr,
    needs_sample_stack,
    require_shared_data,
)


def test_missing_shared_data_skips_a_test_but_fails_it_under_ci(tmp_path, monkeypatch):
    missing = tmp_path / "absent" / "ami-br" / "AMI-BR.csv"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"real AMi-Br data not found at {missing}: CI=true"):
        require_shared_data(missing, "real AMi-Br data")
    for ci in (None, "false", ""):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception, match=f"real AMi-Br data not found at {missing}"):
            require_shared_data(missing, "real AMi-Br data")
    missing.parent.mkdir(parents=True)
    missing.write_text("")
    monkeypatch.setenv("CI", "true")
    assert require_shared_data(missing, "real AMi-Br data") is None  # present: the test runs


def test_needs_amibr_and_needs_sample_stack_are_the_shared_data_mark():
    for decorator, path in ((needs_amibr, AMIBR / "AMI-BR.csv"), (needs_sample_stack, SAMPLE_STACK)):
        def test_something():
            pass

        marks = decorator(test_something).pytestmark
        assert [(m.name, m.args[0]) for m in marks] == [("shared_data", path)]


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), (None, "1 skipped")])
def test_a_marked_test_run_by_pytest_without_its_data(tmp_path, ci, outcome):
    """A test marked as needing a file of ../shared/data that is not there, run by pytest with the project's
    conftest: an error naming the path under CI=true, a skip otherwise."""
    missing = tmp_path / "absent" / "ami-br" / "AMI-BR.csv"
    (tmp_path / "test_needs_data.py").write_text(textwrap.dedent(f"""
        from tests.conftest import shared_data

        @shared_data({str(missing)!r}, "real AMi-Br data")
        def test_reads_the_data():
            open({str(missing)!r}).read()
    """))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                           "tests.conftest", "--strict-markers", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_needs_data.py")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    printed = done.stdout + done.stderr
    assert outcome in printed and f"real AMi-Br data not found at {missing}" in printed, printed
    assert done.returncode == (1 if ci == "true" else 0), printed


def test_no_test_skips_on_the_shared_data_by_itself():
    """Every test that needs ../shared/data goes through conftest (require_shared_data, needs_amibr, ...):
    a pytest.skip or skipif of its own on the data would skip under CI=true too."""
    shared_names = ("AMIBR", "SHARED", "SAMPLE_STACK", "SAMPLE_INPUTS", "shared/data", '"shared"')
    own = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "conftest.py":
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("skip", "skipif", "importorskip"):
                segment = ast.get_source_segment(source, node) or ""
                if any(name in segment for name in shared_names):
                    own.append(f"{path.name}:{node.lineno}")
            # A path into ../shared of its own: tests take it from conftest (SHARED, AMIBR, SAMPLE_STACK, ...).
            sides = (node.left, node.right) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) else ()
            if any(isinstance(side, ast.Constant) and side.value == "shared" for side in sides):
                own.append(f"{path.name}:{node.lineno}")
    assert own == [], f"skips or paths on ../shared/data outside tests/conftest.py: {own}"
