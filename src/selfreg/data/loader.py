"""DataLoader wiring."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .datasets import DataSplits


def build_loaders(splits: DataSplits, cfg, seed: int) -> dict[str, DataLoader]:
    """Shuffled train loader (seeded) and ordered val/test loaders."""
    generator = torch.Generator().manual_seed(seed)
    loaders = {
        "train": DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                            num_workers=cfg.num_workers, generator=generator),
        "val": DataLoader(splits.val, batch_size=cfg.eval_batch_size, shuffle=False,
                          num_workers=cfg.num_workers),
    }
    if splits.test is not None:
        loaders["test"] = DataLoader(splits.test, batch_size=cfg.eval_batch_size, shuffle=False,
                                     num_workers=cfg.num_workers)
    return loaders
