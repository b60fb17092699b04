"""The two TUPAC16 leave-one-domain-out checks quoted in README (Results and Notes), from the runs' heldout.json.

    python scripts/heldout_checks.py      # needs the runs below (training.train --leave-out-domain TUPAC16 ...)

1. Stain jitter: AUC(--hed-jitter 0.2) − AUC(without), same seed and machine (this CPU), for seeds 0
   and 1 and their mean, paired bootstrap over held-out slides.
2. Seed ensembles of the four ERM runs: AUC of the logit mean of every pair (and all four) vs the
   mean of its members' AUCs, and the mean over the pairs.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.compare import paired_auc_bootstrap  # noqa: E402

ERM = ["lodo-tupac16-erm", "lodo-tupac16-erm-s1", "gpu-lodo/sweep/TUPAC16-erm-s0", "gpu-lodo/sweep/TUPAC16-erm-s1"]
# Seed-paired on the same machine: (with stain jitter, without).
HED_PAIRS = [("lodo-tupac16-erm-hed", "lodo-tupac16-erm"), ("lodo-tupac16-erm-hed-s1", "lodo-tupac16-erm-s1")]


def logit(p):
    p = np.clip(np.asarray(p), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def main() -> int:
    hed = [h for h, _ in HED_PAIRS]
    reports = {r: json.loads((Path("runs") / r / "heldout.json").read_text()) for r in ERM + hed}
    labels = reports[hed[0]]["test_labels"]
    if any(r["test_labels"] != labels for r in reports.values()):
        print("error: the runs did not score the same held-out figures in the same order", file=sys.stderr)
        return 1
    slides = [f.split("::")[0] for f in reports[hed[0]]["test_figures"]]
    for with_hed, without in HED_PAIRS:
        print(f"hed − erm ({with_hed} − {without}): %.3f [%.3f, %.3f]" % paired_auc_bootstrap(
            labels, reports[with_hed]["test_scores"], reports[without]["test_scores"], slides))
    print("hed − erm, mean over the seed pairs: %.3f [%.3f, %.3f]" % paired_auc_bootstrap(
        labels, [reports[h]["test_scores"] for h, _ in HED_PAIRS], [reports[e]["test_scores"] for _, e in HED_PAIRS],
        slides))
    z = {r: logit(reports[r]["test_scores"]) for r in ERM}
    for k in (2, 4):
        ensembles = []
        for combo in itertools.combinations(ERM, k):
            ensembles.append(roc_auc_score(labels, np.mean([z[r] for r in combo], axis=0)))
            mean = np.mean([roc_auc_score(labels, z[r]) for r in combo])
            print(f"ensemble of {k}: AUC {ensembles[-1]:.4f}, mean member {mean:.4f} ({' + '.join(combo)})")
        print(f"mean over the {len(ensembles)} ensembles of {k}: AUC {np.mean(ensembles):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
