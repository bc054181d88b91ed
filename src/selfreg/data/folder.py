"""The `folder` dataset: any `root/<split>/<class>/<image>` tree (torchvision's ImageFolder layout).

The dataset most users have. Every file is probed once (header and end marker, cached by
the listing's paths, sizes and mtimes) so that every problem of a tree (empty or unknown
class folders, unreadable files) is reported in one message before training starts, or
bad files are skipped and counted with `data.skip_bad=true`. With `data.cache=true` every
image is decoded once into a uint8 cache and served from memory.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from . import images as img
from .cache import cache_dir, hash_files, hash_listing, load_or_build
from .datasets import DATASETS, FileImages, Raw, TensorImages, ignored_notes, whole_root
from .transforms import presets_fix_size

SPLITS = ("train", "val", "test")


@DATASETS.register("folder", augment=["none"], scans_files=True, files=whole_root,
                   paper="any root/<split>/<class>/<image> tree (torchvision ImageFolder layout)")
def folder(cfg, *, with_test: bool, presets: list[str], needed: tuple[str, ...] = SPLITS) -> Raw:
    """`root/train/<class>/*` (+ optional val/, test/); without val/, val is carved from train (default 10%).

    Grey, RGBA, palette and 16-bit images are converted (to RGB when any image is
    colour); images whose size differs from the most common one are resized to it
    (unless the augmentation crops every image to size itself, e.g. `imagenet`).
    Bad files (not images, truncated, corrupt, empty) and symbolic links to a folder they sit
    inside (a loop) stop the run with one line listing them all, or are skipped and counted
    with `data.skip_bad=true`.
    With `data.cache=true` every image is decoded once into a uint8 cache.
    Every problem of the tree (empty or unknown class folders, bad files) is reported in one
    message. Bad files in splits outside `needed` (e.g. train/ when `selfreg eval` reads its
    own val/ folder) are skipped with a note instead.
    """
    listings, notes = _folder_listings(Path(cfg.root).expanduser(), with_test)
    if cfg.download:
        notes.append("data.download=true has no effect on the folder dataset (nothing to download)")
    loop_problems, loop_notes = img.loop_report(listings.values(), skip=cfg.skip_bad)
    notes += loop_notes
    problems = [p for listing in listings.values() for p in listing.problems] + loop_problems
    if problems:   # still scan for bad files, so that one message lists everything to fix
        bad = [(listing.files[i], p.error) for split, listing in listings.items()
               for i, p in enumerate(_scan(cfg, listing, notes)) if p.error is not None]
        img.raise_problems(problems + _bad_files_problem(bad))
    # A split carved from train needs train's files too.
    lenient = {s for s in listings if s not in needed and not (s == "train" and "val" not in listings)}
    build = _cached_folder if cfg.cache else _file_folder
    return build(cfg, listings, notes, keep_sizes=presets_fix_size(presets) and not cfg.cache, lenient=lenient)


def _folder_listings(root: Path, with_test: bool) -> tuple[dict[str, img.Listing], list[str]]:
    if not root.is_dir():
        raise UserError(f"folder dataset: {root} does not exist; set data.root to a folder holding "
                        "train/<class>/<image> (the ImageFolder layout)")
    notes = []
    train_dir = root / "train"
    if not train_dir.is_dir():
        train_dir = root
        notes.append(f"folder: no {root / 'train'}; using {root}/<class>/ as the train split")
    listings = {"train": img.list_images(train_dir)}
    for split in ("val", "test") if with_test else ("val",):
        if (root / split).is_dir():
            listings[split] = img.list_images(root / split, listings["train"].classes)
    return listings, notes + ignored_notes(listings.values())


def _bad_files_problem(bad: list[tuple[str, str]]) -> list[str]:
    if not bad:
        return []
    listed = "; ".join(f"{path} ({why})" for path, why in bad)
    return [f"{len(bad)} bad image file(s) (or pass data.skip_bad=true to skip them): {listed}"]


def _skipped_note(bad: list[tuple[str, str]], why: str) -> list[str]:
    if not bad:
        return []
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return [f"skipped {len(bad)} bad image file(s) ({why}): {shown}{more}"]


def _folder_shape(probes: list[img.Probe], keep_sizes: bool) -> tuple[int, tuple[int, int] | None, list[str]]:
    """Channels (3 if any image is colour), target size (most common) and notes on conversions."""
    good = [p for p in probes if p.error is None]
    channels = 1 if all(p.grey for p in good) else 3
    sizes = Counter(p.size for p in good)
    size = sizes.most_common(1)[0][0]
    notes = []
    converted = Counter(p.mode for p in good if p.mode not in ({"L"} if channels == 1 else {"RGB"}))
    if converted:
        modes = ", ".join(f"{m}: {n}" for m, n in sorted(converted.items()))
        notes.append(f"converted {sum(converted.values())} image(s) to {'grey' if channels == 1 else 'RGB'} "
                     f"(from {modes})")
    others = len(good) - sizes[size]
    if others and keep_sizes:
        notes.append(f"image sizes vary ({len(sizes)} sizes); the augmentation crops them to the input size")
        return channels, None, notes
    if others:
        notes.append(f"resized {others} image(s) of other sizes to the most common {size[0]}x{size[1]}")
    return channels, size, notes


def _split_good(listing: img.Listing, probes: list[img.Probe]) -> tuple[list[int], list, list[str]]:
    """Indices of usable files, the bad (path, why) pairs, and the classes no usable file is left in."""
    keep = [i for i, p in enumerate(probes) if p.error is None]
    left = Counter(listing.labels[i] for i in keep)
    emptied = [listing.classes[c] for c in sorted(set(listing.labels)) if left[c] == 0]
    bad = [(listing.files[i], p.error) for i, p in enumerate(probes) if p.error is not None]
    return keep, bad, emptied


def _file_folder(cfg, listings: dict[str, img.Listing], notes: list[str], keep_sizes: bool,
                 lenient: set[str] = frozenset()) -> Raw:
    """Decode per image at load time, after a (cached) header scan for bad files."""
    probes = {split: _scan(cfg, listing, notes) for split, listing in listings.items()}

    def make(split: str, keep: list[int], channels: int, size) -> Dataset:
        listing = listings[split]
        return FileImages([listing.files[i] for i in keep], [listing.labels[i] for i in keep],
                          img.FileDecoder(channels, size))
    return _assemble(cfg, listings, probes, notes, keep_sizes, make, lenient)


def _cached_folder(cfg, listings: dict[str, img.Listing], notes: list[str], keep_sizes: bool,
                   lenient: set[str] = frozenset()) -> Raw:
    """Decode every image once into a uint8 cache keyed by the files' bytes; serve from memory."""
    root = Path(cfg.root).expanduser()
    files = [f for listing in listings.values() for f in listing.files]
    key = hash_files(files, "folder", sorted(listings), root=root)
    path = cache_dir(cfg) / f"folder-{key}.pt"
    cached, hit = load_or_build(path, lambda: _decode_folder(cfg, listings), notes.append)
    notes.append(f"folder: {'loaded uint8 cache' if hit else 'decoded into cache'} {path}")
    probes = _probes_from_json(cached["probes"])

    def make(split: str, keep: list[int], channels: int, size) -> Dataset:
        # The cache holds exactly the good files, converted with the same channels and size.
        return TensorImages(cached["images"][split], cached["labels"][split])
    return _assemble(cfg, listings, probes, notes, False, make, lenient)


