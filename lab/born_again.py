"""Born-again distillation in one command: train a teacher, export it, train a student from it.

    python -m lab.born_again --recipe shipped --out runs/bornagain --seeds 0 1 2 --parallel 2 \\
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
domain D (``lab.compare --held-out``: AUC and BA at the shipped halfway threshold, paired over the
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
import os
import sys
import time
from pathlib import Path

from training.chain import (
    Step,
    Task,
    add_chain_options,
    check_same_recipe,
    export_ensemble,
    export_flags_for,
    has_flag,
    read_done,
    recipe_switches_kd_off,
    run_steps,
    schedule,
    step_env,
    training_flags,
)

from . import compare

MODULE = "lab.born_again"
# Set by the chain itself, per seed and step; passing them after -- would contradict it.
CHAIN_FLAGS = ("--seed", "--out", "--resume", "--no-kd", "--kd", "--kd-teacher", "--kd-weight", "--kd-start-epoch",
               "--kd-warmup-epochs", "--kd-start-auc", "--kd-temperature", "--stop-after")
# What the chain sets, for the message refusing one of them.
CHAIN_SETS = ("seed, output folder and distillation settings); remove it from the training flags (the student's "
              "KD weight and temperature are born_again's own --kd-weight and --kd-temperature)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bornagain"), help="one folder per seed: OUT/s<seed>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--parallel", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--teachers-only", action="store_true",
                   help="train and export the teachers only (no students); --export then exports the teachers")
    add_chain_options(p, export_help="at the end, export the students of all seeds into DIR (e.g. weights)")
    return p


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
    # A held-out domain is scored when each training ends (lab.lodo = training.train, then lab.heldout).
    trainer = "lab.lodo" if has_flag(flags, "--leave-out-domain") else "training.train"
    return [
        Step("teacher", (python, "-m", trainer, *common, "--no-kd", "--out", str(run / "teacher"))),
        Step("teacher-weights", (python, "-m", "training.export", str(run / "teacher"), "--out",
                                 str(teacher_weights), *export_flags)),
        Step("student", (python, "-m", trainer, *common, *(["--kd"] if student_kd else []),
                         "--kd-teacher", str(teacher_weights),
                         "--kd-start-epoch", "0", "--kd-warmup-epochs", "0", "--kd-weight", str(kd_weight),
                         "--kd-temperature", str(kd_temperature), "--out", str(run / "student"))),
    ]


def tasks_of(plans: dict[int, list[Step]]) -> list[Task]:
    """Per seed: the teacher and its export as one task, the student (where planned) as a second that
    waits for it."""
    tasks = []
    for seed, steps in plans.items():
        student = [s for s in steps if s.name == "student"]
        teacher = Task(seed, [s for s in steps if s.name != "student"], chain=1 + bool(student))
        tasks += [teacher] + ([Task(seed, student, after=teacher, chain=1)] if student else [])
    return tasks


def main(args) -> list[Path]:
    flags = training_flags(args.train_args, args.recipe, module=MODULE, chain_flags=CHAIN_FLAGS,
                           chain_sets=CHAIN_SETS)
    export_flags = export_flags_for(args)
    student_kd = recipe_switches_kd_off(flags, MODULE)
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
    written by lab.lodo when a --leave-out-domain run ends): AUC and BA at the halfway threshold, paired over the
    unseen slides, then the mean over seeds. Printed and written to ``OUT/heldout-compare.md``."""
    runs = [out / f"s{seed}" / role for seed in seeds for role in ("teacher", "student")]
    for run in runs:
        if not (run / "heldout.json").is_file():
            raise SystemExit(f"born_again: {run / 'heldout.json'}: not found (a --leave-out-domain run writes it when "
                             f"it ends; rescore with python -m lab.heldout {run})")
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



if __name__ == "__main__":
    main(get_args_parser().parse_args())
