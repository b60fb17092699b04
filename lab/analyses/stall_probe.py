"""Look inside a checkpoint: is a run that sits at chance dead (saturated gates, constant output) or alive?

    python -m lab.analyses.stall_probe runs/lodo-tupac16-full-s1/last.pt runs/erm-main-s1/last.pt [--n 96]

Feeds the same random sample of AMi-Br patches (eval mode) through each checkpoint's student and
prints the mean ReLU feature, the CBAM channel gate (mean, and its spread across images), the CBAM
spatial gate (mean, min, max), the spread of the GAP descriptor across images, the logits' mean
and spread, and the head's mean |weight|. Numbers quoted in README (Notes, the stall at chance).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model import ModelConfig, build_model
from model.preprocess import pages_to_batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+", help="training checkpoints (last.pt / best.pt)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/ami-br"))
    p.add_argument("--n", type=int, default=96, help="patches sampled (seed 0)")
    args = p.parse_args(argv)
    files = sorted((args.data / "patches").glob("*/*.png"))
    if not files:
        print(f"error: {args.data / 'patches'}: no PNG patches found", file=sys.stderr)
        return 1
    pick = np.random.default_rng(0).choice(len(files), min(args.n, len(files)), replace=False)
    pages = [np.array(Image.open(files[i]).convert("RGB")) for i in pick]
    for path in args.checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["student"])
        model.eval()
        x = pages_to_batch(pages, cfg.input_size, cfg.mean, cfg.std)
        with torch.inference_mode():
            features = torch.relu(model.features(x))
            channel = model.cbam.channel(features)
            spatial = model.cbam.spatial(features * channel)
            descriptor = (features * channel * spatial).mean(dim=(2, 3))
            logits = model.classifier(descriptor).squeeze(1)
        print(f"{path} (epoch {ckpt['epoch'] + 1}, student): feature mean {features.mean():.3f} | channel gate "
              f"mean {channel.mean():.3f}, sd over images {channel.std(0).mean():.4f} | spatial gate mean "
              f"{spatial.mean():.3f} min {spatial.min():.3f} max {spatial.max():.3f} | descriptor sd over images "
              f"{descriptor.std(0).mean():.4f} | logit mean {logits.mean():.3f} sd {logits.std():.3f} | head "
              f"mean |w| {model.classifier.weight.abs().mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
