"""Console entry points (pyproject.toml, [project.scripts]) for the studies.

Each runs its module exactly as ``python -m lab.NAME`` does (as ``__main__``, with the same arguments),
so ``midog-sweep --help`` and ``python -m lab.sweep --help`` cannot drift apart.
"""

from __future__ import annotations

import runpy


def _run(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def pretrain_ssl() -> None:
    _run("lab.pretrain_ssl")


def born_again() -> None:
    _run("lab.born_again")


def sweep() -> None:
    _run("lab.sweep")
