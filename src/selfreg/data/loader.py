"""DataLoader wiring (interim: the data issue replaces this with the full loaders)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .datasets import DataSplits
from .transforms import get_augmentation


class TrainLoader:
    """Seeded shuffle + batch augmentation, reseeded by `set_epoch` (exact resume)."""

    def __init__(self, dataset, cfg, seed: int, rank: int = 0, world_size: int = 1):
        self.seed = seed
        self.augment = get_augmentation(cfg.augment)
        # The sampler owns its generator: DataLoader draws a worker seed from its own, which
        # would otherwise shift the permutation away from DistributedSampler's randperm(seed + epoch).
        self.generator = torch.Generator()
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed) if world_size > 1 else RandomSampler(dataset, generator=self.generator)
        self.loader = DataLoader(dataset, batch_size=cfg.batch_size // world_size, sampler=self.sampler,
                                 num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(seed))
        self.aug_generator = torch.Generator()
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)
        self.aug_generator.manual_seed(self.seed + 10_000 + epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield self.augment(images, self.aug_generator), labels


def build_loaders(splits: DataSplits, cfg, seed: int, *, device=None, rank: int = 0,
                  world_size: int = 1) -> dict:
    """Train loader (shuffled, augmented, sharded) and ordered val/test loaders (sharded, no padding)."""
    def ordered(ds):
        if world_size > 1:
            ds = torch.utils.data.Subset(ds, list(range(rank, len(ds), world_size)))
        return DataLoader(ds, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers)

    loaders = {"train": TrainLoader(splits.train, cfg, seed, rank, world_size), "val": ordered(splits.val)}
    if splits.test is not None:
        loaders["test"] = ordered(splits.test)
    return loaders
