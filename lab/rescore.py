"""Re-score an exported weights folder (``training.export``'s output): another TTA, another threshold rule.

    python -m lab.rescore weights --tta dihedral [--threshold-rule halfway]
    python -m lab.rescore weights --val-scores runs/cv/f0-shipped

The first re-scores the folder in place on the validation part of its own split.json (the card's data): the
weights stay byte for byte, the threshold and validation numbers are recomputed, and the card records the
change under ``rescored`` (what it said before included). ``--val-scores DIR`` only scores the folder as it
ships (its card's TTA and storage) into DIR/val_scores.json, for ``training.oof`` (weights exported before
these files existed, such as an early ensemble), and changes nothing in the folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch

from data.datasets import FigureDataset, load_datasets
from data.split import read_split, split_hash
from model.runtime import autocast_dtype, resolve_device
from model.tta import TTA_MODES
from model.weights import format_threshold, load_model, write_card
from stats.metrics import THRESHOLD_RULES, choose_threshold, describe_threshold_rule, per_domain_metrics
from training.export import print_metrics
from training.oof import write_val_scores
from training.plots import plot_roc
from training.presets import EvalPreset
from training.provenance import git_commit
from training.train import predict_scores


def exported_folder(folder: Path) -> Path:
    if not (folder / "model_card.json").is_file() or not (folder / "split.json").is_file():
        raise SystemExit(f"{folder}: not an exported weights folder (model_card.json and split.json expected)")
    return folder


def score_exported(folder: Path, tta: str, device_name: str = "auto"):
    """An exported folder's model scored on the validation part of its own split.json (the card's data):
    (card, records, train_idx, val_idx, validation dataset, P(atypical) per validation figure)."""
    device = resolve_device(device_name)
    model, card = load_model(folder, device)
    model = model.to(memory_format=torch.channels_last)
    cfg = model.config
    records = load_datasets(card["training"]["args"]["data"])
    train_idx, val_idx = read_split(folder / "split.json", records)
    if split_hash(records, train_idx, val_idx) != card["data"]["split_sha256"]:
        raise SystemExit(f"{folder / 'split.json'}: data or split differ from the card's (split_sha256)")
    val_set = FigureDataset([records[i] for i in val_idx], card["data"]["domains"], cfg.input_size, EvalPreset())
    scores = predict_scores(model, val_set, cfg.mean, cfg.std, device, autocast_dtype(device), tta=tta)
    return card, records, train_idx, val_idx, val_set, scores


def write_exported_val_scores(args) -> Path:
    """``--val-scores DIR``: DIR/val_scores.json of an exported folder, scored as it ships (its card's TTA and
    storage), so that ``training.oof`` can use weights exported before these files existed, such as the
    shipped ensemble (fold 0 of the cross-fit). The folder itself is not changed."""
    folder = exported_folder(args.folder)
    tta = json.loads((folder / "model_card.json").read_text()).get("tta", "none")
    card, records, train_idx, val_idx, val_set, scores = score_exported(folder, tta, args.device)
    members = card.get("ensemble", {}).get("members")
    seeds = [m["seed"] for m in members] if members else [card["training"]["args"].get("seed")]
    runs = [m["run"] for m in members] if members else [str(folder)]
    args.val_scores.mkdir(parents=True, exist_ok=True)
    path = args.val_scores / "val_scores.json"
    write_val_scores(path, records, train_idx, val_idx, scores, card["training"]["args"],
                     source=f"lab.rescore {folder} --val-scores", selected_model=card["selected_model"],
                     tta=tta, half="float16" in card.get("weights_storage", ""), seeds=seeds, runs=runs)
    print(f"{len(val_idx)} validation figures of {folder} scored (TTA {tta}) -> {path}")
    return path


def rescore(args) -> dict:
    """Recompute an exported folder's threshold and validation metrics (e.g. for a new ``--tta``).

    The weights and the choice of model stay; the data and split come from the folder's card
    and split.json. The card keeps what it said before under ``rescored.previous``.
    """
    t0 = time.time()
    folder = exported_folder(args.folder)
    card, records, train_idx, val_idx, val_set, scores = score_exported(folder, args.tta, args.device)
    domains = card["data"]["domains"]
    labels, doms = val_set.labels.numpy(), val_set.domains.numpy()
    threshold = choose_threshold(labels, scores, doms, args.threshold_rule)
    previous = {"tta": card.get("tta", "none"), "threshold": card["threshold"],
                "threshold_rule": card["threshold_rule"],
                "validation_at_threshold": card["validation"]["at_threshold"],
                "validation_at_0.5": card["validation"]["at_0.5"]}
    card["tta"] = args.tta
    card["threshold"] = threshold
    card["threshold_rule"] = describe_threshold_rule(args.threshold_rule)
    card["validation"]["at_0.5"] = per_domain_metrics(labels, scores, doms, domains)
    card["validation"]["at_threshold"] = per_domain_metrics(labels, scores, doms, domains, threshold)
    if "other_model_at_0.5" in card["validation"]:  # single-network exports only
        card["validation"]["other_model_at_0.5_note"] = "other_model_at_0.5 is from the original export (no TTA)"
    command = f"python -m lab.rescore {folder} --tta {args.tta} --threshold-rule {args.threshold_rule}"
    card["rescored"] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "git_commit": git_commit(), "command": command, "previous": previous}
    write_card(card, folder)  # the weights file stays byte for byte as it was
    thr_text = format_threshold(threshold)
    plot_roc(labels, scores, doms, domains, folder / "validation_roc.png",
             title=f"validation ROC ({card['selected_model']}, TTA {args.tta}, threshold {thr_text})")
    print(f"rescored {folder} with TTA {args.tta} (threshold {format_threshold(previous['threshold'])} -> "
          f"{thr_text}) in {time.time() - t0:.0f}s")
    print_metrics(card["validation"]["at_0.5"], card["validation"]["at_threshold"], threshold, domains)
    return card


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="an exported weights folder (model_card.json, split.json)")
    p.add_argument("--tta", choices=TTA_MODES, default="dihedral", help="the test-time augmentation to score with")
    p.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="mean-domain")
    p.add_argument("--val-scores", type=Path, metavar="DIR",
                   help="only write DIR/val_scores.json (the folder's scores, as it ships, on the validation part "
                        "of its split.json, for training.oof); the folder is not changed")
    p.add_argument("--device", default="auto")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.val_scores:
        return {"val_scores": str(write_exported_val_scores(args))}
    return rescore(args)


if __name__ == "__main__":
    main()
