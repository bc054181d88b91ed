"""Importing this package registers every model family."""
from . import resnet_cifar  # noqa: F401
from . import regnet  # noqa: F401  (RegNet of Xu et al.: rrnet*, and its resnet50 baseline)
from . import zoo  # noqa: F401  (AlexNet, VGG, ..., ViT, MLPs: timm / torchvision / our classics)
