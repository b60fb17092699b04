"""Two prediction folders on the same packed stacks: which one ranks the figures better?

AUC(A) − AUC(B), pooled and per domain, with a 95% interval from a paired bootstrap that resamples
whole slides (figures of one slide are not independent). The slide of every page comes from the
``manifest.json`` that ``python -m evaluation pack`` writes beside the ground truth; without one,
each figure counts as its own slide (a narrower, optimistic interval; the output says so).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stats.bootstrap import paired_auc_bootstrap  # the same bootstrap as the leave-one-domain-out tables

from .score import Figures, PredictionError, collect, load_ground_truth


def slide_of_each_figure(manifest: Path, figures: Figures) -> np.ndarray:
    """The manifest's ``group`` (slide) for each scored figure, matched by stack name and page."""
    try:
        stacks = json.loads(manifest.read_text())["stacks"]
        lookup = {(s["image"], i): page["group"] for s in stacks for i, page in enumerate(s["pages"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictionError(f"{manifest}: not a pack manifest ({exc})") from None
    try:
        return np.array([lookup[(str(s), int(p))] for s, p in zip(figures.stack, figures.page)])
    except KeyError as exc:
        raise PredictionError(f"{manifest}: no page {exc.args[0][1]} of {exc.args[0][0]}") from None


def paired_auc(ground_truth: Path, pred_a: Path, pred_b: Path, manifest: Path | None = None,
               resamples: int = 2000, seed: int = 0, domain_names: dict[int, str] | None = None) -> dict:
    """{"groups": [{name, n, auc_a, auc_b, difference, low, high}, ...], "slides": how slides were known}."""
    from sklearn.metrics import roc_auc_score


    truth = load_ground_truth(ground_truth)
    a, b = collect(truth, pred_a), collect(truth, pred_b)
    if manifest is not None and manifest.is_file():
        slides, source = slide_of_each_figure(manifest, a), str(manifest)
    else:
        slides, source = np.arange(a.y_true.size).astype(str), "none: each figure resampled on its own"
    domain_names = domain_names or {}
    masks = [("overall", np.ones_like(a.y_true, dtype=bool))]
    masks += [(domain_names.get(int(d), f"domain_{d}"), a.domain == d) for d in np.unique(a.domain)]
    rows = []
    for name, m in masks:
        y = a.y_true[m]
        if len(np.unique(y)) < 2:
            continue
        diff, low, high = paired_auc_bootstrap(y, a.score[m], b.score[m], slides[m], resamples, seed)
        rows.append({"group": name, "n": int(m.sum()), "auc_a": float(roc_auc_score(y, a.score[m])),
                     "auc_b": float(roc_auc_score(y, b.score[m])), "difference": diff, "low": low, "high": high})
    return {"a": str(pred_a), "b": str(pred_b), "slides": source, "resamples": resamples, "groups": rows}


def format_paired(result: dict) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"slides from: {result['slides']}; {result['resamples']} paired bootstrap resamples",
             f"{'group':<24} {'n':>5}  {'AUC A':>6}  {'AUC B':>6}  {'A - B':>7}  95% interval"]
    for r in result["groups"]:
        lines.append(f"{r['group']:<24} {r['n']:>5}  {r['auc_a']:.3f}   {r['auc_b']:.3f}  {r['difference']:+.3f}  "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}]")
    return "\n".join(lines)
