"""selfreg: image-classification research toolkit built around RegNet of Xu et al."""
import sys

from . import import_hooks as _import_hooks
from .version import __version__

__all__ = ["create_model", "list_models", "register_model", "__version__"]


def __getattr__(name: str):
    # The model API loads torch, timm and every model family: only when it is first used,
    # so that `selfreg --version`, `--help` and a config error answer without that cost.
    if name in ("create_model", "list_models"):
        from . import factory
        return getattr(factory, name)
    if name == "register_model":
        from .registry import register_model
        return register_model
    raise AttributeError(f"module 'selfreg' has no attribute {name!r}")


# selfreg's models in timm's registry (`timm.create_model("selfreg_rrnet20_gru")`), without
# `import selfreg` importing timm or torch: registration runs as soon as both timm and the
# model factory are imported, in either order (selfreg.entrypoints says why). When timm
# comes first, the factory is imported with it (a tenth of a second once torch is loaded).
def _register_timm(_module=None) -> None:
    if _import_hooks.imported("timm") and _import_hooks.imported("selfreg.factory"):
        from .entrypoints import register_timm
        register_timm()


def _timm_imported(_module) -> None:
    if "selfreg.factory" not in sys.modules:      # else imported, or half-way: its own hook registers
        __import__(f"{__name__}.factory")         # (the builtin: importing importlib would slow `import selfreg`)
    _register_timm()


_import_hooks.when_imported("selfreg.factory", _register_timm)
_import_hooks.when_imported("timm", _timm_imported)
