"""The TUPAC16 leave-one-domain-out checks quoted in README (Results and Notes), from the runs' heldout.json.

    python -m lab.analyses.heldout_checks  # needs the runs below (training.train --leave-out-domain TUPAC16 ...)

1. One change against a baseline, same seed and machine (this CPU), for seeds 0 and 1 and their
   mean, paired bootstrap over held-out slides. Against plain ERM: stain jitter (--hed-jitter 0.2),
   MixStyle alone (--no-align --no-kd), distillation alone (--no-mixstyle --no-align) and the
   augmentation curriculum (--light-aug-epochs 10). Against the curriculum: light augmentation
   for all 40 epochs (--light-aug-epochs 40), and the full recipe on top of the curriculum with
   MixStyle from epoch 11 (defaults + --light-aug-epochs 10 --mixstyle-start-epoch 10), also
   against the full recipe without the curriculum; alignment + distillation on top of the curriculum
   (--no-mixstyle --light-aug-epochs 10), against it and as the baseline that MixStyle is added to;
   the same with the standardised alignment term (--align-standardise), against both.
   A seed pair whose runs are not on disk is skipped with a message; so is a comparison left with none.
2. Seed ensembles of the four ERM runs: AUC of the logit mean of every pair (and all four) vs the
   mean of its members' AUCs, and the mean over the pairs.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from stats.bootstrap import paired_auc_bootstrap

ERM = ["lodo-tupac16-erm", "lodo-tupac16-erm-s1", "gpu-lodo/sweep/TUPAC16-erm-s0", "gpu-lodo/sweep/TUPAC16-erm-s1"]
# Seed-paired on the same machine: (run with one change, its baseline), seeds 0 and 1.
PAIRS = {
    "stain jitter": [("lodo-tupac16-erm-hed", "lodo-tupac16-erm"), ("lodo-tupac16-erm-hed-s1", "lodo-tupac16-erm-s1")],
    "mixstyle": [("lodo-tupac16-mix", "lodo-tupac16-erm"), ("lodo-tupac16-mix-s1", "lodo-tupac16-erm-s1")],
    "kd": [("lodo-tupac16-kd", "lodo-tupac16-erm"), ("lodo-tupac16-kd-s1", "lodo-tupac16-erm-s1")],
    "light aug first 10 epochs": [("lodo-tupac16-erm-light", "lodo-tupac16-erm"),
                                  ("lodo-tupac16-erm-light-s1", "lodo-tupac16-erm-s1")],
    "light aug all 40 epochs (vs ERM)": [("lodo-tupac16-erm-light40", "lodo-tupac16-erm"),
                                         ("lodo-tupac16-erm-light40-s1", "lodo-tupac16-erm-s1")],
    "light aug all 40 epochs (vs the curriculum)": [("lodo-tupac16-erm-light40", "lodo-tupac16-erm-light"),
                                                    ("lodo-tupac16-erm-light40-s1", "lodo-tupac16-erm-light-s1")],
    "full recipe, MixStyle from epoch 11 (vs ERM, both with the curriculum)": [
        ("lodo-tupac16-full-light", "lodo-tupac16-erm-light"),
        ("lodo-tupac16-full-light-s1", "lodo-tupac16-erm-light-s1")],
    "curriculum under the full recipe, MixStyle from epoch 11 (vs the full recipe)": [
        ("lodo-tupac16-full-light", "lodo-tupac16-full"), ("lodo-tupac16-full-light-s1", "lodo-tupac16-full-s1")],
    "alignment + distillation (vs ERM, both with the curriculum)": [
        ("lodo-tupac16-alignkd-light", "lodo-tupac16-erm-light"),
        ("lodo-tupac16-alignkd-light-s1", "lodo-tupac16-erm-light-s1")],
    "MixStyle from epoch 11 (vs alignment + distillation, both with the curriculum)": [
        ("lodo-tupac16-full-light", "lodo-tupac16-alignkd-light"),
        ("lodo-tupac16-full-light-s1", "lodo-tupac16-alignkd-light-s1")],
    "standardised alignment + distillation (vs ERM, both with the curriculum)": [
        ("lodo-tupac16-alignstd-light", "lodo-tupac16-erm-light"),
        ("lodo-tupac16-alignstd-light-s1", "lodo-tupac16-erm-light-s1")],
    "standardising the alignment term (vs the paper's, both with distillation and the curriculum)": [
        ("lodo-tupac16-alignstd-light", "lodo-tupac16-alignkd-light"),
        ("lodo-tupac16-alignstd-light-s1", "lodo-tupac16-alignkd-light-s1")],
}


def logit(p):
    p = np.clip(np.asarray(p), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def main() -> int:
    pairs_on_disk = {}
    for change, pairs in PAIRS.items():
        for pair in pairs:
            missing = [r for r in pair if not (Path("runs") / r / "heldout.json").exists()]
            if missing:
                print(f"skipped {' − '.join(pair)} in '{change}': no runs/<run>/heldout.json for {', '.join(missing)}")
            else:
                pairs_on_disk.setdefault(change, []).append(pair)
    changed = [c for pairs in pairs_on_disk.values() for c, _ in pairs]
    in_pairs = {r for pairs in pairs_on_disk.values() for pair in pairs for r in pair}
    reports = {r: json.loads((Path("runs") / r / "heldout.json").read_text()) for r in set(ERM) | in_pairs}
    labels = reports[ERM[0]]["test_labels"]
    if any(r["test_labels"] != labels for r in reports.values()):
        print("error: the runs did not score the same held-out figures in the same order", file=sys.stderr)
        return 1
    slides = [f.split("::")[0] for f in reports[changed[0]]["test_figures"]]
    for change, pairs in pairs_on_disk.items():
        for with_it, without in pairs:
            a, b = reports[with_it]["test_scores"], reports[without]["test_scores"]
            print(f"{change} ({with_it} − {without}): AUC %.3f − %.3f = %+.3f [%+.3f, %+.3f]" % (
                roc_auc_score(labels, a), roc_auc_score(labels, b), *paired_auc_bootstrap(labels, a, b, slides)))
        print(f"{change}, mean over the seed pairs: %+.3f [%+.3f, %+.3f]" % paired_auc_bootstrap(
            labels, [reports[c]["test_scores"] for c, _ in pairs], [reports[e]["test_scores"] for _, e in pairs],
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
