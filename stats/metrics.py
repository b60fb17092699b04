"""Binary metrics (scikit-learn), pooled and per domain, and the threshold rules: the one definition that
``training``, ``evaluation`` and the studies share."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

# Candidate decision thresholds, shared by the threshold rule and by reports of the best cut.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5, calls=None) -> dict:
    """Counts; balanced accuracy, sensitivity, specificity (atypical positive) of the calls
    ``scores >= threshold`` (or of ``calls``, 0/1 decisions made elsewhere: a prediction file's stated
    classes); ROC AUC of ``scores``. A value a class's absence leaves undefined is NaN."""
    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(scores) >= threshold).astype(int) if calls is None else np.asarray(calls).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    both = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "n_atypical": int(labels.sum()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if both else float("nan"),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "roc_auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
    }


def per_domain_metrics(labels, scores, domains, domain_names: list[str], threshold: float = 0.5) -> dict:
    labels, scores, domains = map(np.asarray, (labels, scores, domains))
    out = {"pooled": binary_metrics(labels, scores, threshold)}
    for i, name in enumerate(domain_names):
        mask = domains == i
        if mask.any():
            out[name] = binary_metrics(labels[mask], scores[mask], threshold)
    bas = [v["balanced_accuracy"] for k, v in out.items() if k != "pooled"]
    aucs = [v["roc_auc"] for k, v in out.items() if k != "pooled"]
    out["mean_domain"] = {"balanced_accuracy": float(np.nanmean(bas)), "roc_auc": float(np.nanmean(aucs)),
                          "worst_balanced_accuracy": float(np.nanmin(bas))}
    return out


# The threshold rules ``choose_threshold`` knows (training.export --threshold-rule).
THRESHOLD_RULES = ("mean-domain", "worst-domain", "pooled", "halfway")


def describe_threshold_rule(rule: str) -> str:
    """The model card's words for a ``choose_threshold`` rule."""
    if rule == "halfway":
        return ("halfway between 0.5 and the mean-domain balanced-accuracy threshold on the validation split "
                "(0.01 grid, smoothed)")
    return f"{rule} balanced accuracy on the validation split (0.01 grid, smoothed)"


def choose_threshold(labels, scores, domains, rule: str = "mean-domain") -> float:
    """Pick the threshold that should transfer to unseen domains.

    ``mean-domain`` maximises the mean of per-domain balanced accuracies, ``worst-domain``
    the minimum, ``pooled`` the pooled balanced accuracy. Candidates are ``THRESHOLD_GRID`` (0.01
    steps in [0.05, 0.95]); ties go to the candidate closest to 0.5, and the objective is smoothed
    over +-0.02 so a lucky spike on one validation slide does not set the threshold.

    ``halfway`` shrinks the mean-domain threshold toward 0.5, t = (t_mean-domain + 0.5) / 2: 0.5 is
    the cut the class-weighted loss aims at, and a threshold fitted on the seen domains moved the
    wrong way on some unseen ones (lab/analyses/threshold_transfer.py).

    Where no domain has both classes (a tiny validation split) every rule returns 0.5.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {', '.join(THRESHOLD_RULES)}")
    if rule == "halfway":
        return round((choose_threshold(labels, scores, domains, "mean-domain") + 0.5) / 2, 3)
    labels, scores, domains = np.asarray(labels).astype(int), np.asarray(scores), np.asarray(domains)
    grid = THRESHOLD_GRID

    def ba(mask, t):
        y, p = labels[mask], scores[mask] >= t
        pos, neg = y == 1, y == 0
        if not pos.any() or not neg.any():
            return np.nan
        return 0.5 * (p[pos].mean() + (~p[neg]).mean())

    masks = [domains == d for d in np.unique(domains)]
    values = []
    for t in grid:
        if rule == "pooled":
            values.append(ba(np.ones_like(labels, dtype=bool), t))
        else:
            per = [v for v in (ba(m, t) for m in masks) if not np.isnan(v)]
            values.append(np.nan if not per else min(per) if rule == "worst-domain" else np.mean(per))
    values = np.array(values)
    if np.isnan(values).all():
        # No domain (or, pooled, no split) holds both classes, so no cut has a balanced accuracy: keep
        # the cut the class-weighted loss aims at rather than fail at the end of a (tiny) run.
        return 0.5
    smooth = np.convolve(np.pad(values, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    best = smooth.max()
    candidates = grid[np.isclose(smooth, best)]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])
