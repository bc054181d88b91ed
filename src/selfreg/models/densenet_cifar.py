"""The CIFAR DenseNets of Huang et al. (CVPR 2017, section 3 and table 2): DenseNet (L=40, k=12).

A 3x3 convolution to 16 channels, three dense blocks of (L - 4) / 3 layers separated by
transition layers, then BN-ReLU, global average pooling and a linear classifier.
Each layer is BN -> ReLU -> 3x3 conv adding k ("growth rate") feature maps that every
later layer of the block sees by concatenation. A transition is BN -> ReLU -> 1x1 conv
(channels kept: the basic DenseNet has no compression) -> 2x2 average pool.

The paper adds dropout 0.2 after each convolution except the first only when training
without data augmentation (C10, C100, SVHN); `drop_rate=0.2` turns it on.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .base import PoolFcNet, init_he


def bn_relu_conv(in_chans: int, out_chans: int, kernel_size: int, drop_rate: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.BatchNorm2d(in_chans), nn.ReLU(inplace=True),
        nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False),
    ]
    if drop_rate:
        layers.append(nn.Dropout(drop_rate))
    return nn.Sequential(*layers)


class DenseBlock(nn.Module):
    def __init__(self, in_chans: int, num_layers: int, growth_rate: int, drop_rate: float):
        super().__init__()
        self.layers = nn.ModuleList(
            bn_relu_conv(in_chans + i * growth_rate, growth_rate, 3, drop_rate) for i in range(num_layers))
        self.out_chans = in_chans + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))  # each sees all earlier maps
        return torch.cat(features, dim=1)


class CifarDenseNet(PoolFcNet):
    def __init__(self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 3:
            raise UserError(f"DenseNet depth must be 3n+4 (e.g. 40, 100), got {depth}")
        n = (depth - 4) // 3
        chans = 16  # the basic (non-BC) DenseNet starts with 16 maps whatever k is
        stages: list[nn.Module] = [nn.Conv2d(in_chans, chans, 3, padding=1, bias=False)]
        for i in range(3):
            block = DenseBlock(chans, n, growth_rate, drop_rate)
            stages.append(block)
            chans = block.out_chans
            if i < 2:
                stages += [bn_relu_conv(chans, chans, 1, drop_rate), nn.AvgPool2d(2)]
        stages += [nn.BatchNorm2d(chans), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*stages)                    # (B, 16 + 3nk, H/4, W/4)
        self.num_features = chans
        self.fc = nn.Linear(chans, num_classes)
        # He fan-out convolutions, BN scale 1, linear bias 0: the authors' Torch code (from fb.resnet.torch).
        init_he(self, zero_linear_bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
