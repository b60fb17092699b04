"""lab/analyses/threshold_transfer.py: own-threshold vs 0.5 tallies per held-out domain, from heldout.json files."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def held_out(folder: Path, domain: str, ba_thr: float, ba_half: float) -> Path:
    folder.mkdir()
    (folder / "heldout.json").write_text(json.dumps({
        "domain": domain, "test_at_threshold": {"pooled": {"balanced_accuracy": ba_thr}},
        "test_at_0.5": {"pooled": {"balanced_accuracy": ba_half}}}))
    return folder


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "lab" / "analyses" / "threshold_transfer.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_tallies_and_mean_gain_per_domain(tmp_path):
    runs = [held_out(tmp_path / "a", "D1", 0.80, 0.70), held_out(tmp_path / "b", "D1", 0.60, 0.70),
            held_out(tmp_path / "c", "D1", 0.75, 0.75), held_out(tmp_path / "d", "D2", 0.50, 0.55)]
    done = run(*runs)
    assert done.returncode == 0, done.stderr
    assert "| D1 | 3 | 1 / 1 / 1 | +0.000 (-0.100..+0.100) |" in done.stdout
    assert "| D2 | 1 | 0 / 1 / 0 | -0.050 (-0.050..-0.050) |" in done.stdout


def test_no_reports_is_an_error(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 1 and "no <run>/heldout.json found" in done.stderr


# Two validation domains, each separable: every rule fitted on them puts the cut in (0.205, 0.305],
# at 0.28 on the smoothed 0.01 grid (ties go toward 0.5); halfway is (0.28 + 0.5) / 2 = 0.39.
VAL = {"D1": ([0, 1], [0.105, 0.305]), "D2": ([0, 1], [0.205, 0.405])}
# An unseen domain whose scores sit higher: only the halfway cut separates it.
UNSEEN = ([0, 1], [0.35, 0.45])
ROW = "0.500 (0.50) | 0.500 (0.28) | 0.500 (0.28) | 0.500 (0.28) | 1.000 (0.39) |"


def test_every_rule_refitted_from_saved_validation_scores(tmp_path):
    folder = held_out(tmp_path / "a", "D3", 0.5, 0.5)
    report = json.loads((folder / "heldout.json").read_text())
    report.update(val_labels=VAL["D1"][0] + VAL["D2"][0], val_scores=VAL["D1"][1] + VAL["D2"][1],
                  val_domains=["D1", "D1", "D2", "D2"], test_labels=UNSEEN[0], test_scores=UNSEEN[1])
    (folder / "heldout.json").write_text(json.dumps(report))
    done = run(folder, held_out(tmp_path / "b", "D3", 0.6, 0.5))  # b predates saved validation scores
    assert done.returncode == 0, done.stderr
    assert "| held-out domain | n | BA @0.5 (thr) | BA @mean-domain (thr) | BA @worst-domain (thr) |" in done.stdout
    assert f"| D3 | 1 | {ROW}" in done.stdout
    assert f"| mean over domains | 1 | {ROW}" in done.stdout
    assert f"| a (D3) | 1 | {ROW}" in done.stdout  # and run by run
    # A report file named directly (lab.heldout --out) is read as well, and named by its file.
    (folder / "heldout-none.json").write_text(json.dumps(report))
    again = run(folder / "heldout-none.json")
    assert again.returncode == 0, again.stderr
    assert f"| a/heldout-none.json (D3) | 1 | {ROW}" in again.stdout


def test_mean_over_domains_weighs_each_domain_once():
    path = ROOT / "lab" / "analyses" / "threshold_transfer.py"
    spec = importlib.util.spec_from_file_location("threshold_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entry = lambda ba, thr: {r: (ba, thr) for r in module.RULES}  # noqa: E731
    # D1 has three runs at BA 0.9, D2 one at 0.5: per domain 0.9 and 0.5, so the mean is 0.7, not 0.8.
    rows = module.with_mean_over_groups({"D2": [entry(0.5, 0.2)], "D1": [entry(0.9, 0.4)] * 3})
    assert list(rows) == ["D1", "D2", "mean over domains"]
    assert rows["mean over domains"][0]["halfway"] == pytest.approx((0.7, 0.3))


def test_validation_domains_left_out_of_the_fit_in_turn(tmp_path):
    pages, truth = [], {"image": "stack_0.tiff", "labels": [], "tumordomains": []}
    for domain, (labels, scores) in enumerate([VAL["D1"], VAL["D2"], UNSEEN]):
        for y, p in zip(labels, scores):
            truth["labels"].append("atypical" if y else "normal")
            truth["tumordomains"].append(domain)
            pages.append({"class": "atypical" if p >= 0.5 else "normal", "confidence": p})
    (tmp_path / "ground_truth.json").write_text(json.dumps([truth]))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "stack_0.json").write_text(json.dumps(pages))
    done = run("--validation", tmp_path / "ground_truth.json", tmp_path / "pred")
    assert done.returncode == 0, done.stderr
    assert f"| domain_2 | 1 | {ROW}" in done.stdout
    assert "| mean over domains | 1 |" in done.stdout
    done = run("--validation", tmp_path / "nowhere.json", tmp_path / "pred")
    assert done.returncode == 1 and "nowhere.json" in done.stderr
