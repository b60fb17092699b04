"""Train CBAM-DenseNet-121 with Mix (MixStyle), Align (domain alignment loss) and Distil (EMA teacher).

    python -m training.train --data amibr=../shared/data/ami-br --out runs/full

Multi-GPU: ``torchrun --nproc_per_node N -m training.train ...`` (DistributedDataParallel).
Ablations: ``--no-mixstyle``, ``--no-align``, ``--no-kd``; all three = plain ERM trained the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model import ModelConfig, SeedEnsemble, build_model, load_imagenet_backbone
from model.layers import MixStyle
from model.preprocess import normalize
from model.runtime import autocast, autocast_dtype, resolve_device
from model.weights import WeightsError, load_model
from model.tta import TTA_MODES, tta_logits

from .datasets import FigureDataset, load_datasets
from .ema import EMATeacher
from .losses import alignment_loss, classification_loss, dann_schedule, distillation_loss, kd_weight
from .metrics import choose_threshold, format_threshold, per_domain_metrics
from .plots import plot_history
from .presets import EvalPreset, LightTrainPreset, TrainPreset
from .sampler import DomainBalancedBatchSampler
from .split import leave_one_domain_out_split, read_split, record_key, split_hash, stratified_group_split, write_split

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
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=["amibr=../shared/data/ami-br"],
                   help="datasets as NAME=PATH (amibr, midog25, omg-octo); several are combined")
    g.add_argument("--val-fraction", type=float, default=0.25, help="slide-disjoint validation share")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--split-file", type=Path, help="reuse a saved split.json instead of making one")
    g.add_argument("--eval-tta", choices=TTA_MODES, default="dihedral",
                   help="test-time augmentation for the leave-one-domain-out report (as training.export ships)")
    g.add_argument("--eval-other-model", action="store_true",
                   help="the leave-one-domain-out report also scores the unseen domain with the model selection "
                        "did not pick (EMA teacher or student); nearly doubles the report's time")
    g.add_argument("--leave-out-domain",
                   help="leave-one-domain-out: hold this domain out as a test set (never trained on nor used for "
                        "selection); the other domains are split into train and an in-domain validation split")
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

    g = p.add_argument_group("model")
    g.add_argument("--no-mixstyle", action="store_true")
    g.add_argument("--mixstyle-p", type=float, default=0.5)
    g.add_argument("--mixstyle-alpha", type=float, default=0.1)
    g.add_argument("--mixstyle-start-epoch", type=int, default=0, metavar="E",
                   help="MixStyle mixes only from epoch E+1 on (p = 0 before): lets a from-scratch network "
                        "form its low-level features first (0 = from the start, as the paper)")
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--pretrained", type=Path,
                   help="initial backbone from a local file: torchvision's densenet121 ImageNet weights (.pth) "
                        "or a training.pretrain_ssl backbone.safetensors")

    g = p.add_argument_group("optimisation")
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

    g = p.add_argument_group("mix, align, distil")
    g.add_argument("--no-align", action="store_true")
    g.add_argument("--align-weight", type=float, default=1.0, help="times the DANN ramp 2/(1+exp(-10p))-1")
    g.add_argument("--align-standardise", action="store_true",
                   help="divide each descriptor channel by its batch standard deviation before the alignment "
                        "loss, so it penalises the between-domain share of the spread whatever the features' "
                        "scale (not in the paper; unstandardised the term is ~0.001 here)")
    g.add_argument("--no-kd", action="store_true")
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

    g = p.add_argument_group("run")
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
    return p


# --------------------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def model_config_from_args(args) -> ModelConfig:
    return ModelConfig(input_size=args.input_size, mixstyle=not args.no_mixstyle, mixstyle_p=args.mixstyle_p,
                       mixstyle_alpha=args.mixstyle_alpha, dropout=args.dropout)


def prepare_data(args):
    """Records, domain names and the train/val(/test) split (saved in OUT/split.json).

    ``test`` is empty except with ``--leave-out-domain``, where it holds the unseen domain.
    """
    records = load_datasets(args.data)
    if args.limit:
        rng = random.Random(args.split_seed)  # the data, like the split, must not change with --seed
        records = rng.sample(records, min(args.limit, len(records)))
    test_idx: list[int] = []
    if args.split_file:
        train_idx, val_idx = read_split(args.split_file, records)
    elif args.leave_out_domain:
        train_idx, val_idx, test_idx = leave_one_domain_out_split(records, args.leave_out_domain,
                                                                  args.val_fraction, args.split_seed)
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
                   tta: str = "none"):
    """P(atypical) for every figure of ``dataset`` (eval mode; ``tta`` as in ``model.tta.tta_logits``)."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size].to(device)
        x = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            scores.append(torch.sigmoid(tta_logits(model, x, tta)).cpu())
    model.train(was_training)
    return torch.cat(scores).numpy()


