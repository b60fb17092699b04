"""Train on every labelled figure in one command: a cross-fit for the threshold, an ensemble of networks
trained on all figures, and optionally one network distilled from that ensemble (issue 35;
docs/experiments.md §32's procedures (b) "all figures" and (c) "distilled").

    python -m training.all_figures --recipe shipped --procedure all-figures --out runs/all-figures \\
        --export weights -- --data amibr=../shared/data/ami-br

``--recipe RECIPE`` is passed as ``--config RECIPE`` to every ``training.train`` run and its ``[export]``
table gives the export flags (as ``lab.born_again``); the flags after ``--`` go to every training run.
In ``OUT/``:

1. ``cv0/`` .. ``cv{K-1}/``  ``training.train FLAGS --cv-fold I --seed S0``: the slide-disjoint K-fold
   cross-fit (K = round(1 / --val-fraction), 4 by default; S0 the first of ``--seeds``);
2. ``all-sS/``   ``training.train FLAGS --all-figures --seed S`` for every seed of ``--seeds``: the
   ensemble's members, trained on every figure with the recipe's fixed schedule (its last epoch's EMA model:
   nothing is held back to choose on);
3. ``oof/``      ``training.oof OUT/cv*``: every figure scored by the cross-fit network that did not train
   on it; the threshold (``halfway``) and per-domain metrics with slide-bootstrap intervals;
4. ``ensemble/`` ``training.export OUT/all-s* EXPORT_FLAGS --threshold-from OUT/oof/oof.json``: procedure
   ``all-figures`` (its card's validation numbers are the out-of-fold ones);
5. ``student/``  (``--procedure distilled``) ``training.train FLAGS --all-figures --kd --kd-teacher
   OUT/ensemble --kd-start-epoch 0 --kd-warmup-epochs 0 --kd-weight W --kd-temperature T --seed S0``: one
   network against the ensemble's averaged logits from the first step, the label term kept;
6. ``student-weights/`` ``training.export OUT/student EXPORT_FLAGS --threshold-from OUT/oof/oof.json``:
   procedure ``distilled``, at the ensemble's out-of-fold threshold;

then, with ``--export DIR``, the procedure's networks exported once more into DIR (e.g. ``weights``).

``--record DIR`` (e.g. ``records/shipping``) records every training as it finishes (``training.records``:
its reports, not its network) in ``DIR/<folder>``, so that they outlive ``runs/`` and the machine: the
out-of-fold step then reads the cross-fit from ``DIR``, and a cross-fit fold recorded there with the same
resolved arguments (as ``cvI``, or as ``main-cvI-sS0``, ``lab.sweep --fold main``'s name, under which
``records/shipping`` holds the shipped cross-fit) is not trained again (its network is needed by nothing
after it): with the committed records only the members train. The members, whose networks the export
needs, are trained again where ``OUT`` no longer has them, and their records replaced.

Steps 1 and 2 are independent trainings, ``--parallel N`` of them side by side (each with its share of
the CPU threads, logging to its folder's ``chain.log``); 3-6 follow in order. As in ``lab.born_again``
every training runs with ``--resume`` and each folder's ``steps.json`` records its finished steps, so the
same command run again continues where it stopped; with other flags into the same OUT it stops rather
than mix two recipes, and the final export is skipped while its file and networks are unchanged.

Cost: 4 + 3 (+ 1) trainings, each on 75% or all of the figures; on a 2-core bf16 CPU about 47 min a
cross-fit network and about an hour an all-figures one (docs/training.md), several hours in all: on a
lent GPU, ``--parallel 8``. ``--leave-out-domain`` is not taken here: the leave-one-domain-out comparison
of the procedures is ``lab/scripts/procedures_lodo.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from data.split import n_folds_for

from . import chain, recipes, records
from . import train as train_module
from .chain import Step, Task
from .config import TrainingConfig

PROG = "all_figures"
MODULE = "training.all_figures"
PROCEDURES = ("all-figures", "distilled")
# Set by the chain (split, seed, folder, distillation); passing them after -- would contradict it.
CHAIN_FLAGS = ("--seed", "--out", "--resume", "--cv-fold", "--all-figures", "--split-file", "--threshold-from",
               "--leave-out-domain", "--kd-teacher", "--kd-weight", "--kd-start-epoch", "--kd-warmup-epochs",
               "--kd-start-auc", "--kd-temperature", "--stop-after", "--final-model")
CHAIN_SETS = ("split, seed, output folder and distillation settings; the leave-one-domain-out comparison is "
              "lab/scripts/procedures_lodo.sh); remove it from the training flags")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The default is what weights/ ships (experiments.md §32: (b) passed its rule, (c) failed its own).
    p.add_argument("--procedure", choices=PROCEDURES, default="all-figures",
                   help="all-figures (default, what weights/ ships): the ensemble of --seeds networks; "
                        "distilled: one network distilled from it")
    p.add_argument("--out", type=Path, default=Path("runs/all-figures"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="the ensemble's members (the first also seeds the cross-fit and the student)")
    p.add_argument("--parallel", type=int, default=1, help="trainings side by side (cross-fit and members)")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="record every finished training in DIR/<folder> (training.records, e.g. records/shipping); "
                        "the out-of-fold step reads the cross-fit from there and recorded folds are not trained again")
    chain.add_chain_options(p, export_help="at the end, export the procedure's networks into DIR (e.g. "
                                                "weights); every export takes the cross-fit's threshold")
    return p


def recorded_training(record_dir: Path, names: list[str], step: Step) -> Path | None:
    """The first of ``record_dir/<name>`` that records ``step``'s training: its ``config.json``'s configuration
    trains what the planned command's does (``TrainingConfig.same_training``). None if no record matches, so
    that a record of another recipe, seed or data (or one this code cannot read) is trained again, not read."""
    planned = train_module.training_config(list(step.argv[3:]))
    for name in names:
        config = Path(record_dir) / name / "config.json"
        if not (records.is_recorded(record_dir, name) and config.is_file()):
            continue
        try:
            recorded = TrainingConfig.from_record(json.loads(config.read_text()).get("args", {}))
        except (ValueError, TypeError) as e:
            print(f"{config}: {e}; not read as this training", flush=True)
            continue
        if recorded.same_training(planned):
            return Path(record_dir) / name
    return None


def crossfit_record_names(fold: int, seed: int) -> list[str]:
    """Where ``--record DIR`` may hold cross-fit fold ``fold``: ``cv{fold}`` (this command's own name) or
    ``main-cv{fold}-s{seed}`` (``lab.sweep --fold main --arm cv{fold}="RECIPE --cv-fold {fold}"``'s
    name for the same training, as ``records/shipping`` holds the shipped cross-fit)."""
    return [f"cv{fold}", f"main-cv{fold}-s{seed}"]


def training(name: str, flags: list[str], out: Path, seed: int, *extra: str) -> Step:
    return Step(name, (sys.executable, "-m", "training.train", *flags, *extra, "--seed", str(seed), "--resume",
                       "--out", str(out)))


def plan(args, flags: list[str], export_flags: list[str], n_folds: int, student_kd: bool,
         log_to_file: bool, reused: dict[str, Path] | None = None
         ) -> tuple[dict[str, list[Step]], list[Step], Step | None, list[Path]]:
    """The independent trainings (folder name -> its one step), the steps that follow in order in OUT,
    the final export into ``--export`` (or None), and the procedure's networks (what that export reads).
    ``reused``: cross-fit folds (``cvI``) whose recorded training the out-of-fold step reads."""
    out, first = args.out, args.seeds[0]
    if log_to_file and not chain.has_flag(flags, "--no-progress"):
        flags = [*flags, "--no-progress"]  # progress bars in a log file are one endless line
    trainings = {f"cv{i}": [training("train", flags, out / f"cv{i}", first, "--cv-fold", str(i))]
                 for i in range(n_folds)}
    members = [out / f"all-s{seed}" for seed in args.seeds]
    for seed, member in zip(args.seeds, members):
        trainings[member.name] = [training("train", flags, member, seed, "--all-figures")]
    oof_json = out / "oof" / "oof.json"
    python = sys.executable
    with_threshold = [*export_flags, "--threshold-from", str(oof_json)]
    cross_fit = args.record or out  # the out-of-fold step reads the recorded reports where they are kept
    reused = reused or {}
    follow = [Step("oof", (python, "-m", "training.oof",
                           *(str(reused.get(f"cv{i}", cross_fit / f"cv{i}")) for i in range(n_folds)),
                           "--out", str(out / "oof"))),
              Step("ensemble", (python, "-m", "training.export", *map(str, members), "--out", str(out / "ensemble"),
                                *with_threshold))]
    shipped = members
    if args.procedure == "distilled":
        follow += [training("student", flags, out / "student", first, "--all-figures",
                            *(["--kd"] if student_kd else []), "--kd-teacher", str(out / "ensemble"),
                            "--kd-start-epoch", "0", "--kd-warmup-epochs", "0", "--kd-weight", str(args.kd_weight),
                            "--kd-temperature", str(args.kd_temperature)),
                   Step("student-weights", (python, "-m", "training.export", str(out / "student"), "--out",
                                            str(out / "student-weights"), *with_threshold))]
        shipped = [out / "student"]
    final = None
    if args.export:
        final = Step("export", (python, "-m", "training.export", *map(str, shipped), "--out", str(args.export),
                                *with_threshold))
    return trainings, follow, final, shipped


def record(run_dir: Path, into: Path, step: Step, wall_s: float | None) -> None:
    """Record a finished training as INTO/<its folder> (``--record``; a record of it there is replaced); a
    failure stops the chain, since the out-of-fold step reads the records."""
    name = run_dir.name
    try:
        dest = records.record_run(run_dir, into, name=name, wall_s=None if wall_s is None else round(wall_s, 1),
                                  argv=list(step.argv), force=True)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"{PROG}: {run_dir} not recorded: {exc}") from None
    print(f"[{name}] recorded -> {dest}", flush=True)


def check_training_commands(steps: list[Step]) -> None:
    """Every planned training parses and its split options agree (``--all-figures`` needs a fixed
    schedule: one-cycle, no early stop), checked before hours of training rather than when a step starts."""
    for step in steps:
        if step.argv[1:3] != ("-m", "training.train"):
            continue
        parser = chain.train_parser(MODULE)
        error = train_module.split_args_error(recipes.parse_args(parser, list(step.argv[3:])))
        if error:
            raise SystemExit(f"{PROG}: the {step.name} step of {step.argv[-1]} cannot run: {error}")


def checked_flags(args) -> tuple[list[str], list[str], bool, int]:
    """The training flags (parsed once by training.train's parser), the export flags, whether the students
    need --kd switched back on, and the number of cross-fit folds; a bad option stops here, before training."""
    flags = chain.training_flags(args.train_args, args.recipe, module=MODULE, chain_flags=CHAIN_FLAGS,
                                 chain_sets=CHAIN_SETS)
    export_flags = chain.export_flags_for(args)
    if chain.has_flag(export_flags, "--threshold-from"):
        raise SystemExit(f"{PROG}: --export-flags: the threshold comes from the cross-fit (OUT/oof/oof.json); "
                         "leave --threshold-from out")
    student_kd = chain.recipe_switches_kd_off(flags, MODULE)
    if args.parallel < 1:
        raise SystemExit(f"{PROG}: --parallel must be at least 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"{PROG}: --seeds {args.seeds} repeats a seed")
    n_folds = n_folds_for(recipes.parse_args(chain.train_parser(MODULE), flags).val_fraction)
    return flags, export_flags, student_kd, n_folds


def reused_folds(args, trainings: dict[str, list[Step]], n_folds: int) -> dict[str, Path]:
    """The cross-fit folds recorded under --record with the same arguments: read, not trained (nothing after
    the out-of-fold step needs a fold's network: a retrain of the members alone, the committed threshold)."""
    reused = {}
    for i in range(n_folds if args.record else 0):
        found = recorded_training(args.record, crossfit_record_names(i, args.seeds[0]), trainings[f"cv{i}"][0])
        if found:
            reused[f"cv{i}"] = found
    return reused


def dry_run(trainings: dict[str, list[Step]], follow: list[Step], final: Step | None, reused: dict) -> None:
    lines = [f"[{name}] recorded: {reused[name]}" if name in reused
             else f"[{name}] {step.name}: {step.command()}" for name, steps in trainings.items() for step in steps]
    lines += [f"{step.name}: {step.command()}" for step in follow + ([final] if final else [])]
    print("\n".join(lines))


def run_trainings(args, trainings: dict[str, list[Step]], reused: dict, share_threads: bool, env: dict) -> None:
    """Every training chain not done before nor recorded, ``args.parallel`` at a time, each recorded under
    --record when it ends (and those finished before --record was given, now)."""
    names, tasks = {}, []
    for name, steps in trainings.items():
        task = Task(seed=len(tasks), steps=steps)  # Task.seed only orders; the folder names it
        names[task] = name
        task.done = all(step.name in chain.read_done(args.out / name / "steps.json") for step in steps)
        if task.done:
            print(f"[{name}] done before, skipped", flush=True)
        elif name in reused:
            task.done = True  # nothing after the out-of-fold step needs a fold's network
            print(f"[{name}] recorded in {reused[name]} with the same arguments, not trained again", flush=True)
        tasks.append(task)

    def one(task: Task, side_by_side: int) -> None:
        run_dir = args.out / names[task]
        threads = max(1, (os.cpu_count() or 1) // side_by_side) if share_threads else None
        started = time.time()
        chain.run_steps(task.steps, run_dir, run_dir / "chain.log" if args.parallel > 1 else None, env, threads)
        if args.record:
            record(run_dir, args.record, task.steps[-1], time.time() - started)

    failures = chain.schedule([t for t in tasks if not t.done], args.parallel, one)
    if failures:
        raise SystemExit(f"{PROG}: " + "\n".join(failures))
    if args.record:  # finished before --record was given: recorded now (record.json: this machine and time)
        for name in trainings:
            if not records.is_recorded(args.record, name) and (args.out / name / records.RECORDED[0]).is_file():
                record(args.out / name, args.record, trainings[name][-1], None)


def main(args) -> Path:
    flags, export_flags, student_kd, n_folds = checked_flags(args)
    parallel = args.parallel
    trainings, follow, final, networks = plan(args, flags, export_flags, n_folds, student_kd, log_to_file=parallel > 1)
    check_training_commands([s for steps in trainings.values() for s in steps] + follow)
    reused = reused_folds(args, trainings, n_folds)
    if reused:
        trainings, follow, final, networks = plan(args, flags, export_flags, n_folds, student_kd,
                                                  log_to_file=parallel > 1, reused=reused)
    for name, steps in trainings.items():
        chain.check_same_recipe(steps, chain.read_done(args.out / name / "steps.json"),
                                args.out / name / "steps.json")
    chain.check_same_recipe(follow, chain.read_done(args.out / "steps.json"), args.out / "steps.json")
    shipped = args.out / ("student" if args.procedure == "distilled" else "ensemble")
    if args.dry_run:
        dry_run(trainings, follow, final, reused)
        return shipped

    env = chain.step_env()
    t0 = time.time()
    print(f"{PROG}: {args.procedure}: {n_folds}-fold cross-fit and {len(args.seeds)} all-figures network(s), "
          f"{parallel} training(s) at a time -> {args.out}", flush=True)
    run_trainings(args, trainings, reused, parallel > 1 and not chain.has_flag(flags, "--threads"), env)
    chain.run_steps(follow, args.out, None, env)
    print(f"{PROG}: {args.procedure} trained in {(time.time() - t0) / 60:.1f} min; its out-of-fold numbers: "
          f"{args.out / 'oof' / 'oof.md'}", flush=True)
    if final:
        chain.export_ensemble(final, args.out, args.export, networks, env)
    return shipped


if __name__ == "__main__":
    main(get_args_parser().parse_args())
