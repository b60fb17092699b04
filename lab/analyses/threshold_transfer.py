"""Does the validation threshold transfer to an unseen domain, and which rule transfers best?

    python -m lab.analyses.threshold_transfer [RUN_DIR | REPORT.json ...]
        # default: runs/lodo-*/ and runs/gpu-lodo/sweep/*/ (each with the heldout.json that
        # training.train --leave-out-domain writes)
    python -m lab.analyses.threshold_transfer --validation GROUND_TRUTH PRED_DIR [PRED_DIR ...]
        # prediction folders (python -m model.predict) on packed validation stacks (python -m evaluation pack)

Held-out runs: per held-out domain, how often the balanced accuracy at the run's own threshold
(fitted on the other domains' validation figures, max mean per-domain BA) beats the plain 0.5 cut,
and by how much; then, for runs whose report keeps its validation scores, the unseen domain's BA
under every threshold rule of ``stats.metrics.choose_threshold`` fitted on those scores.

To compare two arms' unseen-domain BA under one rule, paired over slides with an interval, use
``python -m lab.compare --held-out RUN ... --ba-at RULE`` instead.

Validation folders: the same rules, each fitted on all validation domains but one and scored on
the one left out (a proxy: the network saw every domain in training, only the threshold has not).
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from lab.compare import held_out_file
from stats.metrics import THRESHOLD_RULES, binary_metrics, choose_threshold

RULES = ("0.5",) + THRESHOLD_RULES


def rule_threshold(rule: str, labels, scores, domains) -> float:
    return 0.5 if rule == "0.5" else choose_threshold(labels, scores, domains, rule)


def balanced_accuracy(labels, scores, threshold: float) -> float:
    return binary_metrics(np.asarray(labels), np.asarray(scores), threshold)["balanced_accuracy"]


def rules_table(rows: dict[str, list[dict[str, float]]], first: str) -> list[str]:
    """Markdown: one row per group, the mean BA (and mean threshold) of each rule over its entries."""
    lines = [f"| {first} | n | " + " | ".join(f"BA @{r} (thr)" for r in RULES) + " |",
             "|---|---|" + "---|" * len(RULES)]
    for group, entries in rows.items():
        cells = []
        for r in RULES:
            ba = np.mean([e[r][0] for e in entries])
            thr = np.mean([e[r][1] for e in entries])
            cells.append(f"{ba:.3f} ({thr:.2f})")
        lines.append(f"| {group} | {len(entries)} | " + " | ".join(cells) + " |")
    return lines


def with_mean_over_groups(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``rows`` sorted by group, plus a "mean over domains" row: each rule's (BA, threshold) averaged
    first over a group's entries, then over the groups, so every domain weighs the same."""
    rows = dict(sorted(rows.items()))
    mean = {}
    for r in RULES:
        group_means = [np.mean([e[r] for e in entries], axis=0) for entries in rows.values()]
        mean[r] = tuple(np.mean(group_means, axis=0))
    return rows | {"mean over domains": [mean]}


def held_out_main(runs: list[Path]) -> int:
    runs = runs or sorted(Path("runs").glob("lodo-*/")) + sorted(Path("runs").glob("gpu-lodo/sweep/*/"))
    # A run directory (RUN/heldout.json), or a report file itself (e.g. lab.heldout --out RUN/heldout-none.json).
    reports = [f for f in map(held_out_file, runs) if f.is_file()]
    if not reports:
        print("error: no <run>/heldout.json found (train with --leave-out-domain first)", file=sys.stderr)
        return 1
    gains, by_rule, by_run = defaultdict(list), defaultdict(list), {}
    for path in reports:
        held = json.loads(path.read_text())
        gains[held["domain"]].append(held["test_at_threshold"]["pooled"]["balanced_accuracy"]
                                     - held["test_at_0.5"]["pooled"]["balanced_accuracy"])
        if "val_scores" in held:
            entry = {}
            for r in RULES:
                t = rule_threshold(r, held["val_labels"], held["val_scores"], held["val_domains"])
                entry[r] = (balanced_accuracy(held["test_labels"], held["test_scores"], t), t)
            by_rule[held["domain"]].append(entry)
            name = path.parent.name + ("" if path.name == "heldout.json" else f"/{path.name}")
            by_run[f"{name} ({held['domain']})"] = [entry]
    print("| held-out domain | runs | own threshold better / worse / level than 0.5 | BA gain: mean (min..max) |")
    print("|---|---|---|---|")
    for domain, g in sorted(gains.items()):
        better, worse = sum(x > 1e-9 for x in g), sum(x < -1e-9 for x in g)
        print(f"| {domain} | {len(g)} | {better} / {worse} / {len(g) - better - worse} | "
              f"{sum(g) / len(g):+.3f} ({min(g):+.3f}..{max(g):+.3f}) |")
    if by_rule:
        print("\nUnseen-domain BA by threshold rule (runs whose heldout.json keeps validation scores):\n")
        print("\n".join(rules_table(with_mean_over_groups(by_rule), "held-out domain")))
        print("\nThe same, run by run:\n")
        print("\n".join(rules_table(by_run, "run (held-out domain)")))
    return 0


def validation_main(ground_truth: Path, pred_dirs: list[Path]) -> int:
    from evaluation.score import PredictionError, collect, load_domain_names, load_ground_truth

    try:
        truth = load_ground_truth(ground_truth)
        names = load_domain_names(ground_truth.parent / "domains.json")
        rows = defaultdict(list)
        for pred in pred_dirs:
            f = collect(truth, pred)
            for d in np.unique(f.domain):
                seen, unseen = f.domain != d, f.domain == d
                entry = {}
                for r in RULES:
                    t = rule_threshold(r, f.y_true[seen], f.score[seen], f.domain[seen])
                    entry[r] = (balanced_accuracy(f.y_true[unseen], f.score[unseen], t), t)
                rows[names.get(int(d), f"domain_{d}")].append(entry)
    except PredictionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("Validation domain left out of the threshold fit (mean over prediction folders):\n")
    print("\n".join(rules_table(with_mean_over_groups(rows), "left-out domain")))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path,
                   help="leave-one-domain-out run directories (or prediction folders with --validation)")
    p.add_argument("--validation", type=Path, metavar="GROUND_TRUTH",
                   help="ground_truth.json of packed validation stacks; RUNS are then prediction folders")
    args = p.parse_args(argv)
    if args.validation:
        if not args.runs:
            p.error("--validation needs at least one prediction folder")
        return validation_main(args.validation, args.runs)
    return held_out_main(args.runs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
