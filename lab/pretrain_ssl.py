"""Self-supervised (SimCLR) pretraining of the DenseNet-121 backbone on the training split's own images.

    python -m lab.pretrain_ssl --data amibr=../shared/data/ami-br --out runs/ssl-s0   # the default split
    python -m training.train ... --pretrained runs/ssl-s0/backbone.safetensors

No ImageNet weights exist here, and 2,144 labelled figures are little for a from-scratch DenseNet-121.
Contrastive pretraining (Chen et al. 2020) learns from the images alone: two random views of each
figure (crop, flips, 90° turns, colour jitter, greyscale, blur; ``ContrastivePreset``) are pulled
together and every other image of the batch pushed away (``nt_xent_loss``). Only the *training* part
of the split is read (never validation or a held-out domain), so validation stays unseen.

Labels are used for one thing only: a linear probe (logistic regression on the frozen GAP descriptors
of un-augmented training figures, scored on validation) that reports how much the descriptors know
about the class, every ``--probe-every`` epochs and at the end. It never feeds back into training.

Writes OUT/last.pt every epoch (``--resume`` continues), OUT/history.json/.csv, OUT/curves.png and, at
the end, OUT/backbone.safetensors: the ``features.*`` tensors of ``AtypicalMitosisNet`` (torchvision's
DenseNet-121 names), with the pretraining args in its metadata, which ``--pretrained`` loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from data.datasets import FigureDataset
from data.split import split_hash
from model import AtypicalMitosisNet, ModelConfig
from model.preprocess import normalize
from model.runtime import autocast, autocast_dtype, resolve_device
from stats.metrics import per_domain_metrics
from training import recipes
from training.engine import optimizer_step
from training.plots import plot_pretraining
from training.presets import RandomHEDJitter, RandomRot90
from training.provenance import git_commit, hardware
from training.train import prepare_data, seed_everything, vars_for_checkpoint


class ContrastivePreset:
    """One random view for self-supervised contrastive pretraining (SimCLR-style), applied twice per
    image. Stronger than ``TrainPreset`` on purpose: the two views must differ in crop and colour so
    that agreeing on them means ignoring stain, brightness and orientation. The figure is centred in
    the patch, so crops keep at least 30% of it (SimCLR uses 8% on ImageNet)."""

    def __init__(self, size: int, hed_sigma: float = 0.0):
        stain = [RandomHEDJitter(hed_sigma, p=0.5)] if hed_sigma > 0 else []
        blur_kernel = 2 * (size // 20) + 1  # about a tenth of the image, odd
        self.transforms = v2.Compose(stain + [
            v2.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(0.75, 1.33), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020) for two views of a batch.

    With the 2N projections u_k = z_k / |z_k| (z1 rows then z2 rows), sim(i, j) = u_i · u_j, and
    pos(i) the other view of the same image (i +/- N)::

        l_i = -log( exp(sim(i, pos(i)) / tau) / sum_{k != i} exp(sim(i, k) / tau) )
        L   = (1 / 2N) sum_i l_i

    Every other image of the batch, in either view, is a negative; no labels are used.
    """
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = u @ u.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, positives)


