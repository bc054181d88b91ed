"""Optimizers and learning-rate schedules, in tables keyed by name.

Every schedule is a factor of the base lr as a function of the optimisation
step, applied through one `LambdaLR` stepped once per iteration: epoch-based
settings (milestones, warm-up epochs, cycle lengths) are converted to steps
with `steps_per_epoch`, so warm-up and mid-epoch changes need no special case.
A warm-up, when set, multiplies the first `warmup` steps' factor.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
WARMUPS = Registry("warm-up")

Factor = Callable[[int], float]


# --------------------------------------------------------------------------- optimizers
OPTIMIZERS.add("sgd", lambda params, c: torch.optim.SGD(
    params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov))
OPTIMIZERS.add("adam", lambda params, c: torch.optim.Adam(
    params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.add("adamw", lambda params, c: torch.optim.AdamW(
    params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.add("rmsprop", lambda params, c: torch.optim.RMSprop(
    params, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum, weight_decay=c.weight_decay))
OPTIMIZERS.add("adagrad", lambda params, c: torch.optim.Adagrad(
    params, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.add("adadelta", lambda params, c: torch.optim.Adadelta(
    params, lr=c.lr, rho=c.rho, eps=c.eps, weight_decay=c.weight_decay))


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) around any base optimizer.

    A SAM step needs two forward/backward passes: `first_step` moves the weights to
    w + e(w), e = rho * g / ||g|| (scaled by |w| when `adaptive`, ASAM), and
    `second_step` restores w and applies the base optimizer with the gradient
    taken at the perturbed point. The engine drives both through `step(closure)`.
    """

    def __init__(self, params, base_factory: Callable[[Iterable], torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False):
        if rho <= 0:
            raise UserError(f"optim.sam_rho must be positive, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive))
        self.base_optimizer = base_factory(self.param_groups)
        # Share param groups so lr changes from the scheduler reach the base optimizer.
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            group.setdefault("rho", rho)
            group.setdefault("adaptive", adaptive)
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self) -> None:
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base_optimizer.step()

    def step(self, closure=None):
        """`closure` re-computes the loss and gradients at the perturbed weights."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that recomputes loss and gradients")
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()

    def _grad_norm(self) -> torch.Tensor:
        norms = [((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), p=2)

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """One group, or two with weight decay kept off norm weights and biases (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_bias or weight_decay == 0:
        return [{"params": params}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    factory = OPTIMIZERS.get(cfg.name)
    groups = parameter_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if cfg.sam:
        return SAM(groups, lambda g: factory(g, cfg), rho=cfg.sam_rho, adaptive=cfg.sam_adaptive)
    return factory(groups, cfg)


# --------------------------------------------------------------------------- schedules
@SCHEDULES.register("constant")
def _constant(c, spe: int, total: int, lr: float) -> Factor:
    return lambda step: 1.0


@SCHEDULES.register("multistep")
def _multistep(c, spe: int, total: int, lr: float) -> Factor:
    """lr x gamma^k after the k-th milestone (milestones in epochs): the ResNet papers'."""
    bounds = sorted(round(m * spe) for m in c.milestones)
    return lambda step: c.gamma ** bisect.bisect_right(bounds, step)


@SCHEDULES.register("step")
def _step(c, spe: int, total: int, lr: float) -> Factor:
    """lr x gamma every `step_size` epochs."""
    every = max(1, round(c.step_size * spe))
    return lambda step: c.gamma ** (step // every)


@SCHEDULES.register("cosine")
def _cosine(c, spe: int, total: int, lr: float) -> Factor:
    """Cosine from lr to min_lr over the steps after warm-up."""
    start = _warmup_steps(c, spe)
    span = max(1, total - start)
    floor = c.min_lr / lr if lr else 0.0

    def factor(step: int) -> float:
        t = min(1.0, max(0, step - start) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


@SCHEDULES.register("cyclic")
def _cyclic(c, spe: int, total: int, lr: float) -> Factor:
    """Triangular cyclic lr (Smith, 2017) between lr and max_lr; half-cycle of cycle_epochs/2."""
    if c.max_lr <= lr:
        raise UserError(f"sched.max_lr ({c.max_lr}) must exceed optim.lr ({lr}) for the cyclic schedule")
    half = max(1, round(c.cycle_epochs * spe / 2))
    top = c.max_lr / lr

    def factor(step: int) -> float:
        pos = (step % (2 * half)) / half         # 0..2 within a cycle
        return 1 + (top - 1) * (1 - abs(pos - 1))
    return factor


@SCHEDULES.register("onecycle")
def _onecycle(c, spe: int, total: int, lr: float) -> Factor:
    """One-cycle (Smith & Topin): cosine up from lr/div to lr over pct_start, then down to lr/(div*final_div)."""
    up = max(1, round(c.pct_start * total))
    down = max(1, total - up)
    lo, end = 1 / c.div_factor, 1 / (c.div_factor * c.final_div_factor)

    def factor(step: int) -> float:
        if step < up:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * step / up))
        t = min(1.0, (step - up) / down)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


@SCHEDULES.register("linear")
def _linear(c, spe: int, total: int, lr: float) -> Factor:
    """Linear decay from lr to min_lr over the steps after warm-up (SqueezeNet, ShuffleNet)."""
    return _polynomial(c, spe, total, lr, power=1.0)


@SCHEDULES.register("poly")
def _poly(c, spe: int, total: int, lr: float) -> Factor:
    """lr x (1 - t)^power to min_lr (Darknet's and DeepLab's "poly" policy)."""
    return _polynomial(c, spe, total, lr, power=c.power)


def _polynomial(c, spe: int, total: int, lr: float, power: float) -> Factor:
    start = _warmup_steps(c, spe)
    span = max(1, total - start)
    floor = c.min_lr / lr if lr else 0.0
    return lambda step: floor + (1 - floor) * (1 - min(1.0, max(0, step - start) / span)) ** power


# --------------------------------------------------------------------------- warm-ups
WARMUPS.add("none", lambda t, start: 1.0)
WARMUPS.add("linear", lambda t, start: start + (1 - start) * t)
WARMUPS.add("cosine", lambda t, start: start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t)))
# He et al.'s ResNet-110 recipe: hold lr x warmup_factor (0.01 / 0.1), then jump to lr.
WARMUPS.add("constant", lambda t, start: start)


def _warmup_steps(c, spe: int) -> int:
    if c.warmup == "none":
        return 0
    return c.warmup_steps if c.warmup_steps > 0 else round(c.warmup_epochs * spe)


def schedule_factor(cfg, steps_per_epoch: int, epochs: int, lr: float) -> Factor:
    """The lr factor at each step: warm-up (if any) times the main schedule."""
    total = steps_per_epoch * epochs
    main = SCHEDULES.get(cfg.name)(cfg, steps_per_epoch, total, lr)
    warm = WARMUPS.get(cfg.warmup)
    n = _warmup_steps(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        if step < n:
            return main(step) * warm(step / n, cfg.warmup_factor)
        return main(step)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                    epochs: int, lr: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    lr = optimizer.param_groups[0]["lr"] if lr is None else lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, steps_per_epoch, epochs, lr))
