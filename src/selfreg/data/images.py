"""Image files on disk: list an ImageFolder tree, decode any PIL mode to uint8, find bad files.

Nothing here drops a file silently: listing records files it ignores (wrong
extension), decoding records why a file failed (not an image, truncated,
corrupt), and the `folder` builder turns those records into one summary error
or, with `data.skip_bad`, a counted note in the run log.
"""
from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError

# Modes whose pixels are one grey value; everything else is treated as colour.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# 16- and 32-bit integer grey: PIL's own convert("L") clips these at 255 instead of scaling.
WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass
class Listing:
    """The images of one split folder, in torchvision's ImageFolder order."""
    root: Path
    files: list[str]
    labels: list[int]
    classes: list[str]
    ignored: list[str] = field(default_factory=list)   # files without an image extension
    # What is wrong with the folder (empty class folders, unknown classes, ...): collected, not
    # raised, so that one message can list every problem of a dataset at once.
    problems: list[str] = field(default_factory=list)
    # Symbolic links to a folder they sit inside ("link -> target"), not followed: a problem, or
    # skipped with a note under data.skip_bad (see `loop_report`).
    loops: list[str] = field(default_factory=list)


def list_images(split_dir: Path, classes: list[str] | None = None) -> Listing:
    """List `split_dir/<class>/**/<image>` with torchvision's folder code.

    `classes` fixes the label order (val/test reuse train's). An empty class folder, a
    single class or a class unknown to train is recorded in `problems` (see `raise_problems`).
    """
    found, _ = _find_classes(split_dir)
    classes = classes if classes is not None else found
    problems = []
    unknown = sorted(set(found) - set(classes))
    if unknown:
        problems.append(f"{split_dir} has class folders that train/ lacks: {', '.join(unknown)} "
                        "(every val/test class needs training images)")
    if len(classes) < 2:
        problems.append(f"{split_dir} holds one class folder ({classes[0]}); a classifier needs at least two")
    ignored: list[str] = []

    def is_image(path: str) -> bool:
        if path.lower().endswith(IMG_EXTENSIONS):
            return True
        ignored.append(path)
        return False

    class_to_idx = {c: i for i, c in enumerate(classes) if c in found}
    loops: list[str] = []
    samples = _samples(str(split_dir), class_to_idx, is_image, loops)
    counts = Counter(label for _, label in samples)
    empty = [str(split_dir / classes[i]) for i in class_to_idx.values() if counts[i] == 0]
    if empty:
        problems.append(f"class folder(s) with no images ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}")
    return Listing(split_dir, [p for p, _ in samples], [y for _, y in samples], list(classes), ignored, problems,
                   loops)


def _samples(split_dir: str, class_to_idx: dict[str, int], is_valid: Callable[[str], bool],
             loops: list[str]) -> list[tuple[str, int]]:
    """torchvision's `make_dataset` (same files, same order), except that a symbolic link to a folder
    it sits inside is not followed but recorded in `loops`: os.walk(followlinks=True) would go round
    such a loop ~40 levels deep, giving one class every image above the link."""
    above = _identities_above(split_dir)
    samples = []
    for name in sorted(class_to_idx):
        class_dir = os.path.join(split_dir, name)
        if os.path.isdir(class_dir):
            samples += [(path, class_to_idx[name]) for path in _walk_files(class_dir, above, loops) if is_valid(path)]
    return samples


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder `path` leads to; None when it cannot be read (os.walk skips those)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities_above(folder: str) -> frozenset:
    """The folder and every folder above it, resolved: a link to any of them is a loop."""
    real = Path(os.path.realpath(folder))
    return frozenset(_identity(str(p)) for p in (real, *real.parents)) - {None}


def _walk_files(top: str, above: frozenset, loops: list[str]) -> list[str]:
    """Every file under `top`, following links to folders but never into a folder the walk is inside."""
    if _identity(top) in above:
        loops.append(f"{top} -> {os.path.realpath(top)}")
        return []
    inside = {top: above | {_identity(top)}}     # each folder to walk: the folders it lies within
    found = []
    for root, dirs, files in os.walk(top, followlinks=True):
        outer = inside.pop(root)
        kept = []
        for d in dirs:
            path = os.path.join(root, d)
            ident = _identity(path)
            if ident is not None and ident in outer:
                loops.append(f"{path} -> {os.path.realpath(path)}")
                continue
            kept.append(d)
            inside[path] = outer | {ident}
        dirs[:] = kept                          # os.walk descends only into what is left here
        found.append((root, sorted(files)))
    return [os.path.join(root, f) for root, files in sorted(found) for f in files]


def loop_report(listings, skip: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) for the symbolic-link loops of `listings`: one problem, or with `skip`
    (data.skip_bad=true) one note; the loops themselves were never followed."""
    loops = [loop for listing in listings for loop in listing.loops]
    if not loops:
        return [], []
    shown = "; ".join(loops[:10]) + (f" and {len(loops) - 10} more" if len(loops) > 10 else "")
    if skip:
        return [], [f"skipped {len(loops)} symbolic link loop(s) (data.skip_bad=true): {shown}"]
    return [f"{len(loops)} symbolic link loop(s) (a link to a folder it sits inside; remove the link, or pass "
            f"data.skip_bad=true to skip it): {shown}"], []


def raise_problems(problems: list[str]) -> None:
    """One `UserError` listing every problem found in a dataset's folders, if any."""
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the image folders: {'; '.join(problems)}; "
                        "fix them (add or remove files and folders) and run again")


