"""Importing this package registers every model family."""
from . import resnet_cifar  # noqa: F401
from . import zoo  # noqa: F401  (AlexNet, VGG, ..., ViT, MLPs: timm / torchvision / our classics)
