"""What every model file builds on: the model surface and the initialisers, written once.

- `ClassifierNet`: forward(x) = forward_head(forward_features(x)) (timm's surface, DESIGN.md
  convention 4). `PoolFcNet` adds the head most of our families share: global average
  pool, then the linear layer `fc`.
- `init_he` / `init_normal`: the initialisations of the papers we follow, with the choices
  that differ between them as arguments, so each family states its init in one call.

It lives in `models/` rather than `layers/` because both are about a whole network (its
surface, a pass over all its modules), where `layers/` holds building blocks. Model files
import from here and from `layers/`, never from one another.
"""
from __future__ import annotations

from typing import Iterable

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


def he_normal_(weight: torch.Tensor, mode: str = "fan_out") -> None:
    """He et al.'s (2015) init for a layer followed by ReLU: N(0, 2 / fan), fan = fan_out
    (the ResNet reference code, timm and torchvision) or fan_in (the paper's derivation)."""
    nn.init.kaiming_normal_(weight, mode=mode, nonlinearity="relu")


def init_he(model: nn.Module, mode: str = "fan_out", zero_linear_bias: bool = False) -> None:
    """He init (`he_normal_`) for every Conv2d, whose bias (if any) starts at 0; BN and
    GroupNorm start as the identity (scale 1, shift 0). Linear layers keep PyTorch's init,
    their bias set to 0 with `zero_linear_bias` (the DenseNet authors' Torch code)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            he_normal_(m.weight, mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def init_normal(model: nn.Module, std: float, bias_one: Iterable[nn.Module] = ()) -> None:
    """Weights N(0, std^2) for every Conv2d and Linear; biases 0, or 1 for the layers in
    `bias_one` (AlexNet's "positive inputs to the ReLUs")."""
    ones = {id(m) for m in bias_one}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.constant_(m.bias, 1.0 if id(m) in ones else 0.0)
