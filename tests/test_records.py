"""training.records: a finished run's reports kept when runs/ is gone, read as the run is; the sweep's --record."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from lab import procedures, sweep
from tests.conftest import ROOT
from tests.test_procedures import A, B, two_seeds
from tests.test_training import data_root
from training import records


def finished(run, **summary):
    (run / "summary.json").write_text(json.dumps({"best_epoch": 40, "wall_s": 12.5, **summary}, indent=1))
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.7}], indent=1))
    return run


def test_a_record_holds_the_runs_reports_and_where_it_ran(tmp_path):
    run = two_seeds(tmp_path, "a", "X", A, val_scores=[0.9, 0.2, 0.7, 0.1])[0]
    with pytest.raises(ValueError, match=f"{run}: no summary.json; the run has not finished"):
        records.record_run(run, tmp_path / "records")
    finished(run)
    (run / "best.pt").write_bytes(b"a network")  # networks are not recorded
    dest = records.record_run(run, tmp_path / "records", argv=[sys.executable, "-m", "training.train"])
    assert dest == tmp_path / "records" / run.name and records.is_recorded(tmp_path / "records", run.name)
    assert sorted(p.name for p in dest.iterdir()) == ["heldout.json", "history.json", "record.json", "summary.json"]
    for name in ("heldout.json", "summary.json", "history.json"):
        assert json.loads((dest / name).read_text()) == json.loads((run / name).read_text())
        assert len((dest / name).read_text()) <= len((run / name).read_text())
    record = json.loads((dest / "record.json").read_text())
    assert record["run"] == run.name and record["train_wall_s"] == 12.5 and record["wall_s"] == 12.5
    assert record["argv"] == ["python", "-m", "training.train"]
    assert set(record["machine"]) >= {"cpu", "cores", "native_bf16", "torch"}
    assert isinstance(record["machine"]["native_bf16"], bool)
    with pytest.raises(ValueError, match="already recorded"):
        records.record_run(run, tmp_path / "records")
    records.main([str(run), "--into", str(tmp_path / "records"), "--force", "--note", "trained at abc1234"])
    assert json.loads((dest / "record.json").read_text())["note"] == "trained at abc1234"
    records.record_run(run, tmp_path / "records", force=True, wall_s=99.0)
    assert json.loads((dest / "record.json").read_text())["wall_s"] == 99.0


def test_a_resumed_runs_record_says_its_wall_time_is_the_last_part(tmp_path):
    run = finished(two_seeds(tmp_path, "a", "X", A, val_scores=[0.9, 0.2, 0.7, 0.1])[0])
    (run / "train.log").write_text("epoch 1/40 loss 1.0\nresumed from runs/x/last.pt at epoch 8\n"
                                   "epoch 9/40 loss 0.9\nresumed from runs/x/last.pt at epoch 36\n")
    record = json.loads((records.record_run(run, tmp_path / "records", wall_s=531.0) / "record.json").read_text())
    assert record["resumed_at_epochs"] == [8, 36] and record["wall_s"] == 531.0 and record["train_wall_s"] == 12.5
    assert "from the resume at epoch 36 on" in record["wall_s_covers"]
    (run / "train.log").write_text("epoch 1/40 loss 1.0\n")  # never resumed: nothing to say
    record = json.loads((records.record_run(run, tmp_path / "records", wall_s=99.0, force=True)
                         / "record.json").read_text())
    assert "resumed_at_epochs" not in record and "wall_s_covers" not in record


def test_resumes_come_from_the_summary_and_from_a_log_written_before_it_had_them(tmp_path):
    """training.train writes its resumes into summary.json (a chain's run has no train.log); a checkpoint
    older than that key left its earlier resumes in the sweep's log alone: the record lists both, once."""
    run = finished(two_seeds(tmp_path, "a", "X", A, val_scores=[0.9, 0.2, 0.7, 0.1])[0])
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "resumed_at_epochs": [20, 36]}))
    record = json.loads((records.record_run(run, tmp_path / "records", wall_s=531.0) / "record.json").read_text())
    assert record["resumed_at_epochs"] == [20, 36] and "epoch 36 on" in record["wall_s_covers"]
    (run / "train.log").write_text("resumed from runs/x/last.pt at epoch 8\nresumed from runs/x/last.pt at epoch 36\n")
    record = json.loads((records.record_run(run, tmp_path / "records", wall_s=531.0, force=True)
                         / "record.json").read_text())
    assert record["resumed_at_epochs"] == [8, 20, 36]


