"""Score a finished leave-one-domain-out run on its unseen domain (again), e.g. with another TTA.

    python -m lab.heldout runs/lodo-s360-full [--tta dihedral|none] [--other-model] [--out FILE]
    python -m lab.heldout RUN --tta none --stack-norm 16 [--stack-scope all|early] [--stack-size 16]

Selection (epoch, EMA teacher or student, threshold) is made on the run's in-domain validation
split (``held_out_report``); the held-out domain is only scored. Writes RUN/heldout.json by default
(``lab.compare --held-out`` reads it). ``python -m lab.lodo`` trains a run and then writes this report.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.datasets import FigureDataset, load_datasets
from data.split import read_split, record_key, slide_stacks
from model import ModelConfig
from model.layers.stack_norm import SCOPES, stack_norm
from model.runtime import autocast_dtype, resolve_device
from model.tta import TTA_MODES
from model.weights import format_threshold
from stats.metrics import choose_threshold, per_domain_metrics
from training.oof import read_cross_fit
from training.presets import EvalPreset
from training.train import MONITORS, best_epoch_models, predict_scores


@dataclass(frozen=True)
class StackEval:
    """Score in stacks as a container run sees them, with test-time batch-norm adaptation on each
    (``model.layers.stack_norm``, docs/experiments.md §33): stacks of at most ``size`` figures of one
    slide (``split.slide_stacks``, order seeded by ``seed``), prior strength ``prior``, on the batch-norm
    layers of ``scope``."""
    prior: float
    size: int = 16
    seed: int = 0
    scope: str = "all"  # model.layers.stack_norm.SCOPES

    def to_dict(self) -> dict:
        return {"prior": self.prior, "scope": self.scope, "stack_size": self.size, "stack_seed": self.seed}


def score(model, dataset: FigureDataset, cfg, device, amp_dtype, tta: str, stacks: StackEval | None = None):
    """P(atypical) of every figure of ``dataset``; with ``stacks`` one slide's stack at a time, each normalised
    with its own statistics mixed with the training ones (single view only: with 8 views a batch would count
    every view as a page)."""
    if stacks is None:
        return predict_scores(model, dataset, cfg.mean, cfg.std, device, amp_dtype, tta=tta)
    if tta != "none":
        raise ValueError(f"stack batch-norm adaptation is single view; got test-time augmentation {tta!r}")
    with stack_norm(model, stacks.prior, stacks.scope):
        return predict_scores(model, dataset, cfg.mean, cfg.std, device, amp_dtype, tta=tta,
                              batches=slide_stacks(dataset.records, stacks.size, stacks.seed))


# Training arguments that define an arm of a leave-one-domain-out comparison, with the value that
# reports written before a switch existed implicitly used.
ARM_KEYS = {"no_mixstyle": False, "no_align": False, "no_kd": False, "seed": 0, "split_seed": 0, "epochs": 40,
            "aug_strength": 1.0, "hed_jitter": 0.0, "light_aug_epochs": 0, "mixstyle_start_epoch": 0,
            "align_standardise": False, "kd_teacher": None, "pretrained": None, "input_size": 128,
            "config": None,  # the recipe (--config) the arm's settings came from, shown by lab.compare
            "all_figures": False, "cv_fold": None, "targets": "majority", "subtype_weight": 0.0}


def held_out_report(best_path: Path, cfg, domains, val_set, test_set, args: dict, device, amp_dtype,
                    tta: str = "dihedral", score_other_model: bool = False,
                    fixed: tuple[str, float] | None = None, stacks: StackEval | None = None) -> dict:
    """Leave-one-domain-out: apply the run's own selection to the unseen domain.

    Everything is decided on the in-domain validation split, as ``training.export`` does for
    shipped weights: the best epoch (monitor on the EMA teacher), EMA teacher or student
    (whichever scores higher on the monitor, with ``tta``), and the threshold
    (``choose_threshold``, mean per-domain balanced accuracy). The held-out domain is then
    scored once, by the selected model only, at 0.5 and at that threshold, so the threshold's
    transfer is measured too. ``score_other_model`` also scores it with the model not selected
    (``other_model_test_at_0.5``: did selection pick the better one?); the unseen cohort is the
    larger set (TUPAC16: 1,602 figures against 329 validation), so that nearly doubles the cost.

    ``fixed`` = (model, threshold): an --all-figures run has no validation part (``val_set`` None); its
    model ("ema" or "student" of the last epoch) and threshold (from a cross-fit's out-of-fold scores)
    are given.
    ``stacks``: score the validation and held-out figures in stacks with test-time batch-norm adaptation
    (``StackEval``): the model is the one selection picks unadapted, its validation scores and threshold
    are the adapted ones (an --all-figures run keeps its given threshold).
    """
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    models = best_epoch_models(best, cfg, device)
    if fixed is not None:
        (which, threshold), val_metrics, val_scores = fixed, {}, np.zeros(0)
    else:
        which, val_metrics, val_scores, threshold = select_on_validation(models, val_set, cfg, domains, args,
                                                                         device, amp_dtype, tta)
        if stacks is not None:
            val_scores = score(models[which], val_set, cfg, device, amp_dtype, tta, stacks)
            val_metrics = per_domain_metrics(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), domains)
            threshold = choose_threshold(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), "mean-domain")
    test_labels, test_domains = test_set.labels.numpy(), test_set.domains.numpy()
    test_scores = score(models[which], test_set, cfg, device, amp_dtype, tta, stacks)
    report = {
        "domain": args["leave_out_domain"],
        "best_epoch": int(best["epoch"]) + 1,
        "selected_model": which,
        "threshold": threshold,
        "tta": tta,
        # Everything that tells two arms apart (augmentation too), so reports can be paired.
        "arm": {k: args.get(k, default) for k, default in ARM_KEYS.items()},
        "val_at_0.5": val_metrics,
        "test_at_0.5": per_domain_metrics(test_labels, test_scores, test_domains, domains),
        "test_at_threshold": per_domain_metrics(test_labels, test_scores, test_domains, domains, threshold),
    }
    if score_other_model:
        other = "student" if which == "ema" else "ema"
        other_scores = score(models[other], test_set, cfg, device, amp_dtype, tta, stacks)
        report["other_model_test_at_0.5"] = per_domain_metrics(test_labels, other_scores, test_domains, domains)
    return report | {
        "test_figures": [record_key(r) for r in test_set.records],
        "test_scores": [round(float(x), 6) for x in test_scores],
        "test_labels": [int(x) for x in test_labels],
        # The validation scores the threshold was fitted on, so other threshold rules can be
        # studied on the unseen domain without retraining (lab/analyses/threshold_transfer.py).
        "val_scores": [round(float(x), 6) for x in val_scores],
        "val_labels": [int(x) for x in val_set.labels.numpy()] if val_set is not None else [],
        "val_domains": [domains[int(d)] for d in val_set.domains.numpy()] if val_set is not None else [],
        **({"threshold_from": str(args.get("threshold_from"))} if fixed is not None else {}),
        **({"stack_norm": stacks.to_dict()} if stacks is not None else {}),
    }


def select_on_validation(models: dict, val_set, cfg, domains, args: dict, device, amp_dtype, tta: str):
    """EMA teacher or student, whichever scores higher on the run's monitor on the validation part (with
    ``tta``), and the mean-domain threshold fitted on its scores: (which, metrics, scores, threshold)."""
    monitor = MONITORS[args["monitor"]]
    candidates = {}
    for which, model in models.items():
        val_scores = predict_scores(model, val_set, cfg.mean, cfg.std, device, amp_dtype, tta=tta)
        val_metrics = per_domain_metrics(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), domains)
        candidates[which] = (val_metrics, val_scores)
    which = max(candidates, key=lambda k: monitor(candidates[k][0]))
    val_metrics, val_scores = candidates[which]
    threshold = choose_threshold(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), "mean-domain")
    return which, val_metrics, val_scores, threshold


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


class NotAHeldOutRun(Exception):
    """The run cannot be scored on an unseen domain (missing files, no held-out domain, a wrong flag)."""


def report_run(run: Path, tta: str, other_model: bool = False, threshold_from: Path | None = None,
               stacks: StackEval | None = None, device_name: str = "auto") -> dict:
    """``held_out_report`` of a finished ``--leave-out-domain`` run directory (last.pt, best.pt, split.json),
    its figures read again from the run's data; an --all-figures run at its cross-fit's threshold
    (``threshold_from`` replaces the run's own ``--threshold-from``)."""
    for name in ("last.pt", "best.pt", "split.json"):
        if not (run / name).is_file():
            raise NotAHeldOutRun(f"{run / name}: not found")
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    train_args = last["args"]
    if not train_args.get("leave_out_domain"):
        raise NotAHeldOutRun(f"{run} is not a --leave-out-domain run")
    if threshold_from and not train_args.get("all_figures"):
        raise NotAHeldOutRun(f"--threshold-from: {run} is not an --all-figures run (its threshold comes from its "
                             f"validation part)")
    records = load_datasets(train_args["data"])
    train_idx, val_idx = read_split(run / "split.json", records)
    # Score the held-out figures in the order the run listed them, so reports line up figure by figure.
    _, test_idx = read_split(run / "split.json", records, part="test", keep_order=True)
    domains = last["domains"]
    cfg = ModelConfig.from_dict(last["model_config"])
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size, EvalPreset()) if val_idx else None
    fixed = None
    if train_args.get("all_figures"):
        if threshold_from:
            train_args = train_args | {"threshold_from": str(threshold_from)}
        cross_fit = read_cross_fit(Path(train_args["threshold_from"]), records, train_idx,
                                   train_args["leave_out_domain"])
        fixed = (train_args.get("final_model", "ema"), float(cross_fit["summary"]["threshold"]))
    test_set = FigureDataset([records[i] for i in test_idx], domains, cfg.input_size, EvalPreset())
    device = resolve_device(device_name)
    return held_out_report(run / "best.pt", cfg, domains, val_set, test_set, train_args, device,
                           autocast_dtype(device), tta=tta, score_other_model=other_model, fixed=fixed, stacks=stacks)


