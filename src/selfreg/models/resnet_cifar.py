"""CIFAR ResNets of He et al. (2016, section 4.2): 6n+2 layers, stages of 16/32/64 channels.

Options:
- `shortcut`: "A" (zero-padded identity, the paper's CIFAR choice, no parameters) or
  "B" (1x1 projection + BN where shapes change).
- `block`: one of the four building-block variants of the Torch reproduction study
  (see `selfreg.layers.basic_block.BLOCK_VARIANTS`): where BN sits relative to the
  addition, and whether a ReLU follows it.
- `se_reduction`: squeeze-and-excitation on the residual branch before the addition
  (SE-ResNet; the RegNet paper of Xu et al. uses r = 8). `None` disables it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..layers.basic_block import BasicBlock
from ..layers.norm import get_norm_layer
from ..registry import register_model
from .base import PoolFcNet, init_he
from .papers import HE_2016, HU_2018


class CifarResNet(PoolFcNet):
    """Stem (3x3, 16) -> three stages of `n` blocks -> global average pool -> FC."""

    def __init__(self, n: int, num_classes: int = 10, in_chans: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64), shortcut: str = "A",
                 block: str = "relu_bn_before_add", se_reduction: int | None = None,
                 norm_layer: str | Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)  # a type, or a name from a config ("batch", "group")
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        stages = []
        in_channels = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut, block, se_reduction, norm_layer))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_he(self)  # He fan-out convolutions, unit BN: the ResNet reference code's init

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        return self.stages(x)                    # (B, 64, H/4, W/4)


def _cifar_resnet(depth: int, se: bool) -> Callable[..., CifarResNet]:
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6

    def build(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
        if se:
            kwargs.setdefault("se_reduction", 8)
        return CifarResNet(n, num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__doc__ = f"{'SE-' if se else ''}ResNet-{depth} for 32x32 inputs (n={n})."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", input_size=32, paper=HE_2016, source="selfreg",
                   family="resnet", accepts=("norm_layer",))(_cifar_resnet(_depth, se=False))
    register_model(f"se_resnet{_depth}", input_size=32, paper=HU_2018, source="selfreg",
                   family="se_resnet", accepts=("norm_layer",))(_cifar_resnet(_depth, se=True))
