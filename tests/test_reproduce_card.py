"""The shipped weights' card, reproduced: weights trained on every figure have no held-out figures of their own,
so their card's threshold and numbers are recomputed from the committed out-of-fold scores of their cross-fit."""

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model.weights import read_card
from tests.conftest import ROOT, needs_amibr


def git_ignored(relative: Path) -> bool:
    """Whether the repository's .gitignore keeps ``relative`` out of a clone (False where git cannot tell)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", str(relative)],
                              capture_output=True)
    except FileNotFoundError:  # no git: the checks on the file itself still apply
        return False
    return done.returncode == 0


def committed_cross_fit(card: dict, root: Path = ROOT) -> tuple[Path, dict]:
    """The out-of-fold scores an all-figures card took its threshold from (``validation.cross_fit.oof_json``),
    as a fresh clone of ``root`` holds them: a path inside the repository that git does not ignore (not under
    runs/), holding the file whose sha256 the card records."""
    cross_fit = card["validation"]["cross_fit"]
    relative = Path(cross_fit["oof_json"])
    assert not relative.is_absolute() and ".." not in relative.parts, \
        f"{relative}: the card's out-of-fold scores are not a path inside the repository"
    assert not git_ignored(relative), f"{relative}: git-ignored, so a fresh clone lacks the card's out-of-fold scores"
    path = root / relative
    assert path.is_file(), f"{path}: the card's out-of-fold scores are not committed"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == cross_fit["sha256"], f"{path} changed since the export"
    return path, json.loads(path.read_text())


def _out_of_fold_card(shipped_weights) -> tuple[dict, dict]:
    card = read_card(shipped_weights)
    if not str(card["validation"].get("kind", "")).startswith("out-of-fold"):
        pytest.fail("the shipped weights kept a validation split: no test reproduces such a card any more "
                    "(the shipped networks train on every figure, their card is out-of-fold)")
    return card, committed_cross_fit(card)[1]


def test_an_all_figures_card_holds_the_out_of_fold_numbers_of_its_committed_scores(shipped_weights):
    """Weights trained on every figure have no held-out figures of their own: their card's threshold and
    per-domain numbers are the cross-fit's out-of-fold ones. Recomputed here from the committed per-figure
    scores (records/shipping/oof/oof.json), with scikit-learn for the AUC."""
    from sklearn.metrics import roc_auc_score

    from stats.metrics import choose_threshold, per_domain_metrics

    card, oof = _out_of_fold_card(shipped_weights)
    figures = oof["figures"]
    domains = card["data"]["domains"]
    labels = np.array([f["label"] for f in figures])
    scores = np.array([f["score"] for f in figures])
    index = np.array([domains.index(f["domain"]) for f in figures])
    # Every figure the networks trained on was scored exactly once, by a network that did not train on it.
    split = json.loads((shipped_weights / "split.json").read_text())
    assert split["val"] == [] and sorted(split["train"]) == sorted(f["key"] for f in figures)
    assert len(figures) == card["data"]["n_train"] == oof["n_figures"]
    assert card["threshold"] == pytest.approx(choose_threshold(labels, scores, index, rule="halfway"), abs=1e-9)
    expected = card["validation"]["at_threshold"]
    got = per_domain_metrics(labels, scores, index, domains, card["threshold"])
    assert expected["pooled"]["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for name in ["pooled", *domains]:
        for key in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "n", "n_atypical"):
            assert expected[name][key] == pytest.approx(got[name][key], abs=1e-12), (name, key)


@pytest.mark.slow  # reads every figure's label and slide from the data
@needs_amibr
def test_the_committed_out_of_fold_scores_are_the_recorded_cross_fits(tmp_path, shipped_weights):
    """training.oof, run again on the recorded runs of the cross-fit, gives the card's out-of-fold scores."""
    from training import oof as oof_module

    card, oof = _out_of_fold_card(shipped_weights)
    runs = [str(ROOT / r) for fold in oof["folds"] for r in fold["runs"]]
    assert len(oof["folds"]) == len(card["validation"]["cross_fit"]["folds"]) >= 4
    again = oof_module.main([*runs, "--out", str(tmp_path / "oof"), "--resamples", "10"])
    by_key = {f["key"]: f for f in again["figures"]}
    assert len(by_key) == len(oof["figures"])
    for f in oof["figures"]:
        assert by_key[f["key"]]["score"] == pytest.approx(f["score"], abs=1e-7)
        assert (by_key[f["key"]]["fold"], by_key[f["key"]]["label"]) == (f["fold"], f["label"])
    assert again["summary"]["threshold"] == card["threshold"]
