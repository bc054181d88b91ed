import math

import pytest
import torch
from torch import nn

from selfreg.config import load_config
from selfreg.errors import UserError
from selfreg.train.optim import OPTIMIZERS, SAM, build_optimizer, build_scheduler, parameter_groups


def cfg(*overrides):
    return load_config(None, list(overrides))


def lrs(c, steps_per_epoch=10, epochs=10, lr=0.1):
    model = nn.Linear(2, 2)
    c.optim.lr = lr
    opt = build_optimizer(model, c.optim)
    sched = build_scheduler(opt, c.sched, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"])
def test_every_optimizer_reduces_a_quadratic(name):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10))
    model = nn.Module()
    model.w = w
    c = cfg(f"optim.name={name}", "optim.lr=0.05" if name != "adadelta" else "optim.lr=1.0",
            "optim.weight_decay=0", "optim.momentum=0")
    opt = build_optimizer(model, c.optim)
    start = (w ** 2).sum().item()
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert (w ** 2).sum().item() < start


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="valid: adadelta, adagrad, adam, adamw, rmsprop, sgd"):
        OPTIMIZERS.get("lion")


def test_no_decay_on_norm_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = parameter_groups(model, 1e-4, exclude_norm_bias=True)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[1]["weight_decay"] == 0.0
    assert len(parameter_groups(model, 1e-4, exclude_norm_bias=False)) == 1


def test_multistep_per_step():
    out = lrs(cfg("sched.name=multistep", "sched.milestones=[3,6]"))
    assert out[29] == pytest.approx(0.1) and out[30] == pytest.approx(0.01) and out[60] == pytest.approx(0.001)


def test_step_schedule():
    out = lrs(cfg("sched.name=step", "sched.step_size=4", "sched.gamma=0.5"))
    assert out[39] == pytest.approx(0.1) and out[40] == pytest.approx(0.05) and out[80] == pytest.approx(0.025)


def test_cosine_with_linear_warmup_epochs():
    out = lrs(cfg("sched.name=cosine", "sched.warmup=linear", "sched.warmup_epochs=2"))
    assert out[0] == pytest.approx(0.0)
    assert out[10] == pytest.approx(0.05)           # half-way through warm-up
    assert out[20] == pytest.approx(0.1)            # cosine starts at the peak
    assert out[60] == pytest.approx(0.05, abs=1e-3)  # half-way through the cosine
    assert out[-1] < 0.001


def test_resnet110_constant_warmup_by_steps():
    # He et al.: lr 0.01 (x0.1) for the first 400 iterations, then 0.1.
    out = lrs(cfg("sched.milestones=[100]", "sched.warmup=constant", "sched.warmup_steps=400",
                  "sched.warmup_factor=0.1"), steps_per_epoch=100, epochs=6)
    assert out[0] == pytest.approx(0.01) and out[399] == pytest.approx(0.01)
    assert out[400] == pytest.approx(0.1) and out[-1] == pytest.approx(0.1)


def test_cyclic_triangle():
    out = lrs(cfg("sched.name=cyclic", "sched.max_lr=0.5", "sched.cycle_epochs=2"), lr=0.1)
    assert out[0] == pytest.approx(0.1) and out[10] == pytest.approx(0.5) and out[20] == pytest.approx(0.1)
    with pytest.raises(UserError, match="must exceed"):
        lrs(cfg("sched.name=cyclic", "sched.max_lr=0.05"), lr=0.1)


def test_onecycle_shape():
    out = lrs(cfg("sched.name=onecycle"), lr=0.1)
    peak = max(range(len(out)), key=out.__getitem__)
    assert peak == 30 and out[0] == pytest.approx(0.1 / 25) and out[-1] < 1e-4


def test_sam_matches_the_two_step_definition():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = nn.Linear(4, 1)
    ref = nn.Linear(4, 1)
    ref.load_state_dict(model.state_dict())
    c = cfg("optim.sam=true", "optim.sam_rho=0.1", "optim.lr=0.1", "optim.momentum=0", "optim.weight_decay=0")
    opt = build_optimizer(model, c.optim)
    assert isinstance(opt, SAM)

    def closure():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()

    closure()
    opt.step(closure)
    # By hand: g at w, e = rho g/|g|, g' at w + e, w <- w - lr g'.
    loss = nn.functional.mse_loss(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.add_(0.1 * g / norm)
    loss2 = nn.functional.mse_loss(ref(x), y)
    grads2 = torch.autograd.grad(loss2, list(ref.parameters()))
    with torch.no_grad():
        for p, g, g2 in zip(ref.parameters(), grads, grads2):
            p.sub_(0.1 * g / norm)
            p.sub_(0.1 * g2)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert math.isfinite(opt.param_groups[0]["lr"])
