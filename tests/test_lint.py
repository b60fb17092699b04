"""ruff (pinned in requirements-dev.txt, configured in pyproject.toml) finds nothing in the repository."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_ruff_check_is_clean():
    probe = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail("ruff not installed (requirements-dev.txt pins it; scripts/venv.sh installs it)")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
