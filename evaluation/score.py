"""Score per-stack predictions against a ground truth with the official MIDOG 2025 Track 2 metrics.

Mirrors the organisers' evaluation container (DeepMicroscopy/MIDOG25_T2_evaluation_docker,
``evaluate.py``):

* format checks per stack: a list with one entry per ground-truth page, each a dict with
  ``class`` in {"atypical", "normal"} and ``confidence`` a JSON float (we also require [0, 1]);
* sensitivity / specificity / balanced accuracy / accuracy from ``class`` (atypical positive),
  pooled over all figures (``overall_*``) and per tumour domain (``domain_<id>``);
* ROC AUC from ``confidence`` read as P(atypical) for every figure, whatever its class: the official
  evaluator's rule since its commit 2d1b108e (2025-07-27, "confidence is now only the confidence for
  atypical"; ``prob_atypical.append(res['confidence'])``). ``rule="legacy-stated-class"`` reads it
  the way the evaluator did before that change (``confidence`` in the stated class, so
  ``1 - confidence`` for "normal"), only to rescore files written for the old convention.

On top of the official numbers: counts, seeded bootstrap percentile intervals, a per-figure CSV.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score

from stats.bootstrap import bootstrap_intervals
from stats.metrics import binary_metrics

CLASSES = {"normal": 0, "atypical": 1}
GC_OUTPUT = "multiple-mitotic-figure-classification.json"
RULES = ("p-atypical", "legacy-stated-class")  # the first is the official (current) reading


class PredictionError(ValueError):
    """A prediction or ground-truth file breaks the challenge format; the message names the file."""


@dataclass
class Figures:
    """Every scored figure, in ground-truth order."""

    stack: np.ndarray  # image name per figure
    page: np.ndarray  # page index in its stack
    y_true: np.ndarray  # 1 = atypical
    y_pred: np.ndarray  # 1 = predicted atypical
    confidence: np.ndarray  # as written in the prediction file
    score: np.ndarray  # P(atypical) derived with the confidence rule
    domain: np.ndarray  # integer tumour domain id


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise PredictionError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_ground_truth(path: str | Path) -> list[dict]:
    """The official ground truth: ``[{"image", "labels": [class...], "tumordomains": [int...]}]``."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: ground truth not found")
    truth = _load_json(path)
    if not isinstance(truth, list) or not truth:
        raise PredictionError(f"{path}: expected a non-empty list of {{image, labels, tumordomains}}")
    seen = set()
    for i, entry in enumerate(truth):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or not {"image", "labels", "tumordomains"} <= set(entry):
            raise PredictionError(f"{where}: needs keys image, labels, tumordomains")
        name, labels, domains = entry["image"], entry["labels"], entry["tumordomains"]
        if not isinstance(name, str) or not name:
            raise PredictionError(f"{where}: image must be a file name")
        if name in seen:
            raise PredictionError(f"{where}: image {name} listed twice")
        seen.add(name)
        if not isinstance(labels, list) or not labels or any(lab not in CLASSES for lab in labels):
            raise PredictionError(f"{where} ({name}): labels must be a non-empty list of 'normal'/'atypical'")
        if (not isinstance(domains, list) or len(domains) != len(labels)
                or any(isinstance(d, bool) or not isinstance(d, int) for d in domains)):
            raise PredictionError(f"{where} ({name}): tumordomains must be one integer per label")
    return truth


def gc_prediction_index(pred_dir: Path) -> dict[str, Path]:
    """Image name -> output file, from a Grand Challenge evaluation input's ``predictions.json``."""
    path = pred_dir / "predictions.json"
    if not path.is_file():
        return {}
    jobs = _load_json(path)
    index = {}
    try:
        for job in jobs:
            name = next(v["image"]["name"] for v in job["inputs"] if v.get("image"))
            rel = next(v["interface"]["relative_path"] for v in job["outputs"]
                       if v["interface"]["slug"] == GC_OUTPUT.removesuffix(".json"))
            index[name] = pred_dir / job["pk"] / "output" / rel
    except (KeyError, TypeError, StopIteration):
        raise PredictionError(f"{path}: not a Grand Challenge predictions.json "
                              "(jobs with pk, inputs, outputs)") from None
    return index


