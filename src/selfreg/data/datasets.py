"""Dataset builders, registered by name.

A builder takes the `DataConfig` and returns `DataSplits`: train / val / test
datasets yielding `(image_tensor, label)`, the class names, the channel count,
the native image size and the normalisation statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..registry import Registry

DATASETS = Registry("dataset")


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]
    in_chans: int
    image_size: int
    mean: Sequence[float] = field(default_factory=list)
    std: Sequence[float] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_dataset(cfg) -> DataSplits:
    """Build the dataset named by `cfg.name` (a `DataConfig`)."""
    return DATASETS.get(cfg.name)(cfg)


def split_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-seed random split of range(n) into (rest, holdout) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]


def holdout_count(n: int, fraction_or_count: float) -> int:
    """A fraction in (0, 1) of n, or an absolute count when >= 1."""
    if fraction_or_count >= 1:
        return min(int(fraction_or_count), n - 1)
    return int(round(n * fraction_or_count))


@DATASETS.register("digits", paper="scikit-learn's copy of the UCI optical digits (8x8, 1,797 images)")
def digits(cfg) -> DataSplits:
    """scikit-learn's bundled 8x8 digits, upsampled (bilinear) to `image_size`. No download.

    There is no official split: a fixed 20% test split (seed 0, independent of
    `split_seed`) is set aside first, then `val_fraction` of the rest is held out
    for validation with `split_seed`.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0   # (N, 1, 8, 8) in [0, 1]
    if cfg.image_size != 8:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                               align_corners=False).clamp_(0, 1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    rest, test_idx = split_indices(len(labels), holdout_count(len(labels), 0.2), seed=0)
    order, val_pos = split_indices(len(rest), holdout_count(len(rest), cfg.val_fraction), cfg.split_seed)
    train_idx, val_idx = rest[order], rest[val_pos]
    mean = images[train_idx].mean().item()
    std = images[train_idx].std().item()
    images = (images - mean) / std
    make = lambda idx: TensorDataset(images[idx], labels[idx])  # noqa: E731
    return DataSplits(make(train_idx), make(val_idx), make(test_idx),
                      classes=[str(c) for c in bunch.target_names], in_chans=1,
                      image_size=cfg.image_size, mean=[mean], std=[std])