class SimCLRNet(nn.Module):
    """DenseNet-121 features -> ReLU -> GAP (the classifier's descriptor before CBAM) -> projection MLP.

    ``features`` is the same module, with the same names, as ``AtypicalMitosisNet.features``, so its
    state dict loads into the classifier unchanged. The projector is thrown away after pretraining
    (SimCLR found the layer before it generalises better)."""

    def __init__(self, config: ModelConfig, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.features = AtypicalMitosisNet(config).features
        channels = 1024
        self.projector = nn.Sequential(nn.Linear(channels, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                       nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.embed(x))


class TwoViews(Dataset):
    """Two independent random views of each cached uint8 image (labels are not returned)."""

    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.transform(self.images[i])


@torch.no_grad()
def contrastive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Share of views whose most similar other view (by cosine) is the other view of the same image."""
    n = z1.shape[0]
    u = nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (u @ u.T).fill_diagonal_(-math.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return float((sim.argmax(dim=1) == positives).float().mean())


@torch.no_grad()
def embed_all(model: SimCLRNet, images: torch.Tensor, cfg: ModelConfig, device, amp_dtype,
              batch_size: int = 128) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device), cfg.mean, cfg.std)
        with autocast(device, amp_dtype):
            out.append(model.embed(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def linear_probe(model: SimCLRNet, train_set: FigureDataset, val_set: FigureDataset, domains: list[str],
                 cfg: ModelConfig, device, amp_dtype) -> dict:
    """Class-balanced logistic regression on frozen, standardised descriptors of the training figures,
    scored on validation: per-domain and pooled metrics at P = 0.5, as the training log reports them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = embed_all(model, train_set.images, cfg, device, amp_dtype)
    x_val = embed_all(model, val_set.images, cfg, device, amp_dtype)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
    probe.fit(x_train, train_set.labels.numpy())
    scores = probe.predict_proba(x_val)[:, 1]
    return per_domain_metrics(val_set.labels.numpy(), scores, val_set.domains.numpy(), domains)


def write_backbone(model: SimCLRNet, path: Path, metadata: dict) -> None:
    """The ``features.*`` tensors (fp32) with string metadata, written atomically."""
    state = {f"features.{k}": v.detach().float().contiguous().cpu() for k, v in model.features.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    g = p.add_argument_group("data (the training part of the split only)")
    g.add_argument("--data", nargs="+", default=["amibr=../shared/data/ami-br"])
    g.add_argument("--split-file", type=Path, help="the split.json the classifier will be trained on")
    g.add_argument("--val-fraction", type=float, default=0.25)
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--leave-out-domain", help="never read this domain (as training.train --leave-out-domain)")
    g.add_argument("--limit", type=int, default=0, help="use only this many figures (smoke tests)")
    g.add_argument("--input-size", type=int, default=128)
    g.add_argument("--hed-jitter", type=float, default=0.0, metavar="SIGMA", help="stain jitter in the views")
    g.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: 1 on CPU, 4 on CUDA)")
    g = p.add_argument_group("contrastive learning")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64, help="images per step (2x as many views)")
    g.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate (one-cycle)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-pct", type=float, default=0.1)
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--hidden-dim", type=int, default=512)
    g.add_argument("--proj-dim", type=int, default=128)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--probe-every", type=int, default=10, metavar="N",
                   help="linear probe every N epochs (and at the end)")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/ssl"))
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--no-amp", action="store_true")
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")
    return p


def load_views(args, cfg: ModelConfig, device) -> dict:
    """The split (training part for the views, validation for the probe only) and the two-view loader."""
    records, domains, train_idx, val_idx, _ = prepare_data(args)
    train_set = FigureDataset([records[i] for i in train_idx], domains, cfg.input_size)
    val_set = FigureDataset([records[i] for i in val_idx], domains, cfg.input_size)
    if len(train_set) < args.batch_size:
        raise SystemExit(f"only {len(train_set)} training figures for --batch-size {args.batch_size}")
    workers = args.workers if args.workers >= 0 else (4 if device.type == "cuda" else 1)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TwoViews(train_set.images, ContrastivePreset(cfg.input_size, args.hed_jitter)),
                        batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=generator)
    return {"records": records, "domains": domains, "train_idx": train_idx, "val_idx": val_idx,
            "train_set": train_set, "val_set": val_set, "loader": loader, "generator": generator}


def resume_pretraining(path: Path, args, model, optimizer, scheduler, generator) -> tuple[int, list, float]:
    """Continue from OUT/last.pt: (first epoch to run, history, wall time so far)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["args"]["epochs"] != args.epochs:
        raise SystemExit(f"{path}: run was planned for {ckpt['args']['epochs']} epochs, "
                         f"not --epochs {args.epochs}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    generator.set_state(ckpt["loader_rng"])
    print(f"resumed from {path} at epoch {ckpt['epoch'] + 1}", flush=True)
    return ckpt["epoch"] + 1, json.loads(ckpt["history"]), ckpt["wall_s"]


def pretrain_one_epoch(model: SimCLRNet, loader: DataLoader, optimizer, scheduler, cfg: ModelConfig, args, device,
                       amp_dtype, epoch: int) -> dict:
    """One pass of NT-Xent over the two-view loader: mean loss and contrastive accuracy."""
    model.train()
    loss_sum, acc_sum = 0.0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress, leave=False,
               dynamic_ncols=True)
    for step, (view1, view2) in enumerate(bar):
        n = view1.shape[0]
        x = normalize(torch.cat([view1, view2]).to(device), cfg.mean, cfg.std)
        with autocast(device, amp_dtype):
            z = model(x.contiguous(memory_format=torch.channels_last))
        loss = nt_xent_loss(z[:n], z[n:], args.temperature)
        optimizer_step(loss, optimizer, model.parameters(), args.clip_grad, f"epoch {epoch + 1} step {step}")
        scheduler.step()
        loss_sum += float(loss.detach())
        acc_sum += contrastive_accuracy(z[:n].detach(), z[n:].detach())
        bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
    return {"loss": loss_sum / len(loader), "contrastive_accuracy": acc_sum / len(loader)}


def save_pretraining(out: Path, model, optimizer, scheduler, epoch: int, args, history: list, wall: float,
                     generator) -> None:
    """OUT/last.pt (written atomically), OUT/history.json and .csv, OUT/curves.png."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "args": vars_for_checkpoint(args),
             "history": json.dumps(history), "wall_s": wall, "rng": torch.get_rng_state(),
             "loader_rng": generator.get_state()}
    torch.save(state, out / "last.pt.tmp")
    os.replace(out / "last.pt.tmp", out / "last.pt")
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    keys = ["epoch", "lr", "loss", "contrastive_accuracy", "train_images_per_s", "epoch_s"]
    rows = [",".join(keys + ["probe_pooled_auc", "probe_mean_domain_auc"])]
    for h in history:
        probe = h.get("probe")
        probe_cells = [str(probe["pooled"]["roc_auc"]), str(probe["mean_domain"]["roc_auc"])] if probe else ["", ""]
        rows.append(",".join([str(h[k]) for k in keys] + probe_cells))
    (out / "history.csv").write_text("\n".join(rows) + "\n")
    plot_pretraining(history, out / "curves.png")


