"""Export a training run's selected model to ``weights/`` (safetensors + JSON model card).

    python -m training.export runs/full --out weights
    python -m training.export runs/erm-s0 runs/erm-s1 --out weights --half   # seed ensemble

Re-evaluates the EMA teacher and the student of the best epoch on the run's saved
validation split, keeps the better one by the run's monitor, chooses the decision
threshold that transfers across domains, and writes the card with every number it used.
Scores use the test-time augmentation the container will use (``--tta``, default the 8
dihedral views, recorded in the card), so the threshold is chosen on the scores it will cut.

An exported folder is re-scored (another TTA, another threshold rule) by ``python -m lab.rescore``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data.datasets import FigureDataset, load_datasets
from data.split import n_folds_for, read_split, split_hash, write_split
from model import ModelConfig, save_weights
from model.network import SeedEnsemble
from model.runtime import autocast_dtype, resolve_device
from model.tta import TTA_MODES
from model.weights import format_threshold, load_model, round_to_storage
from stats.metrics import THRESHOLD_RULES, choose_threshold, describe_threshold_rule, per_domain_metrics

from . import recipes
from .oof import read_cross_fit, write_val_scores
from .plots import plot_roc
from .presets import EvalPreset
from .provenance import file_sha256, git_commit, hardware
from .train import MONITORS, best_epoch_models, predict_scores
from .train import get_args_parser as train_parser

# Beside an --all-figures export's weights: the out-of-fold scores its threshold and card numbers come from.
OOF_FILE = "oof.json"
# How the out-of-fold scores were made, in the card's words (issue 50: until the cross-fit is scored with the
# members' rule, the card says that each fold's model was selected on the figures it then scores).
OOF_KIND = ("out-of-fold: each figure scored by the cross-fit network(s) that did not train on it, single view; "
            "each fold's network is the epoch and EMA-or-student model its run selected on that fold's own "
            "figures (training.train's val_scores.json), a small optimistic selection beside the shipped members' "
            "fixed last-epoch EMA model")
# What the container writes per page; the card says it in words (model.predict.format_predictions).
OUTPUT_CONVENTION = ("class = atypical if P(atypical) >= threshold; confidence = P(atypical) for every page, "
                     "as the official evaluator reads it since 2025-07-27")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", metavar="run",
                   help="training run directory (holds last.pt, best.pt, split.json); several: a seed ensemble")
    p.add_argument("--out", type=Path, default=Path("weights"))
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="mean-domain")
    p.add_argument("--which", choices=["auto", "ema", "student"], default="auto",
                   help="auto: whichever scores higher on the run's monitor")
    p.add_argument("--tta", choices=TTA_MODES, default="dihedral",
                   help="test-time augmentation the container applies (logits averaged over the views)")
    p.add_argument("--half", action="store_true",
                   help="store conv/linear kernels in float16 (scored as stored; the rest stays float32)")
    p.add_argument("--threshold-from", type=Path, metavar="OOF_JSON",
                   help="--all-figures runs: the threshold and the card's validation numbers from the out-of-fold "
                        "scores of a cross-fit of the same figures (training.oof's oof.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--config", metavar="RECIPE",
                   help="a recipe file or name (configs/shipped.toml, shipped): its [export] table (half, tta, "
                        "threshold_rule, which) sets these defaults, flags given here override it")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with ``--config RECIPE`` read first: the recipe's ``[export]`` table sets the
    defaults, flags override."""
    return recipes.parse_args(get_args_parser(), argv, table=recipes.EXPORT_TABLE)


def load_run(run: Path):
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    args = last["args"]
    records = load_datasets(args["data"])
    train_idx, val_idx = read_split(run / "split.json", records)
    return last, best, args, records, train_idx, val_idx


def intensity_baseline(records, train_idx, val_idx, domains, size) -> dict:
    """Trivial baseline: mean patch intensity as the score (sign fixed on the training split)."""
    def mean_intensity(idx):
        ds = FigureDataset([records[i] for i in idx], domains, size)
        return ds.images.float().mean(dim=(1, 2, 3)).numpy() / 255.0, ds

    train_scores, train_ds = mean_intensity(train_idx)
    from sklearn.metrics import roc_auc_score
    sign = 1.0 if roc_auc_score(train_ds.labels.numpy(), train_scores) >= 0.5 else -1.0
    val_scores, val_ds = mean_intensity(val_idx)
    scores = sign * val_scores
    # Scores are not probabilities; report threshold-free AUC and BA at the training-optimal cut.
    cut = _best_pooled_cut(train_ds.labels.numpy(), sign * train_scores)
    metrics = per_domain_metrics(val_ds.labels.numpy(), scores, val_ds.domains.numpy(), domains, threshold=cut)
    return {"score": "mean patch intensity" if sign > 0 else "minus mean patch intensity",
            "cut_from_train": cut, "metrics": metrics}


