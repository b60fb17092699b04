"""PNG plots of a scored prediction set (matplotlib Agg, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from model.weights import format_threshold  # noqa: E402

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


def _curves(y_true, domain, domain_names: dict[int, str] | None):
    """(label, mask) for the pooled set and each domain."""
    names = domain_names or {}
    out = [("pooled", np.ones_like(y_true, dtype=bool))]
    out += [(f"domain {d}: {names[d]}" if d in names else f"domain {d}", domain == d) for d in np.unique(domain)]
    return out


def balanced_accuracy_curve(y_true: np.ndarray, score: np.ndarray, thresholds=THRESHOLDS) -> np.ndarray:
    """Balanced accuracy of ``score >= t`` for every t; NaN when one class is absent."""
    pos, neg = y_true == 1, y_true == 0
    if not pos.any() or not neg.any():
        return np.full(len(thresholds), np.nan)
    pred = score[None, :] >= np.asarray(thresholds)[:, None]
    return 0.5 * (pred[:, pos].mean(1) + (~pred[:, neg]).mean(1))


def plot_roc(y_true, score, domain, out: str | Path, domain_names: dict[int, str] | None = None) -> Path:
    """ROC curve of P(atypical), pooled and per tumour domain, AUC in the legend."""
    y_true, score, domain = map(np.asarray, (y_true, score, domain))
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for label, mask in _curves(y_true, domain, domain_names):
        if len(np.unique(y_true[mask])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true[mask], score[mask])
        auc = roc_auc_score(y_true[mask], score[mask])
        ax.plot(fpr, tpr, lw=2.2 if label == "pooled" else 1.2, label=f"{label} (AUC {auc:.3f}, n={mask.sum()})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity (atypical)", title="ROC per tumour domain",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


def plot_threshold_sweep(y_true, score, domain, threshold: float, out: str | Path,
                         domain_names: dict[int, str] | None = None) -> Path:
    """Balanced accuracy of ``P(atypical) >= t`` against t, per domain; the model card's threshold marked."""
    y_true, score, domain = map(np.asarray, (y_true, score, domain))
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, mask in _curves(y_true, domain, domain_names):
        curve = balanced_accuracy_curve(y_true[mask], score[mask])
        if np.all(np.isnan(curve)):
            continue
        ax.plot(THRESHOLDS, curve, lw=2.2 if label == "pooled" else 1.2, label=label)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {format_threshold(threshold)}")
    ax.set(xlabel="threshold on P(atypical)", ylabel="balanced accuracy", title="Balanced accuracy vs threshold",
           xlim=(0, 1), ylim=(0.4, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def reliability(y_true, score, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean P per bin, observed atypical fraction per bin, count per bin, expected calibration error)."""
    y_true, score = np.asarray(y_true, dtype=float), np.asarray(score, dtype=float)
    which = np.clip((score * bins).astype(int), 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(which, weights=score, minlength=bins) / n
        frac = np.bincount(which, weights=y_true, minlength=bins) / n
    ece = float(np.nansum(n / max(n.sum(), 1) * np.abs(frac - mean_p)))
    return mean_p, frac, n, ece


def plot_reliability(y_true, score, out: str | Path, bins: int = 10) -> Path:
    """Reliability diagram of P(atypical) (pooled), with the figure count per bin underneath."""
    mean_p, frac, n, ece = reliability(y_true, score, bins)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ok = n > 0
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot(mean_p[ok], frac[ok], "o-", label="observed")
    ax.set(ylabel="fraction atypical", title=f"Reliability (ECE {ece:.3f}, {bins} bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    edges = np.linspace(0, 1, bins + 1)
    hist.bar(edges[:-1], n, width=1 / bins, align="edge", edgecolor="k", lw=0.5)
    hist.set(xlabel="predicted P(atypical)", ylabel="figures")
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(figures, out_dir: str | Path, threshold: float,
                domain_names: dict[int, str] | None = None) -> list[Path]:
    """The three standard plots of a scored set into ``out_dir``."""
    out_dir = Path(out_dir)
    return [
        plot_roc(figures.y_true, figures.score, figures.domain, out_dir / "roc.png", domain_names),
        plot_threshold_sweep(figures.y_true, figures.score, figures.domain, threshold,
                             out_dir / "balanced_accuracy_vs_threshold.png", domain_names),
        plot_reliability(figures.y_true, figures.score, out_dir / "reliability.png"),
    ]
