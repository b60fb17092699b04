"""Born-again distillation in one command: train a teacher, export it, train a student from it.

    python -m training.born_again --recipe shipped --out runs/bornagain --seeds 0 1 2 --parallel 2 \\
        --export weights -- --data amibr=../shared/data/ami-br --cv-fold 0

``--recipe RECIPE`` (a file of ``configs/`` or its name) is passed as ``--config RECIPE`` to every
``training.train`` run, and its ``[export]`` table gives the export flags (unless ``--export-flags``
is given). The flags after ``--`` go to every ``training.train`` run too, and override the recipe.
For each seed S, in ``OUT/sS/``:

1. ``teacher/``          ``training.train FLAGS --no-kd --seed S``: the network to distil from;
2. ``teacher-weights/``  ``training.export OUT/sS/teacher EXPORT_FLAGS``;
3. ``student/``          ``training.train FLAGS --kd-teacher OUT/sS/teacher-weights --kd-start-epoch 0
   --kd-warmup-epochs 0 --kd-weight W --kd-temperature T --seed S``: the same recipe, distilled from
   step 0 from that fixed teacher ("born-again networks", Furlanello et al. 2018; with ``--kd`` when
   the recipe switches distillation off, as the shipped one does);

with ``--leave-out-domain D`` among the flags, each student against its own teacher on the unseen
domain D (``training.compare --held-out``: AUC and BA at the shipped halfway threshold, paired over the
unseen slides, and their mean over seeds), printed and written to ``OUT/heldout-compare.md``;
then, with ``--export DIR``, one ``training.export`` of every seed's student into DIR (several seeds:
their mean logit, one file). With ``--teachers-only`` step 3 is left out and ``--export`` exports the
teachers instead: an ensemble of ERM networks in a third of the time (the ~90-minute schedule for three
seeds on a 2-core CPU, README). The student recomputes the teacher's split from the same flags, and
``training.train`` refuses a teacher that was trained on any of the student's validation or held-out
figures. Every training step runs with ``--resume`` and ``OUT/sS/steps.json`` records the steps
that finished, so the same command run again continues where it stopped and skips what is done
(also with another ``--parallel`` or ``--threads``); run with a different recipe into the same OUT, it
stops instead of mixing two recipes. The ensemble export is recorded in ``OUT/export.json`` with the
hash of the file it wrote, and skipped on a rerun while that file and the networks it read are unchanged.

With ``--parallel N`` up to N trainings run side by side, each logging to ``OUT/sS/chain.log``. They
are scheduled by step, not by seed: a free slot takes a waiting teacher before a waiting student
(the teacher has the longer chain behind it), so three seeds on two slots take three training
times (t0 t1 | t2 s0 | s1 s2) rather than four (seed by seed: t0 s0 t2 s2 beside t1 s1, then one
slot idle). Each training gets the CPU threads divided by the trainings running beside it when it
starts, unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from . import compare, recipes
from . import export as export_module
from . import train as train_module
from .provenance import file_sha256

# Set by the chain itself, per seed and step; passing them after -- would contradict it.
CHAIN_FLAGS = ("--seed", "--out", "--resume", "--no-kd", "--kd", "--kd-teacher", "--kd-weight", "--kd-start-epoch",
               "--kd-warmup-epochs", "--kd-start-auc", "--kd-temperature", "--stop-after")
# Left unset by the chain in every step, so a recipe must leave them unset too (the rest of the chain's
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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bornagain"), help="one folder per seed: OUT/s<seed>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--parallel", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--teachers-only", action="store_true",
                   help="train and export the teachers only (no students); --export then exports the teachers")
    add_chain_options(p, export_help="at the end, export the students of all seeds into DIR (e.g. weights)")
    return p


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


CHAIN_SETS = ("seed, output folder and distillation settings); remove it from the training flags (the student's "
              "KD weight and temperature are born_again's own --kd-weight and --kd-temperature)")


def training_flags(train_args: list[str], recipe: str | None = None, *, prog: str = "born_again",
                   chain_flags: tuple[str, ...] = CHAIN_FLAGS, chain_sets: str = CHAIN_SETS) -> list[str]:
    """The flags after ``--`` (behind ``--config RECIPE`` when a recipe is given), checked by
    ``training.train``'s own parser before hours of training. A flag of ``chain_flags`` is refused: the
    chain sets it in every step (``chain_sets`` says what, for the message)."""
    flags = train_args[1:] if train_args[:1] == ["--"] else list(train_args)
    parser = train_parser(prog)
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


def train_parser(prog: str = "born_again") -> argparse.ArgumentParser:
    parser = train_module.get_args_parser()
    parser.prog = prog
    parser.usage = f"python -m training.{prog} [options] -- TRAINING FLAGS (python -m training.train --help)"
    return parser


def recipe_switches_kd_off(flags: list[str], prog: str = "born_again",
                           unset_by_chain: tuple[str, ...] = UNSET_BY_CHAIN) -> bool:
    """Whether the training flags, with their recipe (``--config``), switch distillation off: the student
    then needs ``--kd``. A recipe must also leave unset what the chain leaves unset."""
    resolved = recipes.parse_args(train_parser(prog), flags)
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


def plan_seed(out: Path, seed: int, flags: list[str], export_flags: list[str], kd_weight: float,
              kd_temperature: float, log_to_file: bool, student_kd: bool = False) -> list[Step]:
    """Teacher, its export, student: the three commands of one seed, in order. ``student_kd``: the
    student gets ``--kd`` (its recipe switches distillation off)."""
    run = out / f"s{seed}"
    python = sys.executable
    common = [*flags, "--seed", str(seed), "--resume"]
    if log_to_file and not has_flag(flags, "--no-progress"):
        common.append("--no-progress")  # progress bars in a log file are one endless line
    teacher_weights = run / "teacher-weights"
    return [
        Step("teacher", (python, "-m", "training.train", *common, "--no-kd", "--out", str(run / "teacher"))),
        Step("teacher-weights", (python, "-m", "training.export", str(run / "teacher"), "--out",
                                 str(teacher_weights), *export_flags)),
        Step("student", (python, "-m", "training.train", *common, *(["--kd"] if student_kd else []),
                         "--kd-teacher", str(teacher_weights),
                         "--kd-start-epoch", "0", "--kd-warmup-epochs", "0", "--kd-weight", str(kd_weight),
                         "--kd-temperature", str(kd_temperature), "--out", str(run / "student"))),
    ]


@dataclass(eq=False)  # one task is one piece of work: compared and hashed by identity
class Task:
    """Steps of one seed that run back to back in one slot: the teacher with its export, or the student."""
    seed: int
    steps: list[Step]
    after: Task | None = None  # must have finished first (the student's teacher)
    chain: int = 1  # trainings from this task to the end of its seed's chain (scheduling priority)
    done: bool = False


def tasks_of(plans: dict[int, list[Step]]) -> list[Task]:
    """Per seed: the teacher and its export as one task, the student (where planned) as a second that
    waits for it."""
    tasks = []
    for seed, steps in plans.items():
        student = [s for s in steps if s.name == "student"]
        teacher = Task(seed, [s for s in steps if s.name != "student"], chain=1 + bool(student))
        tasks += [teacher] + ([Task(seed, student, after=teacher, chain=1)] if student else [])
    return tasks


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
    if threads is None or step.argv[1:3] != ("-m", "training.train"):
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


def main(args) -> list[Path]:
    flags = training_flags(args.train_args, args.recipe)
    export_flags = export_flags_for(args)
    student_kd = recipe_switches_kd_off(flags)
    if args.parallel < 1:
        raise SystemExit("born_again: --parallel must be at least 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"born_again: --seeds {args.seeds} repeats a seed")
    parallel = min(args.parallel, len(args.seeds))
    # Two trainings each using every core run slower together than one after the other, so side by
    # side each gets its share, counted when it starts (an explicit --threads is kept as given).
    share_threads = parallel > 1 and not has_flag(flags, "--threads")
    log_to_file = len(args.seeds) > 1
    plans = {seed: plan_seed(args.out, seed, flags, export_flags, args.kd_weight, args.kd_temperature, log_to_file,
                             student_kd) for seed in args.seeds}
    role = "teacher" if args.teachers_only else "student"
    if args.teachers_only:
        plans = {seed: [step for step in steps if step.name != "student"] for seed, steps in plans.items()}
    members = [args.out / f"s{seed}" / role for seed in args.seeds]
    final = None
    if args.export:
        final = Step("export", (sys.executable, "-m", "training.export", *map(str, members), "--out",
                                str(args.export), *export_flags))
    for seed, steps in plans.items():
        check_same_recipe(steps, read_done(args.out / f"s{seed}" / "steps.json"), args.out / f"s{seed}" / "steps.json")
    if args.dry_run:
        for seed, steps in plans.items():
            for step in steps:
                print(f"[s{seed}] {step.name}: {step.command()}")
        if final:
            print(f"export: {final.command()}")
        return members

    env = step_env()
    t0 = time.time()
    print(f"born_again: seeds {args.seeds}, {parallel} training(s) at a time -> {args.out}"
          + (" (logs: OUT/s<seed>/chain.log)" if log_to_file else ""), flush=True)

    def one(task: Task, side_by_side: int) -> None:
        run_dir = args.out / f"s{task.seed}"
        threads = max(1, (os.cpu_count() or 1) // side_by_side) if share_threads else None
        run_steps(task.steps, run_dir, run_dir / "chain.log" if log_to_file else None, env, threads)

    tasks = tasks_of(plans)
    for task in tasks:  # finished before: not scheduled, so they hold no slot and no thread share
        done = read_done(args.out / f"s{task.seed}" / "steps.json")
        task.done = all(step.name in done for step in task.steps)
        for step in task.steps if task.done else ():
            print(f"[s{task.seed}] {step.name}: done before, skipped", flush=True)
    failures = schedule([task for task in tasks if not task.done], parallel, one)
    if failures:
        raise SystemExit("born_again: " + "\n".join(failures))
    print(f"born_again: {len(args.seeds)} seed(s) trained in {(time.time() - t0) / 60:.1f} min", flush=True)
    if has_flag(flags, "--leave-out-domain") and not args.teachers_only:
        compare_unseen(args.out, args.seeds)
    if final:
        export_ensemble(final, args.out, args.export, members, env)
    return members


def compare_unseen(out: Path, seeds: list[int]) -> Path:
    """Each seed's student against its own teacher on the held-out domain (both runs' heldout.json,
    written when a --leave-out-domain run ends): AUC and BA at the halfway threshold, paired over the
    unseen slides, then the mean over seeds. Printed and written to ``OUT/heldout-compare.md``."""
    runs = [out / f"s{seed}" / role for seed in seeds for role in ("teacher", "student")]
    for run in runs:
        if not (run / "heldout.json").is_file():
            raise SystemExit(f"born_again: {run / 'heldout.json'}: not found (a --leave-out-domain run writes it when "
                             f"it ends; rescore with python -m training.heldout {run})")
    # Teachers first: the first listed run's arm is the reference each student is paired with.
    runs.sort(key=lambda run: run.name != "teacher")
    try:
        lines = compare.held_out_table(runs, "halfway", names=[f"{run.parent.name}/{run.name}" for run in runs])
    except ValueError as err:
        raise SystemExit(f"born_again: {err}") from None
    path = out / "heldout-compare.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n(-> {path})", flush=True)
    return path



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
        raise SystemExit(f"born_again: the export into {target} failed (exit {rc})")
    record.write_text(json.dumps({"command": final.command(), "networks": networks,
                                  "sha256": file_sha256(weights)}, indent=1) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
