"""Chains of training runs and exports, run side by side on one machine: the machinery of
``training.all_figures`` (the command that reproduces ``weights/``) and of the studies built like it
(``lab.born_again``).

A chain is a list of ``Step`` (one ``python -m training.train`` or ``training.export`` command each), grouped
into ``Task`` that run back to back in one slot; ``schedule`` runs the tasks with at most N at a time, longest
remaining chain first; ``run_steps`` runs a task's steps, recording each finished one in ``steps.json`` so
that the same command run again continues where it stopped; ``check_same_recipe`` refuses to mix two recipes
in one folder; ``export_ensemble`` writes the final export unless it is already there from the same networks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from . import export as export_module
from . import recipes
from . import train as train_module
from .provenance import file_sha256

# Left unset by a chain in every step, so a recipe must leave them unset too (the rest of the chain's
# settings are passed to every training step explicitly and override a recipe's).
UNSET_BY_CHAIN = ("kd_start_auc", "kd_teacher", "stop_after")
DEFAULT_EXPORT_FLAGS = "--half --tta none --threshold-rule halfway"  # how the shipped weights were exported


# How a step runs, not what it computes: left out when a rerun is compared with the finished steps, so a
# run continued with another --parallel, on another machine or from another Python path is not refused.
RUNTIME_FLAGS = {"--threads": 1, "--workers": 1, "--device": 1, "--plot-every": 1, "--no-progress": 0}


@dataclass(frozen=True)
class Step:
    name: str  # teacher | teacher-weights | student
    argv: tuple[str, ...]

    def command(self) -> str:
        return shlex.join(self.argv)


def recipe_of(command: str) -> list[str]:
    """A step's command without the interpreter's path and the runtime-only flags."""
    argv, kept, i = shlex.split(command)[1:], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in RUNTIME_FLAGS:
            i += 1 if "=" in argv[i] else 1 + RUNTIME_FLAGS[name]
            continue
        kept.append(argv[i])
        i += 1
    return kept


def add_chain_options(p: argparse.ArgumentParser, *, export_help: str) -> None:
    """The options of a chain of training runs and exports (here and in ``training.all_figures``): the
    student's distillation, the recipe and export flags, the final export, a dry run, the training flags."""
    p.add_argument("--kd-weight", type=float, default=1.0, help="weight of the student's distillation term")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--recipe", metavar="RECIPE",
                   help="a recipe of configs/ (shipped, paper, erm) or a recipe file: --config RECIPE for every "
                        "training run, and its [export] table as the export flags")
    p.add_argument("--export-flags",
                   help="training.export flags for every export (default: the recipe's [export] table, else "
                        f"{DEFAULT_EXPORT_FLAGS!r})")
    p.add_argument("--export", type=Path, metavar="DIR", help=export_help)
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then flags for every training.train run")


def has_flag(flags: list[str], name: str) -> bool:
    return any(f.split("=", 1)[0] == name for f in flags)


def training_flags(train_args: list[str], recipe: str | None, *, module: str, chain_flags: tuple[str, ...],
                   chain_sets: str) -> list[str]:
    """The flags after ``--`` (behind ``--config RECIPE`` when a recipe is given), checked by
    ``training.train``'s own parser before hours of training. A flag of ``chain_flags`` is refused: the
    chain (the command ``module``) sets it in every step (``chain_sets`` says what, for the message)."""
    flags = train_args[1:] if train_args[:1] == ["--"] else list(train_args)
    parser = train_parser(module)
    prog = parser.prog
    # Every chain destination starts unset, so one given on the command line shows whatever its value
    # (by destination, so abbreviations and --flag=value are caught too).
    chain: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.option_strings and action.option_strings[0] in chain_flags:
            chain.setdefault(action.dest, []).append(action.option_strings[0])
    parsed = parser.parse_args(flags, argparse.Namespace(**{dest: _UNSET for dest in chain}))
    for dest, names in chain.items():  # argparse has exited with its message on a typo or a bad value
        if getattr(parsed, dest) is not _UNSET:
            raise SystemExit(f"{prog}: {'/'.join(names)} is set by the chain ({chain_sets}")
    if recipe:
        if parsed.config is not None:
            raise SystemExit(f"{prog}: give the recipe once: --recipe, or --config after --, not both")
        flags = ["--config", recipe, *flags]
    return flags


_UNSET = object()


def train_parser(module: str) -> argparse.ArgumentParser:
    """training.train's parser, its messages naming the chain's command ``module`` (e.g. training.all_figures)."""
    parser = train_module.get_args_parser()
    parser.prog = module.rsplit(".", 1)[-1]
    parser.usage = f"python -m {module} [options] -- TRAINING FLAGS (python -m training.train --help)"
    return parser


def recipe_switches_kd_off(flags: list[str], module: str, unset_by_chain: tuple[str, ...] = UNSET_BY_CHAIN) -> bool:
    """Whether the training flags, with their recipe (``--config``), switch distillation off: the student
    then needs ``--kd``. A recipe must also leave unset what the chain leaves unset."""
    resolved = recipes.parse_args(train_parser(module), flags)
    prog = module.rsplit(".", 1)[-1]
    defaults = train_module.get_args_parser()
    for dest in unset_by_chain:
        if getattr(resolved, dest) != defaults.get_default(dest):
            raise SystemExit(f"{prog}: the recipe {resolved.config} sets {dest}, which the chain leaves unset "
                             f"in every step; use a recipe without it")
    return resolved.no_kd