def _best_pooled_cut(labels, scores) -> float:
    from sklearn.metrics import roc_curve
    fpr, tpr, thr = roc_curve(labels, scores)
    return float(thr[np.argmax(tpr - fpr)])


def print_metrics(metrics_05: dict, metrics_t: dict, threshold: float, domains: list[str]) -> None:
    for name in ["pooled"] + domains:
        if name in metrics_t:
            a, b = metrics_05[name], metrics_t[name]
            print(f"  {name:14s} AUC {b['roc_auc']:.3f} | BA@0.5 {a['balanced_accuracy']:.3f} "
                  f"BA@{format_threshold(threshold)} {b['balanced_accuracy']:.3f} "
                  f"sens {b['sensitivity']:.3f} spec {b['specificity']:.3f}")


def select_member(run: Path, device, amp, which: str, tta: str, half: bool) -> dict:
    """One run's exported model: the EMA teacher or the student of its best epoch, whichever scores
    higher on the run's monitor (or ``which``), with its validation scores and metrics."""
    last, best, train_args, records, train_idx, val_idx = load_run(run)
    domains = last["domains"]
    cfg = ModelConfig.from_dict(last["model_config"])
    if train_args.get("all_figures"):
        return all_figures_member(run, last, best, train_args, records, train_idx, val_idx, cfg, device, which, half)
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size, EvalPreset())
    labels, doms = val_set.labels.numpy(), val_set.domains.numpy()
    monitor = MONITORS[train_args["monitor"]]
    candidates = {}
    for name, m in best_epoch_models(best, last["model_config"], device).items():
        if half:
            round_to_storage(m)
        scores = predict_scores(m, val_set, cfg.mean, cfg.std, device, amp, tta=tta)
        candidates[name] = (m, scores, per_domain_metrics(labels, scores, doms, domains))
        print(f"{run}: {name}: monitor {train_args['monitor']} = {monitor(candidates[name][2]):.4f}")
    chosen = which if which != "auto" else max(candidates, key=lambda k: monitor(candidates[k][2]))
    model, scores, metrics = candidates[chosen]
    return {"run": run, "last": last, "best": best, "args": train_args, "records": records,
            "train_idx": train_idx, "val_idx": val_idx, "domains": domains, "cfg": cfg, "val_set": val_set,
            "which": chosen, "model": model, "scores": scores, "metrics": metrics,
            "other_metrics": candidates["student" if chosen == "ema" else "ema"][2],
            "split_sha256": split_hash(records, train_idx, val_idx), "recipe": recipe_flags(train_args)}


def all_figures_member(run, last, best, train_args, records, train_idx, val_idx, cfg, device, which: str,
                       half: bool) -> dict:
    """A --all-figures run's exported model: its last epoch's --final-model (or ``which``); it has no
    validation part, so no scores or metrics of its own."""
    chosen = which if which != "auto" else train_args.get("final_model", "ema")
    model = best_epoch_models(best, last["model_config"], device)[chosen]
    if half:
        round_to_storage(model)
    print(f"{run}: --all-figures run, its last epoch's {chosen} model (nothing held back to choose on)")
    return {"run": run, "last": last, "best": best, "args": train_args, "records": records,
            "train_idx": train_idx, "val_idx": val_idx, "domains": last["domains"], "cfg": cfg, "val_set": None,
            "which": chosen, "model": model, "scores": None, "metrics": None, "other_metrics": None,
            "split_sha256": split_hash(records, train_idx, val_idx), "recipe": recipe_flags(train_args)}


