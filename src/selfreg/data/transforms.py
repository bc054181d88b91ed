"""Training augmentation presets applied to batches of normalised image tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """CIFAR-style augmentation on a batch (B, C, H, W): zero-pad `pad`, random crop back, flip.

    Per-image offsets and flips come from `generator`, so a seeded run sees the same
    augmentations every time.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])                  # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None])                  # (B, W)
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        flips = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out.contiguous()


AUGMENTATIONS = {
    "none": lambda x, g: x,
    "cifar": lambda x, g: random_crop_flip(x, g, pad=4, flip=True),
    # Shifts without flips, for data whose meaning changes under a mirror (digits).
    "shift": lambda x, g: random_crop_flip(x, g, pad=2, flip=False),
}


def get_augmentation(name: str):
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UserError(f"unknown data.augment {name!r}; valid: {', '.join(AUGMENTATIONS)}") from None
