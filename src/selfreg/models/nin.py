"""Network in Network (Lin, Chen and Yan, ICLR 2014): the CIFAR-10 model of the paper.

Three "mlpconv" layers, each a spatial convolution followed by two 1x1 convolutions
(a small MLP shared over positions), all with ReLU. The last mlpconv outputs one map per
class and global average pooling turns the maps into logits: no fully connected layer.
Dropout 0.5 follows the first two mlpconv layers, as in the paper. Widths and kernels
are those of the authors' released CIFAR-10 model (192-160-96, 192-192-192, 192-192-classes;
5x5, 5x5, 3x3): 966,986 parameters at 10 classes. The last 1x1 conv has no ReLU so that
the logits can be negative.

Global average pooling makes the model take any input size; its native size is 32.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierNet, init_he


def mlpconv(in_chans: int, widths: tuple[int, int, int], kernel_size: int, last_relu: bool = True) -> nn.Sequential:
    """kxk conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv -> ReLU (the last ReLU optional)."""
    c1, c2, c3 = widths
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, c1, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, c3, 1),
    ]
    if last_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NiN(ClassifierNet):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            mlpconv(in_chans, (192, 160, 96), 5),                  # (B, 96, 32, 32)
            nn.MaxPool2d(3, stride=2, ceil_mode=True),             # (B, 96, 16, 16)
            nn.Dropout(drop_rate),
            mlpconv(96, (192, 192, 192), 5),
            nn.AvgPool2d(3, stride=2, ceil_mode=True),             # (B, 192, 8, 8)
            nn.Dropout(drop_rate),
        )
        self.num_features = 192
        # The classifier is the third mlpconv: its last 1x1 conv outputs one map per class.
        self.head = mlpconv(192, (192, 192, num_classes), 3, last_relu=False)
        init_he(self, mode="fan_in")  # the paper sets initial weights by hand and does not list them

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).mean(dim=(2, 3))                  # (B, classes)