def log_pretraining_epoch(entry: dict, epochs: int) -> None:
    probe = entry.get("probe")
    probe_text = (f" | probe AUC pooled {probe['pooled']['roc_auc']:.3f} mean-domain "
                  f"{probe['mean_domain']['roc_auc']:.3f}" if probe else "")
    print(f"epoch {entry['epoch']}/{epochs} loss {entry['loss']:.3f} acc {entry['contrastive_accuracy']:.3f} "
          f"lr {entry['lr']:.2e}{probe_text} | {entry['train_images_per_s']:.0f} img/s, {entry['epoch_s']:.0f}s",
          flush=True)


def backbone_metadata(args, data: dict, history: list, wall: float) -> dict:
    """What backbone.safetensors and backbone.json say of the pretraining (the card copies it)."""
    final = history[-1]
    return {"format": "torchvision densenet121 features.* (load with training.train --pretrained)",
            "method": "SimCLR (NT-Xent) on the training split's images, labels unused",
            "command": "python -m lab.pretrain_ssl " + " ".join(recipes.flags_for(
                {k: v for k, v in vars_for_checkpoint(args).items() if k not in ("resume", "no_progress")},
                get_args_parser())),
            "epochs": len(history), "split_hash": split_hash(data["records"], data["train_idx"], data["val_idx"]),
            "train_figures": len(data["train_set"]), "wall_time_s": round(wall, 1), "hardware": hardware(),
            "torch": torch.__version__, "git_commit": git_commit(),
            "final_loss": final["loss"], "final_contrastive_accuracy": final["contrastive_accuracy"],
            "probe_val_roc_auc": {k: v["roc_auc"] for k, v in final.get("probe", {}).items()}}


def main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp_dtype = None if args.no_amp else autocast_dtype(device, training=True)
    seed_everything(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    cfg = ModelConfig(input_size=args.input_size, mixstyle=False)
    data = load_views(args, cfg, device)
    loader, train_set, val_set = data["loader"], data["train_set"], data["val_set"]
    print(f"data: {len(train_set)} training figures (labels unused), {len(val_set)} validation figures for the "
          f"probe only; device {device}, autocast {amp_dtype}", flush=True)

    model = SimCLRNet(cfg, args.hidden_dim, args.proj_dim).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=len(loader), pct_start=args.warmup_pct)
    start_epoch, history, wall = 0, [], 0.0
    if args.resume and (out / "last.pt").is_file():
        start_epoch, history, wall = resume_pretraining(out / "last.pt", args, model, optimizer, scheduler,
                                                        data["generator"])

    for epoch in range(start_epoch, args.epochs):
        t_epoch = time.time()
        stats = pretrain_one_epoch(model, loader, optimizer, scheduler, cfg, args, device, amp_dtype, epoch)
        train_time = time.time() - t_epoch
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **stats,
                 "train_images_per_s": len(loader) * args.batch_size / train_time}
        if epoch + 1 == args.epochs or (args.probe_every and (epoch + 1) % args.probe_every == 0):
            entry["probe"] = linear_probe(model, train_set, val_set, data["domains"], cfg, device, amp_dtype)
        entry["epoch_s"] = time.time() - t_epoch
        wall += entry["epoch_s"]
        history.append(entry)
        save_pretraining(out, model, optimizer, scheduler, epoch, args, history, wall, data["generator"])
        log_pretraining_epoch(entry, args.epochs)

    if not history:
        raise SystemExit(f"{out}: nothing trained (--epochs {args.epochs})")
    metadata = backbone_metadata(args, data, history, wall)
    write_backbone(model, out / "backbone.safetensors", metadata)
    (out / "backbone.json").write_text(json.dumps(metadata, indent=1) + "\n")
    print(f"done: {len(history)} epochs in {wall / 60:.1f} min -> {out / 'backbone.safetensors'}", flush=True)
    return metadata


if __name__ == "__main__":
    main(get_args_parser().parse_args())
