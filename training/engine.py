"""The optimiser step shared by ``training.train`` and ``lab.pretrain_ssl``."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor],
                   clip_grad: float, where: str) -> None:
    """Refuse a non-finite loss (naming ``where``, e.g. ``epoch 3 step 17``), zero the gradients,
    backpropagate, clip the gradient norm of ``parameters`` to ``clip_grad`` (0: no clipping) and step.

    No gradient scaler: training autocasts to bfloat16 where the device supports it (float32's range;
    ``model.runtime.autocast_dtype``), else float32 on a CPU and, unscaled, float16 on an older GPU."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at {where}: {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    optimizer.step()
