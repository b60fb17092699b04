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


# Stain vectors of haematoxylin, eosin and DAB as optical densities per RGB channel (rows), from
# Ruifrok & Johnston (2001), the matrix scikit-image's rgb2hed also uses.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], dtype=torch.float32)
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def hed_jitter(image: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Perturb the stain concentrations of a uint8 (3, H, W) H&E image by colour deconvolution.

        OD = -ln((I + 1) / 256)              per pixel and RGB channel (Beer-Lambert)
        c  = OD · HED_FROM_RGB                stain concentrations (H, E, DAB)
        c' = alpha ⊙ c + beta                 per stain: alpha scales, beta shifts (OD units)
        I' = 256 · exp(-c' · RGB_FROM_HED) - 1

    ``alpha`` and ``beta`` have 3 entries (H, E, DAB); alpha = 1, beta = 0 is the identity (up to
    rounding). Unlike an RGB colour jitter this moves the image along the directions in which real
    stains and scanners differ (how much haematoxylin/eosin, how dark), as in Tellez et al. (2019).
    """
    c, h, w = image.shape
    od = -torch.log((image.reshape(3, -1).T.float() + 1.0) / 256.0)
    stains = od @ HED_FROM_RGB
    stains = stains * alpha.float() + beta.float()
    rgb = 256.0 * torch.exp(-(stains @ RGB_FROM_HED)) - 1.0
    return rgb.T.reshape(c, h, w).round_().clamp_(0, 255).to(torch.uint8)


class RandomHEDJitter(v2.Transform):
    """``hed_jitter`` with alpha ~ U(1 - sigma, 1 + sigma) and beta ~ U(-sigma/2, sigma/2) for H and E
    (DAB, absent from H&E, untouched), applied with probability p. sigma = 0.2 changes the amount
    of each stain by up to ±20% and shifts its optical density by up to ±0.1."""

    def __init__(self, sigma: float = 0.2, p: float = 0.5):
        super().__init__()
        self.sigma, self.p = sigma, p

    def make_params(self, flat_inputs):
        alpha, beta = torch.ones(3), torch.zeros(3)
        alpha[:2].uniform_(1 - self.sigma, 1 + self.sigma)
        beta[:2].uniform_(-self.sigma / 2, self.sigma / 2)
        return {"apply": bool(torch.rand(()) < self.p), "alpha": alpha, "beta": beta}

    def transform(self, inpt, params):
        if not params["apply"] or not isinstance(inpt, torch.Tensor) or inpt.dtype != torch.uint8:
            return inpt
        return hed_jitter(inpt, params["alpha"], params["beta"])


class _ComposedPreset:
    """Applies ``self.transforms`` (a ``v2.Compose`` the subclass builds) to one uint8 image."""

    transforms: v2.Compose

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


class TrainPreset(_ComposedPreset):
    """Geometry (crop, flips, rotations, perspective), stain/scanner-like photometry
    (jitter, blur, autocontrast, sharpness, gamma, posterize, solarize), then random
    erasing at a small and a large size. Output stays uint8; normalisation happens on
    the batch in ``model.preprocess.normalize``. ``strength`` scales the photometric ranges;
    ``hed_sigma`` > 0 adds stain jitter by colour deconvolution (``RandomHEDJitter``) first."""

    def __init__(self, size: int, strength: float = 1.0, hed_sigma: float = 0.0):
        s = strength
        stain = [RandomHEDJitter(hed_sigma, p=0.5)] if hed_sigma > 0 else []
        self.transforms = v2.Compose(stain + [
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


class LightTrainPreset(_ComposedPreset):
    """Lossless geometry only (horizontal/vertical flips, 90-degree rotations): the augmentation of
    the first ``--light-aug-epochs`` epochs, before ``TrainPreset`` takes over. From scratch a network
    sat at chance for 7-29 epochs under the full preset; with 10 light epochs first it left chance by
    epoch 5-6 and generalised better to an unseen cohort. Used for the whole schedule instead, it
    overfit and generalised far worse than either (README Notes): it is a start, not a preset."""

    def __init__(self):
        self.transforms = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()])


class EvalPreset:
    """Identity on the already size-fitted uint8 image (kept for symmetry with TrainPreset)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image