def keep_out_of_fold_scores(threshold_from: str | Path, out: str | Path) -> dict:
    """Copy the out-of-fold scores an --all-figures export takes its threshold from beside the weights
    (``OUT/oof.json``, with split.json and the out-of-fold ROC), and give the card's record of them: that copy,
    where it came from, its sha256. A cross-fit's own ``OUT/oof/oof.json`` lies under runs/, which git
    ignores: a card naming it would name a file a fresh clone lacks (tests/test_reproduce_card.py)."""
    source, kept = Path(threshold_from), Path(out) / OOF_FILE
    kept.parent.mkdir(parents=True, exist_ok=True)
    if not (kept.exists() and kept.resolve() == source.resolve()):
        shutil.copyfile(source, kept)
    return {"oof_json": str(kept), "copied_from": str(source),
            "sha256": file_sha256(kept)}


def export_all_figures(args, members: list[dict], device, amp, t0: float) -> dict:
    """Export --all-figures runs (one, or a seed ensemble): the threshold, and every number under the card's
    ``validation``, come from the out-of-fold scores of a cross-fit of the same figures (``--threshold-from``),
    the honest estimate for networks that saw every figure. The OOF scores are single view, so is the export."""
    first = members[0]
    if not args.threshold_from:
        raise SystemExit(f"{first['run']}: an --all-figures run has no validation part; give the cross-fit of its "
                         f"figures: --threshold-from RUNS/oof/oof.json (python -m training.oof)")
    if args.tta != "none":
        raise SystemExit(f"--tta {args.tta}: the out-of-fold scores the threshold comes from are single view; "
                         f"export --all-figures runs with --tta none")
    records, train_idx, val_idx, domains, cfg = (first[k] for k in ("records", "train_idx", "val_idx", "domains",
                                                                      "cfg"))
    cross_fit = read_cross_fit(args.threshold_from, records, train_idx, first["args"].get("leave_out_domain"))
    summary = cross_fit["summary"]
    model = first["model"] if len(members) == 1 else SeedEnsemble([m["model"] for m in members])
    model = model.to(memory_format=torch.channels_last).eval()
    which = "/".join(m["which"] for m in members)
    card = build_card(args, members, which, float(summary["threshold"]), summary["at_0.5"], summary["at_threshold"])
    card["threshold_rule"] = (f"{describe_threshold_rule(summary['threshold_rule'])}, fitted on the out-of-fold "
                              f"scores of a {cross_fit['n_folds']}-fold cross-fit of the same figures")
    card["data"]["split"] = ("every figure (--all-figures): nothing held back; the threshold and the numbers under "
                             "validation are out-of-fold")
    card["validation"] = {"kind": OOF_KIND,
                          "at_0.5": summary["at_0.5"], "at_threshold": summary["at_threshold"],
                          "intervals": summary["intervals"], "bootstrap": summary["bootstrap"],
                          "cross_fit": {**keep_out_of_fold_scores(args.threshold_from, args.out),
                                        "command": cross_fit["command"], "n_figures": cross_fit["n_figures"],
                                        "folds": cross_fit["folds"]}}
    card["export_command"] += f" --threshold-from {args.threshold_from}"
    out = args.out
    save_weights(model.cpu().to(memory_format=torch.contiguous_format), card, out, half_precision=args.half)
    write_split(out / "split.json", records, train_idx, val_idx)
    figures = cross_fit["figures"]
    plot_roc([f["label"] for f in figures], [f["score"] for f in figures],
             [domains.index(f["domain"]) for f in figures], domains, out / "validation_roc.png",
             title=f"out-of-fold ROC ({cross_fit['n_folds']}-fold cross-fit, threshold "
                   f"{format_threshold(card['threshold'])})")
    # Round trip on some training figures (there are no others): what the container loads scores the same.
    probe = FigureDataset([records[i] for i in train_idx[:128]], domains, cfg.input_size, EvalPreset())
    model = model.to(device)
    scores = predict_scores(model, probe, cfg.mean, cfg.std, device, amp)
    reloaded, card = load_model(out, device)
    check = predict_scores(reloaded.to(memory_format=torch.channels_last), probe, cfg.mean, cfg.std, device, amp)
    if not np.allclose(check, scores, atol=1e-4):
        raise RuntimeError("exported weights do not reproduce the run's scores")
    print(f"exported {which} ({len(members)} --all-figures run(s)) to {out} (out-of-fold threshold "
          f"{format_threshold(card['threshold'])}) in {time.time() - t0:.0f}s; out-of-fold numbers:")
    print_metrics(summary["at_0.5"], summary["at_threshold"], card["threshold"], domains)
    return card