def summary_line(report: dict, how: str, out: Path) -> str:
    t = report["test_at_threshold"]["pooled"]
    return (f"held-out {report['domain']} ({how}): {report['selected_model']} of epoch {report['best_epoch']}, "
            f"AUC {t['roc_auc']:.3f} BA@0.5 {report['test_at_0.5']['pooled']['balanced_accuracy']:.3f} "
            f"BA@{format_threshold(report['threshold'])} {t['balanced_accuracy']:.3f} (sens {t['sensitivity']:.3f}, "
            f"spec {t['specificity']:.3f}) -> {out}")


def stack_eval_from_args(args) -> StackEval | None:
    if args.stack_norm is None:
        return None
    if args.tta != "none":
        raise NotAHeldOutRun("--stack-norm is single view; add --tta none")
    if not args.stack_norm >= 0 or args.stack_size < 1:
        raise NotAHeldOutRun(f"--stack-norm must be >= 0 and --stack-size >= 1 (got {args.stack_norm}, "
                             f"{args.stack_size})")
    return StackEval(args.stack_norm, args.stack_size, args.stack_seed, args.stack_scope)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        stacks = stack_eval_from_args(args)
    except NotAHeldOutRun as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        report = report_run(args.run, args.tta, args.other_model, args.threshold_from, stacks, args.device)
    except NotAHeldOutRun as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.out or args.run / default_name(stacks)
    out.write_text(json.dumps(report, indent=1) + "\n")
    how = f"tta {args.tta}" + (f", stack-norm {args.stack_norm:g} ({args.stack_scope} layers) on stacks of "
                               f"{args.stack_size}" if stacks else "")
    print(summary_line(report, how, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
