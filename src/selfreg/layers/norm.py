"""Normalisation layers by name, so a config can pick one and a model still receives a type."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UserError


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: independent of the batch, so results do not depend
    on how a batch is split across processes (used to check DDP against one process)."""
    groups = 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels)


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": group_norm,
}


def get_norm_layer(norm: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    if callable(norm):
        return norm
    try:
        return NORM_LAYERS[norm]
    except KeyError:
        raise UserError(f"unknown norm_layer {norm!r}; valid: {', '.join(NORM_LAYERS)}") from None