def recipe_flags(train_args: dict) -> dict:
    return {"mixstyle": not train_args.get("no_mixstyle", False), "align": not train_args.get("no_align", False),
            "kd": not train_args.get("no_kd", False)}


def training_record(member: dict) -> dict:
    last, best, train_args = member["last"], member["best"], member["args"]
    return {
        # Flags against training.train's defaults, so the command needs no recipe file; the recipe's
        # form of it is under "recipe".
        "command": "python -m training.train " + " ".join(recipes.flags_for(
            {k: v for k, v in train_args.items() if k != "config"}, train_parser())),
        "args": train_args,
        "recipe": recipe_record(member["run"], train_args),
        "epochs_run": len(json.loads(last["history"])),
        "best_epoch": int(best["epoch"]) + 1,
        "monitor": train_args["monitor"],
        "pos_weight": last["pos_weight"],
        "wall_time_s": round(last["wall_s"], 1),
        "hardware": hardware(),
        "torch": torch.__version__,
        "git_commit_at_export": git_commit(),
        "from_scratch": not train_args.get("pretrained"),
        **({"pretrained": pretrained_record(Path(train_args["pretrained"]))} if train_args.get("pretrained") else {}),
        **({"kd_teacher": teacher_record(Path(train_args["kd_teacher"]))} if train_args.get("kd_teacher") else {}),
    }


def recipe_record(run: Path, train_args: dict) -> dict:
    """The run's recipe from RUN/config.json (written by training.train): the recipe file as given, its
    SHA-256 and settings, the command-line overrides and the command against the recipe; and the
    recipes of configs/ whose every setting the run's arguments hold (``matches``, for runs trained
    from flags alone too). The resolved arguments are the card's ``training.args``."""
    parser = train_parser()
    path = run / "config.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.pop("args", None) != train_args:
            record["note"] = "config.json is from another invocation than last.pt; training.args are last.pt's"
        record["command"] = recipes.command(record, parser)
    else:
        record = {"config": train_args.get("config"), "note": "no config.json: trained before recipe files"}
    record["matches"] = recipes.matching(train_args, parser)
    return record


def pretrained_record(path: Path) -> dict:
    """Where a ``--pretrained`` run's initial backbone came from: its hash and, for a backbone written by
    ``lab.pretrain_ssl``, the metadata it carries (the pretraining command, split hash, epochs)."""
    record = {"path": str(path)}
    if not path.is_file():
        print(f"warning: pretrained backbone {path} not found; the card names it but cannot say what it was")
        return {**record, "found_at_export": False}
    record.update(found_at_export=True, sha256=file_sha256(path))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            record["metadata"] = f.metadata() or {}
    return record


def teacher_record(folder: Path) -> dict:
    """What a ``--kd-teacher`` run was distilled from, copied from the teacher's own card.

    The student's card must say how to rebuild its teacher too; the teacher's weights hash lets a
    reader check that a rebuilt (or found) teacher is the one that was used."""
    record = {"path": str(folder)}
    card_path, weights_path = folder / "model_card.json", folder / "model.safetensors"
    if not (card_path.is_file() and weights_path.is_file()):
        print(f"warning: teacher {folder} not found; the card names it but cannot say how it was trained")
        return {**record, "found_at_export": False}
    card = json.loads(card_path.read_text())
    trainings = [m["training"] for m in card["ensemble"]["members"]] if "ensemble" in card else [card["training"]]
    return {**record, "found_at_export": True,
            "model_sha256": file_sha256(weights_path),
            "name": card.get("name"), "selected_model": card.get("selected_model"),
            "export_command": card.get("export_command"),
            "training_commands": [t["command"] for t in trainings],
            "git_commits_at_export": sorted({t.get("git_commit_at_export") for t in trainings} - {None})}


def check_members_agree(members: list[dict]) -> None:
    """An ensemble's members must share data, split, domains, network config and recipe."""
    first = members[0]
    if len({str(m["run"].resolve()) for m in members}) != len(members):
        raise SystemExit("the same run is listed twice")
    for m in members[1:]:
        for key, what in (("split_sha256", "data or split (split.json)"), ("domains", "domains"),
                          ("cfg", "model config"), ("recipe", "recipe (--no-mixstyle, --no-align, --no-kd)")):
            if m[key] != first[key]:
                raise SystemExit(f"{m['run']}: {what} not the same as in {first['run']}; "
                                 "an ensemble's members need the same")


