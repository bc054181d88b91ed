"""Checkpoints: atomic save, exact-resume state, weights-only load with one-line errors."""
from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A kill mid-write leaves the previous checkpoint intact (and a temp file that the next
    save or resume removes); a full disk is a one-line `UserError`, the previous file kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    remove_stale_temp_files(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a checkpoint follows the umask like every other run file.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise UserError(f"no space left on {path.parent} while writing {path.name}{kept}; "
                            "free some space and resume the run") from None
        raise


def remove_stale_temp_files(folder: str | Path, name: str = "") -> None:
    """Delete `NAME.*.tmp` files that a killed save left in `folder` (one writer per run folder)."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f"{name or '*'}.*.tmp"):
            stale.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | Path) -> None:
    """Fail in one line, before any data is loaded, when `folder` cannot be created or written.

    Tries a temporary file in `folder` or, when it does not exist yet, in its nearest
    existing parent (nothing is left behind either way).
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write run files under {folder}: {probe} is a file, not a folder; "
                        "choose another train.out_dir")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = "no space left" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__).lower()
        raise UserError(f"cannot write run files under {folder} ({reason} on {probe}); "
                        "choose another train.out_dir or fix its permissions") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`; a missing, truncated or foreign file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # any failure to unpickle means the file is damaged or foreign
        raise UserError(f"{path} is not a readable selfreg checkpoint (damaged, truncated, or written by "
                        "another program); use the run's other checkpoint or train again") from None
    if not isinstance(state, dict) or "model" not in state or "format_version" not in state:
        raise UserError(f"{path} is not a selfreg checkpoint (no model state or format version); "
                        "pass a file that selfreg train wrote")
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load weights, or say in one line whether the architecture or the class count differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} holds a different architecture: {len(missing)} missing and "
                        f"{len(unexpected)} unexpected tensors (e.g. {(missing or unexpected)[0]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            # The classifier's tensors come last in a state dict: a mismatch there is the class count.
            kind = "class count" if k in list(own)[-2:] else "architecture"
            raise UserError(f"{source} does not match this model ({kind}): {k} is "
                            f"{tuple(v.shape)} there, {tuple(own[k].shape)} here")
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, to resume a run exactly."""
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_from(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# weights_only loading accepts tensors, lists, dicts and primitives, so the numpy and
# python generator states are stored as those.
def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_from(s: dict):
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])


def _python_state(s) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
