"""Datasets by name: each builder returns train / val / test sets plus what a model needs to know."""
from .datasets import DATASETS, DataSplits, build_dataset
from .loader import build_loaders

__all__ = ["DATASETS", "DataSplits", "build_dataset", "build_loaders"]
