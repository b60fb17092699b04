"""Markdown tables of exported runs' validation metrics, per domain and pooled (for README and notes).

    python -m lab.compare weights /tmp/erm_export ... [--names full erm ...]
    python -m lab.compare --arm full=weights,exports/full-s1 --arm erm=exports/erm-s0,exports/erm-s1
    python -m lab.compare --held-out runs/lodo-s360-full runs/lodo-s360-erm ... [--ba-at halfway]
    python -m lab.compare --starts runs/erm-main-s0 runs/erm-main-s1 ...

The first form prints one row per run and domain (naming the recipe file a run was trained from,
when its card records one). The second compares arms trained with several
seeds on the same split: per domain, mean ± sample standard deviation over seeds of ROC AUC and
balanced accuracy at 0.5 (both free of the threshold choice, which is fitted on the same
validation split), and the seed-paired difference of each arm against the first one.
Reads each folder's model_card.json (written by training.export on the run's saved split).
The third form reads leave-one-domain-out runs' heldout.json (written by training.train): one row
per run on its unseen domain (its arm named by ``arm_name``, with the recipe file it was trained
from, ``--config``, when it had one; with the best balanced accuracy any cut reaches there, an upper
bound that shows what the threshold's transfer cost), and for every run beside a plain ERM run
(default augmentation) or beside a run of the first listed run's arm (when that is another arm), on the same
domain and seed, the AUC difference with a 95% interval from a paired bootstrap over the held-out
slides; where an arm pair was scored with two or more seeds on a domain, also the mean of those
seed-paired differences, bootstrapped over the same slides for every seed. With ``--ba-at RULE``
the same pairs are also compared by balanced accuracy (the challenge's ranking metric) on the unseen
domain, each run cutting at its own threshold: 0.5, the run's reported one (``own``), or a
``stats.metrics.choose_threshold`` rule fitted on the validation scores its report keeps (e.g.
``halfway``, the shipped rule). The fourth reads
training runs' history.json: the
first epoch at which each run's EMA model left chance (mean per-domain validation AUC ≥ 0.7)
and its final and best validation numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from model.weights import format_threshold
from stats.bootstrap import paired_auc_bootstrap, paired_ba_bootstrap
from stats.metrics import THRESHOLD_RULES, choose_threshold

SEED_METRICS = (("roc_auc", "at_threshold", "AUC"), ("balanced_accuracy", "at_0.5", "BA@0.5"))


def rows_for(card: dict, name: str) -> list[str]:
    val = card["validation"]
    out = []
    for domain in ["pooled"] + card["data"]["domains"]:
        if domain not in val["at_threshold"]:
            continue
        m, m05 = val["at_threshold"][domain], val["at_0.5"][domain]
        # An --all-figures export's numbers are out-of-fold: there is no validation part to score a baseline on.
        base = val.get("trivial_intensity_baseline", {}).get("metrics", {}).get(domain)
        base_auc = f"{base['roc_auc']:.3f}" if base else "n/a"
        out.append(f"| {name} | {domain} | {m['n']} ({m['n_atypical']}) | {m['roc_auc']:.3f} | "
                   f"{m05['balanced_accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['sensitivity']:.3f} | "
                   f"{m['specificity']:.3f} | {base_auc} |")
    return out


def epochs_label(card: dict) -> str:
    """``epoch 30``, or ``epochs 30, 37, 37`` for a seed ensemble (one selected epoch per member)."""
    members = card.get("ensemble", {}).get("members")
    if not members:
        return f"epoch {card['training']['best_epoch']}"
    return "epochs " + ", ".join(str(m["training"]["best_epoch"]) for m in members)


def runs_table(exports: list[Path], names: list[str]) -> list[str]:
    lines = ["| model | domain | n (atypical) | ROC AUC | BA @0.5 | BA @thr | sensitivity @thr | specificity @thr "
             "| intensity-baseline AUC |", "|---|---|---|---|---|---|---|---|---|"]
    for export, name in zip(exports, names):
        card = json.loads((export / "model_card.json").read_text())
        recipe = card["training"].get("recipe", {}).get("name")  # exports of runs trained with --config
        label = f"{name} ({card['selected_model']}, thr {format_threshold(card['threshold'])}, {epochs_label(card)}" \
                + (f", recipe {recipe})" if recipe else ")")
        lines += rows_for(card, label)
    return lines


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def seeds_table(arms: dict[str, list[dict]]) -> list[str]:
    """Per domain and metric: each arm's mean ± sd over its seeds, and the seed-paired difference
    ``arm − reference`` (reference = the first arm; seeds are paired by position, so list the
    exports of every arm in the same seed order). Paired, because the split and the data order
    per seed are shared, so most of the seed-to-seed variation cancels in the difference."""
    names = list(arms)
    reference = names[0]
    domains = ["pooled"] + arms[reference][0]["data"]["domains"]
    header = ["domain", "metric"] + [f"{n} (n={len(arms[n])})" for n in names]
    header += [f"{n} − {reference} (paired: mean, min..max)" for n in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for domain in domains:
        for key, where, label in SEED_METRICS:
            values = {n: [c["validation"][where][domain][key] for c in arms[n]] for n in names}
            row = [domain, label] + [mean_sd(values[n]) for n in names]
            for n in names[1:]:
                diffs = [a - b for a, b in zip(values[n], values[reference])]
                row.append(f"{statistics.fmean(diffs):+.3f} ({min(diffs):+.3f}..{max(diffs):+.3f})")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def arm_name(arm: dict) -> str:
    """``erm`` (no part on), ``erm + kd`` (one on), ``full without align`` (two on), ``full``,
    plus any non-default augmentation (``erm + HED 0.2``), input size (``erm at 224 px``) and a
    ``--pretrained`` initialisation.
    Reports written before an augmentation switch existed lack its key and used its default."""
    parts = ("mixstyle", "align", "kd")
    on = [name for name in parts if not arm[f"no_{name}"]]
    name = ("erm" if not on else "full" if len(on) == 3 else "erm + " + on[0] if len(on) == 1
            else "full without " + next(n for n in parts if n not in on))
    if arm.get("hed_jitter", 0.0):
        name += f" + HED {arm['hed_jitter']:g}"
    if arm.get("aug_strength", 1.0) != 1.0:
        name += f" + aug {arm['aug_strength']:g}"
    if arm.get("light_aug_epochs", 0):
        name += f" + light aug {arm['light_aug_epochs']} ep"
    if arm.get("align_standardise", False) and not arm["no_align"]:
        name += " (standardised align)"
    if arm.get("mixstyle_start_epoch", 0) and not arm["no_mixstyle"]:
        name += f" (mixstyle from ep {arm['mixstyle_start_epoch'] + 1})"
    if arm.get("kd_teacher") and not arm["no_kd"]:
        name += f" (KD from {Path(arm['kd_teacher']).name})"
    if arm.get("targets", "majority") != "majority":
        name += f" + {arm['targets']} targets"
    if arm.get("subtype_weight", 0.0):
        name += f" + subtype head {arm['subtype_weight']:g}"
    if arm.get("input_size", 128) != 128:
        name += f" at {arm['input_size']} px"
    if arm.get("all_figures"):
        name += " (all figures)"
    if arm.get("cv_fold") is not None:
        name += f" (cross-fit fold {arm['cv_fold']})"
    if arm.get("pretrained"):
        # A lab.pretrain_ssl backbone is always OUT/backbone.safetensors: its folder names it.
        init = Path(arm["pretrained"])
        name += f" (init {init.parent.name if init.name == 'backbone.safetensors' else init.name})"
    return name


def arm_label(arm: dict) -> str:
    """``arm_name``, and the recipe file the run was trained from (``--config``), as the table shows the
    arm: ``erm + light aug 10 ep (recipe shipped)``. Pairing uses ``arm_name`` alone, so a run trained
    from a recipe pairs with one trained from the same flags (reports from before recipes name none)."""
    config = arm.get("config")
    return arm_name(arm) + (f" (recipe {Path(config).stem})" if config else "")


def best_cut(labels, scores) -> tuple[float, float]:
    """The highest balanced accuracy any cut on the threshold rule's grid reaches, and that cut.

    Chosen on the scored figures themselves, so an upper bound: the gap to BA at the run's own
    threshold is what a perfectly transferred threshold could still add."""
    import numpy as np

    from stats.metrics import THRESHOLD_GRID as grid

    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores)
    calls = scores[None, :] >= grid[:, None]
    ba = 0.5 * (calls[:, labels].mean(1) + (~calls[:, ~labels]).mean(1))
    i = int(np.argmax(ba))
    return float(ba[i]), float(grid[i])


BA_CUTS = ("0.5", "own") + THRESHOLD_RULES


def unseen_threshold(held: dict, cut: str) -> float:
    """The threshold a run cuts its unseen-domain scores at: 0.5, the one its report used
    (``own``), or a threshold rule fitted on the validation scores the report keeps."""
    if cut == "0.5":
        return 0.5
    if cut == "own":
        return float(held["threshold"])
    if "val_scores" not in held:
        raise ValueError(f"{held['path']}: keeps no validation scores, so no {cut!r} threshold can be fitted "
                         "(rescore it with python -m lab.heldout RUN)")
    return choose_threshold(held["val_labels"], held["val_scores"], held["val_domains"], cut)


def held_out_file(run: Path) -> Path:
    """RUN/heldout.json, or the report file itself (e.g. RUN/heldout-none.json from lab.heldout --out)."""
    return run if run.suffix == ".json" else run / "heldout.json"


def read_held_out(run: Path) -> dict:
    """A leave-one-domain-out report, with each held-out figure's slide (from the report's
    ``test_figures``, or for older reports the run's split.json, listed in the same order)."""
    path = held_out_file(run)
    held = json.loads(path.read_text())
    held.setdefault("tta", "none")
    test = held.get("test_figures") or json.loads((path.parent / "split.json").read_text())["test"]
    if len(test) != len(held["test_scores"]):
        raise ValueError(f"{path}: {len(test)} held-out figures listed but {len(held['test_scores'])} scores")
    held["test_groups"] = [key.split("::", 1)[0] for key in test]
    held["path"] = str(path)
    return held


