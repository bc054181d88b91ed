"""A run's checkpoints: where they go, exact-resume state (every RNG), and the file I/O.

Writing and reading the files (atomic save, weights-only load, one-line errors) lives in
`selfreg.weightfiles`, below the model factory; it is re-exported here, the run's API.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weightfiles import (FORMAT_VERSION, current_umask, link_checkpoint, load_checkpoint,  # noqa: F401
                           load_model_state, remove_stale_temp_files, save_checkpoint)


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, to resume a run exactly."""
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved. Generator states are CPU byte tensors wherever the checkpoint
    was loaded; CUDA states are restored for the GPUs visible now (a run saved with 8 GPUs may
    resume with fewer: each rank draws on its own device)."""
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_from(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


# weights_only loading accepts tensors, lists, dicts and primitives, so the numpy and
# python generator states are stored as those.
def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_from(s: dict):
    return (s["name"], s["keys"].cpu().numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])


def _python_state(s) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
