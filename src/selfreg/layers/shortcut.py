"""Residual shortcuts of He et al. (2016): option A (zero-padded identity) and B (1x1 projection)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class PadShortcut(nn.Module):
    """Option A: subsample spatially by `stride` and zero-pad the new channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride
        if self.extra < 0:
            raise ValueError("option A shortcut cannot reduce channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            # Pad split evenly before/after on the channel axis, as in the CIFAR reference code.
            before = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, before, self.extra - before))
        return x


def projection(in_channels: int, out_channels: int, stride: int, norm_layer=nn.BatchNorm2d) -> nn.Module:
    """Option B: 1x1 convolution (carrying the stride) and BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        norm_layer(out_channels),
    )


SHORTCUTS = {"A": "pad", "B": "projection"}


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int,
                  norm_layer=nn.BatchNorm2d) -> nn.Module:
    """Identity when shapes match; otherwise option A (pad) or B (projection)."""
    if option not in SHORTCUTS:
        raise UserError(f"shortcut option must be one of {sorted(SHORTCUTS)}, got {option!r}")
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_channels, out_channels, stride)
    return projection(in_channels, out_channels, stride, norm_layer)
