"""Build models by name, from the registry's builders or from a weights file.

    model = create_model("rrnet20_gru", num_classes=100)
    model = create_model("vit_tiny_patch4_32", img_size=32)      # passed on: the model declares it
    model = create_model("resnet20", img_size=32)                # not passed: any size works as built
    model = create_model("resnet20", checkpoint="runs/x/checkpoints/best.pt")
    model = create_model("rrnet20_gru", pretrained="cifar10-budget")   # shipped weights (selfreg.pretrained)

What a model takes besides num_classes and in_chans is declared when it registers
(`register_model(..., accepts=("img_size", "norm_layer"))`, see `registry.SHARED_ARGS`).
Callers pass what they know (the engine: the data's image size) and the factory passes
on what the model declares, so nothing above this module asks which family a model is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import models  # noqa: F401  (importing the package registers every model family)
from . import pretrained as shipped
from .errors import UserError
from .registry import MODELS, Entry
from .weightfiles import Loaded, load_model_state, read_model_file


def model_entry(name: str) -> Entry:
    """The registry entry of `name`; an unknown name is a one-line `UserError` with close matches."""
    return MODELS.entry(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return MODELS.names(pattern)


def accepts(name: str, arg: str) -> bool:
    """Whether model `name` declared the shared argument `arg` (img_size, norm_layer)."""
    return arg in model_entry(name).meta.get("accepts", ())


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 img_size: int | None = None, checkpoint: str | Path | None = None,
                 pretrained: str | bool | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model by name (10 classes and 3 channels unless given).

    `img_size` reaches the builder only when the model declares it. With `checkpoint`
    (a run's `.pt` or an exported `.safetensors`), the model is built as the file says
    (classes, channels, builder arguments) and its weights are loaded; the file must hold
    a `name` model. `pretrained` does the same with weights that ship with selfreg: a tag
    (`"cifar10-budget"`), or True for the model's default tag; None and False build it
    untrained (timm and torch.hub pass booleans). Loaded from a file, the model is in eval mode.
    """
    if pretrained is not None and pretrained is not False:
        if checkpoint is not None:
            raise UserError(f"pass either pretrained={pretrained!r} or checkpoint={str(checkpoint)!r}, not both")
        return build_pretrained(name, pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint is not None:
        return build_from_file(checkpoint, name=name, num_classes=num_classes, in_chans=in_chans,
                               **kwargs).model.eval()
    return _call_builder(name, build_arguments(name, num_classes, in_chans, img_size, kwargs))


def build_arguments(name: str, num_classes: int | None, in_chans: int | None, img_size: int | None,
                    kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the builder of `name` gets: the shared ones it declares, and `kwargs`."""
    entry = model_entry(name)
    declared = entry.meta.get("accepts", ())
    if "norm_layer" in kwargs and "norm_layer" not in declared:
        families = sorted({str(MODELS.entry(n).meta.get("family", n)) for n in MODELS.names()
                           if "norm_layer" in MODELS.entry(n).meta.get("accepts", ())})
        raise UserError(f"model {name!r} has a fixed normalisation and takes no norm_layer; "
                        f"the families that take it: {', '.join(families)}")
    args = {"num_classes": 10 if num_classes is None else num_classes,
            "in_chans": 3 if in_chans is None else in_chans, **kwargs}
    if img_size is not None and "img_size" in declared:
        args.setdefault("img_size", img_size)
    return args


def sized_kwargs(kwargs: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """A recipe's model.kwargs with the data's image size as `img_size`: the one rule for both.

    The data decides the size the model sees; a model.kwargs.img_size that says the same is
    fine (the "CIFAR form" of a zoo recipe), one that says otherwise is a one-line error.
    """
    given = kwargs.get("img_size")
    if given is not None and img_size is not None and _pair(given) != _pair(img_size):
        raise UserError(f"model.kwargs.img_size={given} but the data's images are {img_size} px; set "
                        f"data.image_size={given} to resize them, or leave model.kwargs.img_size out")
    return {**kwargs, "img_size": img_size if img_size is not None else given}


def _pair(size: Any) -> tuple:
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def _call_builder(name: str, args: dict[str, Any]) -> nn.Module:
    try:
        return MODELS.get(name)(**args)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        bad = str(exc).rsplit(" ", 1)[-1]
        raise UserError(f"model {name!r} takes no argument {bad}; check model.kwargs") from None


@dataclass
class Built:
    """A model built from a file, what the file said, and the builder arguments used."""
    model: nn.Module
    loaded: Loaded
    kwargs: dict[str, Any]          # besides num_classes and in_chans: what a re-export records


def build_from_file(path: str | Path, name: str | None = None, num_classes: int | None = None,
                    in_chans: int | None = None, **kwargs: Any) -> Built:
    """Build the model a checkpoint or weights file describes and load its weights.

    `name` (optional) must be the model the file holds; `num_classes`, `in_chans` and
    `kwargs` (optional) override the saved ones, e.g. to check a file against a build.
    """
    path = Path(path)
    return build_loaded(read_model_file(path), path, name, num_classes, in_chans, **kwargs)


def build_loaded(loaded: Loaded, path: Path, name: str | None = None, num_classes: int | None = None,
                 in_chans: int | None = None, **kwargs: Any) -> Built:
    """`build_from_file` for a file already read (`read_model_file`)."""
    if name is not None and name != loaded.name:
        raise UserError(f"{path} holds a {loaded.name!r} model, not {name!r}; "
                        f"use create_model({loaded.name!r}, checkpoint=...)")
    h, w = loaded.transform.image_size
    args = build_arguments(loaded.name, num_classes or len(loaded.classes), in_chans or loaded.transform.channels,
                           h if h == w else [h, w], {**loaded.kwargs, **kwargs})
    model = _call_builder(loaded.name, args)
    load_model_state(model, loaded.weights, path)
    return Built(model, loaded, {k: v for k, v in args.items() if k not in ("num_classes", "in_chans")})


def build_pretrained(name: str, tag: str | bool, num_classes: int | None = None, in_chans: int | None = None,
                     **kwargs: Any) -> nn.Module:
    """The model with the shipped weights `name:tag` (True: its default), in eval mode.

    The file's sha256 is checked against the manifest first. A `num_classes` or `in_chans`
    other than the weights' is a one-line error, not a silently re-initialised head: a
    new head is a fine-tuning decision the caller makes on the loaded model.
    """
    model_entry(name)                                  # an unknown model name says so first
    weights = shipped.resolve(name, tag)
    path = shipped.verified_path(weights)
    loaded = read_model_file(path)
    if loaded.name != name:
        raise UserError(f"{path} ({weights.label}) holds a {loaded.name!r} model: the manifest is wrong; "
                        f"{shipped.REINSTALL}")
    for arg, wanted, have in (("num_classes", num_classes, len(loaded.classes)),
                              ("in_chans", in_chans, loaded.transform.channels)):
        if wanted is not None and wanted != have:
            raise UserError(f"the {weights.label} weights have {arg}={have}, not {wanted}; leave {arg} out "
                            f"(or build {name!r} untrained with {arg}={wanted})")
    return build_loaded(loaded, path, name, **kwargs).model.eval()
