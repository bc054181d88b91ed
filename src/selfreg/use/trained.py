"""A trained model and everything needed to use it, from a run checkpoint or a weights file.

Two file formats, told apart by suffix (read by `selfreg.weightfiles`, built by `selfreg.factory`):
- a run checkpoint `*.pt` (loaded with weights_only=True), which also holds the run's
  config, so `selfreg eval` can rebuild its dataset;
- a `*.safetensors` weights file (`selfreg export --format safetensors`, weightfiles.write_weights)
  whose header carries model name, builder arguments, classes and eval transform.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.eval_transform import EvalTransform
from ..errors import UserError
from ..factory import build_loaded
from ..weightfiles import read_model_file


@dataclass
class Trained:
    model: nn.Module                  # in eval mode, on the requested device
    name: str                         # registry name
    classes: list[str]
    transform: EvalTransform
    kwargs: dict[str, Any]            # builder arguments besides num_classes / in_chans
    source: Path
    data: dict[str, Any] = field(default_factory=dict)   # the run's data config (may be empty)
    provenance: dict[str, Any] = field(default_factory=dict)   # where the run came from (selfreg.provenance)
    imports: list[str] = field(default_factory=list)     # modules that register its names (selfreg.plugins)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.transform.channels

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes, input {self.transform}) from {self.source}"


def load_trained(path: str | Path, name: str | None = None, device: str | torch.device = "cpu",
                 num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> Trained:
    """Build the model a checkpoint or weights file describes and load its weights.

    `name` (optional) must be the model the file holds; `num_classes`, `in_chans` and
    `kwargs` (optional) override the saved ones, e.g. to check a file against a build.
    The modules the file's run imported (its `imports:`, selfreg.plugins) are imported first
    (factory.build_loaded).
    """
    loaded = read_model_file(path)
    built = build_loaded(loaded, Path(path), name=name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    built.model.to(device).eval()
    return Trained(built.model, loaded.name, loaded.classes, loaded.transform, built.kwargs, Path(path), loaded.data,
                   loaded.provenance, list(loaded.imports))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    return torch.device(name)


def run_dir_of(checkpoint: Path) -> Path:
    """RUN for RUN/checkpoints/x.pt (where outputs go), else the file's own folder."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent
