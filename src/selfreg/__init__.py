"""selfreg: image-classification research toolkit built around RegNet of Xu et al."""
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
