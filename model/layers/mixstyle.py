"""MixStyle (Zhou et al., ICLR 2021): mix instance-level feature statistics across a batch."""

from __future__ import annotations

import torch
from torch import nn


class MixStyle(nn.Module):
    """Mix per-instance channel mean/std with a shuffled partner's (training only).

    For feature map ``x`` (B, C, H, W) with per-instance channel statistics
    ``mu(x)``, ``sigma(x)`` (computed over H, W and detached, so no gradient flows
    through the style), and a random partner ``x~ = x[perm]``::

        lambda ~ Beta(alpha, alpha)            (one value per instance)
        mu_mix    = lambda * mu(x)    + (1 - lambda) * mu(x~)
        sigma_mix = lambda * sigma(x) + (1 - lambda) * sigma(x~)
        MixStyle(x) = sigma_mix * (x - mu(x)) / sigma(x) + mu_mix

    Applied to a batch with probability ``p``; an exact identity in eval mode or
    when the batch has a single instance. Labels are left unchanged.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixStyle p must be in [0, 1], got {p}")
        if alpha <= 0:
            raise ValueError(f"MixStyle alpha must be > 0, got {alpha}")
        self.p = p
        self.alpha = alpha
        self.eps = eps

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.size(0) < 2 or torch.rand(()) > self.p:
            return x
        return self.mix(x, torch.randperm(x.size(0), device=x.device))

    def mix(self, x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the mixing with a given partner permutation (and optionally given lambdas)."""
        b = x.size(0)
        # Statistics in float32: bf16 variance of near-constant maps underflows.
        xf = x.float()
        mu = xf.mean(dim=(2, 3), keepdim=True)
        sig = (xf.var(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        if lam is None:
            lam = torch.distributions.Beta(self.alpha, self.alpha).sample((b, 1, 1, 1)).to(x.device)
        lam = lam.reshape(b, 1, 1, 1).float()
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return ((xf - mu) / sig * sig_mix + mu_mix).to(x.dtype)