def _decode_folder(cfg, listings: dict[str, img.Listing]) -> dict:
    """Full decode of every file (DataLoader workers when data.num_workers > 0), stacked per split."""
    decoded = {s: _decode_all(listing.files, cfg.num_workers) for s, listing in listings.items()}
    all_probes = [p for pairs in decoded.values() for p, _ in pairs]
    if all(p.error is not None for p in all_probes):
        raise UserError(f"no readable images under {cfg.root}; check data.root")
    channels, size, _ = _folder_shape(all_probes, keep_sizes=False)
    out = {"images": {}, "labels": {}}
    for split, pairs in decoded.items():
        keep = [i for i, (p, _) in enumerate(pairs) if p.error is None]
        stack = torch.empty((len(keep), channels, *size), dtype=torch.uint8)
        for row, i in enumerate(keep):
            stack[row] = img.to_tensor(pairs[i][1], channels, size)
        out["images"][split] = stack
        out["labels"][split] = torch.tensor([listings[split].labels[i] for i in keep], dtype=torch.int64)
    out["probes"] = _probes_to_json({split: [p for p, _ in pairs] for split, pairs in decoded.items()})
    return out


def _decode_all(files: list[str], workers: int) -> list[tuple[img.Probe, np.ndarray | None]]:
    loader = DataLoader(_Mapped(files, img.probe_full), batch_size=256, num_workers=workers, collate_fn=list)
    return [item for batch in loader for item in batch]


