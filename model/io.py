"""Read a challenge stack (multi-page TIFF or MHA) into a list of pages, and write JSON atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
MHA_SUFFIXES = (".mha", ".mhd")
IMAGE_SUFFIXES = TIFF_SUFFIXES + MHA_SUFFIXES


class StackReadError(RuntimeError):
    """The stack could not be read; the message names the file and the reason."""


def read_stack(path: str | Path) -> list[np.ndarray]:
    """Pages of a stack, each as (H, W) or (H, W, C) array in its stored dtype.

    TIFF: every page of the file (tifffile), so pages may differ in size or type.
    MHA/MHD: SimpleITK; a 3-D image is (pages, H, W[, C]); a 2-D image is one page.
    """
    path = Path(path)
    if not path.is_file():
        raise StackReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            pages = _read_tiff(path)
        elif suffix in MHA_SUFFIXES:
            pages = _read_mha(path)
        else:
            raise StackReadError(f"{path}: unsupported file type {suffix!r} (expected .tif, .tiff or .mha)")
    except StackReadError:
        raise
    except Exception as exc:  # reader libraries raise many types for corrupt files
        raise StackReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if not pages:
        raise StackReadError(f"{path}: image has no pages")
    for i, page in enumerate(pages):
        if page.size == 0:
            raise StackReadError(f"{path}: page {i} is empty")
    return pages


def expand_palette(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """A palette ("P" mode) page's indices (H, W) through its TIFF ColorMap (3, 2**bits) -> (H, W, 3) uint8.

    The TIFF ColorMap holds 16-bit intensities (0..65535). Writers differ in how they widen 8-bit
    colours: Pillow stores v*256, others v*257, some leave 0..255; each is mapped back to v exactly."""
    cmap = np.asarray(colormap)
    if cmap.ndim != 2 or cmap.shape[0] != 3:
        raise StackReadError(f"palette colour map of shape {cmap.shape} (expected (3, N))")
    if int(indices.max(initial=0)) >= cmap.shape[1]:
        raise StackReadError(f"palette index {int(indices.max())} beyond the {cmap.shape[1]}-entry colour map")
    cmap = cmap.astype(np.uint32)
    if cmap.max(initial=0) <= 255:
        lut = cmap
    elif not np.any(cmap & 0xFF):  # v * 256
        lut = cmap >> 8
    else:  # v * 257, or true 16-bit colours rounded to the nearest 8-bit value
        lut = (cmap + 128) // 257
    return np.ascontiguousarray(lut.astype(np.uint8).T[indices])


def _read_tiff(path: Path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = []
        for page in tif.pages:
            arr = page.asarray()
            # Palette pages hold colour indices, not intensities: expand them through their colour map.
            if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                arr = expand_palette(arr, page.colormap)
            pages.append(arr)
    out = []
    for page in pages:
        # A single page stored as (pages, H, W, C) volume (ImageJ hyperstack style).
        if page.ndim == 4:
            out.extend(list(page))
        elif page.ndim == 3 and page.shape[0] not in (1, 2, 3, 4) and page.shape[-1] not in (1, 2, 3, 4):
            out.extend(list(page))  # (pages, H, W) greyscale volume
        elif page.ndim == 3 and page.shape[0] in (3, 4) and page.shape[-1] not in (3, 4):
            out.append(np.moveaxis(page, 0, -1))  # planar (C, H, W)
        else:
            out.append(page)
    return out


def _read_mha(path: Path) -> list[np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image)
    vector = image.GetNumberOfComponentsPerPixel() > 1
    spatial_dims = arr.ndim - (1 if vector else 0)
    if spatial_dims == 2:
        return [arr]
    if spatial_dims == 3:
        return list(arr)
    raise StackReadError(f"{path}: {spatial_dims}-D image (expected 2-D page or 3-D stack)")


def write_json_atomic(obj, path: str | Path) -> None:
    """Write JSON to a temporary file in the same folder, then rename: no partial output on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
