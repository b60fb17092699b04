"""CBAM (Woo et al., ECCV 2018): channel gate followed by a spatial gate."""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one MLP shared by both paths."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialGate(nn.Module):
    """M_s(F) = sigmoid(conv7x7([MaxPool_c(F); AvgPool_c(F)])), pooling over channels."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """F' = M_c(F) * F, then F'' = M_s(F') * F'. Returns F'' and the spatial map M_s (B, 1, H, W)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * self.channel(x)
        attention = self.spatial(x)
        return x * attention, attention
