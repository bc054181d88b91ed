"""selfreg's models as torch.hub and timm entry points: one function per registered model.

    torch.hub.load("path/to/selfreg", "rrnet20_gru", source="local", pretrained="cifar10-budget")
    timm.create_model("selfreg_rrnet20_gru", num_classes=10)                   # after `import selfreg`
    timm.create_model("selfreg_rrnet20_gru.cifar10-budget", pretrained=True)   # timm's arch.tag form

Both are generated from the registry (every model name that is a Python identifier), so a
new model family is reachable through both without a line here. Each entry point calls
`selfreg.create_model(name, pretrained=...)`: True is the model's default shipped weights, a
string a tag (`selfreg.pretrained`), False an untrained model.

timm: the names carry the prefix `selfreg_` because timm has its own `regnet*`, `resnet18`,
`vgg11`, ... and registering a name twice overwrites timm's model. timm finds its models
by name in the registry that `timm.models.register_model` fills; that registry comes with
importing timm, which imports torch (~7 s), so `import selfreg` cannot fill it without
losing its fast start. `selfreg/__init__.py` instead calls `register_timm()` as soon as both
timm and selfreg's model factory are imported, in whichever order (`selfreg.import_hooks`),
which makes "after `import selfreg`, `timm.create_model("selfreg_...")` works" true without
`import selfreg` importing either. Models registered later (a user's own
`@selfreg.register_model`) reach timm with another `register_timm()` call.
"""
from __future__ import annotations

import keyword
import sys
from typing import Any, Callable

from torch import nn

from .errors import UserError
from .factory import create_model, list_models

TIMM_PREFIX = "selfreg_"


def hub_names() -> list[str]:
    """Registered model names usable as Python function names (all of them today)."""
    return [n for n in list_models() if n.isidentifier() and not keyword.iskeyword(n)]


def hub_entrypoint(name: str) -> Callable[..., nn.Module]:
    """torch.hub's entry point for `name`: `fn(pretrained=False, **create_model kwargs)`."""

    def build(pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
        return create_model(name, pretrained=pretrained, **kwargs)

    return _named(build, name, f"selfreg's {name!r}: selfreg.create_model({name!r}, pretrained=..., **kwargs); "
                               "pretrained: False (untrained), True (the default shipped weights) or a tag.")


def hub_entrypoints() -> dict[str, Callable[..., nn.Module]]:
    """What hubconf.py exposes: {model name: entry point}."""
    return {name: hub_entrypoint(name) for name in hub_names()}


def timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    """timm's entry point for `name`, called by `timm.create_model(TIMM_PREFIX + name, ...)`.

    timm passes `pretrained` (a bool), `pretrained_cfg` (the tag of `arch.tag`, or None),
    `pretrained_cfg_overlay` and `cache_dir`; as in timm, the tag picks which weights
    `pretrained=True` loads, and without `pretrained=True` the model is untrained.
    """

    def build(pretrained: bool | str = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
              cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
            raise UserError(f"selfreg models take a weights tag as the pretrained config "
                            f"({TIMM_PREFIX}{name}.TAG), not {type(pretrained_cfg).__name__}")
        if pretrained_cfg_overlay:
            raise UserError("selfreg models take no pretrained_cfg_overlay")
        if pretrained is True and pretrained_cfg:
            pretrained = pretrained_cfg
        return create_model(name, pretrained=pretrained, **kwargs)

    return _named(build, TIMM_PREFIX + name, f"selfreg's {name!r} for timm.create_model (see selfreg.entrypoints).")


def _named(fn: Callable, name: str, doc: str) -> Callable:
    """Give a generated function the name and module that torch.hub and timm read."""
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = doc
    return fn


def register_timm() -> list[str]:
    """Register every selfreg model into timm's registry as `selfreg_<name>`; returns the new names.

    Idempotent: names already registered by this module are skipped, so calling it again
    only adds models registered since. timm also lists each name in this module's `__all__`,
    so the functions are set as module attributes too.
    """
    from timm.models import is_model, model_entrypoint, register_model

    module = sys.modules[__name__]
    added = []
    for name in hub_names():
        public = TIMM_PREFIX + name
        if is_model(public) and model_entrypoint(public).__module__ == __name__:
            continue
        fn = timm_entrypoint(name)
        setattr(module, public, fn)
        register_model(fn)
        added.append(public)
    return added
