"""The files that hold weights: run checkpoints (`.pt`) and shared weights (`.safetensors`).

Reading and writing them sits below the model factory, so that
`create_model(name, checkpoint=PATH)` builds from a file without climbing back up into
`selfreg.use` or `selfreg.train`:

    state = load_checkpoint("runs/x/checkpoints/last.pt")      # weights_only=True, one-line errors
    loaded = read_model_file("resnet20.safetensors")          # Loaded: name, kwargs, classes, transform, weights
    write_weights(loaded, "copy.safetensors")                 # + copy.json, the same metadata, readable

Each format's writer sits beside its reader here: `checkpoint_state` builds the dict a run
checkpoint holds (the engine saves it with `save_checkpoint`) and `_from_checkpoint` reads
it; `weights_metadata` / `write_weights` write the safetensors header that `read_weights` reads.

A checkpoint is written atomically (temp file, fsync, rename) and loaded with
`torch.load(weights_only=True)`; a safetensors file holds tensors and a JSON header
(model name, builder arguments, classes, eval transform, data config, provenance).
Neither is ever unpickled beyond tensors and plain containers.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .data.eval_transform import EvalTransform
from .errors import UserError

FORMAT_VERSION = 1                 # of run checkpoints
WEIGHTS_FORMAT = "selfreg-weights/1"
WEIGHTS_KEY = "selfreg"            # the safetensors header key holding our JSON
# A weights file travels to other machines: the data config it carries keeps what the data
# *is* (dataset, size, split) and drops where it lay on the machine that wrote it, so that no
# user inherits a maintainer's path as a default (the writer drops them; the reader ignores
# them in files written before).
MACHINE_DATA_KEYS = ("root", "cache_dir")


def portable_data(data: dict[str, Any]) -> dict[str, Any]:
    """A data config without its machine's paths (MACHINE_DATA_KEYS)."""
    return {k: v for k, v in data.items() if k not in MACHINE_DATA_KEYS}


# ---------------------------------------------------------------------------------------
# Run checkpoints

def checkpoint_state(*, model: dict, optimizer: dict, scheduler: dict, scaler: dict | None, ema: dict | None,
                     epoch: int, step: int, progress: dict | None, best_acc: float, best_epoch: int,
                     rng: dict, config: dict, metrics_row: dict | None, classes: list[str], version: str,
                     provenance: dict, transform: dict) -> dict[str, Any]:
    """What a run checkpoint holds (`save_checkpoint` adds its format_version): the run's state for an
    exact resume, and what `_from_checkpoint` needs to build the model on its own (model name from
    `config`, classes, the eval `transform`, provenance)."""
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema,
            "epoch": epoch, "step": step, "progress": progress,
            "best_acc": best_acc, "best_epoch": best_epoch,
            "rng": rng, "config": config, "model_name": config["model"]["name"],
            "metrics_row": metrics_row,
            "classes": list(classes), "selfreg_version": version,
            "provenance": provenance,
            # What `selfreg predict` needs to turn any image into a model input.
            "transform": transform}


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
        raise_if_disk_full(exc, path)
        raise


def link_checkpoint(source: str | Path, path: str | Path) -> None:
    """Make `path` hold what `source` holds now, without writing it again: a hard link, put in
    place by rename (atomic, as save_checkpoint). best.pt is last.pt of its epoch: linking spares
    a second serialisation and fsync of the same state (hundreds of MB a save for ImageNet
    models). save_checkpoint replaces last.pt by rename, so the link keeps the old file; where the
    file system has no hard links, the file is copied.
    """
    source, path = Path(source), Path(path)
    remove_stale_temp_files(path.parent, path.name)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.link.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:                          # no hard links here (FAT, some network mounts)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, path)
        raise


def raise_if_disk_full(exc: BaseException, path: Path) -> None:
    """A full disk or quota while writing `path` (its temp file removed): one line, what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise UserError(f"no space left on {path.parent} while writing {path.name}{kept}; "
                        "free some space and resume the run") from None


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


# ---------------------------------------------------------------------------------------
# Any file a model can be built from

@dataclass
class Loaded:
    """What a file format yields before the model is built."""
    name: str
    kwargs: dict[str, Any]
    classes: list[str]
    transform: EvalTransform
    weights: dict[str, torch.Tensor]
    data: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)   # modules that register its names (selfreg.plugins)


def read_model_file(path: str | Path) -> Loaded:
    """What a run checkpoint or a safetensors file says about its model, and its weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return FORMATS.get(path.suffix, _from_checkpoint)(path)


def _from_checkpoint(path: Path) -> Loaded:
    state = load_checkpoint(path)
    missing = [k for k in ("model_name", "classes") if k not in state]
    if missing:
        raise UserError(f"{path} is a selfreg checkpoint without {', '.join(missing)}; it cannot be used "
                        "on its own (train it with `selfreg train`)")
    config = state.get("config") or {}
    transform = EvalTransform.from_checkpoint(state, str(path))
    kwargs = dict((config.get("model") or {}).get("kwargs") or {})
    return Loaded(state["model_name"], kwargs, list(state["classes"]), transform, state["model"],
                  dict(config.get("data") or {}), dict(state.get("provenance") or {}),
                  list(config.get("imports") or []))


# ---------------------------------------------------------------------------------------
# Shared weights: a `.safetensors` file whose header says how to build and feed the model.
# The header's metadata holds one key, "selfreg", a JSON object: format, model name, builder
# arguments, num_classes, in_chans, classes, eval transform, the run's data config and its
# provenance (commit, dirty, data fingerprint, versions: selfreg.provenance). The JSON sidecar
# is a copy for people and tools; loading reads the header only. safetensors holds tensors and
# strings, nothing executable.

def weights_metadata(model: Loaded) -> dict[str, Any]:
    """The header's JSON object for `model` (its weights aside)."""
    return {"format": WEIGHTS_FORMAT, "model_name": model.name, "model_kwargs": model.kwargs,
            "num_classes": len(model.classes), "in_chans": model.transform.channels, "classes": model.classes,
            "transform": model.transform.to_dict(), "data": portable_data(model.data), "provenance": model.provenance,
            **({"imports": model.imports} if model.imports else {})}


def write_weights(model: Loaded, path: str | Path) -> tuple[Path, Path]:
    """The weights (contiguous CPU copies: safetensors stores no shared or strided tensors) + sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = weights_metadata(model)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.weights.items()}
    save_file(tensors, str(path), metadata={WEIGHTS_KEY: json.dumps(meta)})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path, sidecar


def read_weights(path: Path) -> Loaded:
    """A `.safetensors` file written by `write_weights` (`selfreg export --format safetensors`)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    if WEIGHTS_KEY not in header:
        raise UserError(f"{path} has no selfreg metadata (model name, classes, transform); "
                        "write it with `selfreg export --format safetensors`")
    try:
        meta = json.loads(header[WEIGHTS_KEY])
        transform = EvalTransform.from_dict(meta["transform"])
        return Loaded(meta["model_name"], dict(meta.get("model_kwargs") or {}), list(meta["classes"]), transform,
                      weights, portable_data(dict(meta.get("data") or {})), dict(meta.get("provenance") or {}),
                      list(meta.get("imports") or []))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: damaged selfreg metadata ({type(exc).__name__}: {exc})") from None


FORMATS: dict[str, Callable[[Path], Loaded]] = {".safetensors": read_weights}
