"""Console entry points (pyproject.toml, [project.scripts]) for the training modules.

Each runs its module exactly as ``python -m training.NAME`` does (as ``__main__``, with the same
arguments), so ``midog-train --help`` and ``python -m training.train --help`` cannot drift apart.
"""

from __future__ import annotations

import runpy


def run_as_main(module: str) -> None:
    """Run ``module`` as ``python -m module`` does (also for lab.cli's commands)."""
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def train() -> None:
    run_as_main("training.train")


def export() -> None:
    run_as_main("training.export")


def reproduce() -> None:
    """``midog-reproduce``: the one command that trains and exports the shipped weights (training.all_figures)."""
    run_as_main("training.all_figures")
