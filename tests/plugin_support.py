"""For test_plugins.py and test_api.py: plugin modules written into a folder, and a test's
registrations undone afterwards (the registries are global to the process: a name a test
registered must not show in the tests that run after it in the same worker)."""
from __future__ import annotations

import contextlib
import importlib
import sys
import textwrap
from pathlib import Path


def registries() -> list:
    import selfreg.factory  # noqa: F401  (every built-in model registered)
    from selfreg.data.datasets import DATASETS
    from selfreg.data.transforms import AUGMENTATIONS
    from selfreg.registry import MODELS
    from selfreg.train.loggers import LOGGERS
    from selfreg.train.optim import OPTIMIZERS, SCHEDULES, WARMUPS

    return [MODELS, DATASETS, AUGMENTATIONS, OPTIMIZERS, SCHEDULES, WARMUPS, LOGGERS]


class Isolation:
    """What registrations, imported modules (of `prefixes`) and sys.path held at the start."""

    def __init__(self, prefixes: tuple[str, ...]):
        from selfreg import plugins

        self.prefixes = prefixes
        self.path = list(sys.path)
        self.installed = plugins._installed

    def ours(self, module: str | None) -> bool:
        return any(module == p or (module or "").startswith(p + ".") for p in self.prefixes)

    def forget(self) -> None:
        """As a fresh process: the names the plugins registered gone (their builders are defined
        in the plugins' modules), their modules not imported (sys.path and the installed-plugin
        state are left as the test set them)."""
        for reg in registries():
            for name, entry in list(reg._entries.items()):
                if self.ours(getattr(entry.fn, "__module__", None)):
                    del reg._entries[name]
        for name in list(sys.modules):
            if self.ours(name):
                del sys.modules[name]
        importlib.invalidate_caches()

    def restore(self) -> None:
        from selfreg import plugins

        self.forget()
        sys.path[:] = self.path
        plugins._installed = self.installed


@contextlib.contextmanager
def isolated(*prefixes: str):
    state = Isolation(prefixes)
    try:
        yield state
    finally:
        state.restore()


def write(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: text (dedented)} under root; returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root
