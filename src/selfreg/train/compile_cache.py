"""Where torch.compile keeps what it compiled, so a second run of the same model skips most of it.

    configure()        # before the first torch.compile; returns the cache folder

PyTorch's inductor caches compiled kernels and graphs on disk (its FX graph cache and
AOTAutograd cache, both on by default in torch >= 2.5 and switched on here where a
version leaves them off): a second process compiling the same model for the same shapes
loads them instead of compiling again. Their folder is $TORCHINDUCTOR_CACHE_DIR; left
unset, torch puts it in /tmp/torchinductor_$USER, which a reboot or a /tmp cleaner
empties. `configure` keeps an existing $TORCHINDUCTOR_CACHE_DIR and otherwise points it
at $SELFREG_CACHE_DIR/inductor (default ~/.cache/selfreg/inductor, beside the data
caches), so the saving survives.

Disk cost: what benchmarks/compile_cache.py prints per model (tens of MB for a CIFAR
ResNet on the CPU; see docs/performance.md). Deleting the folder is always safe: the next
compile is cold again.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"


def default_dir() -> Path:
    """$SELFREG_CACHE_DIR/inductor, else $XDG_CACHE_HOME/selfreg/inductor, else ~/.cache/selfreg/inductor."""
    from ..data.cache import default_cache_dir

    return default_cache_dir() / "inductor"


def cache_dir() -> Path:
    """The folder compiles use: $TORCHINDUCTOR_CACHE_DIR when set to other than torch's default, else `default_dir()`.

    Importing some of torch's modules (through timm, say) writes torch's default,
    /tmp/torchinductor_$USER, into the variable; that value is read as "not chosen".
    """
    value, torch_default = os.environ.get(ENV), _torch_default()
    if not value or (torch_default and os.path.abspath(value) == os.path.abspath(torch_default)):
        return default_dir()
    return Path(value)


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except ImportError:  # another torch layout: no default to recognise
        return None


def configure() -> Path:
    """Point inductor's on-disk caches at `cache_dir()` and make sure they are on; return the folder."""
    path = cache_dir().expanduser()
    os.environ[ENV] = str(path)            # inductor reads it at each cache access
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except (ImportError, AttributeError):  # an older torch without the option: nothing to switch
        pass
    try:
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True
    except ImportError:
        pass
    return path


def size_bytes(path: str | Path) -> int:
    """Bytes of all files under `path` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total
