"""lab.procedures: ensembles of leave-one-domain-out runs compared on the unseen domain (issue 35)."""

import json

import numpy as np
import pytest
from scipy.special import expit, logit

from lab import procedures
from stats.metrics import choose_threshold

# Unseen domain: 8 figures on 4 slides, one atypical and one normal figure per slide.
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]
FIGURES = [f"s{i // 2}::fig{i}.png" for i in range(8)]
# By hand: A ranks every atypical figure first (AUC 1; at 0.5 every call right, BA 1).
# B swaps the third slide's pair: atypical 0.9, 0.8, 0.3, 0.6 against normal 0.1, 0.2, 0.7, 0.4 orders
# 4 + 4 + 2 + 3 = 13 of 16 pairs, AUC 0.8125; at 0.4 sensitivity 3/4, specificity 2/4 (0.7 and 0.4 called), BA 0.625.
A = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]
B = [0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.6, 0.4]
VAL = {"val_labels": [1, 0, 1, 0], "val_domains": ["P", "P", "Q", "Q"]}


def write_run(folder, domain, scores, seed, *, val_scores=None, threshold=0.5, figures=FIGURES):
    folder.mkdir(parents=True)
    report = {"domain": domain, "arm": {"seed": seed}, "tta": "none", "threshold": threshold,
              "selected_model": "ema", "best_epoch": 40, "test_figures": figures,
              "test_scores": [float(x) for x in scores], "test_labels": LABELS,
              "val_scores": val_scores or [], **(VAL if val_scores else {"val_labels": [], "val_domains": []})}
    (folder / "heldout.json").write_text(json.dumps(report))
    return folder


def two_seeds(tmp_path, name, domain, target, **kw):
    """Two runs whose logits are the target's +-1 (and the validation scores' +-0.5): their mean-logit
    ensemble is exactly the target."""
    out = []
    for seed, shift in ((0, 1.0), (1, -1.0)):
        val = kw.get("val_scores")
        shifted = kw | {"val_scores": list(expit(logit(np.array(val)) + shift / 2))} if val else kw
        scores = expit(logit(np.array(target)) + shift)
        out.append(write_run(tmp_path / f"{name}-{domain}-s{seed}", domain, scores, seed, **shifted))
    return out


def test_mean_logit_ensembles_thresholds_and_the_rule_on_a_hand_made_case(tmp_path):
    val = [0.9, 0.2, 0.7, 0.1]
    current = two_seeds(tmp_path, "a", "X", A, val_scores=val) + two_seeds(tmp_path, "a", "Y", A, val_scores=val)
    allfig = two_seeds(tmp_path, "b", "X", B, threshold=0.4) + two_seeds(tmp_path, "b", "Y", A, threshold=0.4)
    out = tmp_path / "out"
    result = procedures.main(["--procedure", "current=" + ",".join(map(str, current)),
                              "--procedure", "all=" + ",".join(map(str, allfig)),
                              "--rule", "all=current:0,-0.010,0", "--resamples", "50", "--out", str(out)])
    x = result["by_domain"]["X"]
    np.testing.assert_allclose(x["current"]["scores"], A, atol=1e-9)
    np.testing.assert_allclose(x["all"]["scores"], B, atol=1e-9)
    assert x["current"]["threshold"] == choose_threshold(VAL["val_labels"], val, VAL["val_domains"], "halfway")
    assert x["current"]["roc_auc"] == 1.0 and x["current"]["balanced_accuracy"] == 1.0
    assert x["all"]["threshold"] == 0.4 and x["all"]["roc_auc"] == pytest.approx(0.8125)
    assert (x["all"]["sensitivity"], x["all"]["specificity"]) == (0.75, 0.5)
    diff_x, diff_y = result["diffs"][("all", "current")]["X"], result["diffs"][("all", "current")]["Y"]
    assert diff_x["auc"][0] == pytest.approx(-0.1875) and diff_x["ba"][0] == pytest.approx(0.625 - 1.0)
    assert diff_y["auc"][0] == pytest.approx(0.0)
    v = result["verdicts"]["all vs current"]
    assert v["checks"]["mean_auc"][0] == pytest.approx(-0.09375) and v["checks"]["min_auc"][0] == pytest.approx(-0.1875)
    assert not v["passes"] and v["domains"] == ["X", "Y"]
    text = (out / "procedures.md").read_text()
    assert "**fails**" in text and "out-of-fold" in text and "halfway, on the ensemble's validation scores" in text
    saved = json.loads((out / "procedures.json").read_text())
    assert saved["verdicts"]["all vs current"]["passes"] is False and "X" in saved["diffs"]["all vs current"]
    # The same numbers pass a lenient rule.
    lenient = procedures.main(["--procedure", "current=" + ",".join(map(str, current)),
                               "--procedure", "all=" + ",".join(map(str, allfig)),
                               "--rule", "all=current:-0.5,-0.5,-0.5", "--resamples", "50", "--out", str(out)])
    assert lenient["verdicts"]["all vs current"]["passes"]


