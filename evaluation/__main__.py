"""Offline evaluation in the MIDOG 2025 Track 2 format.

    python -m evaluation pack --data amibr=../shared/data/ami-br [--split SPLIT.json --part val] --out DIR [--jobs]
    python -m model.predict DIR/stacks --out PRED
    python -m evaluation score --ground-truth DIR/ground_truth.json --predictions PRED --out SCORES
    python -m evaluation report DIR/stacks/stack_1.tiff --out REPORT [--weights weights] [--tta none|dihedral]
    python -m evaluation ensemble PRED_SEED0 PRED_SEED1 ... --out PRED_ENSEMBLE [--weights weights]   (then score it)
    python -m evaluation paired --ground-truth DIR/ground_truth.json PRED_A PRED_B   (AUC A − B, slide bootstrap)

See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def add_pack_parser(sub) -> None:
    p = sub.add_parser("pack", help="labelled patches -> challenge-format stacks + ground_truth.json",
                       description="Turn labelled patches into multi-page TIFF stacks (up to 16 pages, shuffled "
                                   "with --seed), Grand Challenge job folders and an official-format ground truth.")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="dataset spec as for training (amibr=, midog25=, omg-octo=); repeatable")
    p.add_argument("--csv", type=Path, help="CSV with columns image (or path), label, domain")
    p.add_argument("--split", type=Path, help="split JSON saved by training; keep only --part of it")
    p.add_argument("--part", default="val", choices=["val", "train", "test"],
                   help="test: a leave-one-domain-out run's unseen domain")
    p.add_argument("--limit", type=int, help="pack a seeded random subset of this many figures")
    p.add_argument("--stack-size", type=int, default=16, help="pages per stack (1-16, default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for the page order (and --limit)")
    p.add_argument("--jobs", action="store_true", help="also write jobs/<stem>/ Grand Challenge input folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier pack in --out")
    p.add_argument("--no-progress", action="store_true")


def add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="official Track 2 metrics of per-stack predictions",
                       description="Check every prediction file like the official evaluator, compute pooled and "
                                   "per-domain metrics with bootstrap intervals, write metrics.json and plots.")
    p.add_argument("--ground-truth", type=Path, required=True, help="ground_truth.json (official format)")
    p.add_argument("--predictions", type=Path, required=True,
                   help="folder of <stem>.json or <stem>/multiple-mitotic-figure-classification.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--confidence-rule", default="p-atypical", choices=["p-atypical", "legacy-stated-class"],
                   help="how 'confidence' becomes the ROC score: p-atypical (default) = confidence is P(atypical) "
                        "for every figure, as the official evaluator reads it since 2025-07-27; "
                        "legacy-stated-class = the evaluator before then (1 - confidence for 'normal')")
    p.add_argument("--threshold", type=float, help="threshold marked on the plots (default: model card, else 0.5)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="where to read the model card's threshold")
    p.add_argument("--domains", type=Path, help="domains.json with names for the ids (default: beside ground truth)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="montage + HTML of one stack with P(atypical) and where the network looked")
    p.add_argument("stack", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--threshold", type=float, help="default: the model card's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    # The choices are model.tta.TTA_MODES, not imported: that keeps torch out of `score`.
    p.add_argument("--tta", choices=["none", "dihedral"],
                   help="test-time augmentation of P(atypical) (default: the model "
                   "card's, as the container); the map always explains the upright view")
    p.add_argument("--explain", default="gradcam", choices=["gradcam", "cbam"],
                   help="gradcam: Grad-CAM at denseblock3 (8x8 at 128 px); cbam: the CBAM spatial attention (4x4)")


def add_ensemble_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="logit-average several prediction folders into one",
                       description="Average P(atypical) of several models' prediction folders in logit space.")
    p.add_argument("predictions", type=Path, nargs="+", help="folders of <stack stem>.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threshold", type=float,
                   help="class threshold for the written entries (default: model card, else 0.5)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="where to read the model card's threshold")


def add_paired_parser(sub) -> None:
    p = sub.add_parser("paired", help="AUC of two prediction folders on the same stacks, with a slide bootstrap",
                       description="AUC(A) - AUC(B), pooled and per domain, with a 95%% interval from resampling "
                                   "whole slides (read from the pack's manifest.json beside the ground truth).")
    p.add_argument("predictions", type=Path, nargs=2, metavar="PRED", help="folders A and B of <stem>.json")
    p.add_argument("--ground-truth", type=Path, required=True, help="ground_truth.json (official format)")
    p.add_argument("--manifest", type=Path, help="pack manifest with each page's slide (default: beside ground truth)")
    p.add_argument("--domains", type=Path, help="domains.json with names for the ids (default: beside ground truth)")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the result as JSON here")


def card_threshold(weights: Path) -> tuple[float, str]:
    """The model card's threshold, else 0.5; with where it came from."""
    from model.weights import WeightsError, read_card

    try:
        return float(read_card(weights)["threshold"]), f"{weights / 'model_card.json'}"
    except WeightsError:
        return 0.5, "default (no readable model card)"