def test_procedures_read_records_as_they_read_runs(tmp_path):
    val = [0.9, 0.2, 0.7, 0.1]
    current = two_seeds(tmp_path, "a", "X", A, val_scores=val)
    allfig = two_seeds(tmp_path, "b", "X", B, threshold=0.4)
    kept = [records.record_run(finished(r), tmp_path / "records") for r in current + allfig]

    def compare(runs, out):
        return procedures.main(["--procedure", "current=" + ",".join(map(str, runs[:2])),
                                "--procedure", "all=" + ",".join(map(str, runs[2:])),
                                "--resamples", "50", "--out", str(out)])

    from_runs = compare(current + allfig, tmp_path / "from-runs")
    for run in current + allfig:
        shutil.rmtree(run)
    from_records = compare(kept, tmp_path / "from-records")
    for name in ("current", "all"):
        for key in ("roc_auc", "balanced_accuracy", "threshold"):
            assert from_records["by_domain"]["X"][name][key] == from_runs["by_domain"]["X"][name][key]


def test_records_cli_names_the_unfinished_run(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match="half: no summary.json"):
        records.main([str(tmp_path / "half"), "--into", str(tmp_path / "records")])


def fake_plan(out, folds, arms, seeds, common, arm_seeds=None):
    """Stand-in runs that write a summary (and count how often they were started)."""
    runs = []
    for seed in seeds:
        run_dir = out / f"f-a-s{seed}"
        code = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(exist_ok=True); "
                "c = d / 'starts'; c.write_text(str(int(c.read_text()) + 1 if c.exists() else 1)); "
                "(d / 'summary.json').write_text(json.dumps({'wall_s': 1.0}))")
        runs.append(sweep.Run(f"f-a-s{seed}", "f", [sys.executable, "-c", code, str(run_dir)], str(run_dir)))
    return runs


def test_sweep_records_finished_runs_and_does_not_train_them_again(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "plan_runs", fake_plan)
    rec = tmp_path / "records"

    def run_sweep(out, *extra):
        argv = ["--out", str(out), "--fold", "f", "--arm", "a=", "--seeds", "0", "1", "--record", str(rec), *extra]
        return sweep.main(sweep.get_args_parser().parse_args(argv))

    assert [r.status for r in run_sweep(tmp_path / "one")] == ["done", "done"]
    assert records.is_recorded(rec, "f-a-s0") and records.is_recorded(rec, "f-a-s1")
    assert json.loads((rec / "f-a-s0" / "record.json").read_text())["argv"][0] == "python"
    # Another session: runs/ is gone, the records are not.
    assert [r.status for r in run_sweep(tmp_path / "two")] == ["recorded", "recorded"]
    assert not (tmp_path / "two" / "f-a-s0").exists()
    # A later step needs the networks: trained again (and recorded again, as trained here and now).
    before = json.loads((rec / "f-a-s0" / "record.json").read_text())
    assert [r.status for r in run_sweep(tmp_path / "two", "--retrain-recorded")] == ["done", "done"]
    assert (tmp_path / "two" / "f-a-s0" / "starts").read_text() == "1"
    again = json.loads((rec / "f-a-s0" / "record.json").read_text())
    assert again["from"] == str(tmp_path / "two" / "f-a-s0") and again["recorded"] >= before["recorded"]
    # The same step on a machine that still has them: they only write their reports again, so their records
    # keep where and in how long they were trained, and gain only the reports they lacked.
    (tmp_path / "two" / "f-a-s0" / "heldout-extra.json").write_text("{}")
    kept = (rec / "f-a-s1" / "record.json").read_text()
    assert [r.status for r in run_sweep(tmp_path / "two", "--retrain-recorded")] == ["done", "done"]
    assert (tmp_path / "two" / "f-a-s0" / "starts").read_text() == "2"
    assert (rec / "f-a-s1" / "record.json").read_text() == kept
    s0 = json.loads((rec / "f-a-s0" / "record.json").read_text())
    assert {k: s0[k] for k in again} == {**again, "files": sorted(again["files"] + ["heldout-extra.json"])}
    assert [a["file"] for a in s0["added"]] == ["heldout-extra.json"]