@pytest.mark.parametrize("case, message", [
    ("other figures", "held-out figures not the same"),
    ("mixed", "runs with and without a validation part"),
    ("other threshold", r"threshold \(--threshold-from\) not the same"),
    ("bad rule", "expected NAME=REF:MEAN_AUC,MIN_AUC,MEAN_BA"),
    ("unknown rule name", "no procedure named 'nope'"),
    ("no report", "no heldout.json"),
    ("twice", "given twice"),
])
def test_procedures_refuses_what_does_not_make_one_procedure(tmp_path, case, message):
    runs = [write_run(tmp_path / "r0", "X", A, 0, threshold=0.4)]
    rule = ["--rule", "p=p:0,0,0"]
    extra = []
    if case == "other figures":
        runs.append(write_run(tmp_path / "r1", "X", A, 1, threshold=0.4, figures=FIGURES[::-1]))
    elif case == "mixed":
        runs.append(write_run(tmp_path / "r1", "X", A, 1, val_scores=[0.9, 0.2, 0.7, 0.1]))
    elif case == "other threshold":
        runs.append(write_run(tmp_path / "r1", "X", A, 1, threshold=0.45))
    elif case == "bad rule":
        rule = ["--rule", "p=q"]
    elif case == "unknown rule name":
        rule = ["--rule", "nope=p:0,0,0"]
    elif case == "no report":
        runs.append(tmp_path / "empty")
    elif case == "twice":
        extra = ["--procedure", f"p={runs[0]}"]
    with pytest.raises(SystemExit, match=message):
        procedures.main(["--procedure", "p=" + ",".join(map(str, runs)), *extra, *rule, "--resamples", "10",
                         "--out", str(tmp_path / "out")])


def write_oof(path, domain, threshold, runs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"leave_out_domain": domain, "summary": {"threshold": threshold},
                                "folds": [{"fold": i, "runs": [str(r)]} for i, r in enumerate(runs)]}))


def test_cross_fit_networks_cut_at_their_out_of_fold_threshold_with_rules_against_two_references(tmp_path):
    """(b') of experiments.md §32: the cross-fit's networks (validation parts that differ) as one procedure,
    cut at the threshold of their own oof.json; one procedure ruled against two references."""
    val = [0.9, 0.2, 0.7, 0.1]
    current = two_seeds(tmp_path, "a", "X", A, val_scores=val) + two_seeds(tmp_path, "a", "Y", A, val_scores=val)
    allfig = two_seeds(tmp_path, "b", "X", B, threshold=0.4) + two_seeds(tmp_path, "b", "Y", A, threshold=0.4)
    crossfit = two_seeds(tmp_path, "cv", "X", B, val_scores=val) + two_seeds(tmp_path, "cv", "Y", A, val_scores=val)
    # Folds with other validation figures: without --threshold-from they would not make one procedure.
    report = json.loads((crossfit[1] / "heldout.json").read_text())
    (crossfit[1] / "heldout.json").write_text(json.dumps(report | {"val_labels": [0, 1, 0, 1]}))
    write_oof(tmp_path / "oof" / "X-oof" / "oof.json", "X", 0.35, crossfit[:2])
    write_oof(tmp_path / "oof" / "Y-oof" / "oof.json", "Y", 0.45, [tmp_path / "elsewhere"])
    argv = ["--procedure", "current=" + ",".join(map(str, current)),
            "--procedure", "all=" + ",".join(map(str, allfig)),
            "--procedure", "cross-fit=" + ",".join(map(str, crossfit)),
            "--rule", "cross-fit=current:0,-0.010,0", "--rule", "cross-fit=all:-0.005,-0.015,-0.010",
            "--resamples", "50", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="validation labels not the same"):
        procedures.main(argv)
    result = procedures.main(argv + ["--threshold-from", f"cross-fit={tmp_path}/oof/{{domain}}-oof/oof.json"])
    x, y = result["by_domain"]["X"]["cross-fit"], result["by_domain"]["Y"]["cross-fit"]
    assert (x["threshold"], y["threshold"]) == (0.35, 0.45)
    assert x["threshold_from"].startswith("out-of-fold") and "another procedure" not in x["threshold_from"]
    assert "another procedure's cross-fit" in y["threshold_from"]
    # B at 0.35: atypical 0.9, 0.8, 0.6 called (0.3 missed), normal 0.7 and 0.4 called: BA (3/4 + 2/4) / 2.
    assert x["balanced_accuracy"] == pytest.approx(0.625)
    assert set(result["verdicts"]) == {"cross-fit vs current", "cross-fit vs all"}
    # all against the first procedure still compared (no rule of its own), cross-fit not against current twice.
    assert set(result["diffs"]) == {("cross-fit", "current"), ("cross-fit", "all"), ("all", "current")}
    assert result["diffs"][("cross-fit", "all")]["X"]["auc"][0] == pytest.approx(0.0)
    write_oof(tmp_path / "oof" / "Y-oof" / "oof.json", "X", 0.45, crossfit[2:])
    with pytest.raises(SystemExit, match="held-out domain X, not Y"):
        procedures.main(argv + ["--threshold-from", f"cross-fit={tmp_path}/oof/{{domain}}-oof/oof.json"])
    with pytest.raises(SystemExit, match="no procedure named 'nope'"):
        procedures.main(argv + ["--threshold-from", f"nope={tmp_path}/oof/X-oof/oof.json"])