def combine(members: list[dict], tta: str, device, amp):
    """One member's model as it is, or the members' SeedEnsemble scored afresh: (model, validation
    scores, metrics at 0.5, which model(s) were selected)."""
    first = members[0]
    if len(members) == 1:
        return first["model"], first["scores"], first["metrics"], first["which"]
    cfg, val_set, domains = first["cfg"], first["val_set"], first["domains"]
    model = SeedEnsemble([m["model"] for m in members]).to(memory_format=torch.channels_last).eval()
    scores = predict_scores(model, val_set, cfg.mean, cfg.std, device, amp, tta=tta)
    metrics_05 = per_domain_metrics(val_set.labels.numpy(), scores, val_set.domains.numpy(), domains)
    return model, scores, metrics_05, "/".join(m["which"] for m in members)


def build_card(args, members: list[dict], which: str, threshold: float, metrics_05: dict, metrics_t: dict) -> dict:
    """The model card: what was exported, how it was trained (every member's training for an
    ensemble), its data and split, and every validation number the export used."""
    first = members[0]
    records, train_idx, val_idx, domains, cfg, val_set = (first[k] for k in (
        "records", "train_idx", "val_idx", "domains", "cfg", "val_set"))
    train_args = first["args"]
    name = f"CBAM-DenseNet-121 atypical mitosis classifier: {recipe_name(train_args)}"
    if len(members) > 1:
        name += f", ensemble of {len(members)} trainings (seeds {', '.join(str(m['args']['seed']) for m in members)})"
    if train_args.get("all_figures"):
        name += ", trained on every figure (--all-figures)"
    card = {
        "name": name,
        "recipe": first["recipe"],
        "task": "MIDOG 2025 Track 2: atypical vs normal mitotic figure",
        "output": OUTPUT_CONVENTION,
        "selected_model": which,
        "threshold": threshold,
        "tta": args.tta,
        "threshold_rule": describe_threshold_rule(args.threshold_rule),
        "input_size": cfg.input_size,
        "normalisation": {"mean": list(cfg.mean), "std": list(cfg.std), "scale": "1/255",
                          "resize": "centre square crop, then bilinear antialiased resize to input_size"},
        # For an ensemble: the first member's training; every member's is under ensemble.members.
        "training": training_record(first),
        "data": {
            "datasets": train_args["data"],
            "domains": domains,
            "n_train": len(train_idx), "n_train_atypical": int(sum(records[i].label for i in train_idx)),
            "n_val": len(val_idx), "n_val_atypical": int(val_set.labels.numpy().sum()) if val_set is not None else 0,
            "split": split_description(train_args),
            "split_file": "split.json beside the weights (figures named by slide and file name)",
            "split_sha256": first["split_sha256"],
        },
        "validation": {"at_0.5": metrics_05, "at_threshold": metrics_t,
                       **({"trivial_intensity_baseline": intensity_baseline(records, train_idx, val_idx, domains,
                                                                           cfg.input_size)} if val_idx else {})},
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "export_command": ("python -m training.export " + " ".join(map(str, args.runs)) + f" --out {args.out}"
                           + f" --tta {args.tta} --threshold-rule {args.threshold_rule}"
                           + (" --half" if args.half else "")),
    }
    if len(members) == 1:
        if first["other_metrics"] is not None:  # (an --all-figures run has none)
            card["validation"]["other_model_at_0.5"] = first["other_metrics"]
    else:
        card["ensemble"] = {
            "size": len(members),
            "combine": "mean of the members' logits (each averaged over the TTA views), then sigmoid",
            "members": [{"run": str(m["run"]), "seed": m["args"]["seed"], "selected_model": m["which"],
                         "training": training_record(m), "validation_at_0.5": m["metrics"],
                         "other_model_at_0.5": m["other_metrics"]} for m in members],
        }
    return card


