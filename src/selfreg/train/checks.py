"""Check a run's config against the registries before anything is built or written.

`selfreg.config` checks keys, types and value ranges while it loads; the names a config
refers to (model, dataset, optimizer, schedule, warm-up, augmentations, loggers) are checked here,
against the registries themselves, because those live in the layers above the config.
`Run` calls `check_config` first thing and a sweep calls it on every grid point when it
expands, so a typo fails in one line before any data is read or any folder is made.
"""
from __future__ import annotations

from ..config import Config
from ..data.datasets import DATASETS
from ..data.transforms import AUGMENTATIONS
from ..errors import UserError
from ..factory import model_entry
from .loggers import LOGGERS
from .optim import OPTIMIZERS, SCHEDULES, WARMUPS

# data.augment names that are not presets: the dataset's own recipe.
AUGMENT_ALIASES = ("auto",)


def check_config(cfg: Config) -> None:
    """Raise a one-line `UserError` naming the first unknown name in `cfg`."""
    for key, check in (("model.name", lambda: model_entry(cfg.model.name)),
                       ("data.name", lambda: DATASETS.entry(cfg.data.name)),
                       ("optim.name", lambda: OPTIMIZERS.entry(cfg.optim.name)),
                       ("sched.name", lambda: SCHEDULES.entry(cfg.sched.name)),
                       ("sched.warmup", lambda: WARMUPS.entry(cfg.sched.warmup))):
        _named(key, check)
    for name in cfg.data.augment:
        if name not in AUGMENT_ALIASES:
            _named("data.augment", lambda: AUGMENTATIONS.entry(name))
    for name in cfg.train.loggers:   # the name, then what the logger needs (its package installed)
        _named("train.loggers", lambda: LOGGERS.get(name).check(cfg))


def _named(key: str, check) -> None:
    try:
        check()
    except UserError as exc:
        raise UserError(f"config key {key}: {exc}") from None
