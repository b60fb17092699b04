"""The evaluation package: metrics against hand computations, the official format checks,
pack -> score round trip (real AMi-Br patches when ../shared/data exists, else synthetic),
plots and the stack report. Fast: small inputs, one torch thread, no training."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import roc_auc_score

from data.datasets import read_image
from evaluation.__main__ import card_threshold, main
from evaluation.pack import PackError, inputs_json, load_csv_records, select_records, write_stack
from evaluation.score import (
    GC_OUTPUT,
    PredictionError,
    collect,
    confidence_rule_warning,
    load_ground_truth,
    official_metrics,
    score_predictions,
)
from model.io import read_stack
from model.preprocess import page_to_rgb_uint8
from stats.bootstrap import bootstrap_intervals, fast_metrics, rank_auc
from tests.conftest import AMIBR, SAMPLE_INPUTS, require_shared_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# A synthetic ground truth with known counts. Scores are dyadic fractions so that the legacy
# "1 - confidence for normal" round trip is exact and the ties stay ties.
#   domain 3: 4 atypical, 6 normal; predicted  tp=3 fn=1 fp=2 tn=4
#   domain 7: 1 atypical, 3 normal; predicted  tp=0 fn=1 fp=0 tn=3
# --------------------------------------------------------------------------------------------
A, N = "atypical", "normal"
FIGURES = [  # (stack, label, predicted class, P(atypical), domain)
    ("stack_1.tiff", A, A, 0.9375, 3), ("stack_1.tiff", A, A, 0.875, 3), ("stack_1.tiff", A, A, 0.75, 3),
    ("stack_1.tiff", A, N, 0.375, 3), ("stack_1.tiff", N, A, 0.625, 3), ("stack_1.tiff", N, A, 0.5625, 3),
    ("stack_1.tiff", N, N, 0.25, 3), ("stack_1.tiff", N, N, 0.1875, 3),
    ("stack_2.tiff", A, N, 0.25, 7), ("stack_2.tiff", N, N, 0.25, 7), ("stack_2.tiff", N, N, 0.1875, 7),
    ("stack_2.tiff", N, N, 0.125, 7),
    ("stack_3.tiff", N, N, 0.125, 3), ("stack_3.tiff", N, N, 0.0625, 3),
]


def hand_auc(pos: list[float], neg: list[float]) -> Fraction:
    """Probability that a random atypical figure outscores a random normal one (ties count half)."""
    wins = sum(Fraction(1) if p > n else Fraction(1, 2) if p == n else Fraction(0) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def write_synthetic_case(root: Path, rule: str = "p-atypical", layout: str = "flat") -> tuple[Path, Path]:
    """ground_truth.json and a predictions folder for FIGURES; returns (gt path, predictions dir).
    ``rule="legacy-stated-class"`` writes the pre-2025-07-27 convention (1 - P for 'normal')."""
    root.mkdir(parents=True, exist_ok=True)
    truth, preds = {}, {}
    for stack, label, cls, p, domain in FIGURES:
        entry = truth.setdefault(stack, {"image": stack, "labels": [], "tumordomains": []})
        entry["labels"].append(label)
        entry["tumordomains"].append(domain)
        confidence = p if rule == "p-atypical" or cls == A else 1.0 - p
        preds.setdefault(stack, []).append({"class": cls, "confidence": confidence})
    gt = root / "ground_truth.json"
    gt.write_text(json.dumps(list(truth.values())))
    pred_dir = root / "predictions"
    for stack, entries in preds.items():
        stem = Path(stack).stem
        path = pred_dir / f"{stem}.json" if layout == "flat" else pred_dir / stem / GC_OUTPUT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))
    return gt, pred_dir


def test_metrics_equal_hand_computation(tmp_path):
    gt, pred_dir = write_synthetic_case(tmp_path)
    metrics, figures = score_predictions(gt, pred_dir, resamples=0)
    agg = metrics["aggregates"]
    # Pooled: tp=3, fn=2, fp=2, tn=7.
    expected = {"sensitivity": 3 / 5, "specificity": 7 / 9, "balanced_accuracy": (3 / 5 + 7 / 9) / 2,
                "accuracy": 10 / 14, "roc_auc": 40 / 45}
    for key, value in expected.items():
        assert agg[f"overall_{key}"] == pytest.approx(value, abs=1e-12), key
    assert agg["domain_3"] == pytest.approx({"sensitivity": 3 / 4, "specificity": 4 / 6,
                                             "balanced_accuracy": (3 / 4 + 4 / 6) / 2, "accuracy": 7 / 10,
                                             "roc_auc": 22 / 24}, abs=1e-12)
    assert agg["domain_7"] == pytest.approx({"sensitivity": 0.0, "specificity": 1.0, "balanced_accuracy": 0.5,
                                             "accuracy": 3 / 4, "roc_auc": 2.5 / 3}, abs=1e-12)
    # The AUCs above, by pair counting.
    for domains, value in (((3, 7), 40 / 45), ((3,), 22 / 24), ((7,), 2.5 / 3)):
        pos = [p for _, lab, _, p, d in FIGURES if lab == A and d in domains]
        neg = [p for _, lab, _, p, d in FIGURES if lab == N and d in domains]
        assert float(hand_auc(pos, neg)) == pytest.approx(value, abs=1e-12)
    assert metrics["counts"]["overall"] == {"n": 14, "n_atypical": 5, "n_normal": 9, "tp": 3, "fp": 2, "fn": 2, "tn": 7}
    assert metrics["counts"]["domain_7"] == {"n": 4, "n_atypical": 1, "n_normal": 3, "tp": 0, "fp": 0, "fn": 1, "tn": 3}
    # Official layout: overall_* keys in the evaluator's order, then domain_<id>.
    assert list(agg) == ["overall_sensitivity", "overall_specificity", "overall_balanced_accuracy",
                         "overall_roc_auc", "overall_accuracy", "domain_3", "domain_7"]
    np.testing.assert_array_equal(figures.score, [f[3] for f in FIGURES])


def test_legacy_rule_and_gc_layout_give_the_same_numbers(tmp_path):
    gt, official = write_synthetic_case(tmp_path / "a")
    _, legacy = write_synthetic_case(tmp_path / "b", rule="legacy-stated-class", layout="gc")
    m1, _ = score_predictions(gt, official, resamples=0)
    m2, _ = score_predictions(gt, legacy, rule="legacy-stated-class", resamples=0)
    assert m1["aggregates"] == m2["aggregates"]


def test_official_rule_is_confidence_as_p_atypical_and_flags_legacy_files(tmp_path):
    """Scored by default exactly as the current official evaluator: roc_auc_score(labels, confidences)."""
    gt, official = write_synthetic_case(tmp_path / "ok")
    metrics, figures = score_predictions(gt, official, resamples=0)
    labels = [int(lab == A) for _, lab, _, _, _ in FIGURES]
    confidences = [e["confidence"] for stack in ("stack_1", "stack_2", "stack_3")
                   for e in json.loads((official / f"{stack}.json").read_text())]
    assert metrics["aggregates"]["overall_roc_auc"] == pytest.approx(roc_auc_score(labels, confidences), abs=1e-12)
    assert confidence_rule_warning(figures, "p-atypical") is None
    # A file in the old convention (confidence in the stated class), read the official way: the
    # 'normal' entries' ranking is inverted and the AUC falls far below the intended one.
    _, legacy = write_synthetic_case(tmp_path / "legacy", rule="legacy-stated-class")
    metrics, figures = score_predictions(gt, legacy, resamples=0)
    flipped = [(lab, p if cls == A else 1.0 - p) for _, lab, cls, p, _ in FIGURES]
    wrong_auc = hand_auc([s for lab, s in flipped if lab == A], [s for lab, s in flipped if lab == N])
    assert metrics["aggregates"]["overall_roc_auc"] == pytest.approx(float(wrong_auc), abs=1e-12)
    assert float(wrong_auc) < 40 / 45 - 0.3
    assert "pre-2025-07-27" in confidence_rule_warning(figures, "p-atypical")
    # And the mirror image: an official file read with the legacy rule is flagged too.
    assert "P(atypical)" in confidence_rule_warning(
        score_predictions(gt, official, rule="legacy-stated-class", resamples=0)[1], "legacy-stated-class")


def test_grand_challenge_predictions_json_layout(tmp_path):
    gt, flat = write_synthetic_case(tmp_path)
    gc = tmp_path / "gc"
    jobs = []
    for i, path in enumerate(sorted(flat.glob("*.json"))):
        pk = f"job-{i}"
        (gc / pk / "output").mkdir(parents=True)
        (gc / pk / "output" / GC_OUTPUT).write_text(path.read_text())
        jobs.append({"pk": pk, "inputs": inputs_json(f"{path.stem}.tiff"), "outputs": [{
            "image": None, "interface": {"slug": GC_OUTPUT.removesuffix(".json"), "relative_path": GC_OUTPUT}}]})
    (gc / "predictions.json").write_text(json.dumps(jobs))
    via_jobs, _ = score_predictions(gt, gc, resamples=0)
    assert via_jobs["aggregates"] == score_predictions(gt, flat, resamples=0)[0]["aggregates"]


def test_fast_bootstrap_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.random(300), 1)  # many ties
    pred = (score >= 0.5).astype(int)
    fast = {k: float(v[0]) for k, v in fast_metrics(y[None], pred[None], score[None]).items()}
    assert fast == pytest.approx(official_metrics(y, pred, score), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=1, max_size=40))
def test_rank_auc_equals_sklearn_with_ties_and_one_class_rows(figures):
    y = np.array([f[0] for f in figures])
    score = np.array([f[1] for f in figures]) / 6  # few distinct values: ties everywhere
    auc = rank_auc(np.stack([y, 1 - y]), np.stack([score, score]))
    if len(set(y)) < 2:
        assert np.isnan(auc).all()
    else:
        assert auc[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        assert auc[1] == pytest.approx(1 - auc[0], abs=1e-12)  # labels swapped: the ranking reverses


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    pred = (score >= 0.5).astype(int)
    a = bootstrap_intervals(y, pred, score, resamples=300, seed=5)
    assert a == bootstrap_intervals(y, pred, score, resamples=300, seed=5)
    point = official_metrics(y, pred, score)
    for metric, (lo, hi) in a.items():
        assert 0.0 <= lo <= point[metric] <= hi <= 1.0, metric
    one_class = bootstrap_intervals(np.zeros(10, int), np.zeros(10, int), np.linspace(0, 1, 10), resamples=50)
    assert one_class["sensitivity"] is None and one_class["roc_auc"] is None
    assert one_class["specificity"] == [1.0, 1.0]


def _break(pred_dir: Path, stack: str, mutate) -> Path:
    path = pred_dir / f"{Path(stack).stem}.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps(mutate(copy.deepcopy(entries))))
    return path


def _set(i, key, value):
    def mutate(entries):
        entries[i][key] = value
        return entries
    return mutate


@pytest.mark.parametrize("mutate, reason", [
    (_set(0, "confidence", 1), r"entry 0: confidence 1 is int, not a float"),
    (_set(2, "confidence", "0.5"), r"entry 2: confidence '0.5' is str, not a float"),
    (_set(1, "confidence", True), r"entry 1: confidence True is bool, not a float"),
    (_set(0, "confidence", 1.5), r"entry 0: confidence 1.5 is outside \[0, 1\]"),
    (_set(3, "class", "Atypical"), r"entry 3: class 'Atypical' is not 'atypical' or 'normal'"),
    (_set(0, "class", "mitotic figure"), r"entry 0: class 'mitotic figure' is not"),
    (lambda e: e[:-1], r"7 entries but the stack has 8 pages"),
    (lambda e: e + e[:1], r"9 entries but the stack has 8 pages"),
    (lambda e: {"predictions": e}, r"expected a list"),
    (lambda e: [{"class": "normal"}] + e[1:], r"entry 0 lacks 'class' or 'confidence'"),
    (lambda e: [0.5] + e[1:], r"entry 0 is float, expected a dict"),
])
def test_malformed_predictions_are_rejected(tmp_path, mutate, reason):
    gt, pred_dir = write_synthetic_case(tmp_path)
    path = _break(pred_dir, "stack_1.tiff", mutate)
    with pytest.raises(PredictionError, match=reason) as info:
        score_predictions(gt, pred_dir, resamples=0)
    assert str(info.value).startswith(str(path))  # one line naming the file
    assert "\n" not in str(info.value)


def test_missing_stack_and_ambiguous_predictions_are_errors(tmp_path, capsys):
    gt, pred_dir = write_synthetic_case(tmp_path)
    (pred_dir / "stack_2.json").rename(tmp_path / "moved.json")
    with pytest.raises(PredictionError, match=r"no prediction for stack_2.tiff \(missing stack"):
        collect(load_ground_truth(gt), pred_dir)
    # The command line fails with a one-line message and writes no metrics.
    assert main(["score", "--ground-truth", str(gt), "--predictions", str(pred_dir), "--out",
                 str(tmp_path / "scores"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "stack_2.tiff" in err
    assert not (tmp_path / "scores" / "metrics.json").exists()
    (tmp_path / "moved.json").rename(pred_dir / "stack_2.json")
    (pred_dir / "stack_2").mkdir()
    (pred_dir / "stack_2" / GC_OUTPUT).write_text((pred_dir / "stack_2.json").read_text())
    with pytest.raises(PredictionError, match="several predictions for stack_2.tiff"):
        collect(load_ground_truth(gt), pred_dir)


def test_bad_ground_truth_is_rejected(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([{"image": "stack_1.tiff", "labels": ["normal", "AMF"], "tumordomains": [1, 1]}]))
    with pytest.raises(PredictionError, match=r"gt.json: entry 0 \(stack_1.tiff\): labels must be"):
        load_ground_truth(path)
    path.write_text(json.dumps([{"image": "stack_1.tiff", "labels": ["normal"], "tumordomains": [1, 2]}]))
    with pytest.raises(PredictionError, match="tumordomains must be one integer per label"):
        load_ground_truth(path)


def test_score_cli_writes_metrics_and_plots(tmp_path, capsys):
    gt, pred_dir = write_synthetic_case(tmp_path)
    weights = tmp_path / "card_only"
    weights.mkdir()
    (weights / "model_card.json").write_text(json.dumps({"model_config": {}, "threshold": 0.37}))
    assert card_threshold(weights) == (0.37, str(weights / "model_card.json"))
    assert card_threshold(tmp_path / "nowhere")[0] == 0.5
    out = tmp_path / "scores"
    assert main(["score", "--ground-truth", str(gt), "--predictions", str(pred_dir), "--out", str(out),
                 "--weights", str(weights), "--bootstrap", "200"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aggregates"]["overall_roc_auc"] == pytest.approx(40 / 45)
    assert metrics["settings"]["plot_threshold"]["value"] == 0.37
    assert set(metrics["confidence_intervals"]) == {"overall", "domain_3", "domain_7"}
    lo, hi = metrics["confidence_intervals"]["overall"]["balanced_accuracy"]
    assert lo <= metrics["aggregates"]["overall_balanced_accuracy"] <= hi
    for name in ("roc.png", "balanced_accuracy_vs_threshold.png", "reliability.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    rows = list(csv.DictReader(open(out / "figures.csv")))
    assert len(rows) == len(FIGURES) and rows[3]["label"] == "atypical" and rows[3]["class"] == "normal"
    assert "overall" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# pack -> score round trip
# --------------------------------------------------------------------------------------------
def _digest(page: np.ndarray) -> str:
    page = np.ascontiguousarray(page)
    return hashlib.sha1(page.tobytes() + str(page.shape).encode()).hexdigest()


def synthetic_patch_csv(root: Path, n: int = 30) -> Path:
    """Random-noise PNG patches (a few greyscale, one non-square) over three domains, and their CSV."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        shape = (40, 48, 3) if i == 5 else (32, 32) if i % 7 == 0 else (32, 32, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "label": ["normal", "atypical", "NMF"][i % 3],
                     "domain": ["scanner-a", "scanner-b", "canine lymphoma"][i % 4 % 3]})
    path = root / "patches.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "domain"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(params=["amibr", "synthetic"])
