"""selfreg's models as torch.hub and timm entry points: one function per registered model.

    torch.hub.load("path/to/selfreg", "rrnet20_gru", source="local", pretrained="cifar10-budget")
    timm.create_model("selfreg_rrnet20_gru", num_classes=10)                   # after `import selfreg`
    timm.create_model("selfreg_rrnet20_gru.cifar10-budget", pretrained=True)   # timm's arch.tag form
    timm.create_model("selfreg_rrnet20_gru", pretrained=True, num_classes=100) # backbone kept, new head
    timm.list_pretrained("selfreg_*")                                          # the shipped weights, by tag

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

timm also learns each model's pretrained cfgs (`default_cfgs`, as timm's own model files
declare them): one per shipped weights tag (and alias), the default weights' first, read from
the files' headers when registering; a model without default weights has its untrained cfg
first. So `timm.list_pretrained("selfreg_*")` lists the weights, `get_pretrained_cfg` answers,
and timm's scripts (validate.py: `resolve_model_input_args`, which passes the registry's cfg
back as a dict) build the model from the weights they name. The model's own `pretrained_cfg`
is always computed from the file it loads (selfreg.factory), so the registry's copy is a
listing and never changes what a model is fed.
"""
from __future__ import annotations

import keyword
import sys
from typing import Any, Callable

from torch import nn

from . import pretrained as shipped
from .errors import UserError
from .factory import create_model, list_models, native_cfg, with_cfg
from .pretrained import TIMM_PREFIX

# PretrainedCfg fields that say how images are prepared: the ones a timm overlay may change here.
DATA_KEYS = ("input_size", "test_input_size", "min_input_size", "interpolation", "crop_pct", "test_crop_pct",
             "crop_mode", "mean", "std")