def find_prediction_file(pred_dir: Path, image: str, gc_index: dict[str, Path] | None = None) -> Path:
    """``<stem>.json`` (batch predictor), ``<stem>/multiple-mitotic-figure-classification.json``
    (one container run per stack) or the file a Grand Challenge ``predictions.json`` names."""
    stem = Path(image).stem
    candidates = [pred_dir / f"{stem}.json", pred_dir / stem / GC_OUTPUT]
    if gc_index and image in gc_index:
        candidates.append(gc_index[image])
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise PredictionError(f"{pred_dir}: no prediction for {image} (missing stack: expected {stem}.json "
                              f"or {stem}/{GC_OUTPUT})")
    if len(found) > 1:
        raise PredictionError(f"{pred_dir}: several predictions for {image} ({', '.join(map(str, found))})")
    return found[0]


def check_predictions(entries, n_pages: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Apply the official format checks; return (class 0/1, confidence) arrays."""
    if not isinstance(entries, list):
        raise PredictionError(f"{path}: expected a list of {{class, confidence}}, got {type(entries).__name__}")
    if len(entries) != n_pages:
        raise PredictionError(f"{path}: {len(entries)} entries but the stack has {n_pages} pages")
    classes, confidences = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PredictionError(f"{path}: entry {i} is {type(entry).__name__}, expected a dict")
        if "class" not in entry or "confidence" not in entry:
            raise PredictionError(f"{path}: entry {i} lacks 'class' or 'confidence'")
        cls, conf = entry["class"], entry["confidence"]
        if not isinstance(cls, str) or cls not in CLASSES:
            raise PredictionError(f"{path}: entry {i}: class {cls!r} is not 'atypical' or 'normal'")
        if not isinstance(conf, float):  # JSON 1 / "0.5" / true are rejected by the official evaluator
            raise PredictionError(f"{path}: entry {i}: confidence {conf!r} is {type(conf).__name__}, not a float")
        if not 0.0 <= conf <= 1.0:  # also catches NaN
            raise PredictionError(f"{path}: entry {i}: confidence {conf!r} is outside [0, 1]")
        classes.append(CLASSES[cls])
        confidences.append(conf)
    return np.array(classes, dtype=int), np.array(confidences, dtype=float)


def p_atypical(y_pred: np.ndarray, confidence: np.ndarray, rule: str = "p-atypical") -> np.ndarray:
    """The ROC score. Official (``p-atypical``): ``confidence`` itself, for every figure.
    ``legacy-stated-class`` (the evaluator before 2025-07-27): ``1 - confidence`` for 'normal'."""
    if rule == "p-atypical":
        return confidence.copy()
    if rule == "legacy-stated-class":
        return np.where(y_pred == 1, confidence, 1.0 - confidence)
    raise ValueError(f"confidence rule {rule!r} not in {RULES}")


def collect(truth: list[dict], pred_dir: str | Path, rule: str = "p-atypical") -> Figures:
    """Read and check every stack's predictions; a stack without predictions is an error."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise PredictionError(f"{pred_dir}: predictions folder not found")
    gc_index = gc_prediction_index(pred_dir)
    parts = {k: [] for k in ("stack", "page", "y_true", "y_pred", "confidence", "domain")}
    for entry in truth:
        path = find_prediction_file(pred_dir, entry["image"], gc_index)
        y_pred, conf = check_predictions(_load_json(path), len(entry["labels"]), path)
        n = len(entry["labels"])
        parts["stack"].append([entry["image"]] * n)
        parts["page"].append(np.arange(n))
        parts["y_true"].append([CLASSES[lab] for lab in entry["labels"]])
        parts["y_pred"].append(y_pred)
        parts["confidence"].append(conf)
        parts["domain"].append(entry["tumordomains"])
    arrays = {k: np.concatenate([np.asarray(v) for v in vs]) for k, vs in parts.items()}
    arrays["y_true"] = arrays["y_true"].astype(int)
    arrays["domain"] = arrays["domain"].astype(int)
    return Figures(score=p_atypical(arrays["y_pred"], arrays["confidence"], rule), **arrays)


def confidence_rule_warning(figures: Figures, rule: str) -> str | None:
    """Flag a file whose confidences look written for the other convention than the one scored.

    Under the official rule (P(atypical) everywhere) a figure called 'normal' carries a confidence
    below the decision threshold, so mostly below 0.5; a file where most 'normal' figures carry more
    than 0.5 looks like the pre-2025-07-27 convention (confidence in the stated class), whose AUROC
    the leaderboard inverts for every 'normal' figure. Under the legacy rule, the mirror image."""
    if rule == "p-atypical":
        normal = figures.confidence[figures.y_pred == 0]
        if normal.size == 0:
            return None
        high = float(np.mean(normal > 0.5))
        if high <= 0.5:
            return None
        return (f"{high:.0%} of the figures called 'normal' have confidence > 0.5: this looks like the "
                "pre-2025-07-27 convention (confidence in the stated class). The official evaluator reads "
                "'confidence' as P(atypical) for every figure, so the leaderboard AUROC of such a file is "
                "wrong; write P(atypical), or rescore with --confidence-rule legacy-stated-class to see what "
                "the file meant")
    below = float(np.mean(figures.confidence < 0.5))
    if below <= 0.5:
        return None
    return (f"{below:.0%} of confidences are below 0.5 for the class they accompany: they look like "
            "P(atypical) for every figure (the official convention), but --confidence-rule legacy-stated-class "
            "reads 'normal' entries as 1 - confidence; score without it")


def _none_if_nan(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def official_metrics(y_true, y_pred, score) -> dict:
    """The organisers' per-group metrics: sensitivity, specificity and balanced accuracy of the stated
    classes ``y_pred``, ROC AUC of ``score``, accuracy; a value a class's absence leaves undefined is None
    (``stats.metrics.binary_metrics`` computes them)."""
    m = binary_metrics(y_true, score, calls=y_pred)
    out = {k: _none_if_nan(m[k]) for k in ("sensitivity", "specificity", "balanced_accuracy", "roc_auc")}
    return out | {"accuracy": float(accuracy_score(np.asarray(y_true), np.asarray(y_pred)))}


def counts(y_true, y_pred) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {
        "n": int(y_true.size),
        "n_atypical": int((y_true == 1).sum()),
        "n_normal": int((y_true == 0).sum()),
        "tp": int(((y_pred == 1) & (y_true == 1)).sum()),
        "fp": int(((y_pred == 1) & (y_true == 0)).sum()),
        "fn": int(((y_pred == 0) & (y_true == 1)).sum()),
        "tn": int(((y_pred == 0) & (y_true == 0)).sum()),
    }


def aggregates(figures: Figures) -> dict:
    """The official ``aggregates`` block: ``overall_*`` pooled, then ``domain_<id>`` per domain."""
    pooled = official_metrics(figures.y_true, figures.y_pred, figures.score)
    out = {f"overall_{k}": pooled[k] for k in ("sensitivity", "specificity", "balanced_accuracy", "roc_auc",
                                                "accuracy")}
    for d in np.unique(figures.domain):
        m = figures.domain == d
        out[f"domain_{d}"] = official_metrics(figures.y_true[m], figures.y_pred[m], figures.score[m])
    return out


def groups(figures: Figures) -> dict[str, np.ndarray]:
    """Mask per reported group: ``overall`` then ``domain_<id>``."""
    out = {"overall": np.ones_like(figures.y_true, dtype=bool)}
    for d in np.unique(figures.domain):
        out[f"domain_{d}"] = figures.domain == d
    return out


def score_predictions(ground_truth: str | Path, pred_dir: str | Path, rule: str = "p-atypical",
                      resamples: int = 1000, seed: int = 0, level: float = 0.95,
                      domain_names: dict[int, str] | None = None) -> tuple[dict, Figures]:
    """Official aggregates plus counts and bootstrap intervals; returns (metrics dict, figures)."""
    truth = load_ground_truth(ground_truth)
    figures = collect(truth, pred_dir, rule)
    metrics = {"aggregates": aggregates(figures), "confidence_intervals": {}, "counts": {}}
    for name, mask in groups(figures).items():
        metrics["counts"][name] = counts(figures.y_true[mask], figures.y_pred[mask])
        if resamples > 0:
            ci = bootstrap_intervals(figures.y_true[mask], figures.y_pred[mask], figures.score[mask],
                                     resamples, seed, level)
            metrics["confidence_intervals"][name] = ci
    if domain_names:
        metrics["domain_names"] = {f"domain_{d}": domain_names.get(int(d), str(d)) for d in np.unique(figures.domain)}
    metrics["settings"] = {
        "ground_truth": str(ground_truth), "predictions": str(pred_dir), "stacks": len(truth),
        "confidence_rule": rule, "bootstrap_resamples": resamples, "bootstrap_seed": seed, "ci_level": level,
    }
    metrics["results"] = {}  # the official container clears per-job results too
    return metrics, figures


def load_domain_names(path: str | Path) -> dict[int, str]:
    """``domains.json`` written by pack ({name: id}) -> {id: name}; {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    mapping = _load_json(path)
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise PredictionError(f"{path}: expected {{domain name: integer id}}")
    return {v: k for k, v in mapping.items()}


def write_figures_csv(figures: Figures, path: str | Path, domain_names: dict[int, str] | None = None) -> None:
    """One row per figure: stack, page, truth, prediction, confidence, P(atypical) by the rule, domain."""
    names = {v: k for k, v in CLASSES.items()}
    domain_names = domain_names or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "page", "label", "class", "confidence", "p_atypical", "tumordomain", "domain_name"])
        for i in range(figures.y_true.size):
            d = int(figures.domain[i])
            w.writerow([figures.stack[i], int(figures.page[i]), names[int(figures.y_true[i])],
                        names[int(figures.y_pred[i])], repr(float(figures.confidence[i])),
                        repr(float(figures.score[i])), d, domain_names.get(d, "")])


def format_summary(metrics: dict, keys: Sequence[str] = ("balanced_accuracy", "sensitivity", "specificity",
                                                         "roc_auc", "accuracy")) -> str:
    """A fixed-width table of the aggregates with their intervals, for the terminal."""
    agg, ci, names = metrics["aggregates"], metrics.get("confidence_intervals", {}), metrics.get("domain_names", {})
    rows = [("overall", {k: agg[f"overall_{k}"] for k in keys}, metrics["counts"]["overall"])]
    rows += [(g, agg[g], metrics["counts"][g]) for g in agg if g.startswith("domain_")]

    def cell(value, interval):
        if value is None:
            return "      n/a       "
        return f"{value:.3f}" + (f" [{interval[0]:.2f},{interval[1]:.2f}]" if interval else " " * 12)

    lines = [f"{'group':<28}{'n':>6}{'AMF':>5}  " + "  ".join(f"{k:<17}" for k in keys)]
    for group, values, c in rows:
        label = f"{group} {names.get(group, '')}".strip()[:27]
        lines.append(f"{label:<28}{c['n']:>6}{c['n_atypical']:>5}  " + "  ".join(
            f"{cell(values[k], (ci.get(group) or {}).get(k)):<17}" for k in keys))
    return "\n".join(lines)
