"""Run a function once a module has finished importing, whoever imports it and whenever.

    when_imported("timm", lambda module: ...)     # now if timm is imported, else right after it is
    imported("timm")                              # imported and finished (not half-way through)

selfreg registers its models into timm's registry this way (see `selfreg/__init__.py` and
`selfreg.entrypoints`): `import selfreg` must stay fast, so it cannot import timm (and with
it torch) to register, yet `timm.create_model("selfreg_...")` must work once timm is
imported too. A post-import hook (as `wrapt.register_post_import_hook` does) is the
standard way: a finder at the front of `sys.meta_path` answers only for the watched names,
finds their spec through the finders after it, and wraps the loader so that the hooks run
after the module's code has run. Everything else imports untouched; once no hook is
waiting, the finder leaves `sys.meta_path`. The module keeps its real loader
(`__loader__`, `__spec__.loader`), so resources and reloads behave as before.

A hook that raises does not break the import that triggered it: the error becomes a
warning naming the hook. It imports only `sys` (not even `typing`, 20 ms) and nothing of
selfreg's: `import selfreg` imports it (a fraction of a millisecond).
"""

import sys

_waiting: dict[str, list] = {}         # module name -> hooks to run once it is imported
_running: set[str] = set()             # watched modules whose code is executing now
_searching: set[str] = set()           # names the finder is looking up (no recursion)


def imported(name: str) -> bool:
    """`name` is in sys.modules and its code has finished running (as far as this module saw)."""
    return name in sys.modules and name not in _running


def when_imported(name: str, hook) -> None:
    """Call `hook(module)` now if `name` is imported, else right after its import finishes."""
    if imported(name):
        _call(name, hook, sys.modules[name])
        return
    _waiting.setdefault(name, []).append(hook)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _call(name: str, hook, module) -> None:
    try:
        hook(module)
    except Exception as exc:  # an import elsewhere must not fail because of our hook
        import warnings

        warnings.warn(f"selfreg: the hook run after importing {name} failed: {type(exc).__name__}: {exc}",
                      RuntimeWarning, stacklevel=2)


def _finished(name: str, module) -> None:
    hooks = _waiting.pop(name, [])
    if not _waiting and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for hook in hooks:
        _call(name, hook, module)


class _Finder:
    """Answers for watched names only: the spec the other finders give, its loader wrapped."""

    def find_spec(self, name: str, path=None, target=None):
        if name not in _waiting or name in _searching:
            return None
        _searching.add(name)
        try:
            spec = next((s for s in (_ask(f, name, path, target) for f in list(sys.meta_path) if f is not self)
                         if s is not None), None)
        finally:
            _searching.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _ask(finder, name: str, path, target):
    find = getattr(finder, "find_spec", None)
    return find(name, path, target) if find is not None else None


class _Loader:
    """The real loader, with the hooks run after `exec_module`."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        name = module.__name__
        module.__loader__ = self.inner             # the module sees its real loader from here on
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        _running.add(name)
        try:
            self.inner.exec_module(module)
        finally:
            _running.discard(name)
        _finished(name, sys.modules.get(name, module))

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)


_FINDER = _Finder()