def source(request, tmp_path):
    """(pack arguments, the records they select): 40 real AMi-Br patches (skipped when ../shared/data is
    absent, failed then under CI=true), and synthetic PNG patches listed in a CSV (always)."""
    if request.param == "amibr":
        require_shared_data(AMIBR / "AMI-BR.csv", "real AMi-Br data")
        args = ["--data", f"amibr={AMIBR}", "--limit", "40", "--seed", "3"]
        return args, select_records([f"amibr={AMIBR}"], limit=40, seed=3)
    csv_path = synthetic_patch_csv(tmp_path / "patches")
    return ["--csv", str(csv_path), "--seed", "3"], select_records(csv_path=csv_path, seed=3)


def test_pack_then_score_round_trips_labels_and_domains(tmp_path, source):
    args, records = source
    out = tmp_path / "pack"
    assert main(["pack", *args, "--out", str(out), "--jobs", "--no-progress"]) == 0
    by_digest = {_digest(page_to_rgb_uint8(read_image(r.path))): r for r in records}
    assert len(by_digest) == len(records)  # every patch identifiable by its pixels

    truth = json.loads((out / "ground_truth.json").read_text())
    ids = json.loads((out / "domains.json").read_text())
    assert sorted(ids.values()) == list(range(1, len(ids) + 1))
    assert [t["image"] for t in truth] == [f"stack_{i}.tiff" for i in range(1, len(truth) + 1)]
    seen = []
    pred_dir = tmp_path / "predictions"
    for entry in truth:
        stack = out / "stacks" / entry["image"]
        pages = read_stack(stack)
        assert 1 <= len(pages) <= 16 and len(pages) == len(entry["labels"]) == len(entry["tumordomains"])
        sources = [by_digest[_digest(page)] for page in pages]
        seen += sources
        assert entry["labels"] == [("normal", "atypical")[r.label] for r in sources]
        assert entry["tumordomains"] == [ids[r.domain] for r in sources]
        # A perfect "classifier" that recognises the pages, in the one-container-per-stack layout.
        (pred_dir / stack.stem).mkdir(parents=True)
        (pred_dir / stack.stem / GC_OUTPUT).write_text(json.dumps(
            [{"class": ("normal", "atypical")[r.label], "confidence": 1.0} for r in sources]))
        # Grand Challenge job folder: the organisers' inputs.json layout and the same image.
        job = out / "jobs" / stack.stem
        assert (job / "images" / "stacked-histopathology-roi-cropouts" / stack.name).read_bytes() == stack.read_bytes()
        expected_inputs = json.loads(SAMPLE_INPUTS.read_text()) if SAMPLE_INPUTS.is_file() else inputs_json("x")
        expected_inputs[0]["image"]["name"] = stack.name
        assert json.loads((job / "inputs.json").read_text()) == expected_inputs
    assert sorted(r.path for r in seen) == sorted(r.path for r in records)  # each figure exactly once
    assert len(truth) == -(-len(records) // 16)

    metrics, _ = score_predictions(out / "ground_truth.json", pred_dir, resamples=0)
    assert metrics["aggregates"]["overall_balanced_accuracy"] == 1.0
    assert metrics["aggregates"]["overall_accuracy"] == 1.0
    want = Counter((ids[r.domain], r.label) for r in records)
    for d in ids.values():
        c = metrics["counts"][f"domain_{d}"]
        assert (c["n_atypical"], c["n_normal"]) == (want[(d, 1)], want[(d, 0)])
        assert c["fp"] == c["fn"] == 0


def test_packed_stacks_look_like_the_organisers(tmp_path):
    import tifffile

    pages = [np.full((128, 128, 3), i * 10, np.uint8) for i in range(3)] + [np.zeros((96, 128, 3), np.uint8)]
    path = write_stack(pages, tmp_path / "stack_9.tiff")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4
        for page, original in zip(tif.pages, pages):
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.photometric == tifffile.PHOTOMETRIC.RGB
            x_res = page.tags["XResolution"].value
            unit = page.tags["ResolutionUnit"].value
            per_cm = x_res[0] / x_res[1] * (1.0 if unit == tifffile.RESUNIT.CENTIMETER else 1 / 2.54)
            assert 1e4 / per_cm == pytest.approx(0.25, rel=0.02)  # µm per pixel
            np.testing.assert_array_equal(page.asarray(), original)
    assert not list(tmp_path.glob(".*tmp"))


def test_pack_refuses_to_mix_packs_and_reports_bad_csv_rows(tmp_path):
    csv_path = synthetic_patch_csv(tmp_path / "patches", n=5)
    out = tmp_path / "pack"
    records = select_records(csv_path=csv_path)
    from evaluation.pack import pack_records

    pack_records(records, out, stack_size=2, progress=False)
    assert len(list((out / "stacks").glob("*.tiff"))) == 3
    with pytest.raises(PackError, match="already holds a pack"):
        pack_records(records, out, progress=False)
    pack_records(records[:2], out, overwrite=True, progress=False)
    assert sorted(p.name for p in (out / "stacks").iterdir()) == ["stack_1.tiff"]
    text = csv_path.read_text().splitlines()
    text[3] = "p2.png,maybe,scanner-a"
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(PackError, match=r"patches.csv: line 4: label 'maybe'"):
        load_csv_records(csv_path)
    with pytest.raises(PackError, match="nothing to pack"):
        select_records()


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def test_attention_is_mapped_onto_the_centre_square():
    from evaluation.report import attention_on_page, overlay

    heat = attention_on_page(np.arange(16, dtype=np.float32).reshape(4, 4), (96, 128))
    assert heat.shape == (96, 128)
    assert np.isnan(heat[:, :16]).all() and np.isnan(heat[:, -16:]).all()
    inner = heat[:, 16:-16]
    assert not np.isnan(inner).any() and inner.min() == 0.0 and inner.max() == 1.0
    rgb = np.full((96, 128, 3), 200, np.uint8)
    blended = overlay(rgb, heat)
    np.testing.assert_array_equal(blended[:, :16], rgb[:, :16])  # untouched outside the crop
    assert (blended[:, 16:-16] != 200).any()


def test_report_writes_montage_html_and_numbers(tmp_path):
    """Test-only weights: an untrained network (numbers meaningless, I/O and rendering checked)."""
    from model import ModelConfig, build_model, save_weights
    from model.predict import Predictor

    torch.manual_seed(0)
    weights = save_weights(build_model(ModelConfig()), {"threshold": 0.5, "tta": "dihedral"}, tmp_path / "untrained")
    rng = np.random.default_rng(0)
    pages = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    pages.append(rng.integers(0, 256, (100, 128, 3), dtype=np.uint8))
    stack = write_stack(pages, tmp_path / "stack_4.tiff")
    out = tmp_path / "report"
    assert main(["report", str(stack), "--out", str(out), "--weights", str(weights)]) == 0
    montage = (out / "stack_4_report.png").read_bytes()
    assert montage.startswith(PNG_SIGNATURE) and len(montage) > 10_000
    page = (out / "stack_4_report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * len(pages) and "src=\"http" not in page
    numbers = json.loads((out / "stack_4_report.json").read_text())
    assert len(numbers["pages"]) == 3 and numbers["threshold"] == 0.5
    for row in numbers["pages"]:
        assert 0.0 <= row["p_atypical"] <= 1.0
        assert row["class"] == ("atypical" if row["p_atypical"] >= 0.5 else "normal")
    assert (numbers["pages"][2]["height"], numbers["pages"][2]["width"]) == (100, 128)
    # The numbers the container would write: its predictor, with the card's 8-view TTA.
    assert numbers["tta"] == "dihedral"
    expected = Predictor(weights, "cpu").predict_pages(pages)
    np.testing.assert_allclose([r["p_atypical"] for r in numbers["pages"]], expected, atol=1e-6)
    single_view = Predictor(weights, "cpu", tta="none").predict_pages(pages)
    assert not np.allclose(expected, single_view, atol=1e-6)


def test_grad_cam_matches_its_definition_and_both_explanations_run(untrained_weights):
    """Grad-CAM = ReLU(sum_k mean(dz/dA_k) A_k) at denseblock3; 8x8 at 128 px; CBAM map is 4x4."""
    import torch

    from evaluation.report import explain_pages, grad_cam
    from model.preprocess import pages_to_batch
    from model.weights import load_model
    from tests.conftest import synthetic_pages

    model, _ = load_model(untrained_weights)
    pages = synthetic_pages(3)
    batch = pages_to_batch(pages, 128, model.config.mean, model.config.std)
    logits, cam = grad_cam(model, batch)
    assert cam.shape == (3, 8, 8) and bool((cam >= 0).all())
    # By hand for page 0: activations and gradients of its own logit.
    acts = {}
    handle = model.features.denseblock3.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    x = batch[:1].clone()
    z = model(x)
    handle.remove()
    grad = torch.autograd.grad(z.sum(), acts["a"])[0]
    hand = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(dim=1))[0]
    torch.testing.assert_close(cam[0], hand.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits[0], z[0].detach())
    for method, side in (("gradcam", 8), ("cbam", 4)):
        probs, maps = explain_pages(model, pages, method=method)
        assert probs.shape == (3,) and all(m.shape == (side, side) for m in maps)
    # A seed ensemble: its own probability (mean logit), the members' mean map.
    from model import SeedEnsemble

    other, _ = load_model(untrained_weights)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ensemble = SeedEnsemble([model, other]).eval()
    probs, maps = explain_pages(ensemble, pages)
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.sigmoid(ensemble(batch)).numpy(), atol=1e-5)
    _, cam_other = grad_cam(other, batch)
    np.testing.assert_allclose(maps[0], ((cam[0] + cam_other[0]) / 2).numpy(), rtol=1e-4, atol=1e-6)