@pytest.mark.slow
def test_procedures_lodo_continues_from_records_when_runs_are_gone(tmp_path):
    """lab/scripts/procedures_lodo.sh with tiny settings, its run folders deleted between rounds (a new
    session's machine): round 2 reads round 1's records, round 3 trains (b) again for the teacher (not once
    the student is recorded), and the report is written from the records alone."""
    out, rec = tmp_path / "runs", tmp_path / "records"
    env = {**os.environ, "PYTHON": sys.executable, "FOLDS": "TUPAC16", "RECORDS": str(rec),
           "DATA": f"amibr={data_root(tmp_path)}",
           "EXTRA": "--limit 160 --epochs 1 --batch-size 16 --input-size 64 --workers 0 --device cpu"}

    def rounds(*names):
        done = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "procedures_lodo.sh"), str(out), *names], env=env,
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    rounds("1")
    names = ["current-s0", "current-s1", "current-s2", "cv1-s0", "cv2-s0", "cv3-s0"]
    assert all(records.is_recorded(rec, f"TUPAC16-{n}") for n in names)
    # §33's candidate, scored on (a)'s networks in round 1, and read from the records once they are gone
    assert all((rec / f"TUPAC16-current-s{s}" / "heldout-stack-norm-16-early.json").is_file() for s in range(3))
    shutil.rmtree(out)
    stack = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "stack_norm_lodo.sh"), str(out), "score", "report"],
                           env={**env, "VARIANTS": "16 16 early"}, cwd=ROOT, capture_output=True, text=True)
    assert stack.returncode == 0, stack.stdout[-3000:] + stack.stderr[-3000:]
    assert "stack-norm-early" in (rec / "stack-norm" / "procedures.md").read_text()
    missing = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "stack_norm_lodo.sh"), str(out), "score"],
                             env={**env, "VARIANTS": "16 16 all"}, cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and "best.pt (the network) is gone" in missing.stderr
    log = rounds("1", "2")
    assert log.count("recorded already") == 6 and (rec / "TUPAC16-oof" / "oof.json").is_file()
    assert all(records.is_recorded(rec, f"TUPAC16-all-s{s}") for s in range(3))
    shutil.rmtree(out)
    rounds("3", "report")
    assert records.is_recorded(rec, "TUPAC16-distilled-s0") and (out / "TUPAC16-all-s2" / "best.pt").is_file()
    report = (rec / "report" / "procedures.md").read_text()
    assert "distilled" in report and "all-figures" in report and "TUPAC16" in report
    assert "| TUPAC16 | cross-fit | 4 (0, 0, 0, 0) |" in report and "Rule cross-fit vs all-figures" in report
    # A fold whose student is recorded (a lent GPU did round 3) is not trained again, teacher included.
    shutil.rmtree(out)
    assert "TUPAC16's student is recorded already; skipped" in rounds("3")
    assert not (out / "TUPAC16-all-s0").exists()


def test_update_adds_the_reports_a_run_gained_and_keeps_where_it_was_trained(tmp_path):
    run = finished(two_seeds(tmp_path, "a", "X", A)[0])
    with pytest.raises(ValueError, match="not recorded"):
        records.update_record(run, tmp_path / "records")
    dest = records.record_run(run, tmp_path / "records", wall_s=7.0)
    before = json.loads((dest / "record.json").read_text())
    assert records.update_record(run, tmp_path / "records") == []
    # lab.heldout --stack-norm 16 scored it again afterwards (another session would find no network)
    (run / "heldout-stack-norm-16.json").write_text(json.dumps({"test_scores": B}, indent=1))
    assert records.update_record(run, tmp_path / "records") == ["heldout-stack-norm-16.json"]
    after = json.loads((dest / "record.json").read_text())
    assert json.loads((dest / "heldout-stack-norm-16.json").read_text()) == {"test_scores": B}
    assert after["wall_s"] == 7.0 and after["recorded"] == before["recorded"]
    assert "heldout-stack-norm-16.json" in after["files"] and after["added"][0]["file"] == "heldout-stack-norm-16.json"
    records.main([str(run), "--into", str(tmp_path / "records"), "--update"])  # nothing new: no error
    assert records.update_record(run, tmp_path / "records") == []


