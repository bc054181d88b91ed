"""Weights for sharing: a `.safetensors` file whose header says how to build and feed the model.

    write_weights(trained, "resnet20.safetensors")     # + resnet20.json, the same metadata, readable
    model = selfreg.create_model("resnet20", checkpoint="resnet20.safetensors")

The header's metadata holds one key, "selfreg", a JSON object: format, model name, builder
arguments, num_classes, in_chans, classes, eval transform, the run's data config and its
provenance (commit, dirty, data fingerprint, versions: selfreg.provenance). The
JSON sidecar is a copy for people and tools; loading reads the header only. safetensors
holds tensors and strings, nothing executable.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.eval_transform import EvalTransform
from ..errors import UserError

if TYPE_CHECKING:
    from .trained import Loaded, Trained

FORMAT = "selfreg-weights/1"
KEY = "selfreg"


def metadata(trained: "Trained") -> dict:
    return {"format": FORMAT, "model_name": trained.name, "model_kwargs": trained.kwargs,
            "num_classes": trained.num_classes, "in_chans": trained.in_chans, "classes": trained.classes,
            "transform": trained.transform.to_dict(), "data": trained.data, "provenance": trained.provenance}


def write_weights(trained: "Trained", path: str | Path) -> tuple[Path, Path]:
    """The weights (contiguous CPU copies: safetensors stores no shared or strided tensors) + sidecar."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(trained)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trained.model.state_dict().items()}
    save_file(tensors, str(path), metadata={KEY: json.dumps(meta)})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path, sidecar


def read_weights(path: Path) -> "Loaded":
    from safetensors import SafetensorError
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .trained import Loaded

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    if KEY not in header:
        raise UserError(f"{path} has no selfreg metadata (model name, classes, transform); "
                        "write it with `selfreg export --format safetensors`")
    try:
        meta = json.loads(header[KEY])
        transform = EvalTransform.from_dict(meta["transform"])
        return Loaded(meta["model_name"], dict(meta.get("model_kwargs") or {}), list(meta["classes"]), transform,
                      weights, dict(meta.get("data") or {}), dict(meta.get("provenance") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: damaged selfreg metadata ({type(exc).__name__}: {exc})") from None
