"""Test-time augmentation over the dihedral group D4 (4 rotations x optional mirror).

A mitotic figure has no canonical orientation on the slide, so the 8 rotated/mirrored copies of
a patch are equally valid views of it. Training sees all of them (flips and 90-degree
rotations in ``training.presets``); averaging the network's logits over the 8 views at test time
removes the part of the prediction that depends on how the patch happened to be oriented.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TTA_MODES = ("none", "dihedral")


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 elements of D4 applied to a (N, C, H, W) batch: rot90^k, then k in 0..3 mirrored."""
    views = []
    for k in range(4):
        rotated = torch.rot90(x, k, dims=(2, 3))
        views += [rotated, torch.flip(rotated, dims=(3,))]
    return views


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str = "dihedral",
               max_batch: int = 128) -> torch.Tensor:
    """Logits averaged over test-time views.

        z_TTA(x) = (1/|G|) sum_{g in G} z(g x),   G = {identity} ("none") or D4 ("dihedral", |G| = 8)

    Averaging logits (not probabilities) keeps the single-logit model's output a logit, so
    sigmoid(z_TTA) is P(atypical) as before and the decision threshold applies to it unchanged.
    The 8N views go through ``forward`` in batches of at most ``max_batch`` images: a 16-page
    stack is one batch of 128 (faster than 8 small ones), and memory stays bounded.
    """
    if mode == "none":
        return forward(x).float()
    if mode != "dihedral":
        raise ValueError(f"unknown test-time augmentation {mode!r}; expected one of {TTA_MODES}")
    views = torch.cat(dihedral_views(x))  # view-major: rows g*N .. (g+1)*N - 1 are view g
    z = torch.cat([forward(views[i:i + max_batch].contiguous(memory_format=torch.channels_last)).float()
                   for i in range(0, len(views), max_batch)])
    return z.reshape(8, len(x), *z.shape[1:]).mean(dim=0)
