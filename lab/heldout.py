"""Score a finished leave-one-domain-out run on its unseen domain (again), e.g. with another TTA.

    python -m lab.heldout runs/lodo-s360-full [--tta dihedral|none] [--other-model] [--out FILE]
    python -m lab.heldout RUN --tta none --stack-norm 16 [--stack-scope all|early] [--stack-size 16]

Selection (epoch, EMA teacher or student, threshold) is made on the run's in-domain validation
split as in ``training.train.held_out_report``; the held-out domain is only scored. Writes
RUN/heldout.json by default (``lab.compare --held-out`` reads it).

An ``--all-figures`` run has no validation part: its last epoch's --final-model is scored, at the
threshold of the cross-fit it was given (``--threshold-from``; this command's own flag replaces it).

``--stack-norm N`` scores the validation and unseen figures as a container run would see them, in stacks
of up to ``--stack-size`` figures of one slide, each with test-time batch-norm adaptation at prior
strength N (docs/experiments.md §33; single view; ``--stack-scope early``: only the layers before the first
MixStyle site); the threshold is refitted on the adapted validation scores. Writes
RUN/heldout-stack-norm-N[-early][-sSIZE].json by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data.datasets import FigureDataset, load_datasets
from data.split import read_split
from model import ModelConfig
from model.layers.stack_norm import SCOPES
from model.runtime import autocast_dtype, resolve_device
from model.tta import TTA_MODES
from model.weights import format_threshold
from training.oof import read_cross_fit
from training.presets import EvalPreset
from training.train import StackEval, held_out_report


def default_name(stacks: StackEval | None) -> str:
    if stacks is None:
        return "heldout.json"
    return (f"heldout-stack-norm-{stacks.prior:g}" + ("" if stacks.scope == "all" else f"-{stacks.scope}")
            + ("" if stacks.size == 16 else f"-s{stacks.size}") + ".json")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a --leave-out-domain run directory (last.pt, best.pt, split.json)")
    p.add_argument("--tta", choices=TTA_MODES, default="dihedral")
    p.add_argument("--other-model", action="store_true",
                   help="also score the unseen domain with the model selection did not pick (nearly twice the time)")
    p.add_argument("--threshold-from", type=Path, metavar="OOF_JSON",
                   help="an --all-figures run: take the threshold from this oof.json instead of the run's own")
    p.add_argument("--stack-norm", type=float, metavar="N",
                   help="test-time batch-norm adaptation on stacks of one slide, prior strength N (pseudo-pages)")
    p.add_argument("--stack-scope", choices=sorted(SCOPES), default="all",
                   help="with --stack-norm: the batch-norm layers adapted (default all)")
    p.add_argument("--stack-size", type=int, default=16, help="with --stack-norm: figures per stack (default 16)")
    p.add_argument("--stack-seed", type=int, default=0, help="with --stack-norm: seed of the order within a slide")
    p.add_argument("--out", type=Path, help="default: RUN/heldout.json (with --stack-norm: "
                   "RUN/heldout-stack-norm-N[-early][-sSIZE].json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stacks = None
    if args.stack_norm is not None:
        if args.tta != "none":
            print("error: --stack-norm is single view; add --tta none", file=sys.stderr)
            return 2
        if not args.stack_norm >= 0 or args.stack_size < 1:
            print(f"error: --stack-norm must be >= 0 and --stack-size >= 1 (got {args.stack_norm}, "
                  f"{args.stack_size})", file=sys.stderr)
            return 2
        stacks = StackEval(args.stack_norm, args.stack_size, args.stack_seed, args.stack_scope)
    for name in ("last.pt", "best.pt", "split.json"):
        if not (args.run / name).is_file():
            print(f"error: {args.run / name}: not found", file=sys.stderr)
            return 1
    last = torch.load(args.run / "last.pt", map_location="cpu", weights_only=True)
    train_args = last["args"]
    if not train_args.get("leave_out_domain"):
        print(f"error: {args.run} is not a --leave-out-domain run", file=sys.stderr)
        return 1
    records = load_datasets(train_args["data"])
    if args.threshold_from and not train_args.get("all_figures"):
        print(f"error: --threshold-from: {args.run} is not an --all-figures run (its threshold comes from its "
              f"validation part)", file=sys.stderr)
        return 1
    train_idx, val_idx = read_split(args.run / "split.json", records)
    # Score the held-out figures in the order the run listed them, so reports line up figure by figure.
    _, test_idx = read_split(args.run / "split.json", records, part="test", keep_order=True)
    domains = last["domains"]
    cfg = ModelConfig.from_dict(last["model_config"])
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size, EvalPreset()) if val_idx else None
    fixed = None
    if train_args.get("all_figures"):
        if args.threshold_from:
            train_args = train_args | {"threshold_from": str(args.threshold_from)}
        cross_fit = read_cross_fit(Path(train_args["threshold_from"]), records, train_idx,
                                   train_args["leave_out_domain"])
        fixed = (train_args.get("final_model", "ema"), float(cross_fit["summary"]["threshold"]))
    test_set = FigureDataset([records[i] for i in test_idx], domains, cfg.input_size, EvalPreset())
    device = resolve_device(args.device)
    report = held_out_report(args.run / "best.pt", cfg, domains, val_set, test_set, train_args, device,
                             autocast_dtype(device), tta=args.tta, score_other_model=args.other_model, fixed=fixed,
                             stacks=stacks)
    out = args.out or args.run / default_name(stacks)
    out.write_text(json.dumps(report, indent=1) + "\n")
    t = report["test_at_threshold"]["pooled"]
    how = f"tta {args.tta}" + (f", stack-norm {args.stack_norm:g} ({args.stack_scope} layers) on stacks of "
                               f"{args.stack_size}" if stacks else "")
    print(f"{report['domain']} ({how}): {report['selected_model']} of epoch {report['best_epoch']}, "
          f"AUC {t['roc_auc']:.3f}, BA@{format_threshold(report['threshold'])} {t['balanced_accuracy']:.3f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
