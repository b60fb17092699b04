"""Train/eval transform presets (torchvision transforms v2, on uint8 (3, H, W) tensors)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomGamma(v2.Transform):
    """Gamma correction with gamma ~ U(lo, hi), applied with probability p."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.3):
        super().__init__()
        self.gamma, self.p = gamma, p

    def make_params(self, flat_inputs):
        return {"apply": torch.rand(()) < self.p, "gamma": float(torch.empty(()).uniform_(*self.gamma))}

    def transform(self, inpt, params):
        return TF.adjust_gamma(inpt, params["gamma"]) if params["apply"] else inpt


class RandomRot90(v2.Transform):
    """Rotation by k * 90 degrees, k uniform in {0, 1, 2, 3} (lossless, no borders)."""

    def make_params(self, flat_inputs):
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params):
        return torch.rot90(inpt, params["k"], dims=(-2, -1)) if params["k"] else inpt


class TrainPreset:
    """Geometry (crop, flips, rotations, perspective), stain/scanner-like photometry
    (jitter, blur, autocontrast, sharpness, gamma, posterize, solarize), then random
    erasing at a small and a large size. Output stays uint8; normalisation happens on
    the batch in ``model.preprocess.normalize``. ``strength`` scales the photometric ranges."""

    def __init__(self, size: int, strength: float = 1.0):
        s = strength
        self.transforms = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
            v2.RandomApply([v2.RandomRotation(180, interpolation=v2.InterpolationMode.BILINEAR)], p=0.3),
            v2.RandomApply([v2.RandomPerspective(distortion_scale=0.2, p=1.0)], p=0.2),
            v2.ColorJitter(brightness=0.25 * s, contrast=0.25 * s, saturation=0.25 * s, hue=min(0.5, 0.06 * s)),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
            v2.RandomAutocontrast(p=0.2),
            v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.2),
            RandomGamma((1 - 0.3 * s, 1 + 0.4 * s), p=0.3),
            v2.RandomPosterize(bits=6, p=0.1),
            v2.RandomSolarize(threshold=230, p=0.05),
            v2.RandomErasing(p=0.2, scale=(0.01, 0.04), value=0),
            v2.RandomErasing(p=0.1, scale=(0.05, 0.15), value=0),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


class EvalPreset:
    """Identity on the already size-fitted uint8 image (kept for symmetry with TrainPreset)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image
