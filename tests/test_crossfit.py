"""Cross-fitting (issue 35): the K-fold split, --cv-fold, per-figure validation scores and training.oof."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedGroupKFold

from data.datasets import Record, load_datasets
from data.split import kfold_split, leave_one_domain_out_split, record_key, stratified_group_split
from stats.bootstrap import bootstrap_intervals, group_bootstrap_intervals
from stats.ensemble import mean_logit
from tests.conftest import AMIBR, ROOT, needs_amibr
from tests.test_split_sampler import synthetic_records
from tests.test_training import smoke_args
from training import export, oof, recipes, train


def reference_split(records, val_fraction=0.25, seed=0):
    """stratified_group_split as it was before kfold_split (the shipped split was made with it)."""
    n_splits = max(2, round(1.0 / val_fraction))
    strata = np.array([f"{r.domain}|{r.label}" for r in records])
    groups = np.array([r.group for r in records])
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), strata, groups))
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def check_cross_fit(records, n_folds, seed):
    """The K validation parts partition the figures, each is slide-disjoint from its training part, and
    every domain x label stratum with at least K slides is in every part."""
    folds = [kfold_split(records, n_folds, k, seed) for k in range(n_folds)]
    vals = [set(val) for _, val in folds]
    assert sum(len(v) for v in vals) == len(records) and set().union(*vals) == set(range(len(records)))
    for train_idx, val_idx in folds:
        assert sorted(train_idx + val_idx) == list(range(len(records)))
        assert not {records[i].group for i in train_idx} & {records[i].group for i in val_idx}
    slides = Counter(stratum for stratum, _ in {(f"{r.domain}|{r.label}", r.group) for r in records})
    for stratum, n_slides in slides.items():
        if n_slides >= n_folds:
            assert all(any(f"{records[i].domain}|{records[i].label}" == stratum for i in val) for val in vals), stratum
    return folds


# --------------------------------------------------------------------------- the split

@pytest.mark.parametrize("seed", [0, 1, 7])
def test_kfold_split_partitions_slide_disjointly_and_fold_0_is_the_usual_split(seed):
    records = synthetic_records(n_slides=40, per_slide=10, seed=seed)
    for n_folds in (2, 3, 4, 5):
        folds = check_cross_fit(records, n_folds, seed)
        assert folds[0] == stratified_group_split(records, 1 / n_folds, seed)
    for fraction in (0.2, 0.25, 0.3, 0.5):  # stratified_group_split is unchanged
        assert stratified_group_split(records, fraction, seed) == reference_split(records, fraction, seed)
    assert kfold_split(records, 4, 1, seed) != kfold_split(records, 4, 1, seed + 1)


def test_kfold_split_arguments_are_checked():
    records = synthetic_records()
    for fold in (-1, 4):
        with pytest.raises(ValueError, match=r"fold must be in 0\.\.3"):
            kfold_split(records, 4, fold)
    with pytest.raises(ValueError, match="at least 2"):
        kfold_split(records, 1, 0)
    with pytest.raises(ValueError, match="too few"):
        kfold_split(synthetic_records(n_slides=3), 4, 0)


@needs_amibr
def test_real_data_cross_fit_and_the_shipped_cross_fit_is_its_folds():
    records = load_datasets([f"amibr={AMIBR}"])
    assert len(records) == 2894
    folds = check_cross_fit(records, 4, 0)
    strata = {f"{r.domain}|{r.label}" for r in records}
    for _, val in folds:  # on the real data every stratum is in every fold
        assert {f"{records[i].domain}|{records[i].label}" for i in val} == strata
    assert stratified_group_split(records, 0.25, 0) == reference_split(records, 0.25, 0) == folds[0]
    # The shipped weights' cross-fit (records/shipping, its out-of-fold scores) is these folds, figure by figure
    # (its fold 0 is the split the weights shipped until 2026-12-06 kept).
    oof_figures = json.loads((ROOT / "records" / "shipping" / "oof" / "oof.json").read_text())["figures"]
    fold_of = {f["key"]: f["fold"] for f in oof_figures}
    assert len(fold_of) == len(records)
    for k, (_, val) in enumerate(folds):
        assert {fold_of[record_key(records[i])] for i in val} == {k}


# --------------------------------------------------------------------------- --cv-fold

def test_cv_fold_is_parsed_checked_and_recorded(tmp_path, capsys):
    assert train.parse_args([]).cv_fold is None
    args = train.parse_args(["--config", "shipped", "--cv-fold", "3"])
    assert args.cv_fold == 3 and args.no_kd  # the rest is the recipe's
    assert train.parse_args(["--cv-fold", "4", "--val-fraction", "0.2"]).cv_fold == 4  # K = 5
    for argv, message in ((["--cv-fold", "4"], r"--cv-fold 4: expected 0\.\.3"),
                          (["--cv-fold", "-1"], r"expected 0\.\.3"),
                          (["--cv-fold", "1", "--split-file", "weights/split.json"],
                           "--cv-fold and --split-file are mutually exclusive"),
                          (["--cv-fold", "4", "--leave-out-domain", "TUPAC16"], r"expected 0\.\.3")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message.replace("\\", "") in capsys.readouterr().err
    # A namespace made without parse_args (as tests and sweeps do) is checked when the data are split.
    bad = train.get_args_parser().parse_args(["--cv-fold", "2", "--split-file", "weights/split.json"])
    with pytest.raises(SystemExit, match="mutually exclusive"):
        train.prepare_data(bad)
    # The resolved arguments carry it: OUT/config.json's overrides, the card's command line.
    args = train.parse_args(["--config", "shipped", "--cv-fold", "2", "--out", "runs/cv/f2-s0"])
    train.resolve_implied_defaults(args)
    record = recipes.run_config(args, train.get_args_parser(), train.resolve_implied_defaults)
    assert record["overrides"]["cv_fold"] == 2 and record["args"]["cv_fold"] == 2
    assert "--cv-fold 2" in recipes.command(record, train.get_args_parser())
    flags = recipes.flags_for(train.vars_for_checkpoint(args), train.get_args_parser())
    assert flags[flags.index("--cv-fold") + 1] == "2"
    defaults = train.vars_for_checkpoint(train.parse_args([]))
    assert "--cv-fold" not in recipes.flags_for(defaults, train.get_args_parser())
    # Cards and checkpoints written before the flag (no cv_fold key) still read.
    assert export.split_description({}) == "slide-disjoint, stratified by domain and label"
    assert "fold 2 of a 4-fold cross-fit" in export.split_description({"cv_fold": 2, "val_fraction": 0.25})


def test_cv_fold_inside_a_leave_one_domain_out_fold_partitions_the_other_domains():
    """--leave-out-domain D --cv-fold I: fold I of the K-fold split of every domain but D (the held-out
    domain is the test part of every fold); fold 0 is the leave-one-domain-out split without --cv-fold."""
    records = synthetic_records(n_slides=48)
    assert leave_one_domain_out_split(records, "D2", 0.25, 0) == leave_one_domain_out_split(records, "D2", 0.25, 0, 0)
    seen = Counter()
    for fold in range(4):
        train_idx, val_idx, test_idx = leave_one_domain_out_split(records, "D2", 0.25, 0, fold)
        assert {records[i].domain for i in test_idx} == {"D2"} and "D2" not in {records[i].domain for i in
                                                                              train_idx + val_idx}
        assert not {records[i].group for i in train_idx} & {records[i].group for i in val_idx}
        assert sorted(train_idx + val_idx + test_idx) == list(range(len(records)))
        seen.update(val_idx)
    assert set(seen.values()) == {1} and len(seen) == sum(r.domain != "D2" for r in records)
    args = train.parse_args(["--leave-out-domain", "TUPAC16", "--cv-fold", "3"])
    assert (args.leave_out_domain, args.cv_fold) == ("TUPAC16", 3)


@needs_amibr
def test_cv_fold_selects_that_fold_of_the_real_data():
    args = train.get_args_parser().parse_args(["--data", f"amibr={AMIBR}", "--cv-fold", "2"])
    records, _, train_idx, val_idx, test_idx = train.prepare_data(args)
    assert (train_idx, val_idx) == kfold_split(records, 4, 2, 0) and not test_idx


def test_a_cv_fold_run_saves_its_validation_scores_and_export_agrees(tmp_path):
    args = smoke_args(tmp_path, "--cv-fold", "1", "--no-kd")
    args.epochs = 1
    summary = train.main(args)
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    saved = json.loads((run / "val_scores.json").read_text())
    assert json.loads((run / "config.json").read_text())["args"]["cv_fold"] == 1
    assert saved["keys"] == split["val"] and len(saved["scores"]) == len(split["val"])
    assert saved["split"]["cv_fold"] == 1 and saved["split"]["n_folds"] == 4
    assert saved["split"]["n_figures"] == len(split["train"]) + len(split["val"])
    assert saved["source"] == "training.train" and saved["selected_model"] == summary["val_scores_model"]
    assert saved["tta"] == "none" and saved["seeds"] == [0]
    best = torch.load(run / "best.pt", weights_only=True)
    np.testing.assert_allclose(saved["scores"], best["val_scores"][saved["selected_model"]].numpy(), rtol=0, atol=0)
    assert set(saved["labels"]) <= {0, 1} and len(set(saved["groups"])) >= 1
    # The export selects the same model and writes the same scores beside the weights.
    card = export.main(export.get_args_parser().parse_args([str(run), "--out", str(tmp_path / "w"), "--tta", "none"]))
    exported = json.loads((tmp_path / "w" / "val_scores.json").read_text())
    assert "fold 1 of a 4-fold cross-fit" in card["data"]["split"] and card["training"]["args"]["cv_fold"] == 1
    assert exported["source"] == "training.export" and exported["selected_model"] == saved["selected_model"]
    assert exported["split"] == saved["split"]
    # (--limit samples the figures, so the run lists them in another order than the export, which reads them all)
    by_key = dict(zip(exported["keys"], exported["scores"]))
    assert sorted(by_key) == sorted(saved["keys"])
    np.testing.assert_allclose([by_key[k] for k in saved["keys"]], saved["scores"], atol=1e-3)
    # An exported folder scored afresh (--val-scores, as for the shipped weights): the export's own file
    # again, and the folder untouched.
    before = {f.name: f.read_bytes() for f in (tmp_path / "w").iterdir()}
    from lab import rescore

    rescore.main([str(tmp_path / "w"), "--val-scores", str(tmp_path / "f1")])
    rescored = json.loads((tmp_path / "f1" / "val_scores.json").read_text())
    assert {f.name: f.read_bytes() for f in (tmp_path / "w").iterdir()} == before
    assert rescored["keys"] == exported["keys"] and rescored["split"] == exported["split"]
    assert rescored["seeds"] == [0] and rescored["tta"] == "none" and "--val-scores" in rescored["source"]
    np.testing.assert_allclose(rescored["scores"], exported["scores"], atol=1e-4)
    assert oof.read_val_scores(tmp_path / "f1")["split"]["cv_fold"] == 1
    with pytest.raises(SystemExit, match="not an exported weights folder"):
        rescore.main([str(run), "--val-scores", str(tmp_path / "f2")])


# --------------------------------------------------------------------------- training.oof

# Eight figures on eight slides, two domains, two folds (val_fraction 0.5). By hand:
#   domain A: atypical 0.9, 0.4 against normal 0.2, 0.6: 3 of 4 pairs ordered, AUC 0.75
#   domain B: atypical 0.7, 0.8 against normal 0.1, 0.3: AUC 1
#   pooled: 15 of 16 pairs ordered (0.4 < 0.6 alone), AUC 0.9375; at 0.5 sensitivity 3/4, specificity 3/4
#   mean-domain balanced accuracy is 0.875 for cuts in (0.3, 0.4] and (0.6, 0.7]; smoothed over +-0.02
#   the best cuts are 0.33-0.38 and 0.63-0.68, the closest to 0.5 is 0.38, so halfway = (0.38 + 0.5) / 2 = 0.44
FIGURES = [  # (domain, label, score, fold)
    ("A", 1, 0.9, 0), ("A", 0, 0.2, 0), ("B", 1, 0.7, 0), ("B", 0, 0.1, 0),
    ("A", 1, 0.4, 1), ("A", 0, 0.6, 1), ("B", 1, 0.8, 1), ("B", 0, 0.3, 1),
]
RECORDS = [Record(f"/x/fig{i}.png", label, domain, f"slide{i}") for i, (domain, label, _, _) in enumerate(FIGURES)]


def write_fold(folder, fold, scores=None, records=RECORDS, val=None, seed=0, **args):
    """A hand-made run folder of fold ``fold`` holding only val_scores.json."""
    val = [i for i, f in enumerate(FIGURES) if f[3] == fold] if val is None else val
    train_idx = [i for i in range(len(records)) if i not in val]
    scores = [FIGURES[i][2] for i in val] if scores is None else scores
    train_args = {"data": ["amibr=x"], "val_fraction": 0.5, "split_seed": 0, "cv_fold": fold, "seed": seed,
                  "out": str(folder)} | args
    folder.mkdir(parents=True, exist_ok=True)
    oof.write_val_scores(folder / "val_scores.json", records, train_idx, val, scores, train_args,
                         source="test", selected_model="ema", tta="none")
    return folder


def test_oof_combines_the_folds_with_the_known_answer(tmp_path):
    runs = [write_fold(tmp_path / f"f{k}", k) for k in (1, 0)]
    report = oof.main([*map(str, runs), "--out", str(tmp_path / "oof"), "--resamples", "200", "--also-at", "0.35"])
    saved = json.loads((tmp_path / "oof" / "oof.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    figures = {f["key"]: f for f in saved["figures"]}
    assert len(figures) == 8
    for i, (domain, label, score, fold) in enumerate(FIGURES):
        assert figures[record_key(RECORDS[i])] == {"key": record_key(RECORDS[i]), "label": label, "domain": domain,
                                                   "group": f"slide{i}", "fold": fold, "score": score}
    s = report["summary"]
    assert s["threshold"] == 0.44 and s["threshold_rule"] == "halfway"
    assert s["at_0.5"]["pooled"]["roc_auc"] == 0.9375
    assert (s["at_0.5"]["A"]["roc_auc"], s["at_0.5"]["B"]["roc_auc"]) == (0.75, 1.0)
    assert s["at_0.5"]["pooled"]["sensitivity"] == 0.75 == s["at_0.5"]["pooled"]["specificity"]
    assert s["at_threshold"]["A"]["balanced_accuracy"] == 0.5 and s["at_threshold"]["B"]["balanced_accuracy"] == 1.0
    low, high = s["intervals"]["pooled"]["roc_auc"]
    assert 0.5 <= low <= 0.9375 <= high <= 1.0
    assert s["intervals"]["B"]["roc_auc"] == [1.0, 1.0]
    assert [f["fold"] for f in saved["folds"]] == [0, 1] and saved["n_folds"] == 2
    md = (tmp_path / "oof" / "oof.md").read_text()
    assert "Threshold (halfway, fitted on the OOF scores): **0.44**" in md
    assert "| pooled | 8 | 4 | 0.938 [" in md and "| A | 4 | 2 | 0.750 [" in md
    # At 0.35 by hand: A calls 0.9, 0.4 and 0.6 atypical (sensitivity 1, specificity 1/2), B all four right.
    at = s["also_at"]["0.35"]
    assert (at["A"]["balanced_accuracy"], at["B"]["balanced_accuracy"], at["pooled"]["balanced_accuracy"]) == (
        0.75, 1.0, 0.875)
    assert "At the given cut 0.35 (`--also-at`): pooled BA 0.875" in md and "--also-at 0.35" in report["command"]


def test_oof_averages_the_seeds_of_a_fold_by_mean_logit(tmp_path):
    # Seed 1 of fold 0 says 0.5 where seed 0 says 0.9: mean logit (ln 9 + 0) / 2 = ln 3, so 3/4.
    seed1 = [0.5] + [FIGURES[i][2] for i in (1, 2, 3)]
    runs = [write_fold(tmp_path / "f0-s0", 0), write_fold(tmp_path / "f0-s1", 0, scores=seed1, seed=1),
            write_fold(tmp_path / "f1-s0", 1)]
    report = oof.main([*map(str, runs), "--out", str(tmp_path / "oof"), "--resamples", "50"])
    scores = {f["key"]: f["score"] for f in report["figures"]}
    assert scores[record_key(RECORDS[0])] == pytest.approx(0.75)
    assert scores[record_key(RECORDS[0])] == pytest.approx(mean_logit([0.9, 0.5]))
    for i in (1, 2, 3, 4):
        assert scores[record_key(RECORDS[i])] == pytest.approx(FIGURES[i][2])
    fold0 = report["folds"][0]
    assert fold0["seeds"] == [0, 1] and len(fold0["runs"]) == 2 and fold0["n"] == 4
    assert report["summary"]["at_0.5"]["A"]["roc_auc"] == 0.75  # 0.75 still ranks as 0.9 did


def test_oof_of_a_cross_fit_inside_a_leave_one_domain_out_fold(tmp_path):
    runs = [write_fold(tmp_path / f"f{k}", k, leave_out_domain="C") for k in (0, 1)]
    report = oof.main([*map(str, runs), "--out", str(tmp_path / "oof"), "--resamples", "10"])
    assert report["leave_out_domain"] == "C" and report["n_figures"] == 8
    assert "inside the leave-one-domain-out fold of C" in (tmp_path / "oof" / "oof.md").read_text()


def test_runs_without_a_recorded_fold_are_numbered_by_their_figures(tmp_path):
    runs = [write_fold(tmp_path / "split-file", 0, cv_fold=None), write_fold(tmp_path / "f1", 1)]
    report = oof.main([*map(str, runs), "--out", str(tmp_path / "oof"), "--resamples", "10"])
    assert [(f["fold"], f["fold_from"].split(" ")[0]) for f in report["folds"]] == [(0, "assigned"), (1, "--cv-fold")]


@pytest.mark.parametrize("case, message", [
    ("missing fold", r"4 of 8 figures are in no run's validation part.*missing \[1\]"),
    ("overlap", r"is in the validation part of .*f0.* \(fold 0\) and of .*other.* \(fold 1\)"),
    ("other data", r"other.*: data .* not the same as in .*f0"),
    ("other K", r"other.*: number of folds K .* not the same"),
    ("same fold, other figures", r"both record --cv-fold 1 but validate on different figures"),
    ("held out", r"other.*: held-out domain \(--leave-out-domain\) not the same"),
    ("no file", r"val_scores.json: not found"),
    ("twice", r"the same run is listed twice"),
])
def test_oof_refuses_runs_that_are_not_one_cross_fit(tmp_path, case, message):
    runs = [write_fold(tmp_path / "f0", 0)]
    other = tmp_path / "other"
    if case == "overlap":
        runs.append(write_fold(other, 1, val=[0, 4, 5, 6, 7]))
    elif case == "other data":
        changed = RECORDS[:7] + [Record("/x/fig7.png", 1, "B", "slide7")]
        runs.append(write_fold(other, 1, records=changed))
    elif case == "other K":
        runs.append(write_fold(other, 1, val_fraction=0.25))
    elif case == "same fold, other figures":
        runs += [write_fold(other, 1), write_fold(tmp_path / "f1b", 1, val=[4, 5, 6])]
    elif case == "held out":
        runs.append(write_fold(other, 1, leave_out_domain="B"))
    elif case == "no file":
        other.mkdir()
        runs.append(other)
    elif case == "twice":
        runs += [write_fold(other, 1), other]
    with pytest.raises(SystemExit, match=message):
        oof.main([*map(str, runs), "--out", str(tmp_path / "oof"), "--resamples", "10"])
    assert not (tmp_path / "oof").exists()


def test_group_bootstrap_resamples_whole_slides():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    calls, slides = (scores >= 0.5).astype(int), np.arange(40)
    one = group_bootstrap_intervals(labels, calls, scores, slides, resamples=300, seed=3)
    # Every slide five times over: the metrics of a resample do not change, nor do the intervals;
    # resampling figures instead would narrow them as if there were five times the slides.
    five = group_bootstrap_intervals(np.repeat(labels, 5), np.repeat(calls, 5), np.repeat(scores, 5),
                                     np.repeat(slides, 5), resamples=300, seed=3)
    for metric, interval in one.items():
        assert five[metric] == pytest.approx(interval), metric
    narrow = bootstrap_intervals(np.repeat(labels, 5), np.repeat(calls, 5), np.repeat(scores, 5), 300, 3)
    assert narrow["roc_auc"][1] - narrow["roc_auc"][0] < 0.7 * (one["roc_auc"][1] - one["roc_auc"][0])
    assert not any(math.isnan(v) for interval in one.values() for v in interval)


# --------------------------------------------------------------------------- --all-figures

@pytest.mark.slow  # three smoke trainings
def test_all_figures_inside_a_leave_one_domain_out_fold_uses_the_cross_fit_threshold(tmp_path):
    """Procedure (b) of experiments.md §32 in miniature: a 2-fold cross-fit of the other domains gives the
    out-of-fold threshold; the all-figures run trains on every figure of them, validates on none, keeps its
    last epoch's EMA model and reports the unseen domain at that threshold."""
    from lab import heldout, lodo

    common = ("--leave-out-domain", "TUPAC16", "--val-fraction", "0.5", "--no-kd", "--eval-tta", "none")
    for fold in (0, 1):
        args = smoke_args(tmp_path, *common, "--cv-fold", str(fold))
        args.epochs, args.out = 1, tmp_path / f"f{fold}"
        train.main(args)
    report = oof.main([str(tmp_path / "f0"), str(tmp_path / "f1"), "--out", str(tmp_path / "oof"), "--resamples", "10"])
    assert report["leave_out_domain"] == "TUPAC16"
    args = smoke_args(tmp_path, *common, "--all-figures", "--threshold-from", str(tmp_path / "oof" / "oof.json"))
    summary = lodo.train_and_report(args)
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert not split["val"] and sorted(split["train"]) == sorted(f["key"] for f in report["figures"])
    assert split["test"] and not set(split["test"]) & set(split["train"])
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and history[-1]["val_ema"] == {} and history[-1]["monitor"] is None
    assert summary["best_epoch"] == 2 and summary["final_model"] == "ema" and not (run / "val_scores.json").exists()
    best, last = (torch.load(run / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["epoch"] == 1  # the last epoch (0-based)
    assert all(torch.equal(best["teacher"][k], last["teacher"]["module"][k]) for k in best["teacher"])
    held = json.loads((run / "heldout.json").read_text())
    assert held["threshold"] == report["summary"]["threshold"] and held["selected_model"] == "ema"
    assert held["arm"]["all_figures"] is True and held["val_scores"] == [] and held["tta"] == "none"
    assert held["test_at_threshold"]["pooled"]["n"] == len(split["test"])
    assert set(held["test_at_0.5"]) == {"pooled", "TUPAC16", "mean_domain"}
    # Re-scored by lab.heldout: the same report; another cross-fit's file would be refused.
    assert heldout.main([str(run), "--tta", "none", "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["threshold"] == held["threshold"]
    np.testing.assert_allclose(again["test_scores"], held["test_scores"], atol=1e-5)
    other = json.loads((tmp_path / "oof" / "oof.json").read_text()) | {"leave_out_domain": "MIDOG21-XR"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="held-out domain MIDOG21-XR, the run.s. hold out TUPAC16"):
        heldout.main([str(run), "--threshold-from", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("argv, message", [
    (["--all-figures", "--cv-fold", "1"], "--all-figures and --cv-fold are mutually exclusive"),
    (["--all-figures", "--lr-scheduler", "plateau"], "needs --lr-scheduler onecycle"),
    (["--all-figures", "--early-stop", "5"], "needs --early-stop 0"),
    (["--all-figures", "--kd-start-auc", "0.7"], "--kd-start-auc"),
    (["--all-figures", "--leave-out-domain", "TUPAC16"], "needs --threshold-from"),
    (["--all-figures", "--threshold-from", "oof.json"], "--threshold-from is for the held-out report"),
    (["--threshold-from", "oof.json"], "--threshold-from is for --all-figures runs"),
])
def test_all_figures_refuses_what_needs_a_validation_part(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow  # seven smoke trainings
def test_all_figures_ensemble_exports_with_the_out_of_fold_threshold_and_teaches_a_student(tmp_path):
    """Procedures (b) and (c) on all the data in miniature: a 2-fold cross-fit, two --all-figures seeds
    exported as an ensemble whose threshold and validation numbers are the out-of-fold ones, and an
    --all-figures student distilled from that ensemble, exported the same way."""
    from model.predict import Predictor

    for fold in (0, 1):
        args = smoke_args(tmp_path, "--val-fraction", "0.5", "--no-kd", "--cv-fold", str(fold))
        args.epochs, args.out = 1, tmp_path / f"f{fold}"
        train.main(args)
    oof_json = tmp_path / "oof" / "oof.json"
    report = oof.main([str(tmp_path / "f0"), str(tmp_path / "f1"), "--out", str(oof_json.parent), "--resamples", "10"])
    runs = []
    for seed in (0, 1):
        args = smoke_args(tmp_path, "--all-figures", "--no-kd", "--seed", str(seed))
        args.epochs, args.out = 1, tmp_path / f"all-s{seed}"
        train.main(args)
        runs.append(str(args.out))
    teacher = tmp_path / "teacher"
    with pytest.raises(SystemExit, match="--threshold-from"):
        export.main(export.get_args_parser().parse_args([*runs, "--out", str(teacher), "--tta", "none"]))
    with pytest.raises(SystemExit, match="single view"):
        export.main(export.get_args_parser().parse_args([*runs, "--out", str(teacher), "--threshold-from",
                                                         str(oof_json)]))
    card = export.main(export.get_args_parser().parse_args([*runs, "--out", str(teacher), "--tta", "none", "--half",
                                                            "--threshold-from", str(oof_json)]))
    assert card["threshold"] == report["summary"]["threshold"] and card["ensemble"]["size"] == 2
    assert card["name"].endswith("ensemble of 2 trainings (seeds 0, 1), trained on every figure (--all-figures)")
    assert json.dumps(card["validation"]["at_threshold"]) == json.dumps(report["summary"]["at_threshold"])  # NaNs too
    assert card["validation"]["kind"].startswith("out-of-fold") and card["data"]["n_val"] == 0
    assert card["validation"]["cross_fit"]["n_figures"] == report["n_figures"] == card["data"]["n_train"]
    assert "--threshold-from" in card["export_command"] and "out-of-fold" in card["threshold_rule"]
    assert json.loads((teacher / "split.json").read_text())["val"] == []
    assert (teacher / "validation_roc.png").stat().st_size > 0  # the out-of-fold ROC, beside the weights
    # ... and the out-of-fold scores themselves, which the card names (not the cross-fit's file, under runs/).
    assert card["validation"]["cross_fit"]["oof_json"] == str(teacher / "oof.json")
    assert (teacher / "oof.json").read_bytes() == oof_json.read_bytes()
    assert Predictor(teacher).threshold == card["threshold"]
    # (c): a student on every figure, distilled from the ensemble (no held-back figure, so no leak to refuse).
    student = smoke_args(tmp_path, "--all-figures", "--no-mixstyle", "--no-align", "--kd-teacher", str(teacher),
                         "--kd-weight", "1")
    student.epochs, student.out = 1, tmp_path / "student"
    train.main(student)
    assert json.loads((tmp_path / "student" / "history.json").read_text())[-1]["w_kd"] > 0
    card = export.main(export.get_args_parser().parse_args([str(student.out), "--out", str(tmp_path / "w"),
                                                            "--tta", "none", "--threshold-from", str(oof_json)]))
    assert card["threshold"] == report["summary"]["threshold"] and "kd_teacher" in card["training"]
    # A cross-fit of other figures is refused.
    other = json.loads(oof_json.read_text())
    other["figures"] = other["figures"][1:]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="are not the run.s.' 64 training figures"):
        export.main(export.get_args_parser().parse_args([*runs, "--out", str(tmp_path / "x"), "--tta", "none",
                                                         "--threshold-from", str(tmp_path / "other.json")]))