def run_pack(args) -> int:
    from .pack import pack_records, select_records

    records = select_records(args.data, args.csv, args.split, args.part, args.limit, args.seed)
    summary = pack_records(records, args.out, args.stack_size, args.seed, args.jobs, args.overwrite,
                           progress=not args.no_progress)
    print(f"{summary['figures']} figures ({summary['atypical']} atypical) in {summary['stacks']} stacks -> "
          f"{args.out}/stacks; ground truth {args.out}/ground_truth.json; domains "
          f"{json.dumps(summary['domains'])}", file=sys.stderr)
    return 0


def run_score(args) -> int:
    from model.io import write_json_atomic

    from .score import confidence_rule_warning, format_summary, load_domain_names, score_predictions, write_figures_csv

    names = load_domain_names(args.domains or args.ground_truth.parent / "domains.json")
    metrics, figures = score_predictions(args.ground_truth, args.predictions, args.confidence_rule, args.bootstrap,
                                         args.seed, domain_names=names)
    warning = confidence_rule_warning(figures, args.confidence_rule)
    if warning:
        metrics["settings"]["warning"] = warning
        print(f"warning: {warning}", file=sys.stderr)
    threshold, source = (args.threshold, "--threshold") if args.threshold is not None else card_threshold(args.weights)
    metrics["settings"]["plot_threshold"] = {"value": threshold, "source": source}
    write_json_atomic(metrics, args.out / "metrics.json")
    write_figures_csv(figures, args.out / "figures.csv", names)
    if not args.no_plots:
        from .plots import write_plots

        write_plots(figures, args.out, threshold, names)
    print(format_summary(metrics))
    print(f"-> {args.out}/metrics.json", file=sys.stderr)
    return 0


def run_ensemble(args) -> int:
    from .ensemble import ensemble_folders

    threshold, source = (args.threshold, "--threshold") if args.threshold is not None else card_threshold(args.weights)
    n = ensemble_folders(args.predictions, args.out, threshold)
    print(f"{n} stacks, {len(args.predictions)} models, threshold {threshold} ({source}) -> {args.out}",
          file=sys.stderr)
    return 0


def run_paired(args) -> int:
    from model.io import write_json_atomic

    from .paired import format_paired, paired_auc
    from .score import load_domain_names

    names = load_domain_names(args.domains or args.ground_truth.parent / "domains.json")
    manifest = args.manifest or args.ground_truth.parent / "manifest.json"
    result = paired_auc(args.ground_truth, *args.predictions, manifest, args.bootstrap, args.seed, names)
    print(format_paired(result))
    if args.out:
        write_json_atomic(result, args.out)
        print(f"-> {args.out}", file=sys.stderr)
    return 0


def run_report(args) -> int:
    from .report import report_stack

    paths = report_stack(args.stack, args.out, args.weights, args.device, args.threshold, args.explain, args.tta)
    print(f"-> {paths['montage']}, {paths['html']}", file=sys.stderr)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_pack_parser(sub)
    add_score_parser(sub)
    add_report_parser(sub)
    add_ensemble_parser(sub)
    add_paired_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from model.io import StackReadError
    from model.preprocess import UnsupportedPixelType
    from model.weights import WeightsError

    from .ensemble import EnsembleError
    from .pack import PackError
    from .score import PredictionError

    args = get_args_parser().parse_args(argv)
    runner = {"pack": run_pack, "score": run_score, "report": run_report, "ensemble": run_ensemble,
              "paired": run_paired}[args.command]
    try:
        return runner(args)
    except (EnsembleError, PackError, PredictionError, StackReadError, WeightsError, UnsupportedPixelType,
            OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
