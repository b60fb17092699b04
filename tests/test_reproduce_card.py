"""The shipped weights' card, reproduced: evaluated the leaderboard's way on their saved validation split, or, for
weights trained on every figure, recomputed from the committed out-of-fold scores of their cross-fit."""

import hashlib
import json

import numpy as np
import pytest

from evaluation.pack import pack_records, select_records
from evaluation.score import score_predictions
from model.predict import main as predict_main
from model.weights import read_card
from tests.conftest import AMIBR, ROOT, needs_amibr


def held_out_card(weights) -> dict:
    card = read_card(weights)
    if str(card["validation"].get("kind", "")).startswith("out-of-fold"):
        pytest.skip("the shipped weights trained on every figure: their card is out-of-fold (the tests below)")
    return card


@pytest.mark.slow  # packs, predicts and scores every validation figure
@needs_amibr
def test_pack_predict_score_reproduces_the_model_card(tmp_path, shipped_weights):
    card = held_out_card(shipped_weights)
    records = select_records([f"amibr={AMIBR}"], split=shipped_weights / "split.json", part="val")
    assert len(records) == card["data"]["n_val"]
    pack_records(records, tmp_path / "pack", progress=False)
    assert predict_main([str(tmp_path / "pack" / "stacks"), "--out", str(tmp_path / "pred"),
                         "--weights", str(shipped_weights), "--no-progress"]) == 0
    metrics, _ = score_predictions(tmp_path / "pack" / "ground_truth.json", tmp_path / "pred", resamples=0)
    agg = metrics["aggregates"]
    # The official evaluator's own computation, straight from the written files: every page's
    # confidence is its P(atypical), so the leaderboard AUC is the model's AUC (the card's, below).
    from pathlib import Path

    from sklearn.metrics import roc_auc_score

    truth = json.loads((tmp_path / "pack" / "ground_truth.json").read_text())
    labels, confidences = [], []
    for stack in truth:
        results = json.loads((tmp_path / "pred" / f"{Path(stack['image']).stem}.json").read_text())
        labels += [lab == "atypical" for lab in stack["labels"]]
        confidences += [r["confidence"] for r in results]
    assert roc_auc_score(labels, confidences) == pytest.approx(agg["overall_roc_auc"], abs=1e-12)
    ids = json.loads((tmp_path / "pack" / "domains.json").read_text())
    expected = card["validation"]["at_threshold"]
    # Pages near the threshold may flip with batch composition under bf16; AUC is rank-based.
    assert agg["overall_roc_auc"] == pytest.approx(expected["pooled"]["roc_auc"], abs=0.005)
    assert agg["overall_balanced_accuracy"] == pytest.approx(expected["pooled"]["balanced_accuracy"], abs=0.01)
    assert agg["overall_sensitivity"] == pytest.approx(expected["pooled"]["sensitivity"], abs=0.015)
    assert agg["overall_specificity"] == pytest.approx(expected["pooled"]["specificity"], abs=0.01)
    for name, d in ids.items():
        got = agg[f"domain_{d}"]
        assert got["roc_auc"] == pytest.approx(expected[name]["roc_auc"], abs=0.01), name
        assert got["balanced_accuracy"] == pytest.approx(expected[name]["balanced_accuracy"], abs=0.02), name


def _out_of_fold_card(shipped_weights) -> tuple[dict, dict]:
    card = read_card(shipped_weights)
    if not str(card["validation"].get("kind", "")).startswith("out-of-fold"):
        pytest.skip("the shipped weights kept a validation split: the test above reproduces their card")
    cross_fit = card["validation"]["cross_fit"]
    path = ROOT / cross_fit["oof_json"]
    assert path.is_file(), f"{path}: the card's out-of-fold scores are not committed"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == cross_fit["sha256"], f"{path} changed since the export"
    return card, json.loads(path.read_text())


def test_an_all_figures_card_holds_the_out_of_fold_numbers_of_its_committed_scores(shipped_weights):
    """Weights trained on every figure have no held-out figures of their own: their card's threshold and
    per-domain numbers are the cross-fit's out-of-fold ones. Recomputed here from the committed per-figure
    scores (records/shipping/oof/oof.json), with scikit-learn for the AUC."""
    from sklearn.metrics import roc_auc_score

    from training.metrics import choose_threshold, per_domain_metrics

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
