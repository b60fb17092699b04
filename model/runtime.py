"""Device and mixed-precision choices shared by training and inference."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from pathlib import Path

import torch

# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: under one of these, oneDNN
# runs bf16 convolutions without bf16 instructions, slower than fp32, whatever the CPU has.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                      "AVX512_CORE_VNNI"})


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-bf16 or AVX512-bf16) and oneDNN may use
    them. Under ``ONEDNN_MAX_CPU_ISA=AVX2`` (or another cap below AVX512_CORE_BF16) oneDNN runs as on a
    CPU without them, so this says False and the model runs in fp32: how docs/speed.md measures a CPU
    without native bf16 on one with it."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver_version(path: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. "535.183.01"), or None without one."""
    try:
        match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", path.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build with kernels for ``arch_list`` (``sm_75``, ``compute_90``...) runs on a GPU
    of compute capability ``capability``: a cubin runs on its own major version at an equal or higher
    minor; PTX (``compute_XY``) is compiled by the driver for any GPU at least that new."""
    major, minor = capability
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not m:
            continue
        a_major, a_minor = int(m.group(2)), int(m.group(3))
        if m.group(1) == "sm" and a_major == major and a_minor <= minor:
            return True
        if m.group(1) == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str | None]:
    """(usable, why not): whether this torch can run on this machine's GPU, and if a GPU is there but
    cannot be used, the reason (a CPU-only torch, a driver too old for torch's CUDA build, no kernels
    for the GPU's architecture). ``(False, None)``: no NVIDIA GPU in sight, nothing to explain."""
    driver = nvidia_driver_version()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        if driver is None and not Path("/dev/nvidia0").exists() and not caught:
            return False, None
        if torch.version.cuda is None:
            return False, f"torch {torch.__version__} is a CPU-only build (NVIDIA driver {driver} present)"
        said = "; ".join(" ".join(str(w.message).split()) for w in caught)
        said = f": torch says \"{said[:300]}\"" if said else ""
        return False, (f"torch.cuda.is_available() is False with NVIDIA driver {driver or 'not found'} and torch's "
                       f"CUDA {torch.version.cuda} build (CUDA 12.x needs driver >= 525, 13.x >= 580){said}")
    capability = torch.cuda.get_device_capability(0)
    arch_list = torch.cuda.get_arch_list()
    if arch_list and not arch_supported(capability, arch_list):
        return False, (f"{torch.cuda.get_device_name(0)} is sm_{capability[0]}{capability[1]}, but torch "
                       f"{torch.__version__} has kernels only for {' '.join(arch_list)}")
    return True, None


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``auto``: the GPU when CUDA is usable (``cuda_status``), else the CPU. ``cuda`` when it is not
    usable is an error that says why."""
    if name in (None, "auto"):
        return torch.device("cuda" if cuda_status()[0] else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        usable, reason = cuda_status()
        if not usable:
            why = reason or "no NVIDIA GPU found"
            raise RuntimeError(f"--device cuda asked for, but CUDA is not usable here: {why}")
    return device


def describe_runtime(device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """The container log's first line: what ran. A submitter reads from it whether the GPU was used.

    e.g. ``runtime: torch 2.10.0+cu128 (CUDA build 12.8), device cuda:0 (Tesla T4, sm_75, driver 535.183.01),
    autocast float16``, or ``... device cpu (CUDA unusable: <reason>; running on the CPU) ...``."""
    cuda = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        where = (f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor}, "
                 f"driver {nvidia_driver_version() or '?'})")
    else:
        usable, reason = cuda_status()
        where = "cpu" + (f" (CUDA unusable: {reason}; running on the CPU)" if reason else
                         " (CUDA usable but not chosen)" if usable else " (no NVIDIA GPU found)")
        where += f", {torch.get_num_threads()} threads, native bf16 {'yes' if cpu_has_fast_bf16() else 'no'}"
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "off (float32)"
    return f"runtime: torch {torch.__version__} ({cuda}), device {where}, autocast {precision}"


def autocast_dtype(device: torch.device, training: bool = False) -> torch.dtype | None:
    """bf16 on CPUs with native bf16 support; on CUDA bf16 for training where supported
    (no loss scaling needed) and fp16 for inference (T4-class GPUs lack bf16 tensor cores);
    None = plain fp32. Native bf16 only (compute capability 8.0+): torch's default also counts the
    emulated bf16 of a T4 or V100, which is slow and has no cuDNN convolutions."""
    if device.type == "cuda":
        if training and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