def main(args) -> dict:
    t0 = time.time()
    device = resolve_device(args.device)
    amp = autocast_dtype(device)
    members = [select_member(run, device, amp, args.which, args.tta, args.half) for run in args.runs]
    check_members_agree(members)
    first = members[0]
    if {bool(m["args"].get("all_figures")) for m in members} == {True}:
        return export_all_figures(args, members, device, amp, t0)
    if args.threshold_from:
        raise SystemExit("--threshold-from is for --all-figures runs (the others fit it on their validation part)")
    records, train_idx, val_idx, domains, cfg, val_set = (first[k] for k in (
        "records", "train_idx", "val_idx", "domains", "cfg", "val_set"))
    labels, doms = val_set.labels.numpy(), val_set.domains.numpy()
    model, scores, metrics_05, which = combine(members, args.tta, device, amp)
    threshold = choose_threshold(labels, scores, doms, args.threshold_rule)
    metrics_t = per_domain_metrics(labels, scores, doms, domains, threshold)
    card = build_card(args, members, which, threshold, metrics_05, metrics_t)
    out = args.out
    save_weights(model.cpu().to(memory_format=torch.contiguous_format), card, out, half_precision=args.half)
    write_split(out / "split.json", records, train_idx, val_idx)
    # Per-figure validation scores of what was exported (training.oof combines a cross-fit's folds).
    write_val_scores(out / "val_scores.json", records, train_idx, val_idx, scores, first["args"],
                     source="training.export", selected_model=which, tta=args.tta, half=args.half,
                     seeds=[m["args"].get("seed") for m in members], runs=[str(m["run"]) for m in members])
    plot_roc(labels, scores, doms, domains, out / "validation_roc.png",
             title=f"validation ROC ({which}, threshold {format_threshold(threshold)})")
    # Round trip: what the container loads gives the same scores.
    reloaded, card = load_model(out, device)  # the card as written (save_weights adds storage and config)
    check = predict_scores(reloaded.to(memory_format=torch.channels_last), val_set, cfg.mean, cfg.std, device, amp,
                           tta=args.tta)
    if not np.allclose(check, scores, atol=1e-4):
        raise RuntimeError("exported weights do not reproduce the validation scores")
    print(f"exported {which} to {out} (threshold {format_threshold(threshold)}, TTA {args.tta}) "
          f"in {time.time() - t0:.0f}s")
    if len(members) > 1:
        for m in members:
            print(f"member {m['run']} ({m['which']}), at 0.5:")
            print_metrics(m["metrics"], m["metrics"], 0.5, domains)
        print("ensemble:")
    print_metrics(metrics_05, metrics_t, threshold, domains)
    return card


def split_description(train_args: dict) -> str:
    """The card's words for how the run's validation split was made."""
    if train_args.get("leave_out_domain"):
        return f"leave-one-domain-out: {train_args['leave_out_domain']}"
    if train_args.get("cv_fold") is not None:  # runs trained before --cv-fold existed have no such key
        return (f"slide-disjoint, stratified by domain and label: fold {train_args['cv_fold']} of a "
                f"{n_folds_for(train_args.get('val_fraction', 0.25))}-fold cross-fit (--cv-fold)")
    return "slide-disjoint, stratified by domain and label"


def recipe_name(train_args: dict) -> str:
    """Which parts of Mix, Align, Distil the run trained with, in words (for the model card),
    and the augmentation curriculum and MixStyle start when they are used."""
    # The standardised alignment term is not the paper's; the card must not pass it off as it.
    align = ("alignment loss on batch-standardised descriptors" if train_args.get("align_standardise")
             else "alignment loss")
    # --kd-teacher replaces the EMA teacher in the distillation term by a fixed, trained network.
    distil = "distillation from a fixed trained teacher" if train_args.get("kd_teacher") else "EMA-teacher distillation"
    parts = [name for name, off in (("MixStyle", "no_mixstyle"), (align, "no_align"),
                                    (distil, "no_kd")) if not train_args.get(off, False)]
    if len(parts) == 3:
        name = f"Mix, Align, Distil (MixStyle, {align}, {distil})"
    elif not parts:
        name = "plain ERM (the Mix, Align, Distil ablation with all three switched off)"
    else:
        name = "Mix, Align, Distil with only " + ", ".join(parts)
    if train_args.get("mixstyle_start_epoch", 0) and "MixStyle" in parts:
        name += f"; MixStyle from epoch {train_args['mixstyle_start_epoch'] + 1}"
    if train_args.get("light_aug_epochs", 0):
        name += f"; augmentation curriculum: flips and 90-degree turns only for the first " \
                f"{train_args['light_aug_epochs']} epochs"
    return name


if __name__ == "__main__":
    main(parse_args())