def test_ensemble_averages_logits_and_names_bad_folders(tmp_path, capsys):
    from evaluation.__main__ import main as evaluation_main
    from model.predict import format_predictions, p_atypical

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "ens"
    a.mkdir(), b.mkdir()
    (a / "stack_1.json").write_text(json.dumps(format_predictions([0.9, 0.2], 0.5)))
    (b / "stack_1.json").write_text(json.dumps(format_predictions([0.5, 0.2], 0.5)))
    assert evaluation_main(["ensemble", str(a), str(b), "--out", str(out), "--threshold", "0.6"]) == 0
    got = json.loads((out / "stack_1.json").read_text())
    # logit(0.9) = ln 9, logit(0.5) = 0 -> mean ln 3 -> P = 3/4; equal members stay as they are
    assert [round(p_atypical(e), 6) for e in got] == [0.75, 0.2]
    assert [e["class"] for e in got] == ["atypical", "normal"]
    (b / "stack_1.json").write_text(json.dumps(format_predictions([0.5], 0.5)))
    assert evaluation_main(["ensemble", str(a), str(b), "--out", str(out)]) == 1
    assert "stack_1.json: page counts differ" in capsys.readouterr().err
    (b / "stack_1.json").unlink()
    assert evaluation_main(["ensemble", str(a), str(b), "--out", str(out)]) == 1
    assert f"{b / 'stack_1.json'}: missing" in capsys.readouterr().err


