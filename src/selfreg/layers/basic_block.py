"""The basic residual block of He et al. (2016): two 3x3 convolutions and a shortcut.

Shared by the CIFAR ResNets (`models/resnet_cifar.py`) and the unregulated stages of the
CIFAR RegNets (`models/regnet.py`), so that a RegNet stage without a regulator is exactly
a ResNet stage (same parameters, same state-dict keys).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .se import SqueezeExcite
from .shortcut import make_shortcut

# name -> (bn_after_add, final_relu). "Variants are data": the block reads two flags.
BLOCK_VARIANTS: dict[str, tuple[bool, bool]] = {
    "relu_bn_before_add": (False, True),     # He et al.'s block: BN, add, ReLU
    "norelu_bn_before_add": (False, False),  # no ReLU after the addition
    "relu_bn_after_add": (True, True),       # add, BN, ReLU
    "norelu_bn_after_add": (True, False),    # add, BN
}


def block_flags(variant: str) -> tuple[bool, bool]:
    try:
        return BLOCK_VARIANTS[variant]
    except KeyError:
        raise UserError(f"unknown block variant {variant!r}; valid: {', '.join(BLOCK_VARIANTS)}") from None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut; the first convolution carries the stride."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: str = "A",
                 block: str = "relu_bn_before_add", se_reduction: int | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.bn_after_add, self.final_relu = block_flags(block)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        # One BN either inside the branch or after the addition: the same parameter count.
        self.bn2 = norm_layer(channels)
        self.se = SqueezeExcite(channels, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = make_shortcut(shortcut, in_channels, channels, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.bn_after_add:
            out = self.bn2(self.se(out) + self.shortcut(x))
        else:
            out = self.se(self.bn2(out)) + self.shortcut(x)
        return torch.relu(out) if self.final_relu else out
