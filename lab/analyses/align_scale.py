"""How large the alignment term is on real descriptors, with and without ``--align-standardise``.

    python -m lab.analyses.align_scale [RUN/best.pt ...]   # default: an untrained network only

Draws 16 figures per AMi-Br domain (seeded), takes the GAP descriptors after CBAM of each given
checkpoint's student (and of a freshly initialised network) and prints the paper's term and the
standardised one (README Notes: the paper's reads ~0.001 here and barely acts).
"""

import random
import sys

import torch

from data.datasets import load_amibr, read_image
from model.network import ModelConfig, build_model
from model.preprocess import pages_to_batch
from training.losses import alignment_loss


def main(checkpoints: list[str], data: str = "../shared/data/ami-br", per_domain: int = 16) -> int:
    records = load_amibr(data)
    domains = sorted({r.domain for r in records})
    rng = random.Random(0)
    batch = [r for d in domains for r in rng.sample([q for q in records if q.domain == d], per_domain)]
    cfg = ModelConfig()
    x = pages_to_batch([read_image(r.path) for r in batch], cfg.input_size, cfg.mean, cfg.std)
    d = torch.tensor([domains.index(r.domain) for r in batch])
    torch.manual_seed(0)  # the untrained network's initialisation
    for name in ["untrained", *checkpoints]:
        net = build_model(cfg).eval()
        if name != "untrained":
            net.load_state_dict(torch.load(name, map_location="cpu", weights_only=True)["student"])
        with torch.no_grad():
            _, f, _ = net(x, return_features=True)
        print(f"{name}: descriptors mean {f.mean():.3f} std {f.std():.3f} | alignment term "
              f"{alignment_loss(f, d):.5f}, standardised {alignment_loss(f, d, standardise=True):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
