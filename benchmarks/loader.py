"""Training-loader throughput on an ImageFolder copy of CIFAR-10: torchvision DataLoader + PIL vs selfreg's fast loader.

    tar -xJf ../shared/data/cifar10-jpeg-train.tar.xz -C .data/cifar10
    python benchmarks/loader.py --root .data/cifar10

Both sides run the same CIFAR training transform (zero-pad 4, random 32 crop,
horizontal flip, to float, normalise) over shuffled batches of the same size and
are timed in this one process, after one warm-up batch each:

- torchvision: `ImageFolder` + PIL decode + `transforms.v2` per image, DataLoader
  with `--workers` worker processes (the usual recipe);
- selfreg: `folder` dataset with `data.cache=true` (JPEGs decoded once into a uint8
  cache; its build or load time is reported on its own line, not in images/s),
  then the fast loader doing crop / flip / normalise on whole batches.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from _common import add_markdown_arg, table, write_section
from selfreg.config import load_config
from selfreg.data import build_dataset, build_loaders
from selfreg.data.transforms import STATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding train/<class>/*.jpg")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the torchvision side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the fast loader")
    parser.add_argument("--cache-dir", default="", help="cache folder (default: a fresh temporary one)")
    add_markdown_arg(parser)
    return parser


def images_per_second(loader, limit: int | None = None) -> tuple[float, int]:
    """Iterate one epoch (or `limit` batches) after a warm-up batch; touch each batch's data."""
    it = iter(loader)
    next(it)
    seen, start = 0, time.perf_counter()
    for i, (images, labels) in enumerate(it):
        seen += labels.numel()
        if limit is not None and i + 1 >= limit:
            break
    return seen / (time.perf_counter() - start), seen


def torchvision_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    mean, std = STATS["cifar10"]
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


def fast_loader(root: Path, batch_size: int, cache_dir: str):
    cfg = load_config(None, ["data.name=folder", f"data.root={root}", "data.cache=true", "data.augment=cifar",
                             f"data.cache_dir={cache_dir}", f"data.batch_size={batch_size}"]).data
    start = time.perf_counter()
    splits = build_dataset(cfg)
    seconds = time.perf_counter() - start
    built = any("decoded into cache" in n for n in splits.notes)
    loader = build_loaders(splits, cfg, seed=0)["train"]
    loader.set_epoch(1)
    return loader, seconds, built, len(splits.train) + len(splits.val)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fast, cache_s, built, total = fast_loader(root, args.batch_size, args.cache_dir or tmp)
        cache_note = (f"fast loader cache: {'built' if built else 'loaded'} for {total:,} images in {cache_s:.1f}s "
                      "(one-time; not in images/s)")
        fast_rate, fast_n = images_per_second(fast)
        base_rate, base_n = images_per_second(torchvision_loader(root, args.batch_size, args.workers))
    lines = [f"Batch {args.batch_size}, CIFAR train transform; one epoch each after a warm-up batch.", ""]
    lines += table(["loader", "images/s", "images"],
                   [[f"torchvision DataLoader + PIL ({args.workers} workers)", f"{base_rate:.0f}", f"{base_n:,}"],
                    [f"selfreg fast loader ({args.threads} threads)", f"{fast_rate:.0f}", f"{fast_n:,}"]])
    lines += ["", f"- ratio fast / torchvision: {fast_rate / base_rate:.1f}x (target >= 5x)", f"- {cache_note}"]
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, "Loader: fast tensor loader vs DataLoader + PIL", lines)


if __name__ == "__main__":
    main()
