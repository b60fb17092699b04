"""Cross-fitting: combine the K fold runs' validation scores into out-of-fold (OOF) scores of every figure.

    python -m training.train --config shipped --data amibr=../shared/data/ami-br --cv-fold I --seed S \\
        --out runs/cv/fI-sS                      # I = 0..3 (K = round(1 / --val-fraction) = 4)
    python -m training.oof runs/cv/f*-s* --out runs/cv/oof

Each RUN is a training run directory (``training.train`` writes RUN/val_scores.json when it ends), an
export folder (``training.export`` writes val_scores.json beside the weights: the exported model's
scores, with its TTA and storage) or a val_scores.json file. Runs trained before these files were
written get one by export: ``python -m training.export RUN --config shipped --out RUN/export``.

The runs must share the data and K, and their validation parts must partition the figures: every
figure is validated in exactly one fold (an error names the runs otherwise). Several runs of one fold
(seeds) are averaged per figure by mean logit (``stats.ensemble.mean_logit``): the seed
ensemble's OOF score. Runs are put in the same fold by their validation figures, so runs made with
``--split-file`` of a split equal to a fold (the split.json of the networks shipped until 2026-12-06 is fold 0)
count as that fold.

Writes DIR/oof.json (per figure: key, label, domain, group, fold, score; the threshold and metrics)
and DIR/oof.md: the threshold fitted on the OOF scores (``--threshold-rule``, default ``halfway``, the
shipped rule of ``stats.metrics.choose_threshold``), and pooled and per-domain ROC AUC, balanced
accuracy at 0.5 and at that threshold, sensitivity and specificity, with 95% intervals from a
bootstrap over slides (``stats.bootstrap.group_bootstrap_intervals``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

from data.split import data_hash, n_folds_for, record_key, split_hash
from model.weights import format_threshold
from stats.bootstrap import group_bootstrap_intervals
from stats.ensemble import mean_logit
from stats.metrics import THRESHOLD_RULES, choose_threshold, per_domain_metrics

VAL_SCORES = "val_scores.json"
FORMAT = 1
PER_FIGURE = ("keys", "labels", "domains", "groups", "scores")


# --------------------------------------------------------------------------- val_scores.json

def split_identity(records, train_idx: list[int], val_idx: list[int], train_args: dict) -> dict:
    """What a cross-fit's runs must share (data, K) and what tells their folds apart. The data are the
    figures the split divides (training and validation parts), so a --limit run's export, which reads
    the whole dataset, is identified as its run is."""
    divided = [records[i] for i in sorted(train_idx + val_idx)]
    val_fraction = train_args.get("val_fraction", 0.25)
    return {"data": train_args.get("data"), "limit": train_args.get("limit", 0),
            "val_fraction": val_fraction, "n_folds": n_folds_for(val_fraction),
            "split_seed": train_args.get("split_seed", 0), "cv_fold": train_args.get("cv_fold"),
            "split_file": train_args.get("split_file"), "leave_out_domain": train_args.get("leave_out_domain"),
            "n_figures": len(divided), "data_sha256": data_hash(divided),
            "split_sha256": split_hash(records, train_idx, val_idx)}


def write_val_scores(path: Path, records, train_idx: list[int], val_idx: list[int], scores, train_args: dict, *,
                     source: str, selected_model: str, tta: str, half: bool = False, seeds: list[int] | None = None,
                     best_epoch: int | None = None, runs: list[str] | None = None) -> None:
    """``path`` (val_scores.json): P(atypical) of every validation figure (``val_idx``, in that order) with
    its record key, label, domain and slide, and what identifies the data and split (``split_identity``)."""
    scores = np.asarray(scores, dtype=float).ravel()
    if len(scores) != len(val_idx):
        raise ValueError(f"{len(scores)} scores for {len(val_idx)} validation figures")
    val = [records[i] for i in val_idx]
    payload = {
        "format": FORMAT,
        "source": source,
        "runs": runs if runs is not None else [str(train_args.get("out"))],
        "seeds": seeds if seeds is not None else [train_args.get("seed")],
        "selected_model": selected_model,
        "best_epoch": best_epoch,
        "tta": tta,
        "half": half,
        "split": split_identity(records, train_idx, val_idx, train_args),
        "keys": [record_key(r) for r in val],
        "labels": [int(r.label) for r in val],
        "domains": [r.domain for r in val],
        "groups": [r.group for r in val],
        "scores": [float(x) for x in scores],
    }
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def read_val_scores(run: Path) -> dict:
    """A run's (or export's) val_scores.json, checked; SystemExit naming the file otherwise."""
    path = Path(run)
    if path.is_dir():
        path = path / VAL_SCORES
    if not path.is_file():
        raise SystemExit(f"{path}: not found. training.train writes it when a run ends (runs trained before it "
                         f"did: python -m training.export {run} --config shipped --out {Path(run) / 'export'}, "
                         f"then give {Path(run) / 'export'})")
    try:
        payload = json.loads(path.read_text())
        lengths = {key: len(payload[key]) for key in PER_FIGURE}
        payload["split"]["data_sha256"], payload["split"]["n_folds"], payload["split"]["n_figures"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a val_scores.json file ({exc!r})") from None
    if len(set(lengths.values())) != 1:
        raise SystemExit(f"{path}: per-figure lists of different lengths {lengths}")
    if len(set(payload["keys"])) != len(payload["keys"]):
        raise SystemExit(f"{path}: a figure is listed twice")
    payload["path"], payload["run"] = str(path), str(run)
    return payload


def read_cross_fit(path: Path, records, train_idx: list[int], leave_out_domain: str | None = None) -> dict:
    """training.oof's ``oof.json`` for runs trained on every figure of ``train_idx`` (``--all-figures``),
    checked to be a cross-fit of exactly those figures with the same held-out domain: their threshold and
    numbers must come from scores each figure got from a network that did not train on it. SystemExit
    naming the file otherwise."""
    try:
        report = json.loads(Path(path).read_text())
        keys = {f["key"] for f in report["figures"]}
        float(report["summary"]["threshold"]), report["summary"]["at_threshold"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"--threshold-from {path}: not a training.oof oof.json ({exc!r})") from None
    if report.get("leave_out_domain") != leave_out_domain:
        raise SystemExit(f"--threshold-from {path}: a cross-fit with held-out domain {report.get('leave_out_domain')}, "
                         f"the run(s) hold out {leave_out_domain}")
    if keys != {record_key(records[i]) for i in train_idx}:
        raise SystemExit(f"--threshold-from {path}: its {len(keys)} out-of-fold figures are not the run(s)' "
                         f"{len(train_idx)} training figures (another --data or --limit?)")
    return report


# --------------------------------------------------------------------------- combining the folds

def check_runs_agree(parts: list[dict]) -> None:
    """The runs of one cross-fit: the same data (hash over every figure they divide), K and held-out domain
    (a cross-fit inside a leave-one-domain-out fold, ``--leave-out-domain D --cv-fold I``, divides the other
    domains' figures)."""
    first = parts[0]
    for part in parts:
        split = part["split"]
        for key, what in (("leave_out_domain", "held-out domain (--leave-out-domain)"),
                          ("data_sha256", "data (figures, labels, domains, slides; --data, --limit)"),
                          ("n_folds", "number of folds K = round(1 / --val-fraction)")):
            if split[key] != first["split"][key]:
                raise SystemExit(f"{part['path']}: {what} not the same as in {first['path']} "
                                 f"({split[key]} against {first['split'][key]}); the runs of a cross-fit need the same")


def group_folds(parts: list[dict]) -> list[dict]:
    """Runs grouped by their validation figures (one group per fold, its seeds the members), each group's
    fold number (its runs' --cv-fold; otherwise the lowest number no group records) and its scores
    averaged by mean logit over the members."""
    groups: dict[frozenset, list[dict]] = {}
    for part in parts:
        groups.setdefault(frozenset(part["keys"]), []).append(part)
    folds = []
    for members in groups.values():
        recorded = {m["split"].get("cv_fold") for m in members} - {None}
        if len(recorded) > 1:
            raise SystemExit(f"{members[0]['path']} and others validate on the same figures but record --cv-fold "
                             f"{sorted(recorded)}")
        first = members[0]
        keys = first["keys"]
        by_key = [dict(zip(m["keys"], m["scores"])) for m in members]
        scores = [by_key[0][k] if len(members) == 1 else mean_logit([s[k] for s in by_key]) for k in keys]
        folds.append({"fold": recorded.pop() if recorded else None, "runs": [m["run"] for m in members],
                      "seeds": [s for m in members for s in m.get("seeds", [])],
                      "keys": keys, "labels": first["labels"], "domains": first["domains"],
                      "groups": first["groups"], "scores": scores})
    numbered = [f for f in folds if f["fold"] is not None]
    for fold in numbered:
        same = [f for f in numbered if f["fold"] == fold["fold"] and f is not fold]
        if same:
            raise SystemExit(f"{fold['runs'][0]} and {same[0]['runs'][0]} both record --cv-fold {fold['fold']} but "
                             f"validate on different figures (a different --split-seed or --val-fraction?)")
    free = iter(sorted(set(range(len(folds) + len(numbered))) - {f["fold"] for f in numbered}))
    for fold in sorted((f for f in folds if f["fold"] is None), key=lambda f: min(f["keys"])):
        fold["fold"], fold["fold_from"] = next(free), "assigned (no --cv-fold recorded: a --split-file run)"
    for fold in folds:
        fold.setdefault("fold_from", "--cv-fold")
    return sorted(folds, key=lambda f: f["fold"])


def check_partition(folds: list[dict], n_figures: int, n_folds: int) -> None:
    """Every figure in exactly one fold's validation part, and K parts."""
    seen: dict[str, dict] = {}
    for fold in folds:
        for key in fold["keys"]:
            if key in seen:
                raise SystemExit(f"figure {key} is in the validation part of {seen[key]['runs'][0]} (fold "
                                 f"{seen[key]['fold']}) and of {fold['runs'][0]} (fold {fold['fold']}): these runs "
                                 f"are not folds of one cross-fit (a different --split-seed or --val-fraction?)")
            seen[key] = fold
    if len(seen) != n_figures:
        missing = sorted(set(range(n_folds)) - {f["fold"] for f in folds})
        raise SystemExit(f"{n_figures - len(seen)} of {n_figures} figures are in no run's validation part: a "
                         f"{n_folds}-fold cross-fit needs a run of every fold; given folds "
                         f"{[f['fold'] for f in folds]}" + (f", missing {missing}" if missing else ""))
    if len(folds) != n_folds:
        raise SystemExit(f"{len(folds)} distinct validation parts for K = {n_folds} folds")


def out_of_fold(parts: list[dict]) -> tuple[list[dict], list[dict]]:
    """(figures, folds): every figure once (key, label, domain, group, fold, score), in fold then run order."""
    check_runs_agree(parts)
    folds = group_folds(parts)
    check_partition(folds, parts[0]["split"]["n_figures"], parts[0]["split"]["n_folds"])
    figures = [{"key": k, "label": y, "domain": d, "group": g, "fold": f["fold"], "score": s}
               for f in folds for k, y, d, g, s in zip(f["keys"], f["labels"], f["domains"], f["groups"], f["scores"])]
    return figures, folds


# --------------------------------------------------------------------------- metrics

# Interval names: (metric of group_bootstrap_intervals, cut) -> the report's name.
INTERVALS = {("roc_auc", "0.5"): "roc_auc", ("balanced_accuracy", "0.5"): "balanced_accuracy_at_0.5",
             ("sensitivity", "0.5"): "sensitivity_at_0.5", ("specificity", "0.5"): "specificity_at_0.5",
             ("balanced_accuracy", "threshold"): "balanced_accuracy_at_threshold",
             ("sensitivity", "threshold"): "sensitivity_at_threshold",
             ("specificity", "threshold"): "specificity_at_threshold"}


def summarise(figures: list[dict], rule: str = "halfway", resamples: int = 2000, seed: int = 0,
              also_at: tuple[float, ...] = ()) -> dict:
    """The threshold fitted on the OOF scores, metrics at 0.5 and at it, pooled and per domain, with
    slide-bootstrap 95% intervals (the threshold held fixed); and the metrics at each cut of ``also_at``
    (e.g. a shipped model's threshold, to see how it holds on every figure)."""
    labels = np.array([f["label"] for f in figures])
    scores = np.array([f["score"] for f in figures])
    names = sorted({f["domain"] for f in figures})
    domains = np.array([names.index(f["domain"]) for f in figures])
    slides = np.array([f["group"] for f in figures])
    threshold = choose_threshold(labels, scores, domains, rule)
    intervals = {}
    for name, mask in [("pooled", np.ones(len(figures), dtype=bool))] + [(n, domains == i) for i, n in
                                                                          enumerate(names)]:
        intervals[name] = {}
        for cut_name, cut in (("0.5", 0.5), ("threshold", threshold)):
            ci = group_bootstrap_intervals(labels[mask], (scores[mask] >= cut).astype(int), scores[mask],
                                           slides[mask], resamples, seed)
            intervals[name].update({INTERVALS[(m, c)]: ci[m] for m, c in INTERVALS if c == cut_name})
    folds = sorted({f["fold"] for f in figures})
    fold_of = np.array([f["fold"] for f in figures])
    return {
        "threshold_rule": rule, "threshold": threshold, "domains": names,
        "at_0.5": per_domain_metrics(labels, scores, domains, names),
        "at_threshold": per_domain_metrics(labels, scores, domains, names, threshold),
        "intervals": intervals,
        "bootstrap": {"unit": "slide", "resamples": resamples, "seed": seed, "level": 0.95,
                      "threshold": "held fixed at the OOF threshold"},
        "also_at": {f"{cut:g}": per_domain_metrics(labels, scores, domains, names, cut) for cut in also_at},
        "per_fold_at_0.5": {str(k): per_domain_metrics(labels[fold_of == k], scores[fold_of == k],
                                                       domains[fold_of == k], names)["pooled"] for k in folds},
    }


def _cell(value, interval) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def markdown(report: dict) -> str:
    s = report["summary"]
    t = format_threshold(s["threshold"])
    lines = [
        "# Out-of-fold validation (cross-fitting)", "",
        f"{report['n_figures']} figures, each scored by the run(s) that did not train on it "
        f"({report['n_folds']}-fold, slide-disjoint, stratified by domain and label). Several runs of a fold "
        f"are averaged by mean logit. Written by `{report['command']}` ({report['date']}).", "",
        *([f"Cross-fit inside the leave-one-domain-out fold of {report['leave_out_domain']}: the figures of the "
           f"other domains (the held-out domain is in no fold).", ""] if report.get("leave_out_domain") else []),
        "| fold | runs | seeds | figures | atypical | AUC | BA@0.5 |", "|---|---|---|---|---|---|---|",
    ]
    for fold in report["folds"]:
        m = s["per_fold_at_0.5"][str(fold["fold"])]
        lines.append(f"| {fold['fold']} | {', '.join(fold['runs'])} | {', '.join(map(str, fold['seeds']))} | "
                     f"{m['n']} | {m['n_atypical']} | {_cell(m['roc_auc'], None)} | "
                     f"{_cell(m['balanced_accuracy'], None)} |")
    lines += ["", f"Threshold ({s['threshold_rule']}, fitted on the OOF scores): **{t}**.", "",
              f"| group | n | atypical | ROC AUC | BA@0.5 | BA@{t} | sensitivity@{t} | specificity@{t} |",
              "|---|---|---|---|---|---|---|---|"]
    for name in ["pooled"] + s["domains"]:
        a, b, ci = s["at_0.5"][name], s["at_threshold"][name], s["intervals"][name]
        lines.append(f"| {name} | {b['n']} | {b['n_atypical']} | {_cell(b['roc_auc'], ci['roc_auc'])} | "
                     f"{_cell(a['balanced_accuracy'], ci['balanced_accuracy_at_0.5'])} | "
                     f"{_cell(b['balanced_accuracy'], ci['balanced_accuracy_at_threshold'])} | "
                     f"{_cell(b['sensitivity'], ci['sensitivity_at_threshold'])} | "
                     f"{_cell(b['specificity'], ci['specificity_at_threshold'])} |")
    for cut, metrics in s.get("also_at", {}).items():
        lines += ["", f"At the given cut {cut} (`--also-at`): " + "; ".join(
            f"{name} BA {metrics[name]['balanced_accuracy']:.3f} (sensitivity {metrics[name]['sensitivity']:.3f}, "
            f"specificity {metrics[name]['specificity']:.3f})" for name in ["pooled"] + s["domains"]) + "."]
    mean = s["at_threshold"]["mean_domain"]
    lines += ["", f"Mean over domains: AUC {mean['roc_auc']:.3f}, BA@{t} {mean['balanced_accuracy']:.3f} "
                  f"(worst domain {mean['worst_balanced_accuracy']:.3f}).", "",
              f"Intervals: 95% percentile, {s['bootstrap']['resamples']} bootstrap resamples of whole slides "
              f"(seed {s['bootstrap']['seed']}), within each group; the threshold is held fixed, and since it was "
              "fitted on these same scores the balanced accuracy at it is slightly optimistic.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="fold runs (val_scores.json inside, or the file): every fold once, or several seeds of it")
    p.add_argument("--out", type=Path, required=True, help="folder for oof.json and oof.md")
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="halfway")
    p.add_argument("--resamples", type=int, default=2000, help="slide-bootstrap resamples for the intervals")
    p.add_argument("--also-at", type=float, nargs="+", default=[], metavar="CUT",
                   help="also report balanced accuracy, sensitivity and specificity at these cuts (e.g. the "
                        "shipped threshold)")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if len({str(r.resolve()) for r in args.runs}) != len(args.runs):
        raise SystemExit("the same run is listed twice")
    parts = [read_val_scores(run) for run in args.runs]
    figures, folds = out_of_fold(parts)
    summary = summarise(figures, args.threshold_rule, args.resamples, args.bootstrap_seed, tuple(args.also_at))
    first = parts[0]["split"]
    report = {
        "command": "python -m training.oof " + " ".join(map(str, args.runs)) + f" --out {args.out}"
                   + f" --threshold-rule {args.threshold_rule} --resamples {args.resamples}"
                   + (" --also-at " + " ".join(f"{c:g}" for c in args.also_at) if args.also_at else ""),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_figures": len(figures), "n_folds": first["n_folds"], "data": first["data"],
        "leave_out_domain": first.get("leave_out_domain"),
        "data_sha256": first["data_sha256"], "split_seed": first["split_seed"],
        "folds": [{k: f[k] for k in ("fold", "fold_from", "runs", "seeds")} | {"n": len(f["keys"])} for f in folds],
        "summary": summary,
        "figures": figures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oof.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "oof.md").write_text(markdown(report))
    pooled, ci = summary["at_threshold"]["pooled"], summary["intervals"]["pooled"]
    print(f"{len(figures)} figures out of fold ({len(parts)} runs, {len(folds)} folds): AUC "
          f"{_cell(pooled['roc_auc'], ci['roc_auc'])}, threshold {format_threshold(summary['threshold'])} "
          f"({args.threshold_rule}), BA {_cell(pooled['balanced_accuracy'], ci['balanced_accuracy_at_threshold'])}"
          f" -> {args.out / 'oof.md'}")
    return report


if __name__ == "__main__":
    main()
