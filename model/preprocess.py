"""The one preprocessing path shared by training, evaluation and the container.

Policy: any page -> RGB uint8 (grayscale replicated, alpha dropped, 16-bit scaled by
1/257, float in [0, 1] scaled by 255) -> centre square crop (figures are centred) ->
resize to the model's input size (bilinear, antialiased) when it differs -> float
in [0, 1] -> per-channel normalisation with the model card's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


class UnsupportedPixelType(ValueError):
    pass


def page_to_rgb_uint8(page: np.ndarray) -> np.ndarray:
    """Convert one page (H, W), (H, W, 1|2|3|4) of uint8/uint16/bool/float to (H, W, 3) uint8."""
    arr = np.asarray(page)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnsupportedPixelType(f"page shape {arr.shape} is not (H, W) or (H, W, C)")
    channels = arr.shape[2]
    if channels in (1, 2):  # grey (+alpha)
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGBA: drop alpha
        arr = arr[:, :, :3]
    elif channels != 3:
        raise UnsupportedPixelType(f"{channels} channels per pixel (expected 1, 2, 3 or 4)")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.int8 or arr.dtype == np.int16 or arr.dtype == np.int32 or arr.dtype == np.uint32:
        raise UnsupportedPixelType(f"pixel type {arr.dtype} (expected uint8, uint16 or float)")
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise UnsupportedPixelType("float page contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        out = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    else:
        raise UnsupportedPixelType(f"pixel type {arr.dtype} (expected uint8, uint16 or float)")
    return np.ascontiguousarray(out)


def fit_to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8: centre square crop, then resize if needed."""
    h, w = image.shape[-2:]
    side = min(h, w)
    if h != w:
        image = TF.center_crop(image, [side, side])
    if side != size:
        image = TF.resize(image, [size, size], antialias=True)
    return image


def page_to_tensor(page: np.ndarray, size: int) -> torch.Tensor:
    """One page of any supported type -> (3, size, size) uint8 tensor."""
    rgb = page_to_rgb_uint8(page)
    return fit_to_size(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), size)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 (x / 255 - mean) / std."""
    x = batch.float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def pages_to_batch(pages: Sequence[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """Pages of a stack -> normalised float batch (B, 3, size, size)."""
    return normalize(torch.stack([page_to_tensor(p, size) for p in pages]), mean, std)