# Where timm would fetch weights from: selfreg models load selfreg's files only.
SOURCE_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "state_dict")


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

    timm passes `pretrained` (a bool), `pretrained_cfg` (the tag of `arch.tag`, a whole cfg
    from its scripts, or None), `pretrained_cfg_overlay` and `cache_dir`; as in timm, the tag
    picks which weights `pretrained=True` loads, and without `pretrained=True` the model is
    untrained. Other keyword arguments (num_classes, in_chans, builder arguments) go to
    `selfreg.create_model`: `pretrained=True, num_classes=N` keeps the backbone, new head.
    """

    def build(pretrained: bool | str = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
              cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        tag, overlay = timm_request(TIMM_PREFIX + name, pretrained_cfg, pretrained_cfg_overlay)
        if pretrained is True and tag:
            pretrained = tag
        model = create_model(name, pretrained=pretrained, **kwargs)
        if overlay:
            with_cfg(model, {**model.pretrained_cfg, **overlay})
        return model

    return _named(build, TIMM_PREFIX + name, f"selfreg's {name!r} for timm.create_model (see selfreg.entrypoints).")


def timm_request(arch: str, cfg: Any, overlay: Any) -> tuple[str | bool | None, dict[str, Any]]:
    """The weights tag timm asks for (None: the default) and the data fields it changes.

    `cfg` is None, a tag, or a cfg (dict or PretrainedCfg) that timm's `resolve_model_input_args`
    took from the registry: its tag picks the weights (the registry's default tag means "the
    default", so a registry filled before $SELFREG_PRETRAINED_DIR changed still loads the
    default), and the data fields in which it differs from the registry's (an overlay merged in
    by the caller) apply, as `overlay`'s do. A weights source (url, Hugging Face hub, a file of
    its own) is a one-line error: selfreg models load selfreg's files.
    """
    from timm.models import get_pretrained_cfg

    if cfg is None or isinstance(cfg, str):
        return cfg or None, _overlay(dict(overlay or {}), "pretrained_cfg_overlay")
    if not isinstance(cfg, dict) and not hasattr(cfg, "to_dict"):
        raise UserError(f"pretrained_cfg for {arch} must be a weights tag or a cfg, not {type(cfg).__name__}")
    given = dict(cfg) if isinstance(cfg, dict) else cfg.to_dict()
    tag = given.get("tag") or None
    registered = _cfg_dict(get_pretrained_cfg(f"{arch}.{tag}" if tag else arch))
    default_tag = _cfg_dict(get_pretrained_cfg(arch)).get("tag")
    if given.get("file") and given.get("file") != registered.get("file"):
        raise UserError(f"selfreg models load selfreg's weights only, not the file {given['file']}; "
                        f"load a file with selfreg.create_model({arch[len(TIMM_PREFIX):]!r}, checkpoint=PATH)")
    changed = {k: given[k] for k in DATA_KEYS
               if registered and k in given and _same(given[k]) != _same(registered.get(k))}
    merged = {**changed, **_overlay(dict(overlay or {}), "pretrained_cfg_overlay")}
    _overlay({k: given.get(k) for k in SOURCE_KEYS}, "pretrained_cfg")
    return (None if tag == default_tag else tag), merged


def _overlay(fields: dict[str, Any], what: str) -> dict[str, Any]:
    """`fields` when they are data fields (DATA_KEYS); a weights source or another field is one line."""
    source = [k for k in SOURCE_KEYS if fields.get(k)]
    if source:
        raise UserError(f"selfreg models load selfreg's weights only (pretrained=True or a tag, or "
                        f"selfreg.create_model(NAME, checkpoint=PATH)), not {what}[{source[0]!r}]")
    other = sorted(k for k, v in fields.items() if k not in DATA_KEYS and k not in SOURCE_KEYS)
    if other:
        raise UserError(f"{what} may change how images are prepared ({', '.join(DATA_KEYS)}), not {other[0]!r}")
    return {k: v for k, v in fields.items() if k in DATA_KEYS}


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if cfg is not None else {}


def _same(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


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
    and reads its pretrained cfgs from this module's `default_cfgs` (`timm_default_cfg`), so
    the functions are set as module attributes and their cfgs put there first.
    """
    from timm.models import is_model, model_entrypoint, register_model

    module = sys.modules[__name__]
    added = []
    weights = None
    for name in hub_names():
        public = TIMM_PREFIX + name
        if is_model(public) and model_entrypoint(public).__module__ == __name__:
            continue
        if weights is None:
            weights = _shipped_by_model()
        fn = timm_entrypoint(name)
        setattr(module, public, fn)
        default_cfgs[public] = timm_default_cfg(name, weights.get(name, []))
        register_model(fn)
        added.append(public)
    return added


default_cfgs: dict[str, Any] = {}      # timm's register_model reads a model's cfgs here


def _shipped_by_model() -> dict[str, list[shipped.Weights]]:
    """The manifest's entries by model; none when it cannot be read (loading one says why)."""
    try:
        entries = shipped.load_manifest()
    except UserError:
        return {}
    out: dict[str, list[shipped.Weights]] = {}
    for w in entries:
        out.setdefault(w.model, []).append(w)
    return out


def timm_default_cfg(name: str, weights: list[shipped.Weights]) -> Any:
    """timm's DefaultCfg of `name`: a PretrainedCfg per shipped tag and alias (the default weights'
    first, so timm's `arch` alone names them), else the untrained model's cfg first. A file whose
    header cannot be read is left out (loading it gives the one-line reason)."""
    from collections import deque

    from timm.models import DefaultCfg, PretrainedCfg

    cfgs: dict[str, Any] = {}
    for w in sorted(weights, key=lambda w: not w.default):
        try:
            cfg = PretrainedCfg(**w.pretrained_cfg())
        except (UserError, KeyError, TypeError, ValueError):   # a damaged header must not stop the import
            continue
        cfgs.update({tag: cfg for tag in w.names})
    if not any(w.default and w.tag in cfgs for w in weights):
        cfgs = {"": PretrainedCfg(**native_cfg(name)), **cfgs}
    return DefaultCfg(tags=deque(cfgs), cfgs=cfgs)
