"""Measure every shipped pretrained weight again and compare with the accuracy its manifest states.

    PYTHONPATH=src python benchmarks/reeval_pretrained.py --data ~/data/cifar10            # the files' own dataset
    PYTHONPATH=src python benchmarks/reeval_pretrained.py --data ~/cifar10-png --dataset folder --split test

For each entry of the manifest (src/selfreg/weights/manifest.json, or $SELFREG_PRETRAINED_DIR's):
the file is checked against its sha256, loaded, and evaluated on the split the entry names
("val" unless it says otherwise) by the code behind `selfreg eval` (selfreg.use.evaluate):
the file's own data config with data.root = --data, its saved eval transform, no TTA, in the
memory layout the entry names (channels_last: the layout its run measured in).
The table gives model, tag, the manifest's top-1, the measured top-1 and whether they are
equal: the same count of correct images (or within --tolerance percentage points).

The val split is carved from train by the file's data config (val_fraction, split_seed), so
it is the training run's val split only on the same dataset (`--dataset` left out); another
dataset (an image-folder copy of CIFAR-10, `--dataset folder`) is comparable on `--split test`.
Exit 0 when every entry agrees (or the manifest is empty: nothing ships yet), 1 on any
mismatch, 2 on a user error (missing data, damaged file).
"""
from __future__ import annotations

import argparse
import sys

from _common import table
from selfreg.errors import UserError
from selfreg.pretrained import Weights, load_manifest, verified_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the dataset's data.root (CIFAR-10's files; for --dataset folder the tree root/<split>/<class>/)")
    p.add_argument("--dataset", metavar="NAME", help="dataset name (default: each file's own, e.g. cifar10)")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: the split each entry names")
    p.add_argument("--tolerance", type=float, default=0.0, metavar="PP",
                   help="accept a difference up to this many percentage points (default 0: the same images right)")
    p.add_argument("--device", default="auto")
    p.add_argument("overrides", nargs="*", help="data.key=value overrides (e.g. data.num_workers=4)")
    return p


def measure(weights: Weights, args: argparse.Namespace, device) -> tuple[float, int]:
    """(top-1, images) of one shipped file, by `selfreg eval`'s code."""
    from selfreg.use.evaluate import measure_file

    return measure_file(verified_path(weights), args.data, args.split or weights.split, args.dataset,
                        args.overrides, device, name=weights.model, channels_last=weights.channels_last)


def agrees(stated: float, measured: float, images: int, tolerance_pp: float) -> bool:
    """The same number of correct images (half an image either way), or within the tolerance."""
    return abs(stated - measured) * images < 0.5 or abs(stated - measured) * 100 <= tolerance_pp


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = load_manifest()
        if not entries:
            print("No pretrained weights ship with selfreg yet: nothing to re-evaluate.")
            return 0
        from selfreg.use.trained import pick_device

        device = pick_device(args.device)
        rows = []
        for w in entries:
            measured, images = measure(w, args, device)
            rows.append((w, measured, images, agrees(w.val_accuracy, measured, images, args.tolerance)))
    except UserError as exc:
        print(f"reeval_pretrained: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(table(["model", "tag", "split", "images", "manifest top-1", "measured top-1", "equal"],
                           [[w.model, w.tag, args.split or w.split, images, f"{100 * w.val_accuracy:.2f}%",
                             f"{100 * measured:.2f}%", "yes" if ok else "NO"] for w, measured, images, ok in rows])))
    bad = [w.label for w, *_, ok in rows if not ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} agree with the manifest"
          + (f"; differ: {', '.join(bad)}" if bad else "."))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
