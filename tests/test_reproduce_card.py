"""The shipped weights, evaluated the leaderboard's way on their saved validation split, give the card's numbers."""

import json

import pytest

from evaluation.pack import pack_records, select_records
from evaluation.score import score_predictions
from model.predict import main as predict_main
from model.weights import read_card
from tests.conftest import AMIBR, needs_amibr

pytestmark = pytest.mark.slow  # packs, predicts and scores every validation figure


@needs_amibr
def test_pack_predict_score_reproduces_the_model_card(tmp_path, shipped_weights):
    card = read_card(shipped_weights)
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
