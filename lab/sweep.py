"""Run a grid of training runs side by side on one machine, within a time budget.

    python -m lab.sweep --out runs/lodo --fold TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2 \\
        --arm erm=erm --arm shipped=shipped --arm shipped-hed="shipped --hed-jitter 0.2" --seeds 0 1 2 \\
        --parallel 8 --budget-min 8 -- --data amibr=../shared/data/ami-br --workers 2

An arm is ``NAME=RECIPE [FLAGS]``: a recipe of ``configs/`` (or a recipe file), passed to its runs as
``--config RECIPE``, with flags that override it; or ``NAME=FLAGS`` (``erm="--no-mixstyle --no-align
--no-kd"``, ``full=""``: the parser's defaults), as before recipes were files. The flags after ``--``
go to every run and override the arms' recipes too. In both, ``{fold}`` and ``{out}`` stand for the run's
held-out domain and OUT (``--threshold-from {out}/{fold}-oof/oof.json``).

Runs are ordered seed-major (every fold and arm of seed 0, then seed 1, ...), so a budget that
runs out leaves whole seeds rather than whole folds. A run starts only when it is expected to
end inside the budget (``expected_wall``: the longest finished run of its fold, else the longest
of any fold or ``--run-estimate-s``); runs still going at the budget's end are stopped and
marked so. Each run is an ordinary
``python -m training.train`` invocation (for a held-out fold ``python -m lab.lodo``, which then scores the unseen
domain) with its own directory (``OUT/<fold>-<arm>-s<seed>``,
its log in ``train.log``, appended to when a run is resumed); ``OUT/sweep.json`` lists them with their
status and wall time. With ``--record RECORDS`` every run that finishes is recorded there
(``training.records``: its reports, kept in the repository when ``runs/`` is gone) and a run already
recorded is not trained again (status ``recorded``), unless ``--retrain-recorded`` (a later step needs
its network; where the machine still has the finished run, ``--resume`` only writes its reports again and
its record is kept, gaining only new reports).
``--fold main`` trains on the ordinary validation split instead of a held-out domain. ``--arm-seeds
NAME=S[,S...]`` runs arm NAME with those of ``--seeds`` only (one seed of a cross-fit beside three of
another arm, in one sweep, so that two runs side by side keep both cores busy).
Each run gets the CPU cores shared out among the runs side by side when it starts (OMP_NUM_THREADS).

A single GPU is driven by one Python process per run: at batch 32 a DenseNet-121 step is
bound by kernel launches, so several runs side by side fill the GPU where one cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import recipes, records


@dataclass(eq=False)  # runs are keyed by identity in the scheduler
class Run:
    name: str
    fold: str
    argv: list[str]
    out: str
    status: str = "pending"  # pending | running | done | failed | stopped | skipped | recorded
    wall_s: float = 0.0
    returncode: int | None = None
    started: float = field(default=0.0, repr=False)
    # It had finished before this sweep started it (summary.json there): --resume only writes its reports.
    finished_before: bool = False


def parse_arm(spec: str) -> tuple[str, list[str]]:
    """``NAME=RECIPE [FLAGS]`` -> (NAME, ``--config RECIPE FLAGS``); ``NAME=FLAGS`` -> (NAME, FLAGS)."""
    name, sep, flags = spec.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"--arm {spec!r}: expected NAME=\"RECIPE [FLAGS]\" or NAME=\"FLAGS\" "
                                         "(NAME in letters, digits, - and _)")
    argv = shlex.split(flags)
    if argv and not argv[0].startswith("-"):  # a recipe: training.train takes no positional argument
        try:
            recipes.recipe_path(argv[0])
        except SystemExit as exc:
            raise argparse.ArgumentTypeError(f"--arm {spec!r}: {exc}") from None
        argv = ["--config", *argv]
    return name, argv


def parse_arm_seeds(spec: str) -> tuple[str, set[int]]:
    """``NAME=S[,S...]`` -> (NAME, {S, ...}): the seeds arm NAME runs with."""
    name, sep, seeds = spec.partition("=")
    try:
        chosen = {int(s) for s in seeds.split(",")} if sep and name else None
    except ValueError:
        chosen = None
    if not chosen:
        raise argparse.ArgumentTypeError(f"--arm-seeds {spec!r}: expected NAME=SEED[,SEED...] (cv1=0)")
    return name, chosen


def plan_runs(out: Path, folds: list[str], arms: list[tuple[str, list[str]]], seeds: list[int],
              common: list[str], arm_seeds: dict[str, set[int]] | None = None) -> list[Run]:
    """Seed-major grid of ``training.train`` command lines (``lab.lodo`` for a held-out fold). ``{fold}`` and
    ``{out}`` in an arm's or the common flags stand for the run's held-out domain and the sweep's folder
    (e.g. ``--threshold-from {out}/{fold}-oof/oof.json``: each fold's own cross-fit). ``arm_seeds``
    restricts an arm to some of the seeds."""
    arm_seeds = arm_seeds or {}
    runs = []
    for seed in seeds:
        for fold in folds:
            for arm, flags in arms:
                if arm in arm_seeds and seed not in arm_seeds[arm]:
                    continue
                name = f"{fold}-{arm}-s{seed}"
                fill = [a.replace("{fold}", fold).replace("{out}", str(out)) for a in (*common, *flags)]
                # A held-out fold trains through lab.lodo: training.train, then the unseen domain's report.
                module = "training.train" if fold == "main" else "lab.lodo"
                argv = [sys.executable, "-m", module, *fill, "--seed", str(seed),
                        "--out", str(out / name), "--no-progress"]
                if fold != "main":
                    argv += ["--leave-out-domain", fold]
                runs.append(Run(name, fold, argv, str(out / name)))
    return runs


def threads_per_run(parallel: int, cores: int | None = None) -> int:
    """CPU threads (OMP_NUM_THREADS) for each of ``parallel`` runs side by side: the cores shared out, at
    least one (8 runs on the GPU machine's 16 cores: 2 each). Before 2026-12-05 every run got one, which
    on a 2-core CPU running one at a time left a core idle: 27 images/s against 38 with both. (Two runs
    of one thread each side by side train 1.16x the images of one run with both: experiments.md §32;
    ``python benchmarks/training_speed.py --side-by-side 2`` prints the ratio, 1.15x here.)"""
    return max(1, (cores or os.cpu_count() or 1) // max(parallel, 1))


def side_by_side(parallel: int, running: int, pending: int) -> int:
    """How many runs share the machine when one more starts with ``running`` going and ``pending`` left
    after it: a last run that starts alone gets every core, not the share of a full slate."""
    return max(1, min(parallel, running + 1 + pending))


def expected_wall(fold: str, finished: dict[str, list[float]], estimate: float) -> float:
    """A run's expected wall time: the longest finished run of its fold; for a fold with none
    finished yet, the longest finished run of any fold or ``estimate``, whichever is longer
    (folds differ in size: a held-out large domain leaves a short run)."""
    if finished.get(fold):
        return max(finished[fold])
    return max([estimate] + [w for walls in finished.values() for w in walls])


def may_start(elapsed: float, budget: float, expected: float) -> bool:
    """Whether a run started now is expected to end inside the budget."""
    return elapsed + expected <= budget


def record(run: Run, into: Path, wall_s: float) -> None:
    """Record a finished run (``training.records``); a failure is reported, not fatal to the sweep. A run
    that had finished before the sweep started it (``--retrain-recorded`` on a machine that still has the
    network) was not trained again: its record keeps when, where and in how long it was trained, and only
    gains the reports it did not have. A run trained again replaces its record."""
    try:
        if run.finished_before and records.is_recorded(into, run.name):
            added = records.update_record(Path(run.out), into, name=run.name)
            print(f"record: {run.name} trained before, its record kept"
                  + (f"; added {', '.join(added)}" if added else ""), flush=True)
            return
        dest = records.record_run(Path(run.out), into, name=run.name, wall_s=round(wall_s, 1), argv=run.argv,
                                  force=True)
    except (ValueError, OSError) as exc:
        print(f"record: {run.name} not recorded: {exc}", flush=True)
    else:
        print(f"record: {run.name} -> {dest}", flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fold", nargs="+", required=True,
                   help="domains to hold out (leave-one-domain-out), or 'main' for the ordinary split")
    p.add_argument("--arm", type=parse_arm, action="append", required=True,
                   help='NAME="RECIPE [training flags]" (a recipe of configs/ or a file, then flags that '
                        'override it) or NAME="training flags"')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arm-seeds", type=parse_arm_seeds, action="append", default=[], metavar="NAME=S[,S...]",
                   help="run arm NAME with these of --seeds only (repeatable)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--budget-min", type=float, default=0.0, help="wall-clock budget in minutes (0: none)")
    p.add_argument("--run-estimate-s", type=float, default=0.0,
                   help="expected wall time of one run, used until the first run has finished")
    p.add_argument("--record", type=Path, default=None, metavar="RECORDS",
                   help="record every finished run in RECORDS/<run name> (training.records) and skip runs "
                        "recorded there already")
    p.add_argument("--retrain-recorded", action="store_true",
                   help="with --record: train recorded runs as well (when a later step needs their networks)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then flags passed to every training run")
    return p


def main(args) -> list[Run]:
    common = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    args.out.mkdir(parents=True, exist_ok=True)
    arm_seeds = dict(args.arm_seeds)
    unknown = set(arm_seeds) - {name for name, _ in args.arm}
    if unknown:
        raise SystemExit(f"--arm-seeds: no arm named {', '.join(sorted(unknown))}")
    runs = plan_runs(args.out, args.fold, args.arm, args.seeds, common, arm_seeds)
    budget = args.budget_min * 60 or float("inf")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    pending, running, walls = list(runs), {}, {}
    if args.record and not args.retrain_recorded:
        for run in runs:
            if records.is_recorded(args.record, run.name):
                run.status = "recorded"
                pending.remove(run)
                print(f"recorded already: {run.name} ({args.record / run.name}); not trained again", flush=True)
    print(f"sweep: {len(runs)} runs, {args.parallel} at a time, budget {budget / 60:.1f} min -> {args.out}", flush=True)

    def save():
        (args.out / "sweep.json").write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")

    while pending or running:
        now = time.time()
        for run, proc in list(running.items()):
            rc = proc.poll()
            if rc is None and now - t0 > budget:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                run.status, run.returncode = "stopped", proc.returncode
            elif rc is not None:
                run.returncode = rc
                run.status = "done" if rc == 0 else "failed"
                if rc == 0:
                    walls.setdefault(run.fold, []).append(now - run.started)
                    if args.record:
                        record(run, args.record, now - run.started)
            else:
                continue
            run.wall_s = round(now - run.started, 1)
            del running[run]
            print(f"[{(now - t0) / 60:5.1f} min] {run.status:7s} {run.name} ({run.wall_s:.0f}s)", flush=True)
            save()
        while pending and len(running) < args.parallel:
            startable = [r for r in pending
                         if may_start(now - t0, budget, expected_wall(r.fold, walls, args.run_estimate_s))]
            if not startable:
                if not running:
                    for run in pending:
                        run.status = "skipped"
                    print(f"[{(now - t0) / 60:5.1f} min] budget: {len(pending)} runs not started", flush=True)
                    pending = []
                break
            run = startable[0]
            pending.remove(run)
            Path(run.out).mkdir(parents=True, exist_ok=True)
            run.finished_before = (Path(run.out) / records.RECORDED[0]).is_file()
            log = open(Path(run.out) / "train.log", "a")  # a resumed run (--resume) continues its log
            threads = threads_per_run(side_by_side(args.parallel, len(running), len(startable) - 1))
            running[run] = subprocess.Popen(run.argv, stdout=log, stderr=subprocess.STDOUT,
                                            env={**env, "OMP_NUM_THREADS": str(threads)})
            log.close()
            run.status, run.started = "running", time.time()
            print(f"[{(now - t0) / 60:5.1f} min] start   {run.name}", flush=True)
            save()
        time.sleep(1.0)
    save()
    done = sum(r.status == "done" for r in runs)
    print(f"sweep: {done}/{len(runs)} done in {(time.time() - t0) / 60:.1f} min", flush=True)
    return runs


if __name__ == "__main__":
    runs = main(get_args_parser().parse_args())
    sys.exit(0 if any(r.status in ("done", "recorded") for r in runs) else 1)
