"""Train CBAM-DenseNet-121 with Mix (MixStyle), Align (domain alignment loss) and Distil (EMA teacher).

    python -m training.train --config configs/shipped.toml --data amibr=../shared/data/ami-br \\
        --cv-fold 0 --seed 0 --out runs/shipped-s0
    python -m training.train --data amibr=../shared/data/ami-br --out runs/full
    python -m training.train --config shipped --data amibr=../shared/data/ami-br --cv-fold 1 --seed 0 \\
        --out runs/cv/f1-s0                       # fold 1 of the 4-fold cross-fit (training.oof)

Recipes are files (``configs/``: ``shipped``, ``paper``, ``erm``; ``training/recipes.py``): ``--config``
sets the defaults, flags given beside it override them, and ``OUT/config.json`` records the recipe,
the overrides and every resolved argument. Without ``--config`` the defaults are the full recipe on
the from-scratch CPU schedule.
Multi-GPU: ``torchrun --nproc_per_node N -m training.train ...`` (DistributedDataParallel).
Ablations: ``--no-mixstyle``, ``--no-align``, ``--no-kd``; all three = plain ERM trained the same way
(``--mixstyle``, ``--align``, ``--kd`` switch a part back on that a recipe switched off).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.datasets import SUBTYPES, TARGETS, FigureDataset, load_datasets
from data.sampler import DomainBalancedBatchSampler
from data.split import (
    kfold_split,
    leave_one_domain_out,
    leave_one_domain_out_split,
    n_folds_for,
    read_split,
    record_key,
    split_hash,
    stratified_group_split,
    write_split,
)
from model import ModelConfig, SeedEnsemble, build_model, load_imagenet_backbone
from model.layers import MixStyle
from model.preprocess import normalize
from model.runtime import autocast, autocast_dtype, resolve_device
from model.tta import TTA_MODES, tta_logits
from model.weights import WeightsError, load_model
from stats.metrics import per_domain_metrics

from . import recipes
from .config import TrainingConfig
from .ema import EMATeacher
from .engine import optimizer_step
from .losses import alignment_loss, classification_loss, dann_schedule, distillation_loss, kd_weight, subtype_loss
from .oof import write_val_scores
from .plots import plot_history
from .presets import EvalPreset, LightTrainPreset, TrainPreset

MONITORS = {
    # Mean over validation domains: a model selected on pooled numbers can hide a failing domain.
    "auc": lambda m: m["mean_domain"]["roc_auc"],
    "ba": lambda m: m["mean_domain"]["balanced_accuracy"],
    "pooled-auc": lambda m: m["pooled"]["roc_auc"],
    "pooled-ba": lambda m: m["pooled"]["balanced_accuracy"],
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="RECIPE",
                   help="a recipe file (configs/shipped.toml, configs/paper.toml, configs/erm.toml) or its name "
                        "(shipped): its settings replace the defaults below, flags given here override them")
    add_data_args(p.add_argument_group("data"))
    add_model_args(p.add_argument_group("model"))
    add_optimisation_args(p.add_argument_group("optimisation"))
    add_label_args(p.add_argument_group("what the labels say (issue 51; not in the paper)"))
    add_mad_args(p.add_argument_group("mix, align, distil"))
    add_run_args(p.add_argument_group("run"))
    return p


def add_data_args(g) -> None:
    g.add_argument("--data", nargs="+", default=["amibr=../shared/data/ami-br"],
                   help="datasets as NAME=PATH (amibr, midog25, omg-octo); several are combined")
    g.add_argument("--val-fraction", type=float, default=0.25, help="slide-disjoint validation share")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--split-file", type=Path, help="reuse a saved split.json instead of making one")
    g.add_argument("--cv-fold", type=int, metavar="I",
                   help="cross-fitting: validate on fold I (0..K-1) of the slide-disjoint K-fold split, "
                        "K = round(1 / --val-fraction); fold 0 is the split made without this flag. With "
                        "--leave-out-domain, folds of the other domains. Combine the K runs' validation scores "
                        "with python -m training.oof")
    g.add_argument("--all-figures", action="store_true",
                   help="train on every figure (with --leave-out-domain: every figure of the other domains) and "
                        "validate on none: the model is the last epoch's --final-model, and a held-out report "
                        "takes its threshold from a cross-fit of the same figures (--threshold-from). Needs a "
                        "fixed schedule: onecycle, no early stop, no --kd-start-auc")
    g.add_argument("--final-model", choices=["ema", "student"], default="ema",
                   help="with --all-figures: the model of the last epoch that the run keeps (nothing is left to "
                        "choose on)")
    g.add_argument("--threshold-from", type=Path, metavar="OOF_JSON",
                   help="with --all-figures --leave-out-domain: the threshold of the held-out report, fitted on "
                        "the out-of-fold scores of a cross-fit of the same figures (training.oof's oof.json)")
    g.add_argument("--eval-tta", choices=TTA_MODES, default="dihedral",
                   help="test-time augmentation for the leave-one-domain-out report that python -m lab.lodo "
                        "writes when the run ends (as training.export ships)")
    g.add_argument("--eval-other-model", action="store_true",
                   help="lab.lodo's leave-one-domain-out report also scores the unseen domain with the model "
                        "selection did not pick (EMA teacher or student); nearly doubles the report's time")
    g.add_argument("--leave-out-domain",
                   help="leave-one-domain-out: hold this domain out as a test set (never trained on nor used for "
                        "selection; python -m lab.lodo scores it when the run ends); the other domains are split "
                        "into train and an in-domain validation split")
    g.add_argument("--limit", type=int, default=0, help="use only this many figures (smoke tests)")
    g.add_argument("--input-size", type=int, default=128, help="128 (native patch size) or e.g. 224")
    g.add_argument("--aug-strength", type=float, default=1.0)
    g.add_argument("--hed-jitter", type=float, default=0.0, metavar="SIGMA",
                   help="stain jitter by colour deconvolution: H and E amounts x U(1-SIGMA, 1+SIGMA), "
                        "shifted by U(-SIGMA/2, SIGMA/2) OD, on half the images (0 = off)")
    g.add_argument("--light-aug-epochs", type=int, default=0, metavar="N",
                   help="augmentation curriculum: flips and 90-degree rotations only for the first N epochs, "
                        "then the full preset (0 = full preset throughout)")
    g.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: 1 on CPU, 4 on CUDA)")


def add_negation(g, flag: str, dest: str, what: str) -> None:
    """``--mixstyle`` beside ``--no-mixstyle``: switches a part back on that a recipe turned off. The
    default is suppressed, so the ``--no-...`` option's default (or a recipe's value) stands."""
    g.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS,
                   help=f"{what} on (undoes a recipe's {dest} = true)")


def add_model_args(g) -> None:
    g.add_argument("--no-mixstyle", action="store_true")
    add_negation(g, "--mixstyle", "no_mixstyle", "MixStyle")
    g.add_argument("--mixstyle-p", type=float, default=0.5)
    g.add_argument("--mixstyle-alpha", type=float, default=0.1)
    g.add_argument("--mixstyle-start-epoch", type=int, default=0, metavar="E",
                   help="MixStyle mixes only from epoch E+1 on (p = 0 before): lets a from-scratch network "
                        "form its low-level features first (0 = from the start, as the paper)")
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--pretrained", type=Path,
                   help="initial backbone from a local file: torchvision's densenet121 ImageNet weights (.pth) "
                        "or a lab.pretrain_ssl backbone.safetensors")


def add_optimisation_args(g) -> None:
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--batch-size", type=int, default=32,
                   help="global batch size (32: from scratch, optimiser steps matter more than batch size)")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--lr-scheduler", choices=["onecycle", "plateau"], default="onecycle",
                   help="onecycle: from-scratch default; plateau: the paper's ReduceLROnPlateau")
    g.add_argument("--plateau-patience", type=int, default=3)
    g.add_argument("--plateau-factor", type=float, default=0.5)
    g.add_argument("--warmup-pct", type=float, default=0.15, help="one-cycle warm-up share")
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--pos-weight", type=float, default=-1.0,
                   help="BCE positive weight (-1: n_normal / n_atypical of the training split)")
    g.add_argument("--early-stop", type=int, default=None,
                   help="epochs without EMA improvement before stopping (0: off; default 12 with --lr-scheduler "
                        "plateau, off with onecycle: a one-cycle run must reach its end, and from scratch it can "
                        "sit at chance for a dozen epochs before it learns)")
    g.add_argument("--monitor", choices=sorted(MONITORS), default="auc")


def add_label_args(g) -> None:
    g.add_argument("--targets", choices=TARGETS, default="majority",
                   help="the classification target: the experts' majority (0/1), or their vote share (AMi-Br's "
                        "three experts: 0, 1/3, 2/3, 1; figures without votes keep their majority label). Every "
                        "metric, threshold and report still uses the majority label")
    g.add_argument("--subtype-weight", type=float, default=0.0, metavar="W",
                   help="add an auxiliary head on the pooled CBAM descriptor that predicts the mitotic subtype "
                        "(the experts' subtype labels as a soft target; figures without one add nothing), its "
                        "cross-entropy weighted W (0 = no head). Training only: the head is not exported")


def add_mad_args(g) -> None:
    g.add_argument("--no-align", action="store_true")
    add_negation(g, "--align", "no_align", "the alignment loss")
    g.add_argument("--align-weight", type=float, default=1.0, help="times the DANN ramp 2/(1+exp(-10p))-1")
    g.add_argument("--align-standardise", action="store_true",
                   help="divide each descriptor channel by its batch standard deviation before the alignment "
                        "loss, so it penalises the between-domain share of the spread whatever the features' "
                        "scale (not in the paper; unstandardised the term is ~0.001 here)")
    g.add_argument("--no-kd", action="store_true")
    add_negation(g, "--kd", "no_kd", "distillation")
    g.add_argument("--kd-weight", type=float, default=0.5)
    g.add_argument("--kd-warmup-epochs", type=float, default=10.0)
    g.add_argument("--kd-start-epoch", type=float, default=8.0,
                   help="begin the KD warm-up here: from scratch the teacher is at chance for the first epochs "
                        "(0 = the paper, with ImageNet initialisation)")
    g.add_argument("--kd-start-auc", type=float, default=None,
                   help="also wait until the EMA teacher has learned: the KD warm-up begins after the first epoch "
                        "whose EMA validation monitor reaches this value (e.g. 0.7; default: start at "
                        "--kd-start-epoch whatever the teacher's state)")
    g.add_argument("--kd-temperature", type=float, default=2.0)
    g.add_argument("--kd-teacher", type=Path, metavar="DIR",
                   help="distil from a fixed, already trained teacher (a weights folder: model.safetensors + "
                        "model_card.json + split.json, e.g. a seed ensemble from training.export) instead of the "
                        "EMA teacher; the EMA model is still kept for selection. Refused if the teacher was "
                        "trained on any figure of this run's validation or held-out split")
    g.add_argument("--ema-decay", type=float, default=0.999)
    g.add_argument("--no-ema-warmup", action="store_true", help="plain EMA decay from the first step")
    add_negation(g, "--ema-warmup", "no_ema_warmup", "the EMA decay ramp")


def add_run_args(g) -> None:
    g.add_argument("--out", type=Path, default=Path("runs/default"))
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--stop-after", type=int, default=0,
                   help="end this invocation after N epochs (continue later with --resume)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--no-amp", action="store_true", help="fp32 everywhere")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--plot-every", type=int, default=1,
                   help="redraw curves.png every N epochs (0: only at the end; plotting costs CPU in GPU sweeps)")


def training_config(argv: list[str]) -> TrainingConfig:
    """The configuration ``training.train ARGV`` would train (``config.json``'s ``args``, typed): the recipe
    read, implied defaults resolved; nothing trained."""
    args = parse_args(argv)
    resolve_implied_defaults(args)
    return TrainingConfig.from_args(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with ``--config RECIPE`` read first: the recipe sets the defaults, flags override."""
    parser = get_args_parser()
    args = recipes.parse_args(parser, argv)
    error = split_args_error(args)
    if error:
        parser.error(error)
    return args


def split_args_error(args) -> str | None:
    """Why the split options contradict each other (``--cv-fold`` with ``--split-file``, or a fold
    outside 0..K-1), or None. ``--cv-fold`` with ``--leave-out-domain`` cross-fits the other domains."""
    fold = getattr(args, "cv_fold", None)  # lab.pretrain_ssl's arguments have no --cv-fold
    if getattr(args, "all_figures", False):
        return all_figures_error(args)
    if getattr(args, "threshold_from", None):
        return "--threshold-from is for --all-figures runs (the others fit their threshold on their validation part)"
    if fold is None:
        return None
    if getattr(args, "split_file", None):
        return ("--cv-fold and --split-file are mutually exclusive: --cv-fold makes the split, --split-file "
                "gives another")
    if not 0.0 < args.val_fraction < 1.0:
        return f"--val-fraction must be in (0, 1), got {args.val_fraction}"
    n_folds = n_folds_for(args.val_fraction)
    if not 0 <= fold < n_folds:
        return (f"--cv-fold {fold}: expected 0..{n_folds - 1} (K = round(1 / --val-fraction) = {n_folds} folds "
                f"for --val-fraction {args.val_fraction})")
    return None


def all_figures_error(args) -> str | None:
    """Why ``--all-figures`` cannot run with these options, or None. With no validation part nothing can
    choose an epoch, a model or a learning-rate step, and a held-out report needs an out-of-fold threshold."""
    for flag, dest in (("--cv-fold", "cv_fold"), ("--split-file", "split_file")):
        if getattr(args, dest, None) is not None:
            return f"--all-figures and {flag} are mutually exclusive: --all-figures holds nothing back for validation"
    if args.lr_scheduler != "onecycle":
        return "--all-figures needs --lr-scheduler onecycle (plateau steps on the validation metric)"
    if args.early_stop:
        return "--all-figures needs --early-stop 0 (nothing to stop on)"
    if args.kd_start_auc is not None:
        return "--all-figures cannot gate KD on a validation AUC (--kd-start-auc); use --kd-start-epoch"
    if args.leave_out_domain and not args.threshold_from:
        return ("--all-figures --leave-out-domain needs --threshold-from OOF_JSON: the held-out report's threshold "
                "from a cross-fit of the same figures (training.train --leave-out-domain D --cv-fold I, then "
                "python -m training.oof)")
    if args.threshold_from and not args.leave_out_domain:
        return "--threshold-from is for the held-out report of --all-figures --leave-out-domain runs"
    return None


def resolve_implied_defaults(args) -> None:
    """Defaults that depend on other arguments: ``--early-stop`` 12 with ``plateau``, 0 (off) with ``onecycle``."""
    if args.early_stop is None:
        args.early_stop = 12 if args.lr_scheduler == "plateau" else 0


# --------------------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_from_args(args) -> ModelConfig:
    return ModelConfig(input_size=args.input_size, mixstyle=not args.no_mixstyle, mixstyle_p=args.mixstyle_p,
                       mixstyle_alpha=args.mixstyle_alpha, dropout=args.dropout)


def prepare_data(args):
    """Records, domain names and the train/val(/test) split (saved in OUT/split.json).

    ``test`` is empty except with ``--leave-out-domain``, where it holds the unseen domain; ``val`` is
    empty with ``--all-figures``.
    """
    records = load_datasets(args.data)
    if args.limit:
        rng = random.Random(args.split_seed)  # the data, like the split, must not change with --seed
        records = rng.sample(records, min(args.limit, len(records)))
    test_idx: list[int] = []
    error = split_args_error(args)  # parse_args checks this too; main() may be given a namespace
    if error:
        raise SystemExit(error)
    fold = getattr(args, "cv_fold", None)
    if getattr(args, "all_figures", False):
        train_idx, test_idx = (leave_one_domain_out(records, args.leave_out_domain) if args.leave_out_domain
                               else (list(range(len(records))), []))
        val_idx = []
    elif args.leave_out_domain:
        train_idx, val_idx, test_idx = leave_one_domain_out_split(records, args.leave_out_domain, args.val_fraction,
                                                                  args.split_seed, fold or 0)
    elif fold is not None:
        train_idx, val_idx = kfold_split(records, n_folds_for(args.val_fraction), fold, args.split_seed)
    elif args.split_file:
        train_idx, val_idx = read_split(args.split_file, records)
    else:
        train_idx, val_idx = stratified_group_split(records, args.val_fraction, args.split_seed)
    domains = sorted({r.domain for r in records})
    return records, domains, train_idx, val_idx, test_idx


def load_fixed_teacher(directory: Path, cfg: ModelConfig, held_back: list, device) -> torch.nn.Module:
    """A trained network (or seed ensemble) to distil from, frozen in eval mode.

    Distilling from a network that has seen this run's validation (or held-out) figures would leak
    their labels into the student and inflate every validation number, so the teacher's
    ``split.json`` must name none of ``held_back`` among its training figures. The teacher must also
    share the student's input size and normalisation: both see the same normalised batch.
    """
    try:
        model, _ = load_model(directory)
    except WeightsError as exc:
        raise SystemExit(f"--kd-teacher: {exc}") from None
    if (model.config.input_size, model.config.mean, model.config.std) != (cfg.input_size, cfg.mean, cfg.std):
        raise SystemExit(f"--kd-teacher {directory}: input size / normalisation {model.config.input_size}, "
                         f"{model.config.mean}, {model.config.std} differ from this run's {cfg.input_size}, "
                         f"{cfg.mean}, {cfg.std}")
    split_path = Path(directory) / "split.json"
    if not split_path.is_file():
        raise SystemExit(f"{split_path}: not found; without the teacher's split, distilling from it could leak "
                         f"this run's validation labels")
    try:
        taught = set(json.loads(split_path.read_text())["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"{split_path}: not a split file ({exc!r})") from None
    leaked = sorted(taught & {record_key(r) for r in held_back})
    if leaked:
        raise SystemExit(f"--kd-teacher {directory}: the teacher was trained on {len(leaked)} figures of this run's "
                         f"validation/held-out split (e.g. {leaked[0]}); use a teacher trained on this run's "
                         f"training split only (e.g. --split-file {split_path})")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device).to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def predict_scores(model, dataset: FigureDataset, mean, std, device, amp_dtype, batch_size: int = 128,
                   tta: str = "none", batches: list[list[int]] | None = None):
    """P(atypical) for every figure of ``dataset`` (eval mode; ``tta`` as in ``model.tta.tta_logits``).

    ``batches``: the figures' indices in the forward batches, if not consecutive runs of ``batch_size``
    (``lab.heldout`` scores one slide's stack at a time, as a container run sees them)."""
    was_training = model.training
    model.eval()
    if batches is None:
        batches = [list(range(start, min(start + batch_size, len(dataset))))
                   for start in range(0, len(dataset), batch_size)]
    scores = torch.empty(len(dataset))
    for idx in batches:
        images = dataset.images[idx].to(device)
        x = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            scores[idx] = torch.sigmoid(tta_logits(model, x, tta)).float().cpu()
    model.train(was_training)
    return scores.numpy()


def evaluate(model, dataset, domains, cfg, device, amp_dtype):
    scores = predict_scores(model, dataset, cfg.mean, cfg.std, device, amp_dtype)
    labels, doms = dataset.labels.numpy(), dataset.domains.numpy()
    return per_domain_metrics(labels, scores, doms, domains), scores


def _fmt(m: dict) -> str:
    if not m:
        return "not validated"
    return f"AUC {m['pooled']['roc_auc']:.3f} BA {m['pooled']['balanced_accuracy']:.3f} " \
           f"mean-domain AUC {m['mean_domain']['roc_auc']:.3f} BA {m['mean_domain']['balanced_accuracy']:.3f}"


# --------------------------------------------------------------------------- set-up

@dataclass
class Runtime:
    """Where this process trains: device, autocast type and its place among distributed ranks."""
    device: torch.device
    amp_dtype: torch.dtype | None
    distributed: bool = False
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(args) -> tuple[bool, int, int]:
    """``torchrun`` (WORLD_SIZE > 1): join the process group; NCCL ranks get their own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, 0, 1
    backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    return True, dist.get_rank(), dist.get_world_size()


def setup(args) -> Runtime:
    """Distributed ranks, CPU threads, device, autocast, seeds; implied defaults resolved."""
    distributed, rank, world = init_distributed(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    amp_dtype = None if args.no_amp else autocast_dtype(device, training=True)
    seed_everything(args.seed + rank)
    resolve_implied_defaults(args)
    return Runtime(device, amp_dtype, distributed, rank, world)


def write_run_config(out: Path, args) -> None:
    """OUT/config.json: the recipe, the command-line overrides and every resolved argument."""
    record = recipes.run_config(args, get_args_parser(), resolve_implied_defaults)
    (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")


# --------------------------------------------------------------------------- data

@dataclass
class TrainData:
    records: list
    domains: list[str]
    train_idx: list[int]
    val_idx: list[int]
    test_idx: list[int]
    train_set: FigureDataset
    val_set: FigureDataset | None  # None with --all-figures
    full_preset: TrainPreset
    pos_weight: float
    sampler: DomainBalancedBatchSampler
    workers: int
    split_hash: str


def load_data(args, cfg: ModelConfig, rt: Runtime, out: Path) -> TrainData:
    """Records and split (OUT/split.json), the cached training and validation sets, the BCE positive
    weight and the domain-balanced batch sampler."""
    records, domains, train_idx, val_idx, test_idx = prepare_data(args)
    if not train_idx or not (val_idx or args.all_figures):
        raise SystemExit("empty training or validation split")
    if rt.is_main:
        write_split(out / "split.json", records, train_idx, val_idx, test_idx)
    t0 = time.time()
    full_preset = TrainPreset(cfg.input_size, args.aug_strength, args.hed_jitter)
    train_records = [records[i] for i in train_idx]
    label_error = label_args_error(args, train_records)
    if label_error:
        raise SystemExit(label_error)
    train_set = FigureDataset(train_records, domains, cfg.input_size, full_preset, targets=args.targets,
                              subtypes=args.subtype_weight > 0)
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size, EvalPreset()) if val_idx else None
    # Counted on the majority labels whatever the target: the same weight for the same figures.
    n_pos = int(train_set.labels.sum())
    pos_weight = args.pos_weight if args.pos_weight > 0 else (len(train_set) - n_pos) / max(n_pos, 1)
    if rt.is_main:
        val_text = f"{len(val_set)} val" if val_set is not None else "no validation (--all-figures)"
        print(f"data: {len(train_set)} train / {val_text} figures, domains {domains}, "
              f"pos_weight {pos_weight:.2f}, loaded in {time.time() - t0:.0f}s; device {rt.device}, "
              f"autocast {rt.amp_dtype}", flush=True)
        if args.targets != "majority" or args.subtype_weight > 0:
            print(f"labels: target {args.targets} ({sum(r.votes is not None for r in train_records)} of "
                  f"{len(train_records)} figures with votes), subtype head weight {args.subtype_weight} "
                  f"({sum(bool(r.subtypes) for r in train_records)} figures with subtypes)", flush=True)
    sampler = DomainBalancedBatchSampler(train_set.domains, args.batch_size, seed=args.seed, rank=rt.rank,
                                         world_size=rt.world)
    workers = args.workers if args.workers >= 0 else (4 if rt.device.type == "cuda" else 1)
    return TrainData(records, domains, train_idx, val_idx, test_idx, train_set, val_set, full_preset, pos_weight,
                     sampler, workers, split_hash(records, train_idx, val_idx))


def label_args_error(args, train_records: list) -> str | None:
    """Why ``--targets`` / ``--subtype-weight`` cannot train on these figures, or None: a switch that no
    training figure can feed would silently train the plain recipe under another name."""
    if args.targets == "votes" and not any(r.votes is not None for r in train_records):
        return (f"--targets votes: none of the {len(train_records)} training figures has expert votes "
                f"(AMi-Br's AMI-BR.csv: expert1_atypical..expert3_atypical)")
    if args.subtype_weight < 0:
        return f"--subtype-weight must be >= 0, got {args.subtype_weight}"
    if args.subtype_weight > 0 and not any(r.subtypes for r in train_records):
        return (f"--subtype-weight {args.subtype_weight}: none of the {len(train_records)} training figures has a "
                f"mitotic subtype (AMi-Br's AMI-BR.csv: expert1_label, expert2_label)")
    return None


def make_loader(data: TrainData, args, epoch: int, device: torch.device) -> DataLoader:
    """The training loader of ``epoch``'s augmentation phase. The curriculum swaps the dataset's
    transform; persistent workers hold their own copy of the dataset, so a new phase needs a new
    loader (and new workers)."""
    data.train_set.transform = LightTrainPreset() if epoch < args.light_aug_epochs else data.full_preset
    return DataLoader(data.train_set, batch_sampler=data.sampler, num_workers=data.workers,
                      persistent_workers=data.workers > 0, pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------- networks and optimiser

@dataclass
class Networks:
    student: torch.nn.Module
    net: torch.nn.Module  # the student, wrapped in DistributedDataParallel when distributed
    teacher: EMATeacher
    kd_source: torch.nn.Module  # what the KD term distils from: the EMA model or a fixed teacher
    subtype_head: torch.nn.Module | None = None  # --subtype-weight: descriptor -> subtype logits (not exported)

    def trained_parameters(self) -> list:
        """What the optimiser steps and the gradient clipping covers: the student and the subtype head."""
        head = list(self.subtype_head.parameters()) if self.subtype_head is not None else []
        return [*self.student.parameters(), *head]


def build_networks(args, cfg: ModelConfig, data: TrainData, rt: Runtime) -> Networks:
    student = build_model(cfg)
    if args.pretrained:
        load_imagenet_backbone(student, args.pretrained)
    student = student.to(rt.device).to(memory_format=torch.channels_last)
    # DDP broadcasts rank 0's initial weights: wrap first, so every rank's teacher starts identical.
    net = DistributedDataParallel(student) if rt.distributed else student
    teacher = EMATeacher(student, decay=args.ema_decay, warmup=not args.no_ema_warmup)
    kd_source = teacher.module
    subtype_head = None
    if args.subtype_weight > 0:
        if rt.distributed:
            raise SystemExit("--subtype-weight is not supported with torchrun (the head is outside "
                             "DistributedDataParallel); run one process per GPU")
        # Built after the student, so the student's initial weights do not depend on the switch.
        subtype_head = torch.nn.Linear(student.classifier.in_features, len(SUBTYPES)).to(rt.device)
    if args.kd_teacher and not args.no_kd:
        held_back = [data.records[i] for i in data.val_idx + data.test_idx]
        kd_source = load_fixed_teacher(args.kd_teacher, cfg, held_back, rt.device)
        if rt.is_main:
            size = len(kd_source.members) if isinstance(kd_source, SeedEnsemble) else 1
            print(f"distilling from the fixed teacher {args.kd_teacher} ({size} network(s))", flush=True)
    return Networks(student, net, teacher, kd_source, subtype_head)


def build_optimizer(args, parameters: list, steps_per_epoch: int):
    """AdamW with a one-cycle schedule (stepped every batch) or ReduceLROnPlateau (every epoch)."""
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    if args.lr_scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                        steps_per_epoch=steps_per_epoch, pct_start=args.warmup_pct)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=args.plateau_factor,
                                                               patience=args.plateau_patience)
    return optimizer, scheduler


# --------------------------------------------------------------------------- checkpoints

@dataclass
class TrainState:
    """What carries over from epoch to epoch (and through a resume)."""
    kd_start: float  # epoch the KD warm-up starts at; inf until --kd-start-auc's gate is reached
    start_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)
    wall: float = 0.0
    resumed_at: list = field(default_factory=list)  # epochs at which --resume continued the run (summary.json)


def resume_from(path: Path, args, nets: Networks, optimizer, scheduler, state: TrainState, rt: Runtime) -> None:
    """Continue from OUT/last.pt: weights, optimiser, schedule, selection state, history and RNG."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["args"]["epochs"] != args.epochs and args.lr_scheduler == "onecycle":
        raise SystemExit(f"{path}: run was planned for {ckpt['args']['epochs']} epochs; "
                         f"a one-cycle schedule cannot be resumed with --epochs {args.epochs}")
    nets.student.load_state_dict(ckpt["student"])
    nets.teacher.load_state_dict(ckpt["teacher"])
    if nets.subtype_head is not None:
        nets.subtype_head.load_state_dict(ckpt["subtype_head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state.start_epoch, state.best, state.best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
    state.history, state.wall = json.loads(ckpt["history"]), ckpt["wall_s"]
    state.kd_start = ckpt.get("kd_start", state.kd_start)
    # a checkpoint written before 2026-12-06 lacks the key: its earlier resumes are in a sweep's train.log alone
    state.resumed_at = [*ckpt.get("resumed_at", []), state.start_epoch]
    torch.set_rng_state(ckpt["rng"])
    if rt.is_main:
        print(f"resumed from {path} at epoch {state.start_epoch}", flush=True)


def save_checkpoints(out: Path, epoch: int, improved: bool, nets: Networks, optimizer, scheduler,
                     state: TrainState, data: TrainData, cfg: ModelConfig, args, val: dict,
                     val_scores: dict | None = None) -> None:
    """OUT/last.pt every epoch (resume) and OUT/best.pt when the monitor improved, both written atomically.
    best.pt keeps both models' validation scores (``val_scores``: P(atypical) per figure, in split order)
    for OUT/val_scores.json."""
    ckpt = {"student": nets.student.state_dict(), "teacher": nets.teacher.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "best": state.best, "best_epoch": state.best_epoch, "args": vars_for_checkpoint(args),
            "model_config": cfg.to_dict(), "domains": data.domains, "history": json.dumps(state.history),
            "wall_s": state.wall, "rng": torch.get_rng_state(), "pos_weight": data.pos_weight,
            "kd_start": state.kd_start, "split_hash": data.split_hash, "resumed_at": state.resumed_at,
            **({"subtype_head": nets.subtype_head.state_dict()} if nets.subtype_head is not None else {})}
    torch.save(ckpt, out / "last.pt.tmp")
    os.replace(out / "last.pt.tmp", out / "last.pt")
    if improved:
        torch.save({"student": ckpt["student"], "teacher": ckpt["teacher"]["module"], "epoch": epoch,
                    "best": state.best, "val_ema": json.dumps(val["ema"]), "val_student": json.dumps(val["student"]),
                    **({"val_scores": {k: torch.as_tensor(v) for k, v in val_scores.items()}} if val_scores else {})},
                   out / "best.pt.tmp")
        os.replace(out / "best.pt.tmp", out / "best.pt")


# --------------------------------------------------------------------------- one epoch

def train_one_epoch(nets: Networks, optimizer, scheduler, loader: DataLoader, cfg: ModelConfig, args, rt: Runtime,
                    epoch: int, kd_start: float, pos_weight: float) -> dict:
    """One pass over ``loader``: the classification loss plus the ramped alignment and KD terms.
    Returns the mean losses and the last step's term weights."""
    steps_per_epoch = len(loader.batch_sampler)
    total_steps = args.epochs * steps_per_epoch
    set_mixstyle_p(nets.student, args.mixstyle_p if epoch >= args.mixstyle_start_epoch else 0.0)
    loader.batch_sampler.set_epoch(epoch)
    nets.net.train()
    sums = {"loss": 0.0, "loss_cls": 0.0, "loss_align": 0.0, "loss_kd": 0.0,
            **({"loss_subtype": 0.0} if nets.subtype_head is not None else {})}
    w_align = w_kd = 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not rt.is_main or args.no_progress,
               leave=False, dynamic_ncols=True)
    for step, (images, labels, doms, *subtypes) in enumerate(bar):
        global_step = epoch * steps_per_epoch + step
        x = normalize(images.to(rt.device, non_blocking=True), cfg.mean, cfg.std).contiguous(
            memory_format=torch.channels_last)
        labels, doms = labels.to(rt.device), doms.to(rt.device)
        w_align = args.align_weight * dann_schedule(global_step / max(total_steps - 1, 1)) if not args.no_align \
            else 0.0
        w_kd = kd_weight(epoch + step / steps_per_epoch - kd_start, args.kd_weight,
                         args.kd_warmup_epochs) if not args.no_kd else 0.0
        losses = training_losses(nets, x, labels, doms, w_align, w_kd, pos_weight, args, rt,
                                 subtypes[0] if subtypes else None)
        optimizer_step(losses["loss"], optimizer, nets.trained_parameters(), args.clip_grad,
                       f"epoch {epoch + 1} step {step}")
        if args.lr_scheduler == "onecycle":
            scheduler.step()
        nets.teacher.update(nets.student)
        for k, v in losses.items():
            sums[k] += float(v.detach())
        bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
    return {"train": {k: v / steps_per_epoch for k, v in sums.items()}, "w_align": w_align, "w_kd": w_kd}


def training_losses(nets: Networks, x, labels, doms, w_align: float, w_kd: float, pos_weight: float, args,
                    rt: Runtime, subtypes: torch.Tensor | None = None) -> dict:
    """The total loss and its parts for one batch (the KD source's forward only when ``w_kd > 0``;
    ``labels`` are the training targets, soft with ``--targets votes``; ``subtypes`` the subtype
    distributions when the subtype head trains)."""
    with autocast(rt.device, rt.amp_dtype):
        logits, descriptors, _ = nets.net(x, return_features=True)
        teacher_logits = None
        if w_kd > 0:
            with torch.no_grad():
                teacher_logits = nets.kd_source(x)
        subtype_logits = nets.subtype_head(descriptors) if nets.subtype_head is not None else None
    loss_cls = classification_loss(logits, labels, pos_weight)
    loss_align = alignment_loss(descriptors, doms, args.align_standardise) if w_align > 0 else logits.new_zeros(())
    loss_kd = distillation_loss(teacher_logits, logits, args.kd_temperature) if teacher_logits is not None \
        else logits.new_zeros(())
    loss = loss_cls + w_align * loss_align + w_kd * loss_kd
    parts = {"loss_cls": loss_cls, "loss_align": loss_align, "loss_kd": loss_kd}
    if subtype_logits is not None:
        parts["loss_subtype"] = subtype_loss(subtype_logits, subtypes)
        loss = loss + args.subtype_weight * parts["loss_subtype"]
    return {"loss": loss, **parts}


def evaluate_epoch(nets: Networks, data: TrainData, cfg: ModelConfig, args,
                   rt: Runtime) -> tuple[dict, float | None, dict]:
    """Both models on the validation split: their metrics, the EMA model's monitor (-inf where
    undefined) and their P(atypical) per validation figure. With no validation part (--all-figures):
    empty metrics and no monitor (None)."""
    if data.val_set is None:
        return {"ema": {}, "student": {}}, None, {}
    val, scores = {}, {}
    for which, model in (("ema", nets.teacher.module), ("student", nets.student)):
        val[which], scores[which] = evaluate(model, data.val_set, data.domains, cfg, rt.device, rt.amp_dtype)
    score = MONITORS[args.monitor](val["ema"])
    if math.isnan(score):  # e.g. no validation domain holds both classes (tiny or odd splits)
        print(f"warning: monitor {args.monitor!r} is undefined on this validation split "
              f"(no domain with both classes?); choose another --monitor", flush=True)
        score = -math.inf
    return val, score, scores


def update_selection(state: TrainState, score: float | None, epoch: int, scheduler, args) -> bool:
    """Plateau step, best epoch and the --kd-start-auc gate after an epoch; whether the monitor improved.
    Without a monitor (None: --all-figures, a fixed schedule) every epoch replaces the last: best.pt is the
    last epoch."""
    if score is None:
        state.best_epoch = epoch
        return True
    if args.lr_scheduler == "plateau":
        scheduler.step(score)
    # The first epoch always becomes 'best', so best.pt exists whatever the monitor says.
    improved = state.best_epoch < 0 or score > state.best
    if improved:
        state.best, state.best_epoch = score, epoch
    if not args.no_kd and math.isinf(state.kd_start) and score >= args.kd_start_auc:
        state.kd_start = max(args.kd_start_epoch, epoch + 1.0)
        print(f"EMA teacher reached {args.monitor} {score:.3f} >= {args.kd_start_auc}: "
              f"KD warm-up starts at epoch {state.kd_start + 1:.0f}", flush=True)
    return improved


def history_entry(epoch: int, epoch_stats: dict, val: dict, score: float, train_time: float, t_epoch: float,
                  optimizer, nets: Networks, state: TrainState, data: TrainData, cfg: ModelConfig, args) -> dict:
    steps_per_epoch = len(data.sampler)
    return {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train": epoch_stats["train"],
            "w_align": epoch_stats["w_align"], "w_kd": epoch_stats["w_kd"],
            "kd_start_epoch": state.kd_start if math.isfinite(state.kd_start) else None,
            "augmentation": "light" if isinstance(data.train_set.transform, LightTrainPreset) else "full",
            "mixstyle_p": args.mixstyle_p if epoch >= args.mixstyle_start_epoch and cfg.mixstyle else 0.0,
            "ema_decay": nets.teacher.current_decay(),
            "train_images_per_s": steps_per_epoch * args.batch_size / train_time,
            "epoch_s": time.time() - t_epoch, "monitor": score,
            "val_ema": val["ema"], "val_student": val["student"]}


def write_history(out: Path, history: list[dict], plot: bool) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    write_history_csv(history, out / "history.csv")
    if plot:
        plot_history(history, out / "curves.png")


def log_epoch(entry: dict, epochs: int, improved: bool) -> None:
    train = entry["train"]
    subtype_text = f" subtype {train['loss_subtype']:.3f}" if train.get("loss_subtype") else ""
    print(f"epoch {entry['epoch']}/{epochs} loss {train['loss']:.3f} "
          f"(cls {train['loss_cls']:.3f} align {train['loss_align']:.3f} "
          f"kd {train['loss_kd']:.3f}{subtype_text}) lr {entry['lr']:.2e} | EMA {_fmt(entry['val_ema'])} | "
          f"student {_fmt(entry['val_student'])} | {entry['train_images_per_s']:.0f} img/s, "
          f"{entry['epoch_s']:.0f}s{' *' if improved else ''}", flush=True)


def end_of_epoch(out: Path, epoch: int, epoch_stats: dict, t_epoch: float, train_time: float, nets: Networks,
                 optimizer, scheduler, state: TrainState, data: TrainData, cfg: ModelConfig, args,
                 rt: Runtime) -> bool:
    """Rank 0 after an epoch: validate, select, record (history, checkpoints, curves, log line).
    Returns whether early stopping ends the run."""
    val, score, val_scores = evaluate_epoch(nets, data, cfg, args, rt)
    improved = update_selection(state, score, epoch, scheduler, args)
    state.wall += time.time() - t_epoch
    entry = history_entry(epoch, epoch_stats, val, score, train_time, t_epoch, optimizer, nets, state, data, cfg,
                          args)
    state.history.append(entry)
    save_checkpoints(out, epoch, improved, nets, optimizer, scheduler, state, data, cfg, args, val, val_scores)
    early_stopping = bool(args.early_stop) and epoch - state.best_epoch >= args.early_stop
    write_history(out, state.history, epoch + 1 == args.epochs or early_stopping
                  or bool(args.plot_every and (epoch + 1) % args.plot_every == 0))
    log_epoch(entry, args.epochs, improved)
    if early_stopping:
        print(f"early stop: no EMA improvement for {args.early_stop} epochs", flush=True)
    return early_stopping


def sync_ranks(stop: torch.Tensor, state: TrainState, optimizer, args, rt: Runtime) -> None:
    """Rank 0 alone validates: share its early-stop decision, KD start and plateau learning rate."""
    dist.broadcast(stop, 0)
    if not args.no_kd and args.kd_start_auc is not None:
        start = torch.tensor([state.kd_start if math.isfinite(state.kd_start) else -1.0], device=rt.device)
        dist.broadcast(start, 0)
        state.kd_start = float(start) if float(start) >= 0 else math.inf
    if args.lr_scheduler == "plateau":  # keep every rank's learning rate equal to rank 0's
        lr = torch.tensor([optimizer.param_groups[0]["lr"]], device=rt.device)
        dist.broadcast(lr, 0)
        for group in optimizer.param_groups:
            group["lr"] = float(lr)


# --------------------------------------------------------------------------- the end of a run

def finish(out: Path, state: TrainState, data: TrainData, cfg: ModelConfig, args, rt: Runtime) -> dict:
    """summary.json and the validation scores; the end-of-run line."""
    summary = {"best_epoch": state.best_epoch + 1, "best_monitor": state.best, "monitor": args.monitor,
               "wall_s": state.wall}
    if args.all_figures:
        summary |= {"best_monitor": None, "monitor": None, "final_model": args.final_model}
    if state.resumed_at:
        # wall_s counts every epoch (it travels in the checkpoint); a caller timing this process saw the
        # part after the last resume only (training.records says so)
        summary["resumed_at_epochs"] = state.resumed_at
    if rt.is_main and data.test_idx:
        # Scoring the unseen domain is the study's part (lab.lodo trains and then reports; lab.heldout).
        print(f"held-out domain {args.leave_out_domain}: {len(data.test_idx)} figures kept out, not scored here "
              f"(python -m lab.heldout {out} --tta {args.eval_tta})", flush=True)
    if rt.is_main:
        selected = save_val_scores(out, data, args) if data.val_set is not None else None
        if selected:
            summary["val_scores_model"] = selected  # the model OUT/val_scores.json scores with
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if args.all_figures:
            print(f"done: {state.best_epoch + 1} epochs on every figure (no validation part; the {args.final_model} "
                  f"model of the last epoch is kept); run directory {out}", flush=True)
        else:
            print(f"done: best {args.monitor} {state.best:.4f} at epoch {state.best_epoch + 1}; run directory {out}",
                  flush=True)
    if rt.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def save_val_scores(out: Path, data: TrainData, args) -> str | None:
    """OUT/val_scores.json: P(atypical) of every validation figure by the model of the best epoch that
    ``training.export --which auto --tta none`` (without ``--half``) would select: the EMA teacher or the
    student, whichever scores higher on the run's monitor (the EMA teacher on a tie), scored as validation
    scored it during training (no TTA). training.oof combines the files of a cross-fit's runs. Returns the
    selected model, or None where best.pt predates these scores."""
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    if "val_scores" not in best:
        print(f"note: {out / 'best.pt'} holds no validation scores (written before they were kept); "
              f"no val_scores.json", flush=True)
        return None
    monitor = MONITORS[args.monitor]
    metrics = {"ema": json.loads(best["val_ema"]), "student": json.loads(best["val_student"])}
    which = max(metrics, key=lambda k: monitor(metrics[k]))  # as training.export.select_member
    write_val_scores(out / "val_scores.json", data.records, data.train_idx, data.val_idx,
                     best["val_scores"][which].numpy(),
                     vars_for_checkpoint(args), source="training.train", selected_model=which, tta="none",
                     best_epoch=int(best["epoch"]) + 1)
    return which


# --------------------------------------------------------------------------- main

def main(args) -> dict:
    rt = setup(args)
    out: Path = args.out
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, args)
    cfg = model_config_from_args(args)
    data = load_data(args, cfg, rt, out)
    nets = build_networks(args, cfg, data, rt)
    optimizer, scheduler = build_optimizer(args, nets.trained_parameters(), len(data.sampler))
    # With --kd-start-auc the KD warm-up's start is unknown until the teacher has learned.
    state = TrainState(kd_start=args.kd_start_epoch if args.kd_start_auc is None else math.inf)
    if args.resume and (out / "last.pt").is_file():
        resume_from(out / "last.pt", args, nets, optimizer, scheduler, state, rt)

    loader = None
    for epoch in range(state.start_epoch, args.epochs):
        t_epoch = time.time()
        if loader is None or epoch == args.light_aug_epochs:
            loader = make_loader(data, args, epoch, rt.device)
        epoch_stats = train_one_epoch(nets, optimizer, scheduler, loader, cfg, args, rt, epoch, state.kd_start,
                                      data.pos_weight)
        train_time = time.time() - t_epoch
        stop = torch.zeros(1, device=rt.device)
        if rt.is_main and end_of_epoch(out, epoch, epoch_stats, t_epoch, train_time, nets, optimizer, scheduler,
                                       state, data, cfg, args, rt):
            stop += 1
        if rt.distributed:
            sync_ranks(stop, state, optimizer, args, rt)
        if stop.item() or (args.stop_after and epoch + 1 - state.start_epoch >= args.stop_after):
            break
    if rt.distributed:
        release_ddp(nets)
    return finish(out, state, data, cfg, args, rt)


def release_ddp(nets: Networks) -> None:
    """Free the DistributedDataParallel wrapper while the process group still exists. Its Reducer holds
    the group; freed only after ``destroy_process_group``, when ``main`` returns, ``~ProcessGroupGloo``
    deadlocked on a mutex in one CI run (2026-12-04, torch 2.10.0, 2 gloo ranks on a loaded CPU)."""
    nets.net = nets.student
    gc.collect()


def set_mixstyle_p(model: torch.nn.Module, p: float) -> None:
    """Set the mixing probability of every MixStyle layer (``--mixstyle-start-epoch``)."""
    for module in model.modules():
        if isinstance(module, MixStyle):
            module.p = p


def best_epoch_models(best: dict, cfg, device) -> dict:
    """The two candidates of a run's best.pt, ready for evaluation: {"ema": teacher, "student": student}."""
    models = {}
    for which, key in (("ema", "teacher"), ("student", "student")):
        model = build_model(cfg)
        model.load_state_dict(best[key])
        models[which] = model.to(device).to(memory_format=torch.channels_last).eval()
    return models


def vars_for_checkpoint(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_history_csv(history: list[dict], path: Path) -> None:
    rows = []
    for h in history:
        row = {"epoch": h["epoch"], "lr": h["lr"], **h["train"], "w_align": h["w_align"], "w_kd": h["w_kd"],
               "img_per_s": h["train_images_per_s"], "monitor": h["monitor"]}
        for who in ("val_ema", "val_student"):
            for dom, m in h[who].items():
                for k in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
                    if k in m:
                        row[f"{who}/{dom}/{k}"] = m[k]
        rows.append(row)
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(f"{r.get(k, '')}" for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(parse_args())
