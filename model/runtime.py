"""Device and mixed-precision choices shared by training and inference."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-bf16 or AVX512-bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str | None = None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return device


def autocast_dtype(device: torch.device, training: bool = False) -> torch.dtype | None:
    """bf16 on CPUs with native bf16 support; on CUDA bf16 for training where supported
    (no loss scaling needed) and fp16 for inference (T4-class GPUs lack bf16 tensor cores);
    None = plain fp32."""
    if device.type == "cuda":
        if training and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
