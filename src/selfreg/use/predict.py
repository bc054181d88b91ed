"""`selfreg predict`: class names and probabilities for image files, from the checkpoint alone.

    rows = predict(trained, ["cat.jpg", "photos/"], topk=5)   # one Prediction per file
    print(format_table(rows))

Images of any mode (grey, RGBA, palette, 16-bit, CMYK) and size go through the checkpoint's
saved eval transform. A file that cannot be read gets its reason in its row and the
others are still predicted. Folders are searched recursively for image extensions.
Images already in memory (the Python API, selfreg.api.predict) go the same way: PIL images,
and tensors as torchvision reads images, (C, H, W) or (H, W), uint8 or float in [0, 1].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from ..data.images import BadImage, open_image
from ..errors import UserError
from .trained import Trained


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]] = field(default_factory=list)   # (class, probability), best first
    error: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "error": self.error,
                "predictions": [{"class": c, "probability": p} for c, p in self.top]}


def list_inputs(paths: Iterable[Any]) -> list[Any]:
    """Files as given; folders expanded to their image files (recursively, sorted); images in
    memory as they are (PIL images, tensors), a (N, C, H, W) tensor as its N images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out: list[Any] = []
    for item in paths:
        if isinstance(item, torch.Tensor) and item.ndim == 4:
            out += list(item.unbind(0))
            continue
        if isinstance(item, (Image.Image, torch.Tensor)):
            out.append(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise UserError(f"predict takes image files, folders, PIL images or image tensors (C, H, W), "
                            f"got a {type(item).__name__}")
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise UserError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {p}")
            out += found
        else:
            out.append(p)           # a missing or bad file is reported in its row
    return out


def load_input(path: Any, trained: Trained) -> torch.Tensor:
    """The model input for one file (or image in memory), or BadImage with the reason."""
    if isinstance(path, Image.Image):
        return trained.transform.image(path)
    if isinstance(path, torch.Tensor):
        x = image_tensor(path)
        return trained.transform.pipeline(x.shape[0])(x)
    if not path.exists():
        raise BadImage("not found")
    if not path.is_file():
        raise BadImage("not a file")
    with open_image(str(path)) as im:
        return trained.transform.image(im)


def image_tensor(x: torch.Tensor) -> torch.Tensor:
    """An image tensor as torchvision reads images, (C, H, W) with C 1 or 3, or (H, W); uint8, or
    float in [0, 1] -> uint8 (C, H, W), as a decoded file is. BadImage with the reason otherwise."""
    x = x.detach().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise BadImage(f"a tensor of shape {tuple(x.shape)}; an image is (C, H, W) with 1 or 3 channels, or (H, W)")
    if x.is_floating_point():
        return x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if x.dtype != torch.uint8:
        raise BadImage(f"a {x.dtype} tensor; an image tensor is uint8, or float in [0, 1]")
    return x


def _label(item: Any, i: int) -> str:
    """A row's name: the file, or for an image in memory its kind and place in the input."""
    if isinstance(item, Image.Image):
        return f"<PIL image {i}>"
    if isinstance(item, torch.Tensor):
        return f"<tensor {i}>"
    return str(item)


@torch.no_grad()
def predict(trained: Trained, paths: Iterable[Any], topk: int = 5, batch_size: int = 64) -> list[Prediction]:
    """One Prediction per image: files, folders (their image files), PIL images or image tensors."""
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    k = min(topk, trained.num_classes)
    device = next(trained.model.parameters()).device
    items = list_inputs(paths)
    rows = [Prediction(_label(item, i)) for i, item in enumerate(items)]
    files = [item if isinstance(item, (Image.Image, torch.Tensor)) else Path(item) for item in items]
    for start in range(0, len(rows), batch_size):
        batch, which = [], []
        for i in range(start, min(start + batch_size, len(rows))):
            try:
                batch.append(load_input(files[i], trained))
                which.append(i)
            except BadImage as exc:
                rows[i].error = str(exc)
        if not batch:
            continue
        probs = torch.softmax(trained.model(torch.stack(batch).to(device)).float(), dim=1)
        values, indices = probs.topk(k, dim=1)
        for i, v, idx in zip(which, values.tolist(), indices.tolist()):
            rows[i].top = [(trained.classes[j], p) for j, p in zip(idx, v)]
    return rows


def format_table(rows: list[Prediction]) -> str:
    width = min(max([len(r.file) for r in rows] + [4]), 60)
    lines = [f"{'file':<{width}}  {'class':<12} {'prob':>6}   top-k"]
    for r in rows:
        name = r.file if len(r.file) <= width else "..." + r.file[-(width - 3):]
        if r.error:
            lines.append(f"{name:<{width}}  error: {r.error}")
            continue
        best, p = r.top[0]
        rest = ", ".join(f"{c} {q:.3f}" for c, q in r.top)
        lines.append(f"{name:<{width}}  {best:<12} {p:6.3f}   {rest}")
    return "\n".join(lines)