def export_flags_for(args) -> list[str]:
    """--export-flags as given, else the recipe's [export] table, else the shipped export flags."""
    if args.export_flags is not None:
        return shlex.split(args.export_flags)
    parser = export_module.get_args_parser()
    settings = recipes.export_settings(parser, args.recipe) if args.recipe else {}
    return recipes.flags_for(settings, parser) if settings else shlex.split(DEFAULT_EXPORT_FLAGS)


@dataclass(eq=False)  # one task is one piece of work: compared and hashed by identity
class Task:
    """Steps of one seed that run back to back in one slot: the teacher with its export, or the student."""
    seed: int
    steps: list[Step]
    after: Task | None = None  # must have finished first (the student's teacher)
    chain: int = 1  # trainings from this task to the end of its seed's chain (scheduling priority)
    done: bool = False


def schedule(tasks: list[Task], slots: int, run: Callable[[Task, int], None]) -> list[str]:
    """Run ``tasks`` with at most ``slots`` at a time, longest remaining chain first (then in the given
    order), calling ``run(task, side_by_side)`` in a worker thread; ``side_by_side`` counts the tasks
    running once this one has started, including it (what its CPU share is divided by). A task whose
    ``after`` failed never starts. Returns the failure messages (``SystemExit`` raised by ``run``)."""
    waiting, running, failures = list(tasks), {}, []
    failed: set[Task] = set()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        while waiting or running:
            waiting = [t for t in waiting if t.after not in failed]
            ready = sorted((t for t in waiting if t.after is None or t.after.done), key=lambda t: -t.chain)
            # Start as many as there are free slots; each is told how many will then run side by side.
            starting = ready[:slots - len(running)]
            side_by_side = len(running) + len(starting)
            for task in starting:
                waiting.remove(task)
                running[pool.submit(run, task, side_by_side)] = task
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    future.result()
                    task.done = True
                except SystemExit as exc:  # the other seeds go on; every failure is reported at the end
                    failures.append(str(exc))
                    failed.add(task)
    return failures


def read_done(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not readable JSON ({exc}); remove it to rerun every step") from None


def check_same_recipe(steps: list[Step], done: dict[str, str], path: Path) -> None:
    """A finished step whose command differs from this plan's: stop rather than mix two recipes."""
    for step in steps:
        if step.name in done and recipe_of(done[step.name]) != recipe_of(step.command()):
            raise SystemExit(f"{path}: step {step.name!r} finished with a different command:\n  {done[step.name]}\n"
                             f"this run would use:\n  {step.command()}\nuse another --out, or remove {path.parent}")


def with_threads(step: Step, threads: int | None) -> Step:
    """A training step with ``--threads N`` added (exports and ``threads=None`` unchanged)."""
    if threads is None or step.argv[1:3] == ("-m", "training.export"):
        return step
    return Step(step.name, (*step.argv, "--threads", str(threads)))


def step_env() -> dict:
    """The environment of the steps: they run `python -m training.*`, found from any working directory
    (relative paths kept as given), with unbuffered output for the logs."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def run_steps(steps: list[Step], run_dir: Path, log: Path | None, env: dict, threads: int | None = None) -> None:
    """Run one seed's steps in order, skipping those ``steps.json`` records as finished; training
    steps with ``--threads threads`` when it is given."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / "steps.json"
    done = read_done(record)  # main() has already checked it against this plan
    for step in steps:
        if step.name in done:
            print(f"[{run_dir.name}] {step.name}: done before, skipped", flush=True)
            continue
        step = with_threads(step, threads)
        print(f"[{run_dir.name}] {step.name}: {step.command()}", flush=True)
        t0 = time.time()
        if log is None:
            rc = subprocess.run(step.argv, env=env).returncode
        else:
            with open(log, "a") as f:
                f.write(f"\n$ {step.command()}\n")
                f.flush()
                rc = subprocess.run(step.argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            where = f"; its output is in {log}" if log else ""
            raise SystemExit(f"[{run_dir.name}] {step.name} failed (exit {rc}){where}. "
                             f"Run the same command again to continue from its last checkpoint.")
        done[step.name] = step.command()
        record.write_text(json.dumps(done, indent=1) + "\n")
        print(f"[{run_dir.name}] {step.name}: finished in {(time.time() - t0) / 60:.1f} min", flush=True)


def export_ensemble(final: Step, out: Path, target: Path, members: list[Path], env: dict) -> None:
    """Run the ensemble export unless ``OUT/export.json`` shows this export, from these networks (the
    seeds' students, or teachers with --teachers-only), already wrote the file now in ``target`` (same
    hash); record it when it runs."""
    record = out / "export.json"
    # What the export reads of each network (its checkpoints), by content: one retrained with the same
    # command is a different network.
    networks = {f"{run.parent.name}/{run.name}": {name: file_sha256(run / name) for name in ("best.pt", "last.pt")}
                for run in members}
    weights = target / "model.safetensors"
    before = read_done(record)
    if before and recipe_of(before.get("command", "")) == recipe_of(final.command()) \
            and before.get("networks") == networks and weights.is_file() \
            and before.get("sha256") == file_sha256(weights):
        print(f"export: done before into {target} (unchanged since; {record}), skipped", flush=True)
        return
    print(f"export: {final.command()}", flush=True)
    rc = subprocess.run(final.argv, env=env).returncode
    if rc != 0:
        raise SystemExit(f"the export into {target} failed (exit {rc})")
    record.write_text(json.dumps({"command": final.command(), "networks": networks,
                                  "sha256": file_sha256(weights)}, indent=1) + "\n")