def test_ensemble_threshold_defaults_to_the_model_card_like_score_and_report(tmp_path, capsys):
    """Without --threshold the classes follow --weights/model_card.json (default weights/), not 0.5."""
    from evaluation.__main__ import DEFAULT_WEIGHTS, get_args_parser
    from model.predict import format_predictions

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "ens"
    a.mkdir(), b.mkdir()
    # Mean logit of (0.4, 0.4) is 0.4, of (0.2, 0.2) is 0.2: below 0.5, above the card's 0.3.
    (a / "stack_1.json").write_text(json.dumps(format_predictions([0.4, 0.2], 0.5)))
    (b / "stack_1.json").write_text(json.dumps(format_predictions([0.4, 0.2], 0.5)))
    weights = tmp_path / "card_only"
    weights.mkdir()
    (weights / "model_card.json").write_text(json.dumps({"model_config": {}, "threshold": 0.3}))

    assert main(["ensemble", str(a), str(b), "--out", str(out), "--weights", str(weights)]) == 0
    assert [e["class"] for e in json.loads((out / "stack_1.json").read_text())] == ["atypical", "normal"]
    assert f"threshold 0.3 ({weights / 'model_card.json'})" in capsys.readouterr().err
    # An explicit --threshold still wins over the card.
    assert main(["ensemble", str(a), str(b), "--out", str(out), "--weights", str(weights),
                 "--threshold", "0.1"]) == 0
    assert [e["class"] for e in json.loads((out / "stack_1.json").read_text())] == ["atypical", "atypical"]
    assert "threshold 0.1 (--threshold)" in capsys.readouterr().err
    # No readable card: 0.5, as card_threshold gives score.
    assert main(["ensemble", str(a), str(b), "--out", str(out), "--weights", str(tmp_path / "nowhere")]) == 0
    assert [e["class"] for e in json.loads((out / "stack_1.json").read_text())] == ["normal", "normal"]
    assert "threshold 0.5 (default (no readable model card))" in capsys.readouterr().err
    # The same --weights default as score and report: the shipped weights/ folder.
    parsed = {c: get_args_parser().parse_args([c, *rest]) for c, rest in (
        ("ensemble", [str(a), "--out", str(out)]),
        ("score", ["--ground-truth", "gt.json", "--predictions", str(a), "--out", str(out)]),
        ("report", ["stack.tiff", "--out", str(out)]))}
    assert {c: (args.weights, args.threshold) for c, args in parsed.items()} == {
        c: (DEFAULT_WEIGHTS, None) for c in parsed}


