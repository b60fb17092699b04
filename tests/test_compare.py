"""lab.compare: the per-run table and the seed-paired arm comparison, on hand-made cards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lab.compare import (
    arm_label,
    arm_name,
    best_cut,
    epochs_label,
    first_learning_epoch,
    main,
    seeds_table,
)
from stats.bootstrap import paired_auc_bootstrap, paired_ba_bootstrap
from stats.metrics import binary_metrics


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


def test_run_label_names_every_ensemble_members_epoch():
    assert epochs_label(card(0.8, 0.7)) == "epoch 7"
    ensemble = card(0.8, 0.7) | {"ensemble": {"members": [{"training": {"best_epoch": e}} for e in (30, 37, 36)]}}
    assert epochs_label(ensemble) == "epochs 30, 37, 36"


def test_cli_checks_folders_and_seed_counts(tmp_path, capsys):
    for name, c in {"f0": card(0.8, 0.7), "f1": card(0.9, 0.7), "e0": card(0.8, 0.7)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_card.json").write_text(json.dumps(c))
    assert main([str(tmp_path / "f0"), str(tmp_path / "e0")]) == 0
    assert f"| {tmp_path / 'f0'} (ema, thr 0.30, epoch 7) | pooled | 10 (3) | 0.800 |" in capsys.readouterr().out
    # the halfway rule's cut lies between grid points: the table names it exactly, not rounded
    (tmp_path / "h0").mkdir()
    (tmp_path / "h0" / "model_card.json").write_text(json.dumps(card(0.8, 0.7) | {"threshold": 0.355}))
    assert main([str(tmp_path / "h0")]) == 0
    assert f"| {tmp_path / 'h0'} (ema, thr 0.355, epoch 7) |" in capsys.readouterr().out
    assert main(["--arm", f"full={tmp_path / 'f0'},{tmp_path / 'f1'}", "--arm", f"erm={tmp_path / 'e0'}"]) == 1
    assert "same number of seeds" in capsys.readouterr().err
    assert main(["--arm", f"full={tmp_path / 'missing'}"]) == 1
    assert "missing/model_card.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    # An export of runs trained from a recipe file names it.
    (tmp_path / "r0").mkdir()
    recipe = {"config": "configs/shipped.toml", "name": "shipped", "overrides": {"seed": 1}}
    (tmp_path / "r0" / "model_card.json").write_text(json.dumps(card(0.8, 0.7) | {"training": {
        "best_epoch": 7, "recipe": recipe}}))
    assert main([str(tmp_path / "r0")]) == 0
    assert f"| {tmp_path / 'r0'} (ema, thr 0.30, epoch 7, recipe shipped) |" in capsys.readouterr().out


# Four slides of two figures each, one normal and one atypical: the held-out fixtures below.
FOUR_SLIDES_LABELS = [0, 1, 0, 1, 0, 1, 0, 1]
FOUR_SLIDES = ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"]


def held_out_run(folder, arm, scores, labels, groups, seed=0, domain="D9", **augmentation):
    """A leave-one-domain-out run directory as lab.lodo leaves it (heldout.json + split.json)."""
    flags = {"no_mixstyle": arm == "erm", "no_align": arm == "erm", "no_kd": arm == "erm",
             "seed": seed, "split_seed": 0, "epochs": 20, **augmentation}
    m = {"roc_auc": 0.75, "balanced_accuracy": 0.7, "sensitivity": 0.6, "specificity": 0.8, "n": len(labels),
         "n_atypical": sum(labels)}
    folder.mkdir()
    (folder / "heldout.json").write_text(json.dumps({
        "domain": domain, "best_epoch": 20, "selected_model": "ema", "threshold": 0.4, "arm": flags, "tta": "dihedral",
        "test_at_0.5": {"pooled": m}, "test_at_threshold": {"pooled": m},
        "test_scores": scores, "test_labels": labels}))
    (folder / "split.json").write_text(json.dumps({"train": [], "val": [],
                                                   "test": [f"{g}::{i}.png" for i, g in enumerate(groups)]}))
    return folder


def test_held_out_table_pairs_each_arm_with_erm(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    # full ranks every figure right (AUC 1); erm gets one pair wrong (AUC 15/16).
    full = held_out_run(tmp_path / "full", "full", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups)
    erm = held_out_run(tmp_path / "erm", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], labels, groups)
    assert main(["--held-out", str(full), str(erm)]) == 0
    out = capsys.readouterr().out
    assert "| D9 | full | full | 0 | dihedral | ema (20) | 0.40 | 0.750 |" in out
    assert "| D9 | erm | erm | 0 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| D9 | full − erm"))
    assert "| +0.062 |" in row  # 1 - 15/16
    low, high = (float(x) for x in row.rsplit("[", 1)[1].rstrip("] |").split(","))
    assert 0.0 <= low <= 0.0625 <= high


def test_held_out_table_names_the_recipe_a_run_was_trained_from(tmp_path, capsys):
    """The arm column names the recipe (--config) a run came from; pairing goes by the arm's settings
    alone, so a run trained from a recipe and one trained from the same flags are one arm."""
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    scores = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]
    erm = held_out_run(tmp_path / "erm", "erm", scores, labels, groups, config="erm")
    shipped = held_out_run(tmp_path / "shipped", "erm", scores, labels, groups, light_aug_epochs=10,
                           config="configs/shipped.toml")
    flags = held_out_run(tmp_path / "flags", "erm", scores, labels, groups, light_aug_epochs=10)
    assert main(["--held-out", str(erm), str(shipped), str(flags)]) == 0
    out = capsys.readouterr().out
    assert "| D9 | erm | erm (recipe erm) | 0 |" in out
    assert "| D9 | shipped | erm + light aug 10 ep (recipe shipped) | 0 |" in out
    assert "| D9 | flags | erm + light aug 10 ep | 0 |" in out
    assert "shipped − erm" in out and "flags − erm" in out
    assert "flags − shipped" not in out and "shipped − flags" not in out
    assert arm_label({"no_mixstyle": True, "no_align": True, "no_kd": True}) == "erm"  # reports from before recipes


def test_held_out_needs_heldout_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["--held-out", str(tmp_path / "run")]) == 1
    assert "heldout.json: not found" in capsys.readouterr().err


def test_arm_names_show_augmentation():
    erm = {"no_mixstyle": True, "no_align": True, "no_kd": True}
    assert arm_name(erm) == "erm"  # reports from before the augmentation keys existed
    assert arm_name({**erm, "hed_jitter": 0.0, "aug_strength": 1.0}) == "erm"
    assert arm_name({**erm, "hed_jitter": 0.2}) == "erm + HED 0.2"
    assert arm_name({"no_mixstyle": False, "no_align": True, "no_kd": False, "aug_strength": 0.5}) == \
        "full without align + aug 0.5"
    assert arm_name({"no_mixstyle": False, "no_align": True, "no_kd": True}) == "erm + mixstyle"
    assert arm_name({"no_mixstyle": True, "no_align": True, "no_kd": False, "hed_jitter": 0.2}) == "erm + kd + HED 0.2"
    assert arm_name({"no_mixstyle": False, "no_align": False, "no_kd": False}) == "full"
    assert arm_name({**erm, "light_aug_epochs": 10}) == "erm + light aug 10 ep"
    assert arm_name({**erm, "input_size": 128}) == "erm"  # reports from before the key: 128, the default
    assert arm_name({**erm, "light_aug_epochs": 10, "input_size": 224}) == "erm + light aug 10 ep at 224 px"
    # Procedures of experiments.md §32: the same recipe on every figure, or on one fold of a cross-fit.
    assert arm_name({**erm, "all_figures": False, "cv_fold": None}) == "erm"
    assert arm_name({**erm, "all_figures": True}) == "erm (all figures)"
    assert arm_name({**erm, "cv_fold": 2}) == "erm (cross-fit fold 2)"
    assert arm_name({**erm, "pretrained": "runs/ssl-s1/backbone.safetensors"}) == "erm (init ssl-s1)"
    assert arm_name({**erm, "pretrained": None}) == "erm"
    assert arm_name({**erm, "pretrained": "densenet121-a639ec97.pth"}) == "erm (init densenet121-a639ec97.pth)"
    assert arm_name({"no_mixstyle": False, "no_align": True, "no_kd": True, "mixstyle_start_epoch": 15}) == \
        "erm + mixstyle (mixstyle from ep 16)"
    assert arm_name({**erm, "mixstyle_start_epoch": 15}) == "erm", "no MixStyle, no start epoch to name"
    assert arm_name({"no_mixstyle": True, "no_align": False, "no_kd": False, "align_standardise": True}) == \
        "full without mixstyle (standardised align)"
    assert arm_name({**erm, "align_standardise": True}) == "erm", "no alignment term, nothing standardised"
    assert arm_name({"no_mixstyle": True, "no_align": True, "no_kd": False, "kd_teacher": "runs/exports/erm-s0"}) == \
        "erm + kd (KD from erm-s0)"
    assert arm_name({**erm, "kd_teacher": "runs/exports/erm-s0"}) == "erm", "no KD, no teacher to name"


def test_best_cut_against_hand_computation():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.3, 0.6, 0.5, 0.9]
    # cut in (0.10, 0.30]: sens 1, spec 1/3 -> 0.667; (0.30, 0.50]: sens 1, spec 2/3 -> 0.833 (first: 0.31);
    # (0.50, 0.60]: sens 1/2, spec 2/3 -> 0.583; above 0.60: sens 1/2, spec 1 -> 0.75.
    ba, cut = best_cut(labels, scores)
    assert ba == pytest.approx(5 / 6) and cut == pytest.approx(0.31)


def test_held_out_augmented_erm_is_paired_with_plain_erm(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    hed = held_out_run(tmp_path / "hed", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups,
                       hed_jitter=0.2)
    erm = held_out_run(tmp_path / "erm", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], labels, groups)
    assert main(["--held-out", str(hed), str(erm)]) == 0
    out = capsys.readouterr().out
    assert "| D9 | hed | erm + HED 0.2 | 0 |" in out
    assert "| 1.000 (0.41) |" in out  # every cut in (0.40, 0.60] separates the hed run's scores
    assert any(line.startswith("| D9 | hed − erm") and "| +0.062 |" in line for line in out.splitlines())
    assert not any(line.startswith("| D9 | erm − hed") for line in out.splitlines())


def test_paired_bootstrap_over_seed_pairs_is_the_mean_difference():
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    perfect = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]  # AUC 1
    one_wrong = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6]  # AUC 15/16
    single = paired_auc_bootstrap(labels, perfect, one_wrong, groups, n_boot=200)
    # Pair 1 differs by 1/16, pair 2 by 0: the mean difference is 1/32.
    d, low, high = paired_auc_bootstrap(labels, [perfect, perfect], [one_wrong, perfect], groups, n_boot=200)
    assert d == pytest.approx(1 / 32) and single[0] == pytest.approx(1 / 16)
    assert low == pytest.approx(single[1] / 2) and high == pytest.approx(single[2] / 2)  # same slides resampled
    with pytest.raises(ValueError, match="do not pair up"):
        paired_auc_bootstrap(labels, [perfect, perfect], [one_wrong], groups)


def test_starts_table_finds_when_each_run_left_chance(tmp_path, capsys):
    def history(aucs):
        return [{"epoch": i + 1, "monitor": auc, "val_ema": {"mean_domain": {"roc_auc": auc}}}
                for i, auc in enumerate(aucs)]

    late, never = history([0.5, 0.55, 0.69, 0.71, 0.8, 0.78]), history([0.5, 0.52, 0.51])
    assert first_learning_epoch(late) == 4 and first_learning_epoch(never) is None
    assert first_learning_epoch(late, level=0.79) == 5
    for name, h in (("late", late), ("never", never)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "history.json").write_text(json.dumps(h))
    assert main(["--starts", str(tmp_path / "late"), str(tmp_path / "never")]) == 0
    out = capsys.readouterr().out
    assert "| late | 6 | 4 | 0.780 | 0.800 (5) |" in out
    assert "| never | 3 | never | 0.510 | 0.520 (2) |" in out
    assert main(["--starts", str(tmp_path / "missing")]) == 1
    assert "missing/history.json: not found" in capsys.readouterr().err


def test_held_out_pairs_each_run_with_the_first_listed_when_that_is_not_plain_erm(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    light = held_out_run(tmp_path / "light", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], labels, groups,
                         light_aug_epochs=10)
    other = held_out_run(tmp_path / "other", "full", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups)
    erm = held_out_run(tmp_path / "erm", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups)
    assert main(["--held-out", str(light), str(other), str(erm)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " − " in line]
    assert any(r.startswith("| D9 | other − light") and "| +0.062 |" in r for r in rows)
    assert any(r.startswith("| D9 | light − erm") and "| -0.062 |" in r for r in rows)
    assert any(r.startswith("| D9 | other − erm") and "| +0.000 |" in r for r in rows)
    assert not any(r.startswith("| D9 | erm − light") or r.startswith("| D9 | light − other") for r in rows)


def test_held_out_pairs_every_fold_and_seed_with_the_first_listed_arm(tmp_path, capsys):
    # A sweep: two arms (the curriculum, with and without stain jitter) over two folds and two seeds.
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    one_wrong, perfect = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]
    runs = []
    for domain in ("D8", "D9"):
        for seed in (0, 1):
            runs.append(held_out_run(tmp_path / f"{domain}-light-s{seed}", "erm", one_wrong, labels, groups,
                                     seed=seed, domain=domain, light_aug_epochs=10))
            runs.append(held_out_run(tmp_path / f"{domain}-hed-s{seed}", "erm", perfect, labels, groups,
                                     seed=seed, domain=domain, light_aug_epochs=10, hed_jitter=0.2))
    assert main(["--held-out", *map(str, runs)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " − " in line and line.startswith("| D")]
    per_seed = [r for r in rows if r.count(" | ") == 4]
    assert sorted(r.split(" | ")[1] for r in per_seed) == sorted(f"{d}-hed-s{s} − {d}-light-s{s}"
                                                                for d in ("D8", "D9") for s in (0, 1))
    assert all("| +0.062 |" in r for r in per_seed)
    # And per fold, the two seeds' differences averaged (both +1/16 here).
    means = [r for r in rows if r.count(" | ") == 5]
    assert [r.split(" | ")[:3] for r in means] == [
        ["| D8", "erm + HED 0.2 + light aug 10 ep − erm + light aug 10 ep", "0, 1"],
        ["| D9", "erm + HED 0.2 + light aug 10 ep − erm + light aug 10 ep", "0, 1"]]
    assert all("| +0.062 |" in r for r in means)


def test_held_out_seed_mean_is_the_mean_of_the_seed_differences(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    one_wrong, perfect = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]
    runs = [held_out_run(tmp_path / "light-s0", "erm", one_wrong, labels, groups, seed=0, light_aug_epochs=10),
            held_out_run(tmp_path / "light-s1", "erm", perfect, labels, groups, seed=1, light_aug_epochs=10),
            held_out_run(tmp_path / "hed-s0", "erm", perfect, labels, groups, seed=0, light_aug_epochs=10,
                         hed_jitter=0.2),
            held_out_run(tmp_path / "hed-s1", "erm", perfect, labels, groups, seed=1, light_aug_epochs=10,
                         hed_jitter=0.2)]
    assert main(["--held-out", *map(str, runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(r.startswith("| D9 | hed-s0 − light-s0") and "| +0.062 |" in r for r in out)
    assert any(r.startswith("| D9 | hed-s1 − light-s1") and "| +0.000 |" in r for r in out)
    mean = next(r for r in out if r.startswith("| D9 | erm + HED 0.2"))
    assert "| 0, 1 | dihedral | +0.031 |" in mean  # (1/16 + 0) / 2
    # One seed alone has no mean row.
    assert main(["--held-out", str(runs[0]), str(runs[2])]) == 0
    assert not any(r.startswith("| D9 | erm + HED") for r in capsys.readouterr().out.splitlines())


def test_paired_ba_bootstrap_is_the_balanced_accuracy_difference():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    groups = np.repeat(np.arange(12), 5)
    calls_a, calls_b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    d, low, high = paired_ba_bootstrap(labels, calls_a, calls_b, groups, n_boot=300)
    expected = (binary_metrics(labels, calls_a.astype(float), 0.5)["balanced_accuracy"]
                - binary_metrics(labels, calls_b.astype(float), 0.5)["balanced_accuracy"])
    assert d == pytest.approx(expected) and low <= d <= high
    with pytest.raises(ValueError, match="0 or 1"):
        paired_ba_bootstrap(labels, rng.random(60), calls_b, groups)


def test_held_out_ba_at_cuts_each_run_at_its_threshold(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    # At 0.5 "hed" calls every figure right (BA 1) and "light" calls one atypical figure normal (BA 0.875);
    # at each report's own threshold (0.4) both call every figure right.
    light = held_out_run(tmp_path / "light", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.45], labels, groups,
                         light_aug_epochs=10)
    hed = held_out_run(tmp_path / "hed", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups,
                       light_aug_epochs=10, hed_jitter=0.2)
    assert main(["--held-out", str(light), str(hed), "--ba-at", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| held-out domain | runs | TTA | thresholds | BA @0.5 difference |" in "\n".join(out)
    row = next(r for r in out if r.startswith("| D9 | hed − light") and "0.50 / 0.50" in r)
    assert "| +0.125 |" in row
    assert main(["--held-out", str(light), str(hed), "--ba-at", "own"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if "0.40 / 0.40" in r)
    assert "| +0.000 |" in row
    # A rule needs the validation scores the report keeps; these fixtures keep none.
    assert main(["--held-out", str(light), str(hed), "--ba-at", "halfway"]) == 1
    captured = capsys.readouterr()
    assert "light/heldout.json: keeps no validation scores" in captured.err and captured.out == ""
    # With them, the rule is fitted per run: mean-domain picks a cut both runs' validation scores
    # separate perfectly at (the one closest to 0.5), so both unseen cuts sit in (0.4, 0.6).
    for run in (light, hed):
        report = json.loads((run / "heldout.json").read_text())
        report |= {"val_scores": [0.2, 0.8, 0.3, 0.7], "val_labels": [0, 1, 0, 1], "val_domains": [0, 0, 1, 1]}
        (run / "heldout.json").write_text(json.dumps(report))
    assert main(["--held-out", str(light), str(hed), "--ba-at", "halfway"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| D9 | hed − light") and " / " in r)
    assert "| 0.50 / 0.50 | +0.125 |" in row


def test_held_out_names_label_the_runs_and_same_named_folders_show_their_paths(tmp_path, capsys):
    labels, groups = FOUR_SLIDES_LABELS, FOUR_SLIDES
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    scratch = held_out_run(tmp_path / "a" / "teacher", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.65, 0.6], labels,
                           groups, light_aug_epochs=10)
    ssl = held_out_run(tmp_path / "b" / "teacher", "erm", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], labels, groups,
                       light_aug_epochs=10, pretrained="runs/ssl/backbone.safetensors")
    assert main(["--held-out", str(scratch), str(ssl), "--names", "scratch", "ssl"]) == 0
    out = capsys.readouterr().out
    assert "| D9 | ssl | erm + light aug 10 ep (init ssl) |" in out
    assert any(line.startswith("| D9 | ssl − scratch |") and "| +0.062 |" in line for line in out.splitlines())
    assert main(["--held-out", str(scratch), str(ssl)]) == 0
    assert f"| D9 | {ssl} − {scratch} |" in capsys.readouterr().out
    assert main(["--held-out", str(scratch), str(ssl), "--names", "one"]) == 1
    assert "1 --names for 2 runs" in capsys.readouterr().err

