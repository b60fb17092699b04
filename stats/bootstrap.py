"""Bootstrap intervals and the rank AUC they call thousands of times.

Figures of one slide are not independent: the intervals that decide anything here resample whole slides
(``group_bootstrap_intervals``, and ``paired_auc_bootstrap`` for a difference between two models scored on
the same figures); ``bootstrap_intervals`` resamples figures one by one, as a challenge's stacks allow.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

METRICS = ("sensitivity", "specificity", "balanced_accuracy", "roc_auc", "accuracy")


def rank_auc(y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of (B, n) labels and scores; NaN where a row lacks a class.

    The Mann-Whitney form ``AUC = (Σ_{i: y_i=1} rank_i − n₊(n₊+1)/2) / (n₊ n₋)`` with average
    ranks for ties (a tie counts one half), which equals scikit-learn's ``roc_auc_score``
    (tested) at a fraction of its cost per call: bootstraps call it thousands of times.
    """
    pos = y_true == 1
    n_pos, n_neg = pos.sum(1).astype(float), (y_true == 0).sum(1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((rankdata(score, axis=1) * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def fast_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised metrics over rows of (B, n) resamples; NaN where undefined (AUC by ``rank_auc``)."""
    pos, neg = y_true == 1, y_true == 0
    n_pos, n_neg = pos.sum(1).astype(float), neg.sum(1).astype(float)
    tp = (pos & (y_pred == 1)).sum(1)
    tn = (neg & (y_pred == 0)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(n_pos > 0, tp / n_pos, np.nan)
        spec = np.where(n_neg > 0, tn / n_neg, np.nan)
    return {"sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2,
            "roc_auc": rank_auc(y_true, score), "accuracy": (tp + tn) / y_true.shape[1]}


def bootstrap_intervals(y_true, y_pred, score, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile intervals over figures resampled with replacement (seeded); None if never defined."""
    y_true, y_pred, score = map(np.asarray, (y_true, y_pred, score))
    n = y_true.size
    rng = np.random.default_rng(seed)
    values = {m: [] for m in METRICS}
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for metric, v in fast_metrics(y_true[idx], y_pred[idx], score[idx]).items():
            values[metric].append(v)
    return _percentile_intervals(values, level)


def group_bootstrap_intervals(y_true, y_pred, score, groups, resamples: int = 1000, seed: int = 0,
                              level: float = 0.95) -> dict[str, list[float] | None]:
    """As ``bootstrap_intervals``, but resampling whole groups (slides) with replacement, each with all its
    figures: figures of one slide are not independent, so resampling them one by one makes intervals too
    narrow. A resample holds as many groups as the data (so its number of figures varies)."""
    y_true, y_pred, score = map(np.asarray, (y_true, y_pred, score))
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    values = {m: [] for m in METRICS}
    for _ in range(resamples):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])[None, :]
        for metric, v in fast_metrics(y_true[idx], y_pred[idx], score[idx]).items():
            values[metric].append(v)
    return _percentile_intervals(values, level)


def _percentile_intervals(values: dict[str, list[np.ndarray]], level: float) -> dict[str, list[float] | None]:
    alpha = (1.0 - level) / 2 * 100
    out = {}
    for metric in METRICS:
        v = np.concatenate(values[metric])
        v = v[~np.isnan(v)]
        out[metric] = [float(np.percentile(v, alpha)), float(np.percentile(v, 100 - alpha))] if v.size else None
    return out


def paired_auc_bootstrap(labels, scores_a, scores_b, groups, n_boot: int = 2000, seed: int = 0):
    """AUC(a) − AUC(b) on the same figures, with a 95% percentile interval from resampling
    whole slides (figures of one slide are not independent).

    ``scores_a`` and ``scores_b`` may also be (runs, figures) arrays of seed-paired runs (row i of
    a beside row i of b): the difference is then the mean over the pairs, and every bootstrap
    sample applies the same resampled slides to all pairs."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    scores_a, scores_b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    if scores_a.shape != scores_b.shape or scores_a.shape[1] != len(labels):
        raise ValueError(f"scores {scores_a.shape} and {scores_b.shape} do not pair up over {len(labels)} figures")
    both = np.concatenate([scores_a, scores_b])

    def mean_delta(idx):
        auc = rank_auc(np.broadcast_to(labels[idx], (len(both), len(idx))), both[:, idx])
        return float(np.mean(auc[:len(scores_a)] - auc[len(scores_a):]))

    delta = mean_delta(np.arange(len(labels)))
    slides = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in slides]
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(slides), len(slides))])
        if len(np.unique(labels[idx])) < 2:
            continue
        deltas.append(mean_delta(idx))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(delta), float(low), float(high)


def paired_ba_bootstrap(labels, calls_a, calls_b, groups, n_boot: int = 2000, seed: int = 0):
    """BA(a) − BA(b) of 0/1 calls on the same figures, with the slide bootstrap of
    ``paired_auc_bootstrap`` (rows of seed-paired runs allowed, as there).

    The ROC AUC of 0/1 calls is their balanced accuracy (a tie counts one half):
    AUC = TPR·TNR + ½[TPR(1 − TNR) + (1 − TPR)·TNR] = ½(TPR + TNR) = BA,
    so the AUC bootstrap, fed calls instead of scores, resamples BA differences."""
    for calls in (calls_a, calls_b):
        if not np.isin(np.asarray(calls), (0, 1)).all():
            raise ValueError("calls must be 0 or 1 (scores cut at a threshold)")
    return paired_auc_bootstrap(labels, calls_a, calls_b, groups, n_boot=n_boot, seed=seed)