def held_out_table(runs: list[Path], ba_at: str | None = None, names: list[str] | None = None) -> list[str]:
    """Markdown tables of leave-one-domain-out reports: one row per run, then the paired differences
    (``reference_pairs``) in AUC and, with ``ba_at``, in balanced accuracy at that cut. ``names`` label
    the runs (default: each run folder's name)."""
    lines = ["| held-out domain | run | arm | seed | TTA | model (epoch) | thr | AUC | BA @0.5 | BA @thr "
             "| sensitivity @thr | specificity @thr | BA @best cut (cut) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    helds = [read_held_out(r) for r in runs]
    if names and len(names) != len(runs):
        raise ValueError(f"{len(names)} --names for {len(runs)} runs")
    if not names:
        names = [held_out_file(r).parent.name + ("" if r.suffix != ".json" else f"/{r.name}") for r in runs]
        if len(set(names)) < len(names):  # e.g. two runs' "teacher" folders: the paths tell them apart
            names = [str(r) for r in runs]
    for name, h in zip(names, helds):
        t, t05 = h["test_at_threshold"]["pooled"], h["test_at_0.5"]["pooled"]
        lines.append(f"| {h['domain']} | {name} | {arm_label(h['arm'])} | {h['arm']['seed']} | {h['tta']} | "
                     f"{h['selected_model']} ({h['best_epoch']}) | {format_threshold(h['threshold'])} | "
                     f"{t['roc_auc']:.3f} | "
                     f"{t05['balanced_accuracy']:.3f} | {t['balanced_accuracy']:.3f} | {t['sensitivity']:.3f} | "
                     f"{t['specificity']:.3f} | %.3f (%.2f) |" % best_cut(h["test_labels"], h["test_scores"]))
    pairs = reference_pairs(names, helds)
    lines += pair_tables(pairs, lambda h: h["test_scores"], paired_auc_bootstrap, "AUC")
    if ba_at:
        cuts = {id(h): unseen_threshold(h, ba_at) for h in helds}
        calls = {id(h): [int(s >= cuts[id(h)]) for s in h["test_scores"]] for h in helds}
        lines += pair_tables(pairs, lambda h: calls[id(h)], paired_ba_bootstrap, f"BA @{ba_at}",
                             lambda h: format_threshold(cuts[id(h)]))
    return lines


def reference_pairs(names: list[str], helds: list[dict]) -> list[tuple[str, dict, str, dict]]:
    """(name, report, reference name, reference report) for every run beside a reference run on the
    same domain, seed, TTA and figures. References: every plain ERM run (default augmentation) and
    every run of the first listed run's arm (so a sweep over several folds and seeds pairs each of
    them with that arm on the same fold and seed)."""
    first_arm = arm_name(helds[0]["arm"]) if helds else None
    is_reference = [arm_name(h["arm"]) in ("erm", first_arm) for h in helds]
    pairs = []
    for name, h in zip(names, helds):
        for j, (ref_name, ref) in enumerate(zip(names, helds)):
            if (is_reference[j] and arm_name(ref["arm"]) != arm_name(h["arm"])
                    and not (arm_name(h["arm"]) == "erm" and arm_name(ref["arm"]) == first_arm)
                    and ref["domain"] == h["domain"] and ref["arm"]["seed"] == h["arm"]["seed"]
                    and ref["tta"] == h["tta"] and ref["test_labels"] == h["test_labels"]):
                pairs.append((name, h, ref_name, ref))
    return pairs


def pair_tables(pairs, values, bootstrap, metric: str, cut=None) -> list[str]:
    """Two markdown tables for one metric: each pair's difference with its slide-bootstrap interval,
    then per domain and arm pair scored with two or more seeds, the mean of the seed-paired
    differences. ``values(report)`` gives what ``bootstrap`` compares (scores, or 0/1 calls);
    ``cut(report)``, when given, the threshold a run's calls were cut at (shown as "a / reference")."""
    diffs, by_arms = [], {}
    for name, h, ref_name, ref in pairs:
        d, low, high = bootstrap(h["test_labels"], values(h), values(ref), h["test_groups"])
        thr = f" {cut(h)} / {cut(ref)} |" if cut else ""
        diffs.append(f"| {h['domain']} | {name} − {ref_name} | {h['tta']} |{thr} {d:+.3f} | "
                     f"[{low:+.3f}, {high:+.3f}] |")
        by_arms.setdefault((h["domain"], arm_name(h["arm"]), arm_name(ref["arm"]), h["tta"]), []).append((h, ref))
    lines = []
    if diffs:
        thr_head, thr_rule = (" thresholds |", "---|") if cut else ("", "")
        lines += ["", f"| held-out domain | runs | TTA |{thr_head} {metric} difference | 95% interval "
                  "(paired bootstrap over slides) |", "|---|---|---|" + thr_rule + "---|---|"] + diffs
    means = seed_mean_rows(by_arms, values, bootstrap)
    if means:
        lines += ["", f"| held-out domain | arm − reference arm | seeds | TTA | mean {metric} difference | "
                  "95% interval (the same slides resampled for every seed) |", "|---|---|---|---|---|---|"] + means
    return lines


def seed_mean_rows(pairs: dict, values=lambda h: h["test_scores"], bootstrap=paired_auc_bootstrap) -> list[str]:
    """Per held-out domain and pair of arms scored over two or more seeds: the mean over seeds of
    the seed-paired differences, with one slide bootstrap shared by every seed (the seeds score
    the same unseen figures, so their differences are not independent samples of slides)."""
    rows = []
    for (domain, arm, ref_arm, tta), members in pairs.items():
        first = members[0][0]
        same_figures = all(h["test_labels"] == first["test_labels"] and h["test_groups"] == first["test_groups"]
                           and h.get("test_figures") == first.get("test_figures") for h, _ in members)
        if len(members) < 2 or not same_figures:
            continue
        d, low, high = bootstrap(first["test_labels"], [values(h) for h, _ in members],
                                 [values(ref) for _, ref in members], first["test_groups"])
        seeds = ", ".join(str(h["arm"]["seed"]) for h, _ in members)
        rows.append(f"| {domain} | {arm} − {ref_arm} | {seeds} | {tta} | {d:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    return rows


LEARNED_AUC = 0.7  # "has left chance": the EMA model's mean per-domain validation AUC reached this


def first_learning_epoch(history: list[dict], level: float = LEARNED_AUC) -> int | None:
    """The first epoch (1-based, as logged) at which the EMA model's mean per-domain validation AUC
    reached ``level``; None if it never did. From scratch a run sits at chance for a while (the
    constant predictor's loss) and then learns; this is when it started."""
    for entry in history:
        if entry["val_ema"].get("mean_domain", {}).get("roc_auc", 0.0) >= level:
            return int(entry["epoch"])
    return None


def starts_table(runs: list[Path]) -> list[str]:
    """One row per training run directory (history.json): when it left chance and where it ended."""
    lines = [f"| run | epochs | first epoch EMA mean-domain AUC ≥ {LEARNED_AUC} | final EMA mean-domain AUC | "
             "best monitor (epoch) |", "|---|---|---|---|---|"]
    for run in runs:
        history = json.loads((run / "history.json").read_text())
        start = first_learning_epoch(history)
        best = max(history, key=lambda h: h["monitor"])
        lines.append(f"| {run.name or run} | {len(history)} | {start if start is not None else 'never'} | "
                     f"{history[-1]['val_ema']['mean_domain']['roc_auc']:.3f} | "
                     f"{best['monitor']:.3f} ({best['epoch']}) |")
    return lines


def parse_arm(text: str) -> tuple[str, list[Path]]:
    name, sep, folders = text.partition("=")
    if not sep or not folders:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=EXPORT[,EXPORT...]")
    return name, [Path(f) for f in folders.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="*", type=Path)
    p.add_argument("--names", nargs="*", help="labels for the export folders or --held-out runs, in their order")
    p.add_argument("--arm", action="append", type=parse_arm, default=[],
                   help="NAME=EXPORT,EXPORT,... (one export folder per seed, same seed order in every arm)")
    p.add_argument("--held-out", nargs="+", type=Path, metavar="RUN",
                   help="leave-one-domain-out run directories (heldout.json + split.json) or report files")
    p.add_argument("--ba-at", choices=BA_CUTS, metavar="CUT",
                   help="with --held-out: also compare the paired runs' unseen-domain balanced accuracy, each run "
                        f"cutting at CUT ({', '.join(BA_CUTS)}; a rule is fitted on the run's validation scores)")
    p.add_argument("--starts", nargs="+", type=Path, metavar="RUN",
                   help="training run directories (history.json): when each left chance, where it ended")
    args = p.parse_args(argv)
    if args.starts:
        missing = [r / "history.json" for r in args.starts if not (r / "history.json").is_file()]
        if missing:
            print(f"error: {missing[0]}: not found (training.train writes it every epoch)", file=sys.stderr)
            return 1
        print("\n".join(starts_table(args.starts)))
        return 0
    if args.held_out:
        missing = [held_out_file(r) for r in args.held_out if not held_out_file(r).is_file()]
        if missing:
            print(f"error: {missing[0]}: not found (a --leave-out-domain run writes it when it ends)", file=sys.stderr)
            return 1
        try:
            print("\n".join(held_out_table(args.held_out, args.ba_at, args.names)))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if bool(args.exports) == bool(args.arm):
        p.error("give export folders, or --arm NAME=EXPORT,... (not both)")
    folders = args.exports + [f for _, fs in args.arm for f in fs]
    for folder in folders:
        if not (folder / "model_card.json").is_file():
            print(f"error: {folder / 'model_card.json'}: not found (export the run with python -m training.export)",
                  file=sys.stderr)
            return 1
    if args.exports:
        print("\n".join(runs_table(args.exports, args.names or [str(e) for e in args.exports])))
        return 0
    arms = {name: [json.loads((f / "model_card.json").read_text()) for f in fs] for name, fs in args.arm}
    if len({len(cards) for cards in arms.values()}) != 1:
        print("error: every --arm needs the same number of seeds (paired by position)", file=sys.stderr)
        return 1
    print("\n".join(seeds_table(arms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
