"""Where a result came from: the commit, the machine, the bytes. One definition, used by every record
(model cards, run records, checkpoints' companions)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from model.runtime import cpu_has_fast_bf16, cpu_model


def git_commit() -> str:
    """HEAD of the repository this code runs from, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    """One line for a model card: the GPU(s) where one is used, else the CPU and its cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"{cpu_model()}, {os.cpu_count()} cores"


def machine() -> dict:
    """Where a run was measured: the kind of CPU decides its speed (docs/speed.md)."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "native_bf16": cpu_has_fast_bf16(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints are ~100 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
