"""Parameters and forward multiply-adds (MACs), counted with torch.utils.flop_counter."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers.convrnn import use_reference_cells


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass on a single (1, C, H, W) image.

    FlopCounterMode counts a multiply-add as 2 FLOPs (convolutions, matmuls); we
    report half of its total, labelled MACs, as papers' "FLOPs" columns usually mean.
    The image is made on the model's device, so a model built on the meta device is
    counted without memory or compute. RegNet cells are counted in their reference
    formulation (the light form's grouped 1x1 is a convolution there, an element-wise
    multiply-add in the fast path that FlopCounterMode would not see).
    """
    was_training = model.training
    model.eval()
    use_reference_cells(model)
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, in_chans, input_size, input_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        use_reference_cells(model, False)
    return counter.get_total_flops() // 2


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
