"""`selfreg predict`: class names and probabilities for image files, from the checkpoint alone.

    rows = predict(trained, ["cat.jpg", "photos/"], topk=5)   # one Prediction per file
    print(format_table(rows))

Images of any mode (grey, RGBA, palette, 16-bit, CMYK) and size go through the checkpoint's
saved eval transform. A file that cannot be read gets its reason in its row and the
others are still predicted. Folders are searched recursively for image extensions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

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


def list_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (recursively, sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise UserError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {p}")
            out += found
        else:
            out.append(p)           # a missing or bad file is reported in its row
    return out


def load_input(path: Path, trained: Trained) -> torch.Tensor:
    """The model input for one file, or BadImage with the reason."""
    if not path.exists():
        raise BadImage("not found")
    if not path.is_file():
        raise BadImage("not a file")
    with open_image(str(path)) as im:
        return trained.transform.image(im)


@torch.no_grad()
def predict(trained: Trained, paths: Iterable[str | Path], topk: int = 5, batch_size: int = 64) -> list[Prediction]:
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    k = min(topk, trained.num_classes)
    device = next(trained.model.parameters()).device
    rows = [Prediction(str(p)) for p in list_inputs(paths)]
    files = [Path(r.file) for r in rows]
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
