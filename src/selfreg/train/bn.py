"""BatchNorm momentum as a run option, for any model (the Torch ResNet study's ablation)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


class BNMomentum:
    """Sets every BN layer's momentum: fixed, or "dynamic" = 1/(1+n), n = batches seen this epoch.

    With "dynamic", the running statistics at the end of an epoch are the plain average
    over that epoch's batches (n resets every epoch). torch's convention applies:
    running = (1 - m) * running + m * batch, so m = 1 keeps only the last batch.

    "dynamic" never changes a layer's Python `momentum` (torch.compile guards on it: a new
    float every step was a recompile every step, then eager after `recompile_limit`). Each
    layer runs at momentum 1 (its forward writes the batch's statistics), and forward hooks
    blend those with the statistics from before the forward by a 0-dim tensor that
    `before_step` refills: a graph input to a compiled model, not a constant in it.
    """

    def __init__(self, model: nn.Module, setting):
        self.layers = batchnorm_layers(model)
        self.dynamic = setting == "dynamic"
        self.keep: dict[torch.device, torch.Tensor] = {}     # 1 - m, one 0-dim tensor per device
        if self.dynamic:
            for layer in self.layers:
                _install(layer, self.keep)
        elif setting is not None:
            for layer in self.layers:
                layer.momentum = float(setting)

    def before_step(self, batch_in_epoch: int) -> None:
        if self.dynamic:
            for keep in self.keep.values():   # fill_: no new tensor, no host sync
                keep.fill_(1.0 - 1.0 / (1 + batch_in_epoch))


def _install(layer: _BatchNorm, keep: dict) -> None:
    if layer.running_mean is None:        # track_running_stats=False: nothing to average
        return
    device = layer.running_mean.device
    if device not in keep:
        keep[device] = torch.zeros((), device=device)
    layer.momentum = 1.0
    # Plain attributes, not buffers: not in state_dict, not averaged by EMA, not broadcast by DDP.
    layer.dynamic_keep = keep[device]
    layer.dynamic_mean_before = torch.empty_like(layer.running_mean)
    layer.dynamic_var_before = torch.empty_like(layer.running_var)
    layer.register_forward_pre_hook(_remember_running_stats)
    layer.register_forward_hook(_blend_running_stats)


def _remember_running_stats(layer: _BatchNorm, args) -> None:
    if layer.training:
        layer.dynamic_mean_before.copy_(layer.running_mean)
        layer.dynamic_var_before.copy_(layer.running_var)


def _blend_running_stats(layer: _BatchNorm, args, output) -> None:
    """running = m * batch + (1 - m) * before, with the layer's forward having written batch into running.

    Through `.data`: the batch-norm op saved the running tensors for its backward (at their
    version then); an in-place change of the tensors themselves would fail that backward's check."""
    if layer.training:
        layer.running_mean.data.lerp_(layer.dynamic_mean_before, layer.dynamic_keep)
        layer.running_var.data.lerp_(layer.dynamic_var_before, layer.dynamic_keep)
