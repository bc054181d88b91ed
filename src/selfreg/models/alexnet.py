"""AlexNet as in Krizhevsky, Sutskever and Hinton (NIPS 2012), with its local response
normalisation and dropout (torchvision's `alexnet` drops both and changes the widths).

Five convolutions (96, 256, 384, 384, 256 channels) and three fully connected layers
(4096, 4096, classes) with dropout 0.5 before the first two. LRN follows the ReLU of
the first two convolutions, each followed by overlapping 3x3 stride-2 max-pooling.

`groups=2` keeps the paper's two-GPU connectivity: conv2, conv4 and conv5 see only the
half of the previous layer that lived on their GPU. This is what gives the paper's
(and Caffe's `bvlc_alexnet`) 60,965,224 parameters at 1,000 classes; `groups=1`
connects every channel (62,378,344 parameters).

The native input is 227x227 (the paper's "224" does not fit 11x11 stride 4 without
padding: (227 - 11) / 4 + 1 = 55). An adaptive average pool to 6x6 before the
classifier, as in torchvision, lets other sizes reach the 6x6x256 classifier input.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierNet, init_normal


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's LRN: b = a / (k + alpha * sum over n=5 neighbours of a^2)^beta, k=2, alpha=1e-4, beta=0.75.

    torch divides alpha by n inside the sum, so we pass n * alpha to get the paper's formula.
    """
    size, alpha = 5, 1e-4
    return nn.LocalResponseNorm(size, alpha=size * alpha, beta=0.75, k=2.0)


class AlexNet(ClassifierNet):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, groups: int = 2, drop_rate: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 11, stride=4),                  # (B, 96, 55, 55) at 227
            nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(3, stride=2),                              # (B, 96, 27, 27)
            nn.Conv2d(96, 256, 5, padding=2, groups=groups),
            nn.ReLU(inplace=True),
            local_response_norm(),
            nn.MaxPool2d(3, stride=2),                              # (B, 256, 13, 13)
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),                              # (B, 256, 6, 6)
        )
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.num_features = 256 * 6 * 6
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(self.num_features, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        # The paper's init: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the two hidden
        # fully connected layers ("positive inputs to the ReLUs" early in training), 0 elsewhere.
        conv2, conv4, conv5 = self.features[4], self.features[10], self.features[12]
        fc6, fc7 = self.classifier[1], self.classifier[4]
        init_normal(self, std=0.01, bias_one=(conv2, conv4, conv5, fc6, fc7))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))
