"""lab.sweep: the grid's order, the budget rule, and the scheduler on stand-in processes."""

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from lab import sweep
from tests.conftest import ROOT
from tests.test_training import data_root


def test_plan_is_seed_major_with_leave_out_flags(tmp_path):
    runs = sweep.plan_runs(tmp_path, ["TUPAC16", "main"], [("erm", ["--no-kd"]), ("full", [])], [0, 1],
                           ["--epochs", "3"])
    assert [r.name for r in runs] == ["TUPAC16-erm-s0", "TUPAC16-full-s0", "main-erm-s0", "main-full-s0",
                                      "TUPAC16-erm-s1", "TUPAC16-full-s1", "main-erm-s1", "main-full-s1"]
    first, main_run = runs[0].argv, runs[2].argv
    assert first[first.index("--leave-out-domain") + 1] == "TUPAC16"
    assert "--leave-out-domain" not in main_run, "'main' trains on the ordinary split"
    assert first[first.index("--seed") + 1] == "0" and "--no-kd" in first and "--no-kd" not in runs[1].argv
    assert first[first.index("--out") + 1] == str(tmp_path / "TUPAC16-erm-s0")


def test_fold_and_out_placeholders_are_filled_per_run(tmp_path):
    arms = [("all", ["--all-figures", "--threshold-from", "{out}/{fold}-oof/oof.json"])]
    runs = sweep.plan_runs(tmp_path, ["TUPAC16", "MIDOG21-XR"], arms, [0], ["--note={fold}"])
    for run, fold in zip(runs, ["TUPAC16", "MIDOG21-XR"]):
        assert run.argv[run.argv.index("--threshold-from") + 1] == f"{tmp_path}/{fold}-oof/oof.json"
        assert f"--note={fold}" in run.argv and not any("{" in a for a in run.argv)


def test_threads_are_the_cores_shared_out():
    assert sweep.threads_per_run(1, 2) == 2 and sweep.threads_per_run(8, 16) == 2
    assert sweep.threads_per_run(3, 2) == 1 and sweep.threads_per_run(0, 4) == 4


@pytest.mark.parametrize("parallel, running, pending, expected", [
    (2, 0, 5, 2),  # a full slate
    (2, 1, 0, 2),  # the last run starts beside one still going: half the cores
    (2, 0, 0, 1),  # the last run starts alone: every core
    (8, 0, 5, 6),  # six runs on the GPU machine: 16 cores // 6
    (1, 0, 3, 1),
])
def test_runs_side_by_side_are_counted_when_one_starts(parallel, running, pending, expected):
    assert sweep.side_by_side(parallel, running, pending) == expected


def test_arm_seeds_restrict_an_arm_to_some_seeds(tmp_path):
    arms = [("current", ["--config", "shipped"]), ("cv1", ["--cv-fold", "1"]), ("cv2", ["--cv-fold", "2"])]
    runs = sweep.plan_runs(tmp_path, ["TUPAC16"], arms, [0, 1, 2], [], {"cv1": {0}, "cv2": {0, 2}})
    assert [r.name for r in runs] == ["TUPAC16-current-s0", "TUPAC16-cv1-s0", "TUPAC16-cv2-s0",
                                      "TUPAC16-current-s1", "TUPAC16-current-s2", "TUPAC16-cv2-s2"]
    assert sweep.parse_arm_seeds("cv1=0,3") == ("cv1", {0, 3})
    for bad in ("cv1", "cv1=", "=0", "cv1=a"):
        with pytest.raises(argparse.ArgumentTypeError, match="--arm-seeds"):
            sweep.parse_arm_seeds(bad)
    args = sweep.get_args_parser().parse_args(["--out", str(tmp_path), "--fold", "f", "--arm", "a=",
                                               "--arm-seeds", "b=0"])
    with pytest.raises(SystemExit, match="no arm named b"):
        sweep.main(args)


def test_expected_wall_prefers_the_same_fold():
    finished = {"TUPAC16": [100.0, 120.0]}
    assert sweep.expected_wall("TUPAC16", finished, 50.0) == 120.0
    # A fold not seen yet: never assume it is shorter than anything seen (a big fold trains longer).
    assert sweep.expected_wall("MIDOG21-XR", finished, 50.0) == 120.0
    assert sweep.expected_wall("MIDOG21-XR", finished, 300.0) == 300.0
    assert sweep.may_start(100.0, 300.0, 200.0) and not sweep.may_start(101.0, 300.0, 200.0)


def test_arm_spec_parsing():
    assert sweep.parse_arm('erm=--no-mixstyle --no-align') == ("erm", ["--no-mixstyle", "--no-align"])
    assert sweep.parse_arm("full=") == ("full", [])
    for bad in ("noequals", "=--x", "a b=--x", "a=nosuchrecipe --epochs 3"):
        with pytest.raises(argparse.ArgumentTypeError):
            sweep.parse_arm(bad)


