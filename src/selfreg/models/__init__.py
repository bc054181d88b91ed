"""Importing this package registers every model family."""
from . import resnet_cifar  # noqa: F401
