"""LeNet with batch normalisation: LeCun et al.'s LeNet-5 layout with BN after every
convolution and hidden fully connected layer (Ioffe and Szegedy, ICML 2015), in the form
of Dive into Deep Learning, section 8.5 ("LeNet with batch normalization").

conv 5x5 (6) -> BN -> act -> avg-pool 2 -> conv 5x5 (16) -> BN -> act -> avg-pool 2 ->
FC 120 -> BN -> act -> FC 84 -> BN -> act -> FC classes. The activation is LeNet's
sigmoid by default: BN is what makes the sigmoid net train quickly.

The first FC layer's width depends on the image size (16 x 4 x 4 at MNIST's 28, 16 x 5 x 5
at LeNet-5's 32), so the model is built for one `img_size`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .base import ClassifierNet


def feature_size(img_size: int) -> int:
    """Side of the feature map after two (5x5 valid conv, 2x2 pool) stages."""
    side = img_size
    for _ in range(2):
        side = (side - 4) // 2
    if side < 1:
        raise UserError(f"lenet_bn needs img_size >= 16, got {img_size}; pass model.kwargs.img_size")
    return side


class LeNetBN(ClassifierNet):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28,
                 act_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), nn.BatchNorm2d(6), act_layer(),
            nn.AvgPool2d(2),                                         # (B, 6, 12, 12) at 28
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), act_layer(),
            nn.AvgPool2d(2),                                         # (B, 16, 4, 4) at 28
        )
        side = feature_size(img_size)
        self.num_features = 16 * side * side
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.num_features, 120), nn.BatchNorm1d(120), act_layer(),
            nn.Linear(120, 84), nn.BatchNorm1d(84), act_layer(),
            nn.Linear(84, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)
