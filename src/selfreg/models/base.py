"""What every model file builds on: the model surface, written once.

- `ClassifierNet`: forward(x) = forward_head(forward_features(x)) (timm's surface, DESIGN.md
  convention 4). `PoolFcNet` adds the head most of our families share: global average
  pool, then the linear layer `fc`.

It lives in `models/` rather than `layers/` because it is about a whole network, where
`layers/` holds building blocks. Model files import from here and from `layers/`, never
from one another.
"""
from __future__ import annotations

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """The one model surface: `forward_features` maps images (B, in_chans, H, W) to features
    (B, num_features, ...), `forward_head` maps those to logits (B, num_classes)."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PoolFcNet(ClassifierNet):
    """A ClassifierNet whose head is global average pooling and the linear layer `self.fc`
    (the CIFAR ResNets, the RegNets, the CIFAR DenseNet, ShuffleNet v1)."""

    fc: nn.Linear

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # (B, C, h, w) -> (B, C) -> (B, classes)