def _find_classes(split_dir: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(split_dir))
    except FileNotFoundError:
        loose = [p.name for p in split_dir.iterdir() if p.is_file()][:3]
        hint = f" (found loose files such as {', '.join(loose)})" if loose else ""
        raise UserError(f"no class folders in {split_dir}{hint}; expected {split_dir}/<class>/<image>") from None


# ---------------------------------------------------------------------------------------
# Decoding

class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason, for the summary."""


@dataclass
class Probe:
    """What a header read (or full decode) learnt about one file."""
    size: tuple[int, int] | None = None        # (H, W)
    mode: str = ""
    error: str | None = None

    @property
    def grey(self) -> bool:
        return self.mode in GREY_MODES


def open_image(path: str) -> Image.Image:
    """PIL image with its pixels loaded; `BadImage` with a short reason otherwise."""
    try:
        _check_file(path)
        im = Image.open(path)
        im.load()
        return im
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except FileNotFoundError:
        raise BadImage(_missing(path)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc)
        raise BadImage("truncated" if "truncated" in text else f"corrupt: {text[:80]}") from None


def to_uint8(im: Image.Image) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 from any PIL mode.

    16-bit grey keeps its top 8 bits (PIL's convert would clip at 255); alpha is dropped;
    palette, CMYK and the rest go through PIL's RGB conversion. The array is writable
    (np.array copies), as torch.from_numpy wants.
    """
    if im.mode in WIDE_GREY_MODES:
        return (np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    if im.mode in GREY_MODES:
        return np.array(im.convert("L"))
    return np.array(im.convert("RGB"))


def load_array(path: str) -> np.ndarray:
    with open_image(path) as im:
        return to_uint8(im)


def probe(path: str) -> Probe:
    """Header read plus an end-of-file check; a full decode only for files that look cut short.

    Reading a header costs ~0.1 ms; decoding costs 10-100x more. JPEG and PNG files end
    with a fixed marker, so a missing marker flags a likely truncation, which a decode then
    confirms (valid files with trailing bytes after the marker pass).
    """
    try:
        _check_file(path)
        with Image.open(path) as im:
            result = Probe((im.height, im.width), im.mode)
            fmt = im.format
        if not _has_end_marker(path, fmt):
            with open_image(path):
                pass
        return result
    except BadImage as exc:
        return Probe(error=str(exc))
    except UnidentifiedImageError:
        return Probe(error="not an image")
    except FileNotFoundError:
        return Probe(error=_missing(path))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return Probe(error=f"corrupt: {str(exc)[:80]}")


def _check_file(path: str) -> None:
    """`BadImage` for what no decoder should open: an empty file, or a FIFO, socket or device
    (opening a FIFO waits for a writer forever)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadImage("not a regular file (a FIFO, socket or device)")
    if st.st_size == 0:
        raise BadImage("empty file")


def _missing(path: str) -> str:
    return f"a symbolic link to a missing file ({os.readlink(path)})" if os.path.islink(path) else "gone"


# JPEG ends with EOI (FF D9); PNG with an IEND chunk (then a 4-byte CRC). Some writers pad a
# few bytes after, so look at the last 16 bytes rather than the exact end.
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def _has_end_marker(path: str, fmt: str | None) -> bool:
    """True when the file ends as its format says it must; False (decode to check) otherwise."""
    if fmt not in _END_MARKERS:
        return False
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 16))
        return _END_MARKERS[fmt] in f.read()


def probe_full(path: str) -> tuple[Probe, np.ndarray | None]:
    """Decode the whole file: the probe and the pixels (None when bad)."""
    try:
        with open_image(path) as im:
            return Probe((im.height, im.width), im.mode), to_uint8(im)
    except BadImage as exc:
        return Probe(error=str(exc)), None


def to_tensor(array: np.ndarray, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 (C, H, W) with `channels` (grey repeated to RGB when 3) and resized to `size` if given."""
    x = torch.from_numpy(np.ascontiguousarray(array))   # to_uint8 arrays are writable
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 3 and channels == 1:
        # A colour image in a folder judged grey cannot happen (one colour file makes it RGB).
        raise AssertionError("colour image in a grey folder")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = TF.resize(x, list(size), antialias=True)
    return x.contiguous()


class FileDecoder:
    """path -> uint8 (C, H, W) for the file-backed loader; picklable for DataLoader workers."""

    def __init__(self, channels: int, size: tuple[int, int] | None):
        self.channels, self.size = channels, size

    def __call__(self, path: str) -> torch.Tensor:
        try:
            array = load_array(path)
        except BadImage as exc:
            # The scan passed this file, so it changed or broke since; say which and how to fix.
            raise UserError(f"image {path} could not be decoded ({exc}); remove or replace it") from None
        return to_tensor(array, self.channels, self.size)
