"""Loaders: torchvision's DataLoader for files, a tensor-resident fast loader for small sets.

    loaders = build_loaders(splits, cfg.data, seed, device=device, rank=rank, world_size=world)
    for epoch in range(start, epochs):
        loaders["train"].set_epoch(epoch)          # shuffle and augmentation from seed + epoch
        for images, labels in loaders["train"]:    # float32 normalised NCHW on `device`, int64

Both kinds give the same interface: `len()` is batches per epoch, iteration
yields batches already on `device` and (train) already augmented, and
`set_epoch` makes epoch k identical whether or not the run was resumed.

The fast loader keeps uint8 images on `device` (the GPU when training there) and
runs crop / flip / normalise on whole batches: no per-image Python, no PIL, no
worker processes (per-image presets, RandomResizedCrop or RandAugment, run on the
CPU before the batch goes to the GPU). It shards exactly as DistributedSampler does.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import UserError
from .datasets import DataSplits, Transformed
from .transforms import Pipeline, mix_seed


def build_loaders(splits: DataSplits, cfg, seed: int, *, device: torch.device = torch.device("cpu"),
                  rank: int = 0, world_size: int = 1) -> dict:
    """"train" (shuffled, augmented, set_epoch), "val" and, when the splits have one, "test".

    With world_size > 1 each rank's train loader gets a disjoint 1/world_size share
    of the epoch (padded so every rank runs the same number of steps); val/test are
    sharded as indices[rank::world_size] without padding, so no sample counts twice.
    """
    make = LOADERS[choose_loader(cfg.loader, splits)]
    device = torch.device(device)
    # data.batch_size is the global batch, so a recipe trains the same on 1 or K processes.
    if cfg.batch_size % world_size:
        raise UserError(f"data.batch_size={cfg.batch_size} must divide by the {world_size} processes")
    common = dict(seed=seed, device=device, rank=rank, world_size=world_size, num_workers=cfg.num_workers)
    loaders = {"train": make(splits.train, cfg.batch_size // world_size, shuffle=True, **common),
               "val": make(splits.val, cfg.eval_batch_size, shuffle=False, **common)}
    if splits.test is not None:
        loaders["test"] = make(splits.test, cfg.eval_batch_size, shuffle=False, **common)
    return loaders


def choose_loader(name: str, splits: DataSplits) -> str:
    """data.loader: "auto" is "fast" for in-memory datasets and "torch" otherwise."""
    choices = {"auto": "fast" if splits.in_memory else "torch", "fast": "fast", "torch": "torch"}
    if name not in choices:
        raise UserError(f"data.loader must be one of {', '.join(choices)}, got {name!r}")
    if choices[name] == "fast" and not splits.in_memory:
        raise UserError("data.loader=fast needs a dataset held in memory (digits, mnist, fashion_mnist, cifar10, "
                        "cifar100, stl10, or folder with data.cache=true); use data.loader=auto")
    return choices[name]


def shard_indices(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's indices for one epoch, exactly as DistributedSampler(drop_last=False) picks them.

    Shuffled: one permutation from seed + epoch shared by all ranks, padded by wrapping
    around to a multiple of world_size, then every world_size-th index. Unshuffled
    (val/test): range(rank, n, world_size), no padding.
    """
    if not shuffle:
        return torch.arange(rank, n, world_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    total = math.ceil(n / world_size) * world_size
    if total > n:
        perm = torch.cat([perm] * math.ceil(total / n))[:total]
    return perm[rank:total:world_size]


class FastLoader:
    """Batches of a uint8 tensor dataset on `device`, transformed by `pipeline.batch`.

    The images live on `device`, where the batch transform runs, unless the pipeline has
    per-image stages (`Pipeline.host_stages`: RandomResizedCrop, RandAugment): then the images
    stay in host memory, those stages (and the ones before them) run on the CPU, and the
    batch goes to `device` for the rest. Augmentation parameters are drawn for the whole
    pipeline at once, so a batch's pixels do not depend on where the cut is.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline, batch_size: int, *,
                 shuffle: bool, seed: int, device: torch.device, rank: int = 0, world_size: int = 1):
        device = torch.device(device)
        self.host_stages = pipeline.host_stages() if device.type != "cpu" else 0
        self.head, self.tail = pipeline.split(self.host_stages)
        self.images = images if self.host_stages else images.to(device)
        self.labels = labels.to(device)
        self.pipeline, self.batch_size, self.shuffle = pipeline, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        return shard_indices(len(self.labels), shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                             rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        n = len(self.labels)
        per_rank = math.ceil(n / self.world_size) if self.shuffle else len(range(self.rank, n, self.world_size))
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        order = self.indices()
        on_device = order.to(self.device)
        # Augmentation parameters come from their own CPU stream (same on every device),
        # separate per rank so shards are not augmented in lockstep.
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank))
        for idx, idx_dev in zip(order.split(self.batch_size), on_device.split(self.batch_size)):
            params = self.pipeline.draw(len(idx), generator)
            if self.host_stages:
                head = self.head.apply(self.images[idx], params[:self.host_stages])
                x = self.tail.apply(head.to(self.device, non_blocking=True), params[self.host_stages:])
            else:
                x = self.pipeline.apply(self.images[idx_dev], params)
            yield x, self.labels[idx_dev]


def fast_loader(dataset: Transformed, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                rank: int, world_size: int, num_workers: int) -> FastLoader:
    base = dataset.base
    return FastLoader(base.images, base.labels, dataset.transform, batch_size, shuffle=shuffle, seed=seed,
                      device=device, rank=rank, world_size=world_size)


class TorchLoader:
    """torchvision-style DataLoader (workers, PIL decode) with the fast loader's interface."""

    def __init__(self, dataset: Transformed, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                 rank: int, world_size: int, num_workers: int):
        # A copy, so the seed set here does not leak into the caller's DataSplits.
        self.dataset = copy.copy(dataset)
        self.dataset.seed = seed
        if shuffle:
            self.sampler = DistributedSampler(self.dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=seed, drop_last=False)
        else:
            self.sampler = range(rank, len(self.dataset), world_size)
        # Workers are not persistent: each epoch's workers get the dataset with its new epoch.
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=device.type == "cuda")
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for images, labels in self.loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        except UserError as exc:
            # A worker's UserError arrives with its traceback folded into the message; keep one line.
            raise UserError(str(exc).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


LOADERS = {"fast": fast_loader, "torch": TorchLoader}
