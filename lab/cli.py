"""Console entry points (pyproject.toml, [project.scripts]) for the studies.

Each runs its module exactly as ``python -m lab.NAME`` does (as ``__main__``, with the same arguments),
so ``midog-sweep --help`` and ``python -m lab.sweep --help`` cannot drift apart.
"""

from __future__ import annotations

from training.cli import run_as_main


def pretrain_ssl() -> None:
    run_as_main("lab.pretrain_ssl")


def born_again() -> None:
    run_as_main("lab.born_again")


def sweep() -> None:
    run_as_main("lab.sweep")


def lodo() -> None:
    run_as_main("lab.lodo")


def rescore() -> None:
    run_as_main("lab.rescore")