def test_an_arm_is_a_recipe_and_its_overrides(tmp_path):
    """NAME=RECIPE [FLAGS]: the runs get --config RECIPE; their flags (the arm's, then every run's after
    --) override the recipe."""
    from training import train

    assert sweep.parse_arm("shipped=shipped") == ("shipped", ["--config", "shipped"])
    assert sweep.parse_arm("hed=configs/shipped.toml --hed-jitter 0.2") == \
        ("hed", ["--config", "configs/shipped.toml", "--hed-jitter", "0.2"])
    arms = [sweep.parse_arm("erm=erm"), sweep.parse_arm("hed=shipped --hed-jitter 0.2"),
            sweep.parse_arm("old-erm=--no-mixstyle --no-align --no-kd")]
    runs = sweep.plan_runs(tmp_path, ["TUPAC16"], arms, [1], ["--data", "amibr=D", "--epochs", "3"])
    resolved = {r.name: vars(train.parse_args(r.argv[3:])) for r in runs}
    hed = resolved["TUPAC16-hed-s1"]
    assert (hed["config"], hed["hed_jitter"], hed["light_aug_epochs"], hed["epochs"]) == ("shipped", 0.2, 10, 3)
    assert hed["seed"] == 1 and hed["leave_out_domain"] == "TUPAC16" and hed["no_kd"]
    # The recipe and the flag string it replaces give the same run (but for the recipe's name).
    same = {k for k in resolved["TUPAC16-erm-s1"] if resolved["TUPAC16-erm-s1"][k] != resolved["TUPAC16-old-erm-s1"][k]}
    assert same == {"config", "out", "early_stop"}  # early_stop: 0 in the recipe, implied (0) by onecycle without


def test_scheduler_runs_skips_and_records(tmp_path, monkeypatch):
    """Stand-in runs: seed 0 succeeds, seed 1 fails; with a budget shorter than the estimated run,
    nothing starts."""
    def fake_plan(out, folds, arms, seeds, common, arm_seeds=None):
        runs = []
        for seed in seeds:
            threads_file = str(out / f"f-a-s{seed}" / "threads")
            code = ("import os, pathlib, sys, time; time.sleep(0.2); "
                    f"pathlib.Path({threads_file!r}).write_text(os.environ['OMP_NUM_THREADS']); "
                    f"sys.exit({1 if seed == 1 else 0})")
            runs.append(sweep.Run(f"f-a-s{seed}", "f", [sys.executable, "-c", code], str(out / f"f-a-s{seed}")))
        return runs

    monkeypatch.setattr(sweep, "plan_runs", fake_plan)
    args = sweep.get_args_parser().parse_args(["--out", str(tmp_path), "--fold", "f", "--arm", "a=",
                                               "--seeds", "0", "1", "--parallel", "2"])
    runs = sweep.main(args)
    assert [r.status for r in runs] == ["done", "failed"]
    cores = os.cpu_count() or 1
    assert {(tmp_path / f"f-a-s{s}" / "threads").read_text() for s in (0, 1)} == {str(max(1, cores // 2))}
    assert runs[1].returncode == 1 and (tmp_path / "f-a-s0" / "train.log").is_file()
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in saved] == ["done", "failed"]

    args = sweep.get_args_parser().parse_args(["--out", str(tmp_path / "b"), "--fold", "f", "--arm", "a=",
                                               "--seeds", "0", "2", "--budget-min", "0.05",
                                               "--run-estimate-s", "5", "--parallel", "1"])
    assert [r.status for r in sweep.main(args)] == ["skipped", "skipped"], "a 5 s run cannot fit a 3 s budget"


@pytest.mark.slow
def test_gpu_sweep_call_brings_everything_back_in_eight_files(tmp_path):
    """The prepared GPU call, on the CPU with tiny settings: only 8 files, at most 2 folders down, come
    back from $OUT, so every run's report must travel packed (on 2026-12-04 they did not)."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "SWEEP_DIR": str(work), "PYTHON": sys.executable,
           "DATA_DIR": str(data_root(tmp_path)), "FOLDS": "TUPAC16", "SEEDS": "0", "BUDGET_MIN": "0",
           "ARMS": "erm=--no-mixstyle --no-align --no-kd",
           "EXTRA": "--limit 48 --epochs 1 --batch-size 16 --input-size 64 --device cpu"}
    subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "gpu_sweep.sh"), "sweep"], env=env, check=True, cwd=ROOT,
                   capture_output=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for p in files for part in p.relative_to(out).parts)
    with tarfile.open(out / "sweep.tar.gz") as tar:
        names = tar.getnames()
    assert "./TUPAC16-erm-s0/heldout.json" in names and "./TUPAC16-erm-s0/history.csv" in names
    assert not any(name.endswith(".pt") for name in names), "checkpoints stay behind"
    assert (work / "TUPAC16-erm-s0" / "last.pt").is_file()
    assert "TUPAC16-erm-s0" in (out / "compare.md").read_text()
    assert "TUPAC16-erm-s0" in (out / "compare-halfway.md").read_text()
    rerun = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "gpu_sweep.sh"), "sweep"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert rerun.returncode == 1 and "is not empty" in rerun.stderr
