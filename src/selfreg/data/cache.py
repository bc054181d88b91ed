"""On-disk uint8 tensor cache: decode a dataset once, reload it in a second.

A cache file is keyed by a hash of the source files' bytes plus the options that
shape the decoded tensors, so editing, adding or removing a source file rebuilds
it. Files are written to a temporary name and renamed, so a crash never leaves a
half-written cache that a later run would trust.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

# Bump when the layout of what builders store changes, to orphan old cache files.
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """$SELFREG_CACHE_DIR, else $XDG_CACHE_HOME/selfreg, else ~/.cache/selfreg."""
    if os.environ.get("SELFREG_CACHE_DIR"):
        return Path(os.environ["SELFREG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfreg"


def cache_dir(cfg) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def _name(path: str | Path, root: str | Path | None) -> str:
    """Path relative to root (plain string ops: pathlib costs ~10 us a file, 0.5 s per 50k).

    Hashed as os.fsencode(name): the file system's own bytes, so a name that is not valid UTF-8
    (Python holds its bytes as surrogates) hashes like any other, and UTF-8 names as before.
    """
    path = str(path)
    if root is None:
        return os.path.basename(path)
    prefix = str(root).rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else path


def hash_files(paths: Iterable[str | Path], *extra: object, root: str | Path | None = None) -> str:
    """blake2b over the options in `extra`, then each file's relative path and bytes; ~1 GB/s."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((CACHE_VERSION, extra)).encode())
    for path in paths:
        h.update(os.fsencode(_name(path, root)) + b"\0")
        state = _not_a_file(path)
        if state:   # a broken link or a FIFO (open() would wait forever): keyed by what it is
            h.update(state)
        else:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        h.update(b"\1")
    return h.hexdigest()


def _not_a_file(path: str | Path) -> bytes:
    """b"" for a regular file (links followed); else a marker of what is there instead. The
    decoder then reports such a path as a bad image; the hash only needs to be stable."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"\2{type(exc).__name__}".encode()
    return b"" if stat.S_ISREG(st.st_mode) else f"\3{stat.S_IFMT(st.st_mode)}".encode()


def hash_listing(paths: Iterable[str | Path], *extra: object, root: str | Path | None = None) -> str:
    """blake2b over relative path, size and mtime: a cheap key for indexes of huge trees."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((CACHE_VERSION, extra)).encode())
    for path in paths:
        try:
            st = os.stat(path)
            state = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError as exc:          # a broken link: the scan reports it as a bad file
            state = type(exc).__name__
        h.update(os.fsencode(_name(path, root)) + f"\0{state}\1".encode())
    return h.hexdigest()


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)            # mkstemp makes 0600; a cache folder may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_build(path: Path, build: Callable[[], dict], log: Callable[[str], None]) -> tuple[dict, bool]:
    """The cached dict at `path`, or `build()` saved there. Returns (data, was_cached).

    An unreadable cache file (disk trouble, another torch version) is rebuilt, not trusted.
    """
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True), True
        except Exception as exc:  # noqa: BLE001 - any failure means "rebuild"
            log(f"cache {path} unreadable ({type(exc).__name__}); rebuilding it")
    data = build()
    try:
        atomic_save(data, path)
    except OSError as exc:
        # A read-only cache folder costs speed on the next run, not correctness.
        log(f"could not write cache {path} ({exc.strerror or exc}); set data.cache_dir to a writable folder")
    return data, False
