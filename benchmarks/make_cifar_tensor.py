"""Make the uint8 tensor files that the GPU benchmarks and airbench both read, from the CIFAR-10 JPEG copy.

    python benchmarks/make_cifar_tensor.py ROOT OUT [--holdout 5000] [--seed 0]

ROOT is the JPEG copy: a folder holding `train/<class>/*.jpg` (or that `train/` folder itself),
or its `.tar.xz` archive (unpacked into a temporary folder). Every image is decoded once
(RGB, 32x32 expected) and a fixed-seed random `--holdout` of them is set aside:

    OUT/train.pt   {images: uint8 (N, 32, 32, 3), labels: int64 (N,), classes: [...]}   N = 50,000 - holdout
    OUT/test.pt    the same for the holdout

This is airbench's CifarLoader format (it reads `cifar10/train.pt` and `cifar10/test.pt`),
and selfreg reads the same files with `data.name=tensors data.root=OUT`. The JPEG copy has no
official test split, so "test" here is the holdout: report it as a held-out split of the
JPEG copy, not as CIFAR-10 test accuracy. Needs no network.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="JPEG tree (holding train/<class>/) or its .tar.xz archive")
    p.add_argument("out", help="folder to write train.pt and test.pt into")
    p.add_argument("--holdout", type=int, default=5000, help="images set aside as test.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return p


def find_train(root: Path) -> Path:
    """The folder whose subfolders are the classes."""
    for cand in (root / "train", root):
        if cand.is_dir() and any(d.is_dir() for d in cand.iterdir()):
            subs = [d for d in cand.iterdir() if d.is_dir()]
            if all(any(f.suffix.lower() in EXTENSIONS for f in d.iterdir()) for d in subs):
                return cand
    nested = sorted(p for p in root.glob("*/train") if p.is_dir())
    if nested:
        return nested[0]
    raise SystemExit(f"make_cifar_tensor: no train/<class>/*.jpg tree under {root}")


def decode(paths: list[str]) -> np.ndarray:
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    start = time.perf_counter()
    root = Path(args.root)
    with tempfile.TemporaryDirectory(prefix="cifar-jpeg-") as tmp:
        if root.is_file():
            with tarfile.open(root) as tar:
                try:
                    tar.extractall(tmp, filter="data")
                except TypeError:  # a Python without extraction filters
                    tar.extractall(tmp)
            root = Path(tmp)
        train_dir = find_train(root)
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        files, labels = [], []
        for k, name in enumerate(classes):
            names = sorted(f for f in (train_dir / name).iterdir() if f.suffix.lower() in EXTENSIONS)
            files += [str(f) for f in names]
            labels += [k] * len(names)
        chunks = [files[i:i + 1000] for i in range(0, len(files), 1000)]
        with ProcessPoolExecutor(max(1, args.workers)) as pool:
            images = np.concatenate(list(pool.map(decode, chunks)))
    if images.shape[1:] != (32, 32, 3):
        print(f"make_cifar_tensor: note: images are {images.shape[1:]}, not CIFAR's 32x32x3", file=sys.stderr)
    n = len(images)
    if not 0 < args.holdout < n:
        raise SystemExit(f"make_cifar_tensor: --holdout must be between 1 and {n - 1}, got {args.holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    test_idx, train_idx = perm[:args.holdout].sort().values, perm[args.holdout:].sort().values
    images_t, labels_t = torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", train_idx), ("test", test_idx)):
        torch.save({"images": images_t[idx].contiguous(), "labels": labels_t[idx], "classes": classes},
                   out / f"{name}.pt")
    print(f"wrote {out / 'train.pt'} ({len(train_idx)} images) and {out / 'test.pt'} ({len(test_idx)} held out, "
          f"seed {args.seed}); {len(classes)} classes; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
