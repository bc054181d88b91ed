"""selfreg: image-classification research toolkit built around RegNet of Xu et al."""
import sys

from . import import_hooks as _import_hooks
from .version import __version__

# name -> (module, attribute), imported when first used: the model API loads torch, timm and
# every model family, so that `import selfreg`, `selfreg --version`, `--help` and a config
# error answer without that cost.
_LAZY = {
    # models (selfreg.factory)
    "create_model": ("factory", "create_model"),
    "list_models": ("factory", "list_models"),
    # train, evaluate and predict as the command line does (selfreg.api, docs/api.md)
    "load_config": ("api", "load_config"),
    "fit": ("api", "fit"),
    "evaluate": ("api", "evaluate"),
    "predict": ("api", "predict"),
    "load_trained": ("api", "load_trained"),
    "RunResult": ("api", "RunResult"),
    "UserError": ("errors", "UserError"),
    # your own names, registered by a module a recipe's `imports:` names (selfreg.plugins)
    "register_model": ("registry", "register_model"),
    "register_dataset": ("data.datasets", "DATASETS.register"),
    "register_augmentation": ("data.transforms", "AUGMENTATIONS.register"),
    "register_optimizer": ("train.optim", "OPTIMIZERS.register"),
    "register_schedule": ("train.optim", "SCHEDULES.register"),
    "register_logger": ("train.loggers", "register_logger"),
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'selfreg' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    if name in ("create_model", "list_models"):     # installed plugins' models too (once a process)
        from .plugins import load_installed
        load_installed()
    __import__(f"{__name__}.{module}")           # the builtin: importing importlib would slow `import selfreg`
    value = sys.modules[f"{__name__}.{module}"]
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
