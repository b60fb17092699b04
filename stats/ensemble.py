"""Averaging several models' probabilities: by mean logit, the one rule of every ensemble here."""

from __future__ import annotations

import math

import numpy as np


def mean_logit(probabilities: list[float]) -> float:
    """Ensemble P(atypical) = σ( (1/M) Σ_m logit(p_m) ): the logit average of M models' probabilities
    (p clipped to [1e-7, 1 - 1e-7] so that a saturated member stays finite)."""
    eps = 1e-7
    logits = [math.log(p / (1 - p)) for p in (min(max(q, eps), 1 - eps) for q in probabilities)]
    return 1.0 / (1.0 + math.exp(-sum(logits) / len(logits)))


def mean_logit_rows(rows):
    """``mean_logit`` per column of a (models, figures) array of probabilities, vectorised."""
    p = np.clip(np.asarray(rows, dtype=float), 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)).mean(axis=0)))
