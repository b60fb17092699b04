"""Compare training procedures on unseen domains: ensembles of leave-one-domain-out runs, paired over slides.

    python -m lab.procedures \\
        --procedure current=runs/lodo/TUPAC16/a-s0,runs/lodo/TUPAC16/a-s1,runs/lodo/TUPAC16/a-s2 \\
        --procedure all-figures=runs/lodo/TUPAC16/b-s0,runs/lodo/TUPAC16/b-s1,runs/lodo/TUPAC16/b-s2 \\
        --procedure distilled=runs/lodo/TUPAC16/c-s0 \\
        --rule all-figures=current:0,-0.010,0 --rule distilled=all-figures:-0.005,-0.015,-0.010 --out DIR

A *procedure* is what would ship: its runs (seeds of one recipe; list the runs of every held-out
domain, they are grouped by the domain their ``heldout.json`` reports) scored on the unseen domain and
averaged by mean logit, cut at the threshold the procedure would ship with:

- runs with a validation part (``training.train --leave-out-domain D``): ``--threshold-rule`` (default
  ``halfway``, the shipped rule) fitted on the mean-logit ensemble of the validation scores their reports
  keep (the runs must share the validation figures);
- ``--all-figures`` runs (no validation part): the threshold their reports used, from the out-of-fold
  scores of a cross-fit of the same figures (``--threshold-from``; the runs must agree on it);
- ``--threshold-from NAME=PATH``: the threshold of a ``training.oof`` file (``{domain}`` in PATH stands for
  the held-out domain), e.g. for the cross-fit's own networks as the ensemble, whose validation parts differ.

Per domain: ROC AUC and balanced accuracy, sensitivity and specificity at that threshold; and each
procedure against its reference (``--rule NAME=REF:...``, else the first procedure): the AUC and BA
differences with 95% intervals from a paired bootstrap over the unseen domain's slides
(``stats.bootstrap.paired_auc_bootstrap``). A ``--rule NAME=REF:MEAN_AUC,MIN_AUC,MEAN_BA`` is a decision
rule written before the runs (docs/experiments.md §32): NAME passes if, over the held-out domains, its mean
AUC difference is >= MEAN_AUC, no domain's is below MIN_AUC and its mean BA difference is >= MEAN_BA. One
procedure may have rules against several references.
Writes DIR/procedures.md and DIR/procedures.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

from model.weights import format_threshold
from stats.bootstrap import paired_auc_bootstrap, paired_ba_bootstrap
from stats.ensemble import mean_logit_rows
from stats.metrics import THRESHOLD_RULES, binary_metrics, choose_threshold

from .compare import read_held_out


def _same(reports: list[dict], key: str, what: str) -> None:
    for h in reports[1:]:
        if h.get(key) != reports[0].get(key):
            raise SystemExit(f"{h['path']}: {what} not the same as in {reports[0]['path']}; the runs of one "
                             f"procedure must share them")


def out_of_fold_threshold(pattern: str, domain: str, runs: list[str]) -> tuple[float, str]:
    """The threshold of a ``training.oof`` file (``{domain}`` in ``pattern`` filled in), checked to hold out
    ``domain``; and where it came from. Runs of the cross-fit it was made from are named in it; a procedure
    of other runs is allowed (the threshold of another procedure's cross-fit) but said so."""
    path = Path(pattern.replace("{domain}", domain))
    try:
        report = json.loads(path.read_text())
        threshold = float(report["summary"]["threshold"])
        folds = [run for fold in report["folds"] for run in fold["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--threshold-from {path}: not a readable training.oof oof.json ({exc!r})") from None
    if report.get("leave_out_domain") != domain:
        raise SystemExit(f"--threshold-from {path}: a cross-fit with held-out domain "
                         f"{report.get('leave_out_domain')}, not {domain}")
    own = sorted(Path(r).name for r in runs) == sorted(Path(r).name for r in folds)
    return threshold, f"out-of-fold, {path}" + ("" if own else " (another procedure's cross-fit)")


def procedure_on_domain(reports: list[dict], rule: str, threshold_from: str | None = None) -> dict:
    """One procedure's ensemble on one unseen domain: its scores, threshold (and where it came from) and
    metrics. ``threshold_from``: a ``training.oof`` file's threshold instead (``out_of_fold_threshold``)."""
    for key, what in (("test_figures", "held-out figures"), ("test_labels", "held-out labels"), ("tta", "TTA")):
        _same(reports, key, what)
    scores = mean_logit_rows([h["test_scores"] for h in reports])
    validated = [bool(h.get("val_scores")) for h in reports]
    if threshold_from:
        threshold, source = out_of_fold_threshold(threshold_from, reports[0]["domain"],  # a run: its report's folder
                                                  [str(Path(h["path"]).parent) for h in reports])
    elif all(validated):
        for key, what in (("val_labels", "validation labels"), ("val_domains", "validation domains")):
            _same(reports, key, what)
        val = mean_logit_rows([h["val_scores"] for h in reports])
        threshold = choose_threshold(reports[0]["val_labels"], val, reports[0]["val_domains"], rule)
        source = f"{rule}, on the ensemble's validation scores"
    elif not any(validated):  # --all-figures runs: the cross-fit's out-of-fold threshold
        _same(reports, "threshold", "threshold (--threshold-from)")
        threshold = float(reports[0]["threshold"])
        source = "out-of-fold (the runs' --threshold-from)"
    else:
        raise SystemExit(f"{reports[0]['path']}: runs with and without a validation part in one procedure")
    labels = np.asarray(reports[0]["test_labels"])
    metrics = binary_metrics(labels, scores, threshold)
    # In hindsight, the cut the unseen domain itself would have chosen (choose_threshold's pooled rule on its
    # own labels): how much balanced accuracy the shipped threshold gives away that the ranking allowed.
    best_cut = choose_threshold(labels, scores, np.zeros(len(labels), dtype=int), "pooled")
    return {"best_cut": best_cut, "ba_at_best_cut": binary_metrics(labels, scores, best_cut)["balanced_accuracy"],
            "runs": [h["path"] for h in reports], "seeds": [h["arm"]["seed"] for h in reports],
            "tta": reports[0]["tta"], "threshold": threshold, "threshold_from": source,
            "labels": labels, "groups": reports[0]["test_groups"], "scores": scores,
            "n": len(labels), "n_atypical": int(labels.sum()), "roc_auc": metrics["roc_auc"],
            "balanced_accuracy": metrics["balanced_accuracy"], "sensitivity": metrics["sensitivity"],
            "specificity": metrics["specificity"]}


def paired_difference(a: dict, ref: dict, resamples: int, seed: int) -> dict:
    """a − ref on the same unseen figures: AUC and BA at each one's own threshold, slide-bootstrap intervals."""
    if a["labels"].tolist() != ref["labels"].tolist() or a["groups"] != ref["groups"]:
        raise SystemExit(f"{a['runs'][0]} and {ref['runs'][0]}: not the same held-out figures")
    auc = paired_auc_bootstrap(a["labels"], a["scores"], ref["scores"], a["groups"], resamples, seed)
    calls = [(p["scores"] >= p["threshold"]).astype(int) for p in (a, ref)]
    ba = paired_ba_bootstrap(a["labels"], calls[0], calls[1], a["groups"], resamples, seed)
    return {"auc": auc, "ba": ba}


def parse_rule(text: str) -> tuple[str, str, tuple[float, float, float]]:
    """``NAME=REF:MEAN_AUC,MIN_AUC,MEAN_BA``."""
    try:
        name, rest = text.split("=", 1)
        ref, margins = rest.split(":", 1)
        mean_auc, min_auc, mean_ba = (float(x) for x in margins.split(","))
    except ValueError:
        raise SystemExit(f"--rule {text!r}: expected NAME=REF:MEAN_AUC,MIN_AUC,MEAN_BA, e.g. "
                         f"all-figures=current:0,-0.010,0") from None
    return name, ref, (mean_auc, min_auc, mean_ba)


def verdict(diffs: dict[str, dict], margins: tuple[float, float, float]) -> dict:
    """The rule on the per-domain differences: mean AUC difference >= margins[0], every domain's >=
    margins[1], mean BA difference >= margins[2]."""
    auc = [d["auc"][0] for d in diffs.values()]
    ba = [d["ba"][0] for d in diffs.values()]
    checks = {"mean_auc": (float(np.mean(auc)), margins[0]), "min_auc": (float(min(auc)), margins[1]),
              "mean_ba": (float(np.mean(ba)), margins[2])}
    return {"checks": checks, "passes": all(value >= bound for value, bound in checks.values()),
            "domains": sorted(diffs)}


def compare_procedures(procedures: dict[str, list[Path]], rules: list[str], threshold_rule: str = "halfway",
                       resamples: int = 2000, seed: int = 0, threshold_from: dict[str, str] | None = None) -> dict:
    """Every procedure on every held-out domain its runs report, each against its reference(s), and the
    rules. ``threshold_from``: procedure name -> a ``training.oof`` file pattern for its threshold."""
    threshold_from = threshold_from or {}
    names = list(procedures)
    for name in threshold_from:
        if name not in procedures:
            raise SystemExit(f"--threshold-from: no procedure named {name!r} (given: {', '.join(names)})")
    by_domain: dict[str, dict[str, dict]] = {}
    for name, runs in procedures.items():
        groups: dict[str, list[dict]] = {}
        for run in runs:
            held = read_held_out(run)
            groups.setdefault(held["domain"], []).append(held)
        for domain, reports in groups.items():
            by_domain.setdefault(domain, {})[name] = procedure_on_domain(reports, threshold_rule,
                                                                         threshold_from.get(name))
    parsed = [parse_rule(r) for r in rules]
    for name, ref, _ in parsed:
        for n in (name, ref):
            if n not in procedures:
                raise SystemExit(f"--rule: no procedure named {n!r} (given: {', '.join(names)})")
    # Each rule's pair; a procedure without a rule against the first one.
    ruled = {name for name, _, _ in parsed}
    pairs = list(dict.fromkeys([(name, ref) for name, ref, _ in parsed]
                               + [(n, names[0]) for n in names[1:] if n not in ruled]))
    diffs: dict[tuple[str, str], dict[str, dict]] = {}
    for name, ref in pairs:
        for domain, procs in by_domain.items():
            if name in procs and ref in procs:
                diffs.setdefault((name, ref), {})[domain] = paired_difference(procs[name], procs[ref], resamples, seed)
    verdicts = {}
    for name, ref, margins in parsed:
        if diffs.get((name, ref)):
            verdicts[f"{name} vs {ref}"] = verdict(diffs[(name, ref)], margins) | {"margins": margins}
    return {"by_domain": by_domain, "diffs": diffs, "verdicts": verdicts, "threshold_rule": threshold_rule,
            "resamples": resamples, "bootstrap_seed": seed}


def _ci(triple) -> str:
    d, low, high = triple
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown(result: dict, command: str) -> str:
    lines = ["# Procedures on unseen domains", "",
             f"Written by `{command}` ({dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}). Each procedure's "
             "runs averaged by mean logit, cut at the threshold it would ship with.", "",
             "| held-out domain | procedure | runs (seeds) | TTA | threshold (from) | n (atypical) | AUC | BA | "
             "sensitivity | specificity | domain's best cut: BA (given away) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for domain, procs in sorted(result["by_domain"].items()):
        for name, p in procs.items():
            lines.append(f"| {domain} | {name} | {len(p['runs'])} ({', '.join(map(str, p['seeds']))}) | {p['tta']} | "
                         f"{format_threshold(p['threshold'])} ({p['threshold_from']}) | {p['n']} ({p['n_atypical']}) | "
                         f"{p['roc_auc']:.3f} | {p['balanced_accuracy']:.3f} | {p['sensitivity']:.3f} | "
                         f"{p['specificity']:.3f} | {format_threshold(p['best_cut'])}: {p['ba_at_best_cut']:.3f} "
                         f"({p['ba_at_best_cut'] - p['balanced_accuracy']:+.3f}) |")
    if result["diffs"]:
        lines += ["", "| held-out domain | procedure − reference | AUC difference [95%] | BA difference [95%] |",
                  "|---|---|---|---|"]
        for (name, ref), per_domain in result["diffs"].items():
            for domain, d in sorted(per_domain.items()):
                lines.append(f"| {domain} | {name} − {ref} | {_ci(d['auc'])} | {_ci(d['ba'])} |")
        lines += ["", "The domain's best cut is chosen in hindsight on its own labels (choose_threshold's pooled "
                  "rule); no procedure can know it: the column says how far each threshold fell from it."]
        lines += ["", f"Intervals: 95% percentile, {result['resamples']} paired bootstrap resamples of the unseen "
                  f"domain's slides (seed {result['bootstrap_seed']})."]
    for label, v in result["verdicts"].items():
        checks = ", ".join(f"{k} {value:+.3f} (needs >= {bound:+.3f})" for k, (value, bound) in v["checks"].items())
        lines += ["", f"Rule {label} over {', '.join(v['domains'])}: {checks}: "
                      f"**{'passes' if v['passes'] else 'fails'}**."]
    return "\n".join(lines) + "\n"


def _plain(result: dict) -> dict:
    """procedures.json: per-figure arrays as lists; pair keys as 'name vs ref'."""
    by_domain = {d: {n: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
                     for n, p in procs.items()} for d, procs in result["by_domain"].items()}
    diffs = {f"{n} vs {r}": per_domain for (n, r), per_domain in result["diffs"].items()}
    return result | {"by_domain": by_domain, "diffs": diffs}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procedure", action="append", required=True, metavar="NAME=RUN,RUN,...",
                   help="a procedure and its leave-one-domain-out runs (their heldout.json), every domain's")
    p.add_argument("--rule", action="append", default=[], metavar="NAME=REF:MEAN_AUC,MIN_AUC,MEAN_BA",
                   help="a pre-registered decision rule: NAME against REF (several allowed)")
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="halfway",
                   help="for procedures whose runs have a validation part")
    p.add_argument("--threshold-from", action="append", default=[], metavar="NAME=OOF_JSON",
                   help="procedure NAME's threshold from a training.oof oof.json ({domain}: the held-out domain)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for procedures.md and procedures.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    procedures = {}
    for text in args.procedure:
        name, sep, runs = text.partition("=")
        if not sep or not name or not runs:
            raise SystemExit(f"--procedure {text!r}: expected NAME=RUN,RUN,...")
        if name in procedures:
            raise SystemExit(f"--procedure {name!r} given twice")
        procedures[name] = [Path(r) for r in runs.split(",") if r]
        for run in procedures[name]:
            if not (run if run.suffix == ".json" else run / "heldout.json").is_file():
                raise SystemExit(f"{run}: no heldout.json (a finished training.train --leave-out-domain run?)")
    threshold_from = {}
    for text in args.threshold_from:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--threshold-from {text!r}: expected NAME=OOF_JSON")
        threshold_from[name] = path
    result = compare_procedures(procedures, args.rule, args.threshold_rule, args.resamples, args.bootstrap_seed,
                                threshold_from)
    command = "python -m lab.procedures " + " ".join(
        [f"--procedure {t}" for t in args.procedure] + [f"--threshold-from {t}" for t in args.threshold_from]
        + [f"--rule {r}" for r in args.rule]
        + [f"--threshold-rule {args.threshold_rule}", f"--out {args.out}"])
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, command)
    (args.out / "procedures.md").write_text(text)
    (args.out / "procedures.json").write_text(json.dumps(_plain(result) | {"command": command}, indent=1) + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
