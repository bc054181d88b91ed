"""Register things by name, reject duplicates, suggest close matches for typos.

One `Registry` class serves models, datasets, optimizers and schedulers alike
(timm `_registry.py`, torchvision `models/_api.py`).
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


@dataclass
class Entry:
    name: str
    fn: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: `@REG.register("name", paper=...)`; the function name by default."""

        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = Entry(key, fn, dict(meta))
            return fn

        return deco

    def add(self, name: str, fn: Callable, **meta: Any) -> None:
        self.register(name, **meta)(fn)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.5)
            hint = f"did you mean: {', '.join(close)}?" if close else (
                f"see `selfreg models` for the list" if self.kind == "model"
                else f"valid: {', '.join(sorted(self._entries))}")
            raise UserError(f"unknown {self.kind} {name!r}; {hint}") from None

    def get(self, name: str) -> Callable:
        return self.entry(name).fn

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


MODELS = Registry("model")


def register_model(name: str | None = None, **meta: Any) -> Callable:
    """Register a model builder `fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module`.

    `meta` records facts a table shows: `input_size` (native H=W), `paper`, `source`;
    `norm_layer=True` declares that the builder honours the shared `norm_layer` argument
    ("batch", "group" or a layer type); `create_model` refuses that argument for the others.
    """
    return MODELS.register(name, **meta)


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 checkpoint: str | Path | None = None, **kwargs: Any):
    """Build a registered model by name (10 classes and 3 channels unless given).

    With `checkpoint` (a run's `.pt` or an exported `.safetensors`), the model is built as
    the file says (classes, channels, builder arguments) and its weights are loaded; the
    file must hold a `name` model. The result is in eval mode.
    """
    if checkpoint is not None:
        from .use.trained import load_trained

        return load_trained(checkpoint, name=name, num_classes=num_classes, in_chans=in_chans, **kwargs).model
    _ensure_models_imported()
    entry = MODELS.entry(name)
    builder = entry.fn
    if "norm_layer" in kwargs and not entry.meta.get("norm_layer"):
        families = sorted({str(MODELS.entry(n).meta.get("family", n)) for n in MODELS.names()
                           if MODELS.entry(n).meta.get("norm_layer")})
        raise UserError(f"model {name!r} has a fixed normalisation and takes no norm_layer; "
                        f"the families that take it: {', '.join(families)}")
    num_classes = 10 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    try:
        return builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        bad = str(exc).rsplit(" ", 1)[-1]
        raise UserError(f"model {name!r} takes no argument {bad}; check model.kwargs") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_models_imported()
    return MODELS.names(pattern)


def model_entry(name: str) -> Entry:
    _ensure_models_imported()
    return MODELS.entry(name)


def _ensure_models_imported() -> None:
    # The model modules register themselves on import; importing here keeps
    # `selfreg.registry` importable on its own without a cycle.
    from . import models  # noqa: F401
