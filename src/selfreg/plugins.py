"""Your own models, datasets, augmentations, optimizers and schedules, imported before names are checked.

A plugin is an ordinary Python module that registers things with selfreg's decorators
(`selfreg.register_model`, `register_dataset`, `register_augmentation`, `register_optimizer`,
`register_schedule`, `register_logger`) when it is imported. Three ways to have it imported:

- a recipe's top-level `imports: [mypkg.models, mypkg.data]`: recorded in the run's config.yaml
  (and in its checkpoints), so `selfreg train --resume`, a sweep's runs, `selfreg eval` and
  `selfreg predict` import them again without being told;
- `--import MODULE` on the command line (repeatable): `train` and `sweep` add it to the
  run's `imports`, the other commands just import it;
- an installed package's entry point in the group `selfreg.plugins`, imported by every
  command (a `module` or a `module:function`, which is then called with no arguments):

      [project.entry-points."selfreg.plugins"]
      mypkg = "mypkg.selfreg_plugin"

Modules are found on sys.path (PYTHONPATH, installed packages) and then in the working
directory. A module named in a recipe or a flag that cannot be found is a one-line
`UserError` naming it and where it was named; an installed plugin that fails to load is a
warning (nobody named it for this run), and the run goes on without its names.
This module imports nothing of selfreg's but `errors`: it sits at the bottom of the layers.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from types import ModuleType
from typing import Iterable

from .errors import UserError

GROUP = "selfreg.plugins"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_installed: list[str] | None = None     # the entry points loaded, once per process


def check_module_name(name: object, origin: str) -> str:
    """`name` if it is a dotted module name (mypkg.models), else a one-line `UserError`."""
    if isinstance(name, str) and _MODULE_NAME.fullmatch(name.strip()):
        return name.strip()
    hint = ""
    if isinstance(name, str) and (name.endswith(".py") or "/" in name or "\\" in name):
        dotted = re.sub(r"\.py$", "", name).replace("\\", "/").strip("/").replace("/", ".")
        hint = f"; name a module, not a file: {dotted!r} with its top folder on PYTHONPATH (or the working directory)"
    raise UserError(f"{origin}: {name!r} is not a Python module name such as mypkg.models{hint}")


def import_modules(names: Iterable[str], origin: str) -> list[ModuleType]:
    """Import each module of `names` (already imported ones are not run again); `origin` says
    where they were named (config key imports, --import) in the error of one that is missing."""
    return [import_module(name, origin) for name in names]


def import_module(name: str, origin: str) -> ModuleType:
    name = check_module_name(name, origin)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if _is_part_of(exc.name, name) and _add_working_directory():
            try:
                return importlib.import_module(name)
            except ModuleNotFoundError as again:
                exc = again
        raise UserError(_missing(name, origin, exc)) from None


def _is_part_of(missing: str | None, name: str) -> bool:
    """Whether the module not found is `name` itself or a package above it (not one it imports)."""
    return missing is not None and (name == missing or name.startswith(missing + "."))


def _add_working_directory() -> bool:
    """Put the working directory at the end of sys.path (as `python -m` puts it at the front);
    False when it is there already, so a second try would find nothing new."""
    cwd = os.getcwd()
    if any(os.path.abspath(p or ".") == cwd for p in sys.path):
        return False
    sys.path.append(cwd)
    importlib.invalidate_caches()
    return True


def _missing(name: str, origin: str, exc: ModuleNotFoundError) -> str:
    if _is_part_of(exc.name, name):
        return (f"cannot import {name} ({origin}): no module named {exc.name!r} on sys.path or in the working "
                f"directory; install it or add the folder holding it to PYTHONPATH")
    return (f"cannot import {name} ({origin}): it imports {exc.name!r}, which is not installed "
            f"({exc}); install that first")


def load_installed() -> list[str]:
    """Import every installed plugin (entry point group `selfreg.plugins`), once per process;
    the names of the entry points loaded. A plugin that fails to load is a warning on stderr."""
    global _installed
    if _installed is not None:
        return list(_installed)
    _installed = []                       # set first: a plugin that calls back into selfreg loads nothing twice
    from importlib.metadata import entry_points

    seen = set()
    for ep in entry_points(group=GROUP):
        if ep.value in seen:               # one distribution found twice on sys.path
            continue
        seen.add(ep.value)
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        try:
            module, _, attr = ep.value.partition(":")
            importlib.import_module(module.strip())
            if attr.strip():
                obj = ep.load()
                if callable(obj):
                    obj()
        except Exception as exc:          # noqa: BLE001  (a broken plugin must not stop every command)
            text = str(exc).splitlines()[0][:160] if str(exc) else ""
            print(f"selfreg: warning: the installed plugin {ep.name} = {ep.value} (package {dist}, entry point "
                  f"group {GROUP}) failed to load ({type(exc).__name__}: {text}); its names are not "
                  f"available (fix or uninstall {dist})", file=sys.stderr)
            continue
        _installed.append(ep.name)
    return list(_installed)


def load(names: Iterable[str] = (), origin: str = "--import") -> list[ModuleType]:
    """Installed plugins (once), then the modules of `names`: everything that registers names."""
    load_installed()
    return import_modules(names, origin)


def reset_installed() -> None:
    """Forget which installed plugins were loaded, so `load_installed` looks again (tests, or after
    `pip install` in a running notebook); modules already imported stay imported."""
    global _installed
    _installed = None
