"""Test-time batch-norm adaptation on one stack (docs/experiments.md §33).

A container run sees one stack of up to 16 figures; the network's batch-norm layers normalise with
the statistics of the training domains. Inside ``stack_norm(model, prior)`` every ``BatchNorm2d`` in
eval mode normalises with a mix of those and the current batch's own statistics instead (Schneider et
al. 2020, "Improving robustness against common corruptions by covariate shift adaptation"). Nothing is
stored: the running statistics and parameters are unchanged, so one stack never affects the next.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

# Where the adaptation applies: every batch-norm layer, or only those of the DenseNet stages before the
# first MixStyle site (``features.norm0``, ``denseblock1``, ``transition1``: 14 of DenseNet-121's 122),
# whose statistics the paper treats as "style" (experiments §33's second candidate).
SCOPES = {"all": None, "early": ("norm0", "denseblock1", "transition1")}


def in_scope(name: str, scope: str) -> bool:
    """Whether the batch-norm layer called ``name`` (a qualified module name, e.g.
    ``members.0.features.denseblock1.denselayer1.norm1``) is adapted under ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"stack-norm scope {scope!r} is not one of {sorted(SCOPES)}")
    stages = SCOPES[scope]
    if stages is None:
        return True
    parts = name.split(".")
    return any(a == "features" and b in stages for a, b in zip(parts, parts[1:]))


def mixed_statistics(train_mean: torch.Tensor, train_var: torch.Tensor, stack_mean: torch.Tensor,
                     stack_var: torch.Tensor, n: int, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled mean and variance of the training statistics (weight N = ``prior`` pseudo-pages) and a
    stack of n pages:

        w = n / (n + N)
        mean = (1 − w) μ_train + w μ_stack
        var  = (1 − w) σ²_train + w σ²_stack + w (1 − w) (μ_stack − μ_train)²

    N = 0 is the stack's statistics alone (batch-norm in training mode), N = ∞ the training ones (eval
    mode). The last term is the spread between the two means, as in the variance of a mixture.
    """
    if not prior >= 0:
        raise ValueError(f"prior strength must be >= 0, got {prior}")
    w = 0.0 if math.isinf(prior) else n / (n + prior)
    mean = (1 - w) * train_mean + w * stack_mean
    var = (1 - w) * train_var + w * stack_var + w * (1 - w) * (stack_mean - train_mean) ** 2
    return mean, var


def _adapted_batch_norm(module: nn.BatchNorm2d, x: torch.Tensor, prior: float) -> torch.Tensor:
    xf = x.float()  # statistics in float32 also under bf16 / fp16 autocast
    stack_var, stack_mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
    mean, var = mixed_statistics(module.running_mean.float(), module.running_var.float(), stack_mean, stack_var,
                                 x.shape[0], prior)
    scale = torch.rsqrt(var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.float()
    shift = -mean * scale + (module.bias.float() if module.bias is not None else 0.0)
    return (xf * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


@contextlib.contextmanager
def stack_norm(model: nn.Module, prior: float | None, scope: str = "all") -> Iterator[nn.Module]:
    """Within the block, the eval-mode ``BatchNorm2d`` layers of ``model`` normalise each forward batch
    (one stack: its pages, or one test-time view of them) with ``mixed_statistics`` at prior strength
    ``prior`` (only those ``in_scope``); ``None`` leaves the model as it is. The layers' outputs are
    recomputed by forward hooks, removed on exit, so the model and its state are untouched afterwards."""
    if prior is None:
        yield model
        return
    if not prior >= 0:
        raise ValueError(f"prior strength must be >= 0, got {prior}")
    layers = [m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and in_scope(name, scope)]
    if not layers:
        raise ValueError(f"stack_norm: the model has no BatchNorm2d layers to adapt (scope {scope!r})")

    def hook(module, inputs, output):
        if module.training or module.running_mean is None:
            return output  # training uses batch statistics already; nothing to mix without running ones
        return _adapted_batch_norm(module, inputs[0], prior)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
