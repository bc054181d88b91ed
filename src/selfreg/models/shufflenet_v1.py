"""ShuffleNet (v1) of Zhang et al. (CVPR 2018, table 1): pointwise group convolutions and
channel shuffle. torchvision and timm only have v2.

Stem: 3x3 stride-2 conv (24) -> max-pool 3x3 stride 2. Three stages of 4, 8 and 4 units
whose widths depend on the number of groups g (stage 2: 144, 200, 240, 272 or 384 for
g = 1, 2, 3, 4, 8; x2 and x4 after). Then global average pooling and a linear classifier.

A unit (figure 2): 1x1 group conv to a bottleneck of a quarter of the unit's output ->
BN-ReLU -> channel shuffle -> 3x3 depthwise conv (carries the stride) -> BN -> 1x1 group
conv -> BN, then
- stride 1: add the input, ReLU;
- stride 2: concatenate a 3x3 stride-2 average pool of the input, ReLU (the branch
  outputs only the missing channels, so widths grow without a projection).
The first 1x1 conv of stage 2 is not grouped: its 24 input channels are too few.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import UserError
from .base import PoolFcNet, init_he

STAGE2_WIDTH = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STAGE_UNITS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, g*n, H, W) -> view (B, g, n, H, W) -> transpose -> flatten: channel i of group j
    moves to position i*g + j, so the next group conv sees every group."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chans))


class ShuffleUnit(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int, groups: int, group_first: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = out_chans // 4
        branch_out = out_chans - in_chans if stride == 2 else out_chans
        self.reduce = conv_bn(in_chans, mid, 1, groups=groups if group_first else 1)
        self.depthwise = conv_bn(mid, mid, 3, stride=stride, groups=mid)
        self.expand = conv_bn(mid, branch_out, 1, groups=groups)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.reduce(x))
        out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))      # no ReLU after the depthwise conv (paper)
        if self.stride == 2:
            return torch.relu(torch.cat([self.shortcut(x), out], dim=1))
        return torch.relu(out + x)


class ShuffleNetV1(PoolFcNet):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, groups: int = 3):
        super().__init__()
        if groups not in STAGE2_WIDTH:
            raise UserError(f"ShuffleNet v1 groups must be one of {sorted(STAGE2_WIDTH)}, got {groups}")
        chans = 24
        # Named like torchvision's ShuffleNetV2 (conv1, maxpool, stage2, ...) so both share
        # one small-input adaptation.
        layers = OrderedDict(conv1=nn.Sequential(*conv_bn(in_chans, chans, 3, stride=2), nn.ReLU(inplace=True)),
                             maxpool=nn.MaxPool2d(3, stride=2, padding=1))
        for i, units in enumerate(STAGE_UNITS):
            width = STAGE2_WIDTH[groups] * 2 ** i
            blocks = [ShuffleUnit(chans, width, 2, groups, group_first=i > 0)]
            blocks += [ShuffleUnit(width, width, 1, groups) for _ in range(units - 1)]
            layers[f"stage{i + 2}"] = nn.Sequential(*blocks)
            chans = width
        self.features = nn.Sequential(layers)                 # (B, 960, H/32, W/32) for g=3
        self.num_features = chans
        self.fc = nn.Linear(chans, num_classes)
        init_he(self)  # He fan-out convolutions, unit BN

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
