"""Markdown table of exported runs' validation metrics, per domain and pooled (for README and notes).

    python -m training.compare weights /tmp/erm_export ... [--names full erm ...]

Reads each folder's model_card.json (written by training.export on the run's saved split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows_for(card: dict, name: str) -> list[str]:
    val = card["validation"]
    t = card["threshold"]
    out = []
    for domain in ["pooled"] + card["data"]["domains"]:
        if domain not in val["at_threshold"]:
            continue
        m, m05 = val["at_threshold"][domain], val["at_0.5"][domain]
        base = val["trivial_intensity_baseline"]["metrics"][domain]
        out.append(f"| {name} | {domain} | {m['n']} ({m['n_atypical']}) | {m['roc_auc']:.3f} | "
                   f"{m05['balanced_accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['sensitivity']:.3f} | "
                   f"{m['specificity']:.3f} | {base['roc_auc']:.3f} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path)
    p.add_argument("--names", nargs="*")
    args = p.parse_args(argv)
    names = args.names or [str(e) for e in args.exports]
    print("| model | domain | n (atypical) | ROC AUC | BA @0.5 | BA @thr | sensitivity @thr | specificity @thr "
          "| intensity-baseline AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for export, name in zip(args.exports, names):
        card = json.loads((export / "model_card.json").read_text())
        label = f"{name} ({card['selected_model']}, thr {card['threshold']:.2f}, epoch {card['training']['best_epoch']})"
        print("\n".join(rows_for(card, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