def test_pack_selects_a_leave_one_domain_out_test_part(tmp_path):
    from data.split import write_split

    csv_path = synthetic_patch_csv(tmp_path / "patches", n=6)
    records = select_records(csv_path=csv_path)
    split = tmp_path / "split.json"
    write_split(split, records, [0, 1], [2, 3], [4, 5])
    held = select_records(csv_path=csv_path, split=split, part="test")
    assert [r.path for r in held] == [records[4].path, records[5].path]
    assert [r.path for r in select_records(csv_path=csv_path, split=split, part="val")] == \
        [records[2].path, records[3].path]
    write_split(split, records, [0, 1], [2, 3])
    with pytest.raises(PackError, match=r"split.json: .*no 'test' part"):
        select_records(csv_path=csv_path, split=split, part="test")


def test_paired_auc_difference_against_hand_computation(tmp_path, capsys):
    """`evaluation paired`: AUC of each folder as by hand, A − B, slides read from the pack manifest."""
    gt, pred_a = write_synthetic_case(tmp_path)
    # B: the same predictions with the best-scored atypical figure of domain 3 pushed below every normal one.
    pred_b = tmp_path / "b"
    pred_b.mkdir()
    for path in pred_a.glob("*.json"):
        (pred_b / path.name).write_text(path.read_text())
    stack_1 = json.loads((pred_b / "stack_1.json").read_text())
    stack_1[0] = {"class": N, "confidence": 0.03125}
    (pred_b / "stack_1.json").write_text(json.dumps(stack_1))
    # Two slides per stack, alternating pages.
    stacks = {}
    for stack, *_ in FIGURES:
        stacks.setdefault(stack, []).append({"group": f"{stack}/slide{len(stacks.get(stack, [])) % 2}"})
    manifest = {"stacks": [{"image": k, "pages": v} for k, v in stacks.items()]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "paired.json"
    assert main(["paired", "--ground-truth", str(gt), str(pred_a), str(pred_b), "--bootstrap", "200",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["slides"].endswith("manifest.json")
    rows = {r["group"]: r for r in result["groups"]}
    assert set(rows) == {"overall", "domain_3", "domain_7"}
    p = {lab: [] for lab in (A, N)}
    for _, label, _, score, domain in FIGURES:
        if domain == 3:
            p[label].append(score)
    auc_a = hand_auc(p[A], p[N])
    auc_b = hand_auc([0.03125] + p[A][1:], p[N])
    assert rows["domain_3"]["auc_a"] == pytest.approx(float(auc_a))
    assert rows["domain_3"]["auc_b"] == pytest.approx(float(auc_b))
    assert rows["domain_3"]["difference"] == pytest.approx(float(auc_a - auc_b))
    assert rows["domain_7"]["difference"] == 0 and rows["domain_7"]["low"] == rows["domain_7"]["high"] == 0
    assert rows["domain_3"]["low"] <= rows["domain_3"]["difference"] <= rows["domain_3"]["high"]
    assert "95% interval" in capsys.readouterr().out
    # A manifest that does not list a scored page is an error naming the manifest.
    (tmp_path / "manifest.json").write_text(json.dumps({"stacks": [{"image": "stack_1.tiff", "pages": []}]}))
    assert main(["paired", "--ground-truth", str(gt), str(pred_a), str(pred_b)]) == 1
    assert f"{tmp_path / 'manifest.json'}: no page 0 of stack_1.tiff" in capsys.readouterr().err
