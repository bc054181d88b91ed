"""Importing this package registers every model family."""
from . import resnet_cifar  # noqa: F401
from . import regnet  # noqa: F401