class _Mapped(Dataset):
    """fn over a list, so DataLoader workers can share decoding and scanning."""

    def __init__(self, items: list, fn: Callable):
        self.items, self.fn = items, fn

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.fn(self.items[i])


def _scan(cfg, listing: img.Listing, notes: list[str]) -> list[img.Probe]:
    """Header + end-marker probe of every file, cached by the listing's paths, sizes and mtimes."""
    key = hash_listing(listing.files, "scan", root=listing.root)
    path = cache_dir(cfg) / f"folder-scan-{key}.pt"

    def build() -> dict:
        loader = DataLoader(_Mapped(listing.files, img.probe), batch_size=256, num_workers=cfg.num_workers,
                            collate_fn=list)
        return {"probes": _probes_to_json({"scan": [p for batch in loader for p in batch]})}
    data, _ = load_or_build(path, build, notes.append)
    return _probes_from_json(data["probes"])["scan"]


def _probes_to_json(probes: dict[str, list[img.Probe]]) -> str:
    """Probes as one JSON string: torch's weights-only unpickler takes ~20 us per small object,
    a second for 50k tuples, but loads one string at once."""
    return json.dumps({s: [[p.size, p.mode, p.error] for p in ps] for s, ps in probes.items()})


def _probes_from_json(text: str) -> dict[str, list[img.Probe]]:
    return {s: [img.Probe(tuple(size) if size else None, mode, error) for size, mode, error in rows]
            for s, rows in json.loads(text).items()}


def _assemble(cfg, listings: dict[str, img.Listing], probes: dict[str, list[img.Probe]], notes: list[str],
              keep_sizes: bool, make: Callable[[str, list[int], int, tuple | None], Dataset],
              lenient: set[str] = frozenset()) -> Raw:
    """Bad-file policy, channel/size choice and split datasets, shared by both folder paths.

    Bad files stop the build with one message listing them all (and any class left empty),
    unless data.skip_bad is set or their split is in `lenient`; then they are skipped and counted.
    """
    fatal: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    emptied: list[str] = []
    keeps = {}
    for split, listing in listings.items():
        keeps[split], bad, empty = _split_good(listing, probes[split])
        (skipped if cfg.skip_bad or split in lenient else fatal).extend(bad)
        if split not in lenient:
            emptied += [f"{listing.root / name}" for name in empty]
    problems = _bad_files_problem(fatal)
    if emptied:
        problems.append(f"class folder(s) left with no readable image: {', '.join(emptied)}")
    img.raise_problems(problems)
    bad = fatal + skipped
    notes = notes + _skipped_note(skipped, "data.skip_bad=true" if cfg.skip_bad else "not in the split used")
    channels, size, shape_notes = _folder_shape([p for ps in probes.values() for p in ps], keep_sizes)
    splits = {s: make(s, keeps[s], channels, size) for s in listings}
    return Raw(splits["train"], splits.get("val"), splits.get("test"), classes=listings["train"].classes,
               channels=channels, size=size, val_default=0.1, notes=notes + shape_notes, skipped=len(bad))