@pytest.mark.slow
def test_gpu_procedures_call_brings_the_records_back_in_one_file(tmp_path):
    """The prepared GPU call of §32 (lab/scripts/gpu_sweep.sh procedures), on the CPU with tiny settings: the
    records come back packed, and a second call finds every run recorded and trains nothing."""
    out, rec = tmp_path / "out", tmp_path / "records" / "procedures"
    env = {**os.environ, "OUT": str(out), "SWEEP_DIR": str(tmp_path / "work"), "PYTHON": sys.executable,
           "DATA_DIR": str(data_root(tmp_path)), "FOLDS": "TUPAC16", "RECORDS": str(rec), "BUDGET_MIN": "0",
           "EXTRA": "--limit 160 --epochs 1 --batch-size 16 --input-size 64 --device cpu"}

    def call():
        done = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "gpu_sweep.sh"), "procedures"], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    call()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu.txt", "procedures.log", "records.tar.gz", "versions.txt"]
    with tarfile.open(out / "records.tar.gz") as tar:
        names = tar.getnames()
    runs = ["current-s0", "current-s1", "current-s2", "cv1-s0", "cv2-s0", "cv3-s0"]
    assert all(f"procedures/TUPAC16-{r}/record.json" in names for r in runs)
    assert "procedures/TUPAC16-current-s0/heldout.json" in names and not any(n.endswith(".pt") for n in names)
    assert "recorded already" not in (out / "procedures.log").read_text()
    assert call().count("recorded already") == 6


def test_gpu_labels_call_reports_the_recorded_arms_and_each_domains_best_cut(tmp_path):
    """The prepared GPU call of §34 (gpu_sweep.sh labels report) on the committed records, no training: an arm
    not recorded on every fold and seed is left out and said so; the baseline's report says, per unseen domain,
    the cut its own labels would have chosen and the balanced accuracy there; the records come back packed."""
    out, rec = tmp_path / "out", tmp_path / "records" / "labels"
    shutil.copytree(ROOT / "records" / "labels", rec)
    env = {**os.environ, "OUT": str(out), "SWEEP_DIR": str(tmp_path / "work"), "PYTHON": sys.executable,
           "DATA_DIR": str(data_root(tmp_path)), "RECORDS": str(rec)}
    done = subprocess.run(["bash", str(ROOT / "lab" / "scripts" / "gpu_sweep.sh"), "labels", "report"], env=env,
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu.txt", "labels.log", "labels.tar.gz", "versions.txt"]
    assert "votes is not recorded on every fold and seed yet; left out" in (out / "labels.log").read_text()
    with tarfile.open(out / "labels.tar.gz") as tar:
        names = tar.getnames()
    assert "labels/report/procedures.md" in names and "labels/TUPAC16-votes-s0/record.json" in names
    report = json.loads((rec / "report" / "procedures.json").read_text())
    assert sorted(report["by_domain"]) == ["MIDOG21-CS2", "MIDOG21-S360", "MIDOG21-XR", "TUPAC16"]
    from stats.metrics import THRESHOLD_GRID, binary_metrics
    for procs in report["by_domain"].values():
        base = procs["base"]
        assert len(base["seeds"]) == 2 and min(abs(THRESHOLD_GRID - base["best_cut"])) < 1e-9
        at_best = binary_metrics(base["labels"], base["scores"], base["best_cut"])["balanced_accuracy"]
        assert base["ba_at_best_cut"] == pytest.approx(at_best)
    assert "domain's best cut: BA (given away)" in (rec / "report" / "procedures.md").read_text()
