"""training.compare: the per-run table and the seed-paired arm comparison, on hand-made cards."""

from __future__ import annotations

import json

import pytest

from training.compare import main, seeds_table


def card(auc_pooled, auc_a, ba_pooled=0.7, ba_a=0.6):
    m = lambda auc, ba: {"roc_auc": auc, "balanced_accuracy": ba, "n": 10, "n_atypical": 3,  # noqa: E731
                         "sensitivity": 0.5, "specificity": 0.5}
    val = {"at_threshold": {"pooled": m(auc_pooled, 0.0), "A": m(auc_a, 0.0)},
           "at_0.5": {"pooled": m(0.0, ba_pooled), "A": m(0.0, ba_a)},
           "trivial_intensity_baseline": {"metrics": {"pooled": m(0.5, 0.5), "A": m(0.5, 0.5)}}}
    return {"data": {"domains": ["A"]}, "validation": val, "threshold": 0.3, "selected_model": "ema",
            "training": {"best_epoch": 7}}


def test_seeds_table_means_sds_and_paired_differences():
    lines = seeds_table({"full": [card(0.80, 0.70), card(0.90, 0.74)], "erm": [card(0.78, 0.75), card(0.86, 0.75)]})
    assert lines[0] == "| domain | metric | full (n=2) | erm (n=2) | erm − full (paired: mean, min..max) |"
    # pooled AUC: full 0.85 ± 0.0707, erm 0.82 ± 0.0566; paired erm − full: -0.02, -0.04
    assert lines[2] == "| pooled | AUC | 0.850 ± 0.071 | 0.820 ± 0.057 | -0.030 (-0.040..-0.020) |"
    assert lines[4] == "| A | AUC | 0.720 ± 0.028 | 0.750 ± 0.000 | +0.030 (+0.010..+0.050) |"
    assert lines[5].startswith("| A | BA@0.5 | 0.600 ± 0.000 | 0.600 ± 0.000 | +0.000")


def test_cli_checks_folders_and_seed_counts(tmp_path, capsys):
    for name, c in {"f0": card(0.8, 0.7), "f1": card(0.9, 0.7), "e0": card(0.8, 0.7)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_card.json").write_text(json.dumps(c))
    assert main([str(tmp_path / "f0"), str(tmp_path / "e0")]) == 0
    assert f"| {tmp_path / 'f0'} (ema, thr 0.30, epoch 7) | pooled | 10 (3) | 0.800 |" in capsys.readouterr().out
    assert main(["--arm", f"full={tmp_path / 'f0'},{tmp_path / 'f1'}", "--arm", f"erm={tmp_path / 'e0'}"]) == 1
    assert "same number of seeds" in capsys.readouterr().err
    assert main(["--arm", f"full={tmp_path / 'missing'}"]) == 1
    assert "missing/model_card.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
