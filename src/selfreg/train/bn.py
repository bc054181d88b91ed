"""BatchNorm momentum as a run option, for any model (the Torch ResNet study's ablation)."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


class BNMomentum:
    """Sets every BN layer's momentum: fixed, or "dynamic" = 1/(1+n), n = batches seen this epoch.

    With "dynamic", the running statistics at the end of an epoch are the plain average
    over that epoch's batches (n resets every epoch). torch's convention applies:
    running = (1 - m) * running + m * batch, so m = 1 keeps only the last batch.
    """

    def __init__(self, model: nn.Module, setting):
        self.layers = batchnorm_layers(model)
        self.dynamic = setting == "dynamic"
        if setting is not None and not self.dynamic:
            self._set(float(setting))

    def before_step(self, batch_in_epoch: int) -> None:
        if self.dynamic:
            self._set(1.0 / (1 + batch_in_epoch))

    def _set(self, momentum: float) -> None:
        for layer in self.layers:
            layer.momentum = momentum