def evaluate(model, dataset, domains, cfg, device, amp_dtype):
    scores = predict_scores(model, dataset, cfg.mean, cfg.std, device, amp_dtype)
    labels, doms = dataset.labels.numpy(), dataset.domains.numpy()
    return per_domain_metrics(labels, scores, doms, domains), scores


def _fmt(m: dict) -> str:
    return f"AUC {m['pooled']['roc_auc']:.3f} BA {m['pooled']['balanced_accuracy']:.3f} " \
           f"mean-domain AUC {m['mean_domain']['roc_auc']:.3f} BA {m['mean_domain']['balanced_accuracy']:.3f}"


# --------------------------------------------------------------------------- main

def main(args) -> dict:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            args.device = f"cuda:{local_rank}"
    else:
        rank, world = 0, 1
    is_main = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    amp_dtype = None if args.no_amp else autocast_dtype(device, training=True)
    seed_everything(args.seed + rank)
    out: Path = args.out
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    records, domains, train_idx, val_idx, test_idx = prepare_data(args)
    if not val_idx or not train_idx:
        raise SystemExit("empty training or validation split")
    if is_main:
        write_split(out / "split.json", records, train_idx, val_idx, test_idx)
    cfg = model_config_from_args(args)
    t0 = time.time()
    full_preset = TrainPreset(cfg.input_size, args.aug_strength, args.hed_jitter)
    train_set = FigureDataset([records[i] for i in train_idx], domains, cfg.input_size, full_preset)
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size, EvalPreset())
    n_pos = int(train_set.labels.sum())
    pos_weight = args.pos_weight if args.pos_weight > 0 else (len(train_set) - n_pos) / max(n_pos, 1)
    if is_main:
        print(f"data: {len(train_set)} train / {len(val_set)} val figures, domains {domains}, "
              f"pos_weight {pos_weight:.2f}, loaded in {time.time() - t0:.0f}s; device {device}, autocast {amp_dtype}",
              flush=True)

    sampler = DomainBalancedBatchSampler(train_set.domains, args.batch_size, seed=args.seed, rank=rank, world_size=world)
    workers = args.workers if args.workers >= 0 else (4 if device.type == "cuda" else 1)

    def make_loader(epoch: int) -> DataLoader:
        # The curriculum swaps the dataset's transform; persistent workers hold their own copy of the
        # dataset, so a new phase needs a new loader (and new workers).
        train_set.transform = LightTrainPreset() if epoch < args.light_aug_epochs else full_preset
        return DataLoader(train_set, batch_sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    student = build_model(cfg)
    if args.pretrained:
        load_imagenet_backbone(student, args.pretrained)
    student = student.to(device).to(memory_format=torch.channels_last)
    # DDP broadcasts rank 0's initial weights: wrap first, so every rank's teacher starts identical.
    net = DistributedDataParallel(student) if distributed else student
    teacher = EMATeacher(student, decay=args.ema_decay, warmup=not args.no_ema_warmup)
    kd_source = teacher.module
    if args.kd_teacher and not args.no_kd:
        kd_source = load_fixed_teacher(args.kd_teacher, cfg, [records[i] for i in val_idx + test_idx], device)
        if is_main:
            size = len(kd_source.members) if isinstance(kd_source, SeedEnsemble) else 1
            print(f"distilling from the fixed teacher {args.kd_teacher} ({size} network(s))", flush=True)

    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(sampler)
    if args.lr_scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                        steps_per_epoch=steps_per_epoch, pct_start=args.warmup_pct)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=args.plateau_factor,
                                                               patience=args.plateau_patience)

    start_epoch, best, best_epoch, history, wall = 0, -math.inf, -1, [], 0.0
    # Epoch at which the KD warm-up starts; with --kd-start-auc it is unknown until the teacher has learned.
    kd_start = args.kd_start_epoch if args.kd_start_auc is None else math.inf
    if args.resume and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        if ckpt["args"]["epochs"] != args.epochs and args.lr_scheduler == "onecycle":
            raise SystemExit(f"{out / 'last.pt'}: run was planned for {ckpt['args']['epochs']} epochs; "
                             f"a one-cycle schedule cannot be resumed with --epochs {args.epochs}")
        student.load_state_dict(ckpt["student"])
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
        history, wall = json.loads(ckpt["history"]), ckpt["wall_s"]
        kd_start = ckpt.get("kd_start", kd_start)
        torch.set_rng_state(ckpt["rng"])
        if is_main:
            print(f"resumed from {out / 'last.pt'} at epoch {start_epoch}", flush=True)

    if args.early_stop is None:
        args.early_stop = 12 if args.lr_scheduler == "plateau" else 0
    use_align, use_kd = not args.no_align, not args.no_kd
    total_steps = args.epochs * steps_per_epoch
    loader = None
    for epoch in range(start_epoch, args.epochs):
        t_epoch = time.time()
        if loader is None or epoch == args.light_aug_epochs:
            loader = make_loader(epoch)
        set_mixstyle_p(student, args.mixstyle_p if epoch >= args.mixstyle_start_epoch else 0.0)
        sampler.set_epoch(epoch)
        net.train()
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_align": 0.0, "loss_kd": 0.0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main or args.no_progress,
                   leave=False, dynamic_ncols=True)
        for step, (images, labels, doms) in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            images = images.to(device, non_blocking=True)
            labels, doms = labels.to(device), doms.to(device)
            x = normalize(images, cfg.mean, cfg.std).contiguous(memory_format=torch.channels_last)
            w_align = args.align_weight * dann_schedule(global_step / max(total_steps - 1, 1)) if use_align else 0.0
            w_kd = kd_weight(epoch + step / steps_per_epoch - kd_start, args.kd_weight,
                             args.kd_warmup_epochs) if use_kd else 0.0
            with autocast(device, amp_dtype):
                logits, descriptors, _ = net(x, return_features=True)
                teacher_logits = None
                if w_kd > 0:
                    with torch.no_grad():
                        teacher_logits = kd_source(x)
            loss_cls = classification_loss(logits, labels, pos_weight)
            loss_align = alignment_loss(descriptors, doms, args.align_standardise) if w_align > 0 else logits.new_zeros(())
            loss_kd = distillation_loss(teacher_logits, logits, args.kd_temperature) if teacher_logits is not None \
                else logits.new_zeros(())
            loss = loss_cls + w_align * loss_align + w_kd * loss_kd
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1} step {step}: {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), args.clip_grad)
            optimizer.step()
            if args.lr_scheduler == "onecycle":
                scheduler.step()
            teacher.update(student)
            for k, v in (("loss", loss), ("loss_cls", loss_cls), ("loss_align", loss_align), ("loss_kd", loss_kd)):
                sums[k] += float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        train_time = time.time() - t_epoch

        stop = torch.zeros(1, device=device)
        if is_main:
            val_ema, _ = evaluate(teacher.module, val_set, domains, cfg, device, amp_dtype)
            val_student, _ = evaluate(student, val_set, domains, cfg, device, amp_dtype)
            score = MONITORS[args.monitor](val_ema)
            if math.isnan(score):  # e.g. no validation domain holds both classes (tiny or odd splits)
                print(f"warning: monitor {args.monitor!r} is undefined on this validation split "
                      f"(no domain with both classes?); choose another --monitor", flush=True)
                score = -math.inf
            if args.lr_scheduler == "plateau":
                scheduler.step(score)
            # The first epoch always becomes 'best', so best.pt exists whatever the monitor says.
            improved = best_epoch < 0 or score > best
            if improved:
                best, best_epoch = score, epoch
            if use_kd and math.isinf(kd_start) and score >= args.kd_start_auc:
                kd_start = max(args.kd_start_epoch, epoch + 1.0)
                print(f"EMA teacher reached {args.monitor} {score:.3f} >= {args.kd_start_auc}: "
                      f"KD warm-up starts at epoch {kd_start + 1:.0f}", flush=True)
            wall += time.time() - t_epoch
            entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                     "train": {k: v / steps_per_epoch for k, v in sums.items()},
                     "w_align": w_align, "w_kd": w_kd, "kd_start_epoch": kd_start if math.isfinite(kd_start) else None,
                     "augmentation": "light" if isinstance(train_set.transform, LightTrainPreset) else "full",
                     "mixstyle_p": args.mixstyle_p if epoch >= args.mixstyle_start_epoch and cfg.mixstyle else 0.0,
                     "ema_decay": teacher.current_decay(),
                     "train_images_per_s": steps_per_epoch * args.batch_size / train_time,
                     "epoch_s": time.time() - t_epoch, "monitor": score,
                     "val_ema": val_ema, "val_student": val_student}
            history.append(entry)
            state = {"student": student.state_dict(), "teacher": teacher.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "best": best, "best_epoch": best_epoch, "args": vars_for_checkpoint(args),
                     "model_config": cfg.to_dict(), "domains": domains, "history": json.dumps(history),
                     "wall_s": wall, "rng": torch.get_rng_state(), "pos_weight": pos_weight, "kd_start": kd_start,
                     "split_hash": split_hash(records, train_idx, val_idx)}
            torch.save(state, out / "last.pt.tmp")
            os.replace(out / "last.pt.tmp", out / "last.pt")
            if improved:
                torch.save({"student": state["student"], "teacher": state["teacher"]["module"], "epoch": epoch,
                            "best": best, "val_ema": json.dumps(val_ema), "val_student": json.dumps(val_student)},
                           out / "best.pt.tmp")
                os.replace(out / "best.pt.tmp", out / "best.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
            write_history_csv(history, out / "history.csv")
            early_stopping = bool(args.early_stop) and epoch - best_epoch >= args.early_stop
            if epoch + 1 == args.epochs or early_stopping or (args.plot_every and (epoch + 1) % args.plot_every == 0):
                plot_history(history, out / "curves.png")
            print(f"epoch {epoch + 1}/{args.epochs} loss {entry['train']['loss']:.3f} "
                  f"(cls {entry['train']['loss_cls']:.3f} align {entry['train']['loss_align']:.3f} "
                  f"kd {entry['train']['loss_kd']:.3f}) lr {entry['lr']:.2e} | EMA {_fmt(val_ema)} | "
                  f"student {_fmt(val_student)} | {entry['train_images_per_s']:.0f} img/s, "
                  f"{entry['epoch_s']:.0f}s{' *' if improved else ''}", flush=True)
            if early_stopping:
                print(f"early stop: no EMA improvement for {args.early_stop} epochs", flush=True)
                stop += 1
        if distributed:
            dist.broadcast(stop, 0)
            if use_kd and args.kd_start_auc is not None:  # rank 0 alone evaluates the teacher
                start = torch.tensor([kd_start if math.isfinite(kd_start) else -1.0], device=device)
                dist.broadcast(start, 0)
                kd_start = float(start) if float(start) >= 0 else math.inf
            if args.lr_scheduler == "plateau":  # keep every rank's learning rate equal to rank 0's
                lr = torch.tensor([optimizer.param_groups[0]["lr"]], device=device)
                dist.broadcast(lr, 0)
                for group in optimizer.param_groups:
                    group["lr"] = float(lr)
        if stop.item() or (args.stop_after and epoch + 1 - start_epoch >= args.stop_after):
            break

    summary = {"best_epoch": best_epoch + 1, "best_monitor": best, "monitor": args.monitor, "wall_s": wall}
    if is_main and test_idx:
        test_set = FigureDataset([records[i] for i in test_idx], domains, cfg.input_size, EvalPreset())
        # The checkpoint's form of the args: paths as strings (--kd-teacher is a Path), so the report is JSON.
        held_out = held_out_report(out / "best.pt", cfg, domains, val_set, test_set, vars_for_checkpoint(args),
                                   device, amp_dtype, tta=args.eval_tta, score_other_model=args.eval_other_model)
        (out / "heldout.json").write_text(json.dumps(held_out, indent=1) + "\n")
        summary["held_out"] = {k: held_out[k] for k in ("domain", "selected_model", "threshold")}
        summary["held_out"]["roc_auc"] = held_out["test_at_threshold"]["pooled"]["roc_auc"]
        t = held_out["test_at_threshold"]["pooled"]
        print(f"held-out {held_out['domain']} (tta {held_out['tta']}): {held_out['selected_model']} of epoch "
              f"{best_epoch + 1}, "
              f"AUC {t['roc_auc']:.3f} BA@0.5 {held_out['test_at_0.5']['pooled']['balanced_accuracy']:.3f} "
              f"BA@{format_threshold(held_out['threshold'])} {t['balanced_accuracy']:.3f} (sens {t['sensitivity']:.3f}, "
              f"spec {t['specificity']:.3f}) -> {out / 'heldout.json'}", flush=True)
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"done: best {args.monitor} {best:.4f} at epoch {best_epoch + 1}; run directory {out}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


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


# Training arguments that define an arm of a leave-one-domain-out comparison, with the value that
# reports written before a switch existed implicitly used.
ARM_KEYS = {"no_mixstyle": False, "no_align": False, "no_kd": False, "seed": 0, "split_seed": 0, "epochs": 40,
            "aug_strength": 1.0, "hed_jitter": 0.0, "light_aug_epochs": 0, "mixstyle_start_epoch": 0,
            "align_standardise": False, "kd_teacher": None, "pretrained": None, "input_size": 128}


def held_out_report(best_path: Path, cfg, domains, val_set, test_set, args: dict, device, amp_dtype,
                    tta: str = "dihedral", score_other_model: bool = False) -> dict:
    """Leave-one-domain-out: apply the run's own selection to the unseen domain.

    Everything is decided on the in-domain validation split, as ``training.export`` does for
    shipped weights: the best epoch (monitor on the EMA teacher), EMA teacher or student
    (whichever scores higher on the monitor, with ``tta``), and the threshold
    (``choose_threshold``, mean per-domain balanced accuracy). The held-out domain is then
    scored once, by the selected model only, at 0.5 and at that threshold, so the threshold's
    transfer is measured too. ``score_other_model`` also scores it with the model not selected
    (``other_model_test_at_0.5``: did selection pick the better one?); the unseen cohort is the
    larger set (TUPAC16: 1,602 figures against 329 validation), so that nearly doubles the cost.
    """
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    monitor = MONITORS[args["monitor"]]
    models = best_epoch_models(best, cfg, device)
    candidates = {}
    for which, model in models.items():
        val_scores = predict_scores(model, val_set, cfg.mean, cfg.std, device, amp_dtype, tta=tta)
        val_metrics = per_domain_metrics(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), domains)
        candidates[which] = (val_metrics, val_scores)
    which = max(candidates, key=lambda k: monitor(candidates[k][0]))
    val_metrics, val_scores = candidates[which]
    threshold = choose_threshold(val_set.labels.numpy(), val_scores, val_set.domains.numpy(), "mean-domain")
    test_labels, test_domains = test_set.labels.numpy(), test_set.domains.numpy()
    test_scores = predict_scores(models[which], test_set, cfg.mean, cfg.std, device, amp_dtype, tta=tta)
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
        other_scores = predict_scores(models[other], test_set, cfg.mean, cfg.std, device, amp_dtype, tta=tta)
        report["other_model_test_at_0.5"] = per_domain_metrics(test_labels, other_scores, test_domains, domains)
    return report | {
        "test_figures": [record_key(r) for r in test_set.records],
        "test_scores": [round(float(x), 6) for x in test_scores],
        "test_labels": [int(x) for x in test_labels],
        # The validation scores the threshold was fitted on, so other threshold rules can be
        # studied on the unseen domain without retraining (scripts/threshold_transfer.py).
        "val_scores": [round(float(x), 6) for x in val_scores],
        "val_labels": [int(x) for x in val_set.labels.numpy()],
        "val_domains": [domains[int(d)] for d in val_set.domains.numpy()],
    }


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
    main(get_args_parser().parse_args())
