"""Console entry points (pyproject.toml, [project.scripts]) for the training modules.

Each runs its module exactly as ``python -m training.NAME`` does (as ``__main__``, with the same
arguments), so ``midog-train --help`` and ``python -m training.train --help`` cannot drift apart.
"""

from __future__ import annotations

import runpy


def _run(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def train() -> None:
    _run("training.train")


def export() -> None:
    _run("training.export")


def reproduce() -> None:
    """``midog-reproduce``: the one command that trains and exports the shipped weights (training.all_figures)."""
    _run("training.all_figures")
