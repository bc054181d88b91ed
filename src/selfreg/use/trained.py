"""A trained model and everything needed to use it, from a run checkpoint or a weights file.

Two file formats, told apart by suffix (a table, as everywhere):
- a run checkpoint `*.pt` (train/checkpoint.py; loaded with weights_only=True), which also
  holds the run's config, so `selfreg eval` can rebuild its dataset;
- a `*.safetensors` weights file (`selfreg export --format safetensors`, use/weights.py)
  whose header carries model name, builder arguments, classes and eval transform.
Neither is ever unpickled beyond tensors and plain containers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.eval_transform import EvalTransform
from ..errors import UserError


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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.transform.channels

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes, input {self.transform}) from {self.source}"


@dataclass
class Loaded:
    """What a file format yields before the model is built."""
    name: str
    kwargs: dict[str, Any]
    classes: list[str]
    transform: EvalTransform
    weights: dict[str, torch.Tensor]
    data: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


def _from_checkpoint(path: Path) -> Loaded:
    from ..train.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    missing = [k for k in ("model_name", "classes") if k not in state]
    if missing:
        raise UserError(f"{path} is a selfreg checkpoint without {', '.join(missing)}; it cannot be used "
                        "on its own (train it with `selfreg train`)")
    config = state.get("config") or {}
    transform = EvalTransform.from_checkpoint(state, str(path))
    return Loaded(state["model_name"], saved_kwargs(state["model_name"], config, transform), list(state["classes"]),
                  transform, state["model"], dict(config.get("data") or {}), dict(state.get("provenance") or {}))


def saved_kwargs(name: str, config: dict, transform: EvalTransform) -> dict[str, Any]:
    """The builder arguments a run used: model.kwargs, plus img_size for the zoo (as Run does)."""
    from ..models.zoo import takes_img_size

    kwargs = dict((config.get("model") or {}).get("kwargs") or {})
    if takes_img_size(name):
        h, w = transform.image_size
        kwargs.setdefault("img_size", h if h == w else [h, w])
    return kwargs


def _from_safetensors(path: Path) -> Loaded:
    from .weights import read_weights

    return read_weights(path)


FORMATS: dict[str, Callable[[Path], Loaded]] = {".safetensors": _from_safetensors}


def load_trained(path: str | Path, name: str | None = None, device: str | torch.device = "cpu",
                 num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> Trained:
    """Build the model a checkpoint or weights file describes and load its weights.

    `name` (optional) must be the model the file holds; `num_classes`, `in_chans` and
    `kwargs` (optional) override the saved ones, e.g. to check a file against a build.
    """
    from ..registry import create_model
    from ..train.checkpoint import load_model_state

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    loaded = FORMATS.get(path.suffix, _from_checkpoint)(path)
    if name is not None and name != loaded.name:
        raise UserError(f"{path} holds a {loaded.name!r} model, not {name!r}; "
                        f"use create_model({loaded.name!r}, checkpoint=...)")
    build_kwargs = {**loaded.kwargs, **kwargs}
    model = create_model(loaded.name, num_classes=num_classes or len(loaded.classes),
                         in_chans=in_chans or loaded.transform.channels, **build_kwargs)
    load_model_state(model, loaded.weights, path)
    model.to(device).eval()
    return Trained(model, loaded.name, loaded.classes, loaded.transform, build_kwargs, path, loaded.data,
                   loaded.provenance)


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
