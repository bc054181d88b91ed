"""Mixed precision: the autocast context a training step runs under (train.amp)."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..errors import UserError


def make_autocast(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for `amp` (none | bf16 | fp16) on `device`."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
