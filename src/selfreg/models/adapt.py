"""Adapting library and classic models to our model surface and to small inputs.

- `FeaturesHead` gives torchvision models the `forward_features` / `forward_head` surface
  that timm models and ours already have.
- `replace_conv` swaps a convolution for one with other input channels (`in_chans` for
  torchvision models, which lack the argument) or another kernel / stride (small stems).
- The small-input adaptations, one function per kind of stem. An ImageNet network divides
  the image by 32; on a 32x32 (or 28x28) image that leaves 1x1 maps or fails, so for
  `img_size <= SMALL_INPUT_MAX` the zoo removes the stem's downsampling (its stride-2 conv,
  and its max-pool where it has one), as the CIFAR versions of these networks do (e.g. the
  ResNet-18 of kuangliu/pytorch-cifar). At 32x32 the last stage then sees 8x8 maps
  (SqueezeNet), 4x4 (ResNets, DenseNet, GoogLeNet, ShuffleNets), 3x3 (AlexNet) or 2x2
  (MobileNets, EfficientNets, Xception, Inception-v3, Darknet-53, VGG) instead of 1x1.
  Each function's first docstring line is what `docs/zoo.md` shows for the models using it.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from .base import ClassifierNet, he_normal_

# Inputs up to this side get the small-input adaptation (MNIST 28, CIFAR 32, STL-ish 64 crops).
SMALL_INPUT_MAX = 64
# Patch size of ViTs and MLPs on small inputs: 8x8 = 64 tokens at 32x32, 7x7 at 28x28.
SMALL_PATCH = 4


def is_small(img_size: int) -> bool:
    return img_size <= SMALL_INPUT_MAX


class FeaturesHead(ClassifierNet):
    """A torchvision classifier as `features` and `head`: the surface of timm's models and ours."""

    def __init__(self, features: nn.Module, head: nn.Module, num_features: int):
        super().__init__()
        self.features = features
        self.head = head
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def pick(model: nn.Module, names: Sequence[str]) -> nn.Sequential:
    """The named children of `model`, in order, keeping their names (`features.conv1`, ...)."""
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


def replace_conv(model: nn.Module, path: str, init: Callable[[torch.Tensor], None] = he_normal_,
                 **changes) -> nn.Conv2d:
    """Replace the Conv2d at dotted `path` by a fresh one with `changes` applied to its arguments
    (in_channels, kernel_size, stride, padding), initialised with `init` (by default He fan-out,
    the init timm and torchvision give the convolutions we replace)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{path} is a {type(old).__name__}, not a Conv2d")
    args = dict(in_channels=old.in_channels, out_channels=old.out_channels, kernel_size=old.kernel_size,
                stride=old.stride, padding=old.padding, dilation=old.dilation, groups=old.groups,
                bias=old.bias is not None, padding_mode=old.padding_mode)
    args.update(changes)
    new = nn.Conv2d(**args)
    init(new.weight)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)
    return new


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, module)


# --- small-input adaptations: one per kind of stem -------------------------------------

def stem_3x3_no_pool(conv: str, pool: str) -> Callable[[nn.Module], None]:
    def adapt(model: nn.Module) -> None:
        replace_conv(model, conv, kernel_size=3, stride=1, padding=1)
        set_module(model, pool, nn.Identity())

    adapt.__doc__ = "3x3 stride-1 stem conv, no stem max-pool"
    return adapt


def stride1_stem(conv: str, pool: str | None = None) -> Callable[[nn.Module], None]:
    def adapt(model: nn.Module) -> None:
        replace_conv(model, conv, stride=1)
        if pool:
            set_module(model, pool, nn.Identity())

    adapt.__doc__ = "stride-1 stem conv" + (", no stem max-pool" if pool else "")
    return adapt


resnet_stem = stem_3x3_no_pool("conv1", "maxpool")                    # timm ResNet / ResNeXt / SE-ResNet
densenet_stem = stem_3x3_no_pool("features.conv0", "features.pool0")  # timm DenseNet
googlenet_stem = stem_3x3_no_pool("features.conv1.conv", "features.maxpool1")  # torchvision GoogLeNet
squeezenet_stem = stem_3x3_no_pool("features.0", "features.2")         # torchvision SqueezeNet 1.0 / 1.1
efficientnet_stem = stride1_stem("conv_stem")                          # timm MobileNet v1/v2, EfficientNets
shufflenet_stem = stride1_stem("features.conv1.0", "features.maxpool")  # torchvision v2 and our v1
resnext_ts_stem = stride1_stem("stem.conv1.conv", "stem.pool")         # timm ResNeXt-26ts tiered stem
xception_stem = stride1_stem("conv1")                                  # timm (legacy) Xception
# Darknet-53's stem conv already has stride 1; the first downsampling is stage 1's conv.
darknet_stem = stride1_stem("stages.0.conv_down.conv")
darknet_stem.__doc__ = "stride-1 first downsampling conv (the stem conv is already stride 1)"


def inception_v3_stem(model: nn.Module) -> None:
    """stride-1 first conv, no second stem max-pool"""
    # The stem downsamples 8x (conv, two pools) with unpadded convs; keeping the first pool
    # ends on 2x2 maps at 32x32 (1x1 at 28x28).
    replace_conv(model, "Conv2d_1a_3x3.conv", stride=1)
    model.Pool2 = nn.Identity()


def alexnet_stem(model: nn.Module) -> None:
    """5x5 stride-1 first conv (as in Krizhevsky's CIFAR-10 nets) instead of 11x11 stride 4"""
    replace_conv(model, "features.0", kernel_size=5, stride=1, padding=2, init=partial(nn.init.normal_, std=0.01))


def vgg_small(model: nn.Module) -> None:
    """no last max-pool; global average pool and one linear layer instead of the 4096-4096 MLP"""
    from timm.layers import ClassifierHead

    last_pool = len(model.features) - 1
    if not isinstance(model.features[last_pool], nn.MaxPool2d):
        raise TypeError("expected timm's VGG to end its features with a max-pool")
    model.features[last_pool] = nn.Identity()
    model.pre_logits = nn.Identity()
    model.head = ClassifierHead(model.num_features, model.num_classes, pool_type="avg", drop_rate=model.drop_rate)
    model.head_hidden_size = model.num_features
