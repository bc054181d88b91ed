"""Datasets by name: each builder returns train / val / test sets plus what a model needs to know.

    splits = build_dataset(cfg.data)                       # DataSplits
    loaders = build_loaders(splits, cfg.data, seed, device=device, rank=rank, world_size=world_size)
"""
from .datasets import DATASETS, DataSplits, build_dataset
from . import folder  # noqa: F401  (registers the folder dataset)
from .loader import build_loaders
from .transforms import AUGMENTATIONS, Pipeline

__all__ = ["AUGMENTATIONS", "DATASETS", "DataSplits", "Pipeline", "build_dataset", "build_loaders"]
