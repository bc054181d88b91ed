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

from safetensors.torch import save_file

from ..weightfiles import WEIGHTS_FORMAT, WEIGHTS_KEY, portable_data
from .trained import Trained


def metadata(trained: Trained) -> dict:
    return {"format": WEIGHTS_FORMAT, "model_name": trained.name, "model_kwargs": trained.kwargs,
            "num_classes": trained.num_classes, "in_chans": trained.in_chans, "classes": trained.classes,
            "transform": trained.transform.to_dict(), "data": portable_data(trained.data), "provenance": trained.provenance,
            **({"imports": trained.imports} if trained.imports else {})}


def write_weights(trained: Trained, path: str | Path) -> tuple[Path, Path]:
    """The weights (contiguous CPU copies: safetensors stores no shared or strided tensors) + sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(trained)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trained.model.state_dict().items()}
    save_file(tensors, str(path), metadata={WEIGHTS_KEY: json.dumps(meta)})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path, sidecar
