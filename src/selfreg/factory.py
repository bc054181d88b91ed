"""Build models by name, from the registry's builders or from a weights file.

    model = create_model("rrnet20_gru", num_classes=100)
    model = create_model("vit_tiny_patch4_32", img_size=32)      # passed on: the model declares it
    model = create_model("resnet20", img_size=32)                # not passed: any size works as built
    model = create_model("resnet20", checkpoint="runs/x/checkpoints/best.pt")
    model = create_model("rrnet20_gru", pretrained="cifar10-budget")   # shipped weights (selfreg.pretrained)
    model = create_model("rrnet20_gru", pretrained=True, num_classes=100)  # fine-tuning: backbone kept, new head
    model.pretrained_cfg        # timm's: input size, mean, std, interpolation, crop_pct, num_classes, label_names

What a model takes besides num_classes and in_chans is declared when it registers
(`register_model(..., accepts=("img_size", "norm_layer"))`, see `registry.SHARED_ARGS`).
Callers pass what they know (the engine: the data's image size) and the factory passes
on what the model declares, so nothing above this module asks which family a model is.

Every model built here carries timm's `pretrained_cfg` dict (and its older alias `default_cfg`)
and a `num_classes` attribute, as timm's models do: built from a file, the cfg is the file's
eval transform and class names (`selfreg.pretrained.make_pretrained_cfg`); built untrained, the
transform its native input size implies (`EvalTransform.native`: 32 px, CIFAR-10 statistics for
the CIFAR networks). So `timm.data.resolve_data_config({}, model=model)` + `create_transform`
prepare images as `selfreg eval` does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from . import models  # noqa: F401  (importing the package registers every model family)
from . import pretrained as shipped
from .data.eval_transform import EvalTransform
from .errors import UserError
from .plugins import load as load_plugins
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
                 pretrained: str | bool | None = None, log: Callable[[str], None] | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model by name (10 classes and 3 channels unless given).

    `img_size` reaches the builder only when the model declares it. With `checkpoint`
    (a run's `.pt` or an exported `.safetensors`), the model is built as the file says
    (classes, channels, builder arguments) and its weights are loaded; the file must hold
    a `name` model. `pretrained` does the same with weights that ship with selfreg: a tag
    (`"cifar10-budget"`), or True for the model's default tag; None and False build it
    untrained (timm and torch.hub pass booleans). With pretrained weights and a `num_classes`
    other than theirs, the backbone is loaded and the head re-initialised, as timm does (the
    one step of fine-tuning); `log` then gets the line naming the weights the model starts
    from. Loaded from a file, the model is in eval mode. Every model carries `pretrained_cfg`
    (see the module's docstring).
    """
    if pretrained is not None and pretrained is not False:
        if checkpoint is not None:
            raise UserError(f"pass either pretrained={pretrained!r} or checkpoint={str(checkpoint)!r}, not both")
        return build_pretrained(name, pretrained, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                log=log, **kwargs)
    if checkpoint is not None:
        return build_from_file(checkpoint, name=name, num_classes=num_classes, in_chans=in_chans,
                               **kwargs).model.eval()
    args = build_arguments(name, num_classes, in_chans, img_size, kwargs)
    model = _call_builder(name, args)
    return with_cfg(model, native_cfg(name, args["num_classes"], args["in_chans"], args.get("img_size") or img_size))


def native_cfg(name: str, num_classes: int = 10, in_chans: int = 3, img_size: Any = None) -> dict[str, Any]:
    """The `pretrained_cfg` of an untrained `name`: the eval transform of its input size (`img_size`,
    else the registry's native `input_size`) as `EvalTransform.native` reads it."""
    size = img_size or model_entry(name).meta.get("input_size", 224)
    return shipped.make_pretrained_cfg(EvalTransform.native(_pair(size), in_chans), name, num_classes)


