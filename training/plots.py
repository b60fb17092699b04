"""PNG plots of a training run (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def plot_history(history: list[dict], out: Path) -> None:
    """Losses, learning rate and per-domain validation balanced accuracy / AUC of the EMA teacher (those
    panels stay empty for a run with no validation part, --all-figures)."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key in ("loss", "loss_cls", "loss_align", "loss_kd"):
        axes[0].plot(epochs, [h["train"][key] for h in history], label=key)
    axes[0].set_title("training losses")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    domains = [k for k in history[-1]["val_ema"] if k not in ("mean_domain",)]
    for metric, ax in (("balanced_accuracy", axes[1]), ("roc_auc", axes[2])) if domains else ():
        for d in domains:
            ax.plot(epochs, [h["val_ema"][d][metric] for h in history], label=d, lw=2 if d == "pooled" else 1)
        ax.plot(epochs, [h["val_student"]["pooled"][metric] for h in history], "k--", label="student pooled")
        ax.set_title(f"validation {metric} (EMA teacher, threshold 0.5)" if metric.startswith("bal")
                     else f"validation {metric} (EMA teacher)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_pretraining(history: list[dict], out: Path) -> None:
    """lab.pretrain_ssl: NT-Xent loss, contrastive accuracy and the linear probe's validation AUC."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(epochs, [h["loss"] for h in history])
    axes[0].set_title("NT-Xent loss")
    axes[1].plot(epochs, [h["contrastive_accuracy"] for h in history])
    axes[1].set_title("contrastive accuracy (other view found)")
    probed = [h for h in history if h.get("probe")]
    for key in ("pooled", "mean_domain"):
        axes[2].plot([h["epoch"] for h in probed], [h["probe"][key]["roc_auc"] for h in probed], "o-", label=key)
    axes[2].set_title("linear probe: validation ROC AUC")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_roc(labels, scores, domains, domain_names: list[str], out: Path, title: str = "validation ROC") -> None:
    labels, scores, domains = map(np.asarray, (labels, scores, domains))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    curves = [("pooled", np.ones_like(labels, dtype=bool))] + [(n, domains == i) for i, n in enumerate(domain_names)]
    for name, mask in curves:
        if len(np.unique(labels[mask])) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels[mask], scores[mask])
        ax.plot(fpr, tpr, lw=2 if name == "pooled" else 1, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
