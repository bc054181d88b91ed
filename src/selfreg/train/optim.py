"""Optimizers and learning-rate schedules, in tables keyed by name.

Schedules are stepped once per optimisation step (not per epoch), so warm-up and
mid-epoch changes need no special case: epoch-based milestones are converted to
steps with `steps_per_epoch`.
"""
from __future__ import annotations

import bisect
from typing import Callable

import torch
from torch import nn

from ..registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(model.parameters(), cfg)


@SCHEDULES.register("multistep")
def _multistep(cfg, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """lr x gamma^k after the k-th milestone (milestones in epochs)."""
    bounds = sorted(m * steps_per_epoch for m in cfg.milestones)
    return lambda step: cfg.gamma ** bisect.bisect_right(bounds, step)


@SCHEDULES.register("constant")
def _constant(cfg, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    return lambda step: 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    factor = SCHEDULES.get(cfg.name)(cfg, steps_per_epoch, epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