def with_cfg(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """Give `model` timm's `pretrained_cfg` (and `default_cfg`, timm's alias) and `num_classes`."""
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    if not hasattr(model, "num_classes"):
        model.num_classes = cfg["num_classes"]
    return model


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
    """`build_from_file` for a file already read (`read_model_file`). The modules the file's run
    imported (its `imports:`, selfreg.plugins) are imported first: they register its model."""
    load_plugins(loaded.imports, origin=f"config key imports of the run that wrote {path}")
    if name is not None and name != loaded.name:
        raise UserError(f"{path} holds a {loaded.name!r} model, not {name!r}; "
                        f"use create_model({loaded.name!r}, checkpoint=...)")
    args = _file_arguments(loaded, num_classes, in_chans, kwargs)
    model = _call_builder(loaded.name, args)
    load_model_state(model, loaded.weights, path)
    with_cfg(model, shipped.make_pretrained_cfg(loaded.transform, loaded.name, args["num_classes"],
                                                label_names=loaded.classes, file=str(path)))
    return Built(model, loaded, {k: v for k, v in args.items() if k not in ("num_classes", "in_chans")})


def _file_arguments(loaded: Loaded, num_classes: int | None, in_chans: int | None,
                    kwargs: dict[str, Any]) -> dict[str, Any]:
    h, w = loaded.transform.image_size
    return build_arguments(loaded.name, num_classes or len(loaded.classes), in_chans or loaded.transform.channels,
                           h if h == w else [h, w], {**loaded.kwargs, **kwargs})


def build_pretrained(name: str, tag: str | bool, num_classes: int | None = None, in_chans: int | None = None,
                     img_size: int | None = None, log: Callable[[str], None] | None = None,
                     **kwargs: Any) -> nn.Module:
    """The model with the shipped weights `name:tag` (True: its default), in eval mode.

    The file's sha256 is checked against the manifest first. A `num_classes` other than the
    weights' keeps the backbone and re-initialises the head (the tensors whose shape follows
    the class count), as `timm.create_model(..., pretrained=True, num_classes=N)` does; its
    `pretrained_cfg` then has the new `num_classes` and no `label_names`. Another `in_chans`, or
    (for a model built for its input size) another `img_size`, is a one-line error. One line
    naming the weights (and the new head) goes to `log`, or to the `selfreg` logger.
    """
    model_entry(name)                                  # an unknown model name says so first
    weights = shipped.resolve(name, tag)
    path = shipped.verified_path(weights)
    loaded = read_model_file(path)
    if loaded.name != name:
        raise UserError(f"{path} ({weights.label}) holds a {loaded.name!r} model: the manifest is wrong; "
                        f"{shipped.REINSTALL}")
    have = loaded.transform.channels
    if in_chans is not None and in_chans != have:
        raise UserError(f"the {weights.label} weights have in_chans={have}, not {in_chans}; leave in_chans out "
                        f"(in a recipe: data.channels={have}), or build {name!r} untrained with in_chans={in_chans}")
    h, w = loaded.transform.image_size
    if img_size is not None and accepts(name, "img_size") and _pair(img_size) != (h, w):
        raise UserError(f"the {weights.label} weights are for {h}x{w} images, not {img_size}; leave img_size out "
                        f"(in a recipe: data.image_size={h})")
    classes = len(loaded.classes)
    if num_classes is None or num_classes == classes:
        model, head = build_loaded(loaded, path, name, **kwargs).model, []
    else:
        model = _call_builder(name, _file_arguments(loaded, num_classes, None, kwargs))
        head = load_backbone(model, loaded.weights, path, classes, num_classes)
    with_cfg(model, shipped.make_pretrained_cfg(loaded.transform, name, num_classes or classes, tag=weights.tag,
                                                label_names=None if head else loaded.classes, file=str(path)))
    line = (f"model {name}: starting from the pretrained weights {weights.label} ({weights.file}, sha256 "
            f"{weights.sha256[:12]}, {100 * weights.val_accuracy:.2f}% {weights.split} top-1 on {classes} classes)")
    if head:
        line += f"; new {num_classes}-class head ({', '.join(head)}), backbone loaded"
    (log or logging.getLogger("selfreg").info)(line)
    return model.eval()


def load_backbone(model: nn.Module, weights: dict[str, Any], source: str | Path, had: int, wanted: int) -> list[str]:
    """Load every tensor of `weights` but the head's into `model`, built with `wanted` classes where
    the weights have `had`: the head is what changed shape, along its class dimension only (timm
    finds it by name in pretrained_cfg["classifier"]; here the shapes say it for every model)."""
    own = model.state_dict()
    odd = sorted(set(own) ^ set(weights))
    if odd:
        raise UserError(f"{source} holds a different architecture: {len(odd)} tensors differ (e.g. {odd[0]})")
    head = [k for k in own if own[k].shape != weights[k].shape]          # in the model's order
    for k in head:
        mine, theirs = own[k].shape, weights[k].shape
        if (mine[0], theirs[0]) != (wanted, had) or mine[1:] != theirs[1:]:
            raise UserError(f"{source}: {k} is {tuple(theirs)} there and {tuple(mine)} with {wanted} classes: "
                            f"not a classifier tensor, so the head cannot be replaced")
    model.load_state_dict({k: v for k, v in weights.items() if k not in head}, strict=False)
    return head
