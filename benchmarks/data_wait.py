"""Time spent waiting for data: selfreg's fast tensor loader feeding resnet20 on CIFAR-shaped batches.

    PYTHONPATH=src python benchmarks/data_wait.py --threads 2          # CPU; on a GPU: --device cuda

A synthetic uint8 dataset of CIFAR-10's shape (3x32x32, 10 classes; random pixels: the loader's
work does not depend on them) goes through `FastLoader` with the CIFAR training transform
(pad-4 random crop, flip, normalise, on whole batches, on `--device`), and each batch
trains resnet20 for one SGD step. Per step, "wait" is the wall time of `next(loader)` (with a
device sync, so GPU transform kernels count as waiting too) and "step" is wait plus the
training step (synced). Target: wait under 5% of step time for resnet20 on a GPU.

The loader's throughput against torchvision's DataLoader + PIL on real CIFAR JPEGs is
benchmarks/loader.py (the data issue's 5x target); this script does not repeat it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _common import add_markdown_arg, sync, table, write_section
from selfreg import create_model
from selfreg.data.loader import FastLoader
from selfreg.data.transforms import STATS, Context, build_pipelines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--images", type=int, default=0, help="dataset size (default: enough for the steps)")
    add_markdown_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    warmup = 3
    n = args.images or args.batch * (args.steps + warmup)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = STATS["cifar10"]
    pipeline = build_pipelines(["cifar"], Context((32, 32), (32, 32), 3, 3), mean, std).train
    loader = FastLoader(images, labels, pipeline, args.batch, shuffle=True, seed=0, device=dev)
    loader.set_epoch(1)

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    waits, steps = [], []
    it = iter(loader)
    for i in range(warmup + args.steps):
        start = time.perf_counter()
        x, y = next(it)
        sync(dev)
        got = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sync(dev)
        if i >= warmup:
            waits.append(got - start)
            steps.append(time.perf_counter() - start)
    share = sum(waits) / sum(steps)
    lines = [f"resnet20, batch {args.batch}, CIFAR-shaped uint8 data on {dev.type}, CIFAR train transform "
             f"in FastLoader; {args.steps} steps after {warmup} warm-up steps.", ""]
    lines += table(["", "median ms", "share of step"],
                   [["waiting for data", f"{statistics.median(waits) * 1e3:.2f}", f"{share:.1%}"],
                    ["whole step", f"{statistics.median(steps) * 1e3:.2f}", "100%"]])
    lines += ["", f"- waiting for data: {share:.1%} of step time (target on a GPU: under 5%)"]
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, f"Data wait ({'GPU' if dev.type == 'cuda' else f'CPU, {args.threads} threads'})",
                      lines, device=dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
