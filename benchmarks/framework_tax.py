"""Framework tax: selfreg's training loop and model against a minimal hand-written PyTorch loop.

    PYTHONPATH=src python benchmarks/framework_tax.py --threads 2

Two comparisons, each timed interleaved in one process (benchmarks/_common.py) over the
same in-memory batches, the same initial weights and the same SGD settings:

1. Loop: `selfreg.train.engine.train_one_epoch` with the StepOptions a default run builds
   (`Run` in engine.py: NaN check with its host sync every step, BN-momentum hook, stop-flag
   check, loss/accuracy sums, "lines" progress, LambdaLR from the config's schedule) against
   zero_grad / forward / cross-entropy / backward / step / scheduler.step, on resnet20, the
   minimal loop in both layouts (converting each batch, as any loop fed NCHW batches must) and
   ours in NCHW and in what `train.*=auto` picks for a 30-epoch CIFAR-10 run on this device
   (selfreg.train.autotune; compile left out: the minimal loops are eager). Target: ours with
   auto at least 0.95x the throughput of the faster minimal loop (ratio <= 1.053).
2. Model: selfreg's `resnet50` against torchvision's `resnet50` in that same minimal loop,
   in NCHW and in channels_last (small batch and image on the CPU so it finishes quickly).

A timed unit is one pass over `--steps` batches; the tables give the median per step and
the ratio ours / minimal (target: loop <= 1.05, model <= 1.02).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

from _common import add_markdown_arg, interleave, medians, table, write_section
from selfreg import create_model
from selfreg.config import load_config
from selfreg.train.bn import BNMomentum
from selfreg.train.autotune import decide
from selfreg.train.engine import StepOptions, StopFlag, make_autocast, train_one_epoch
from selfreg.train.logging import Progress
from selfreg.train.optim import build_optimizer, build_scheduler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128, help="resnet20 batch (32x32)")
    p.add_argument("--steps", type=int, default=4, help="batches per timed pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--r50-batch", type=int, default=0, help="resnet50 batch (default: 8 on CPU, 64 on GPU)")
    p.add_argument("--r50-size", type=int, default=0, help="resnet50 image size (default: 112 on CPU, 224 on GPU)")
    p.add_argument("--r50-steps", type=int, default=2)
    p.add_argument("--skip-resnet50", action="store_true")
    add_markdown_arg(p)
    return p


def batches(n: int, batch: int, size: int, classes: int, device, channels_last: bool = False):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [(torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt),
             torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(n)]


def minimal_loop(model, data, lr: float = 0.1, channels_last: bool = False, amp: str = "none"):
    """The hand-written baseline: nothing but what a training step needs."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    autocast = make_autocast(amp, next(model.parameters()).device)

    def run():
        model.train()
        for x, y in data:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            sched.step()
    return run


def engine_loop(model, data, device, amp: str = "none", channels_last: bool = False):
    """train_one_epoch with a default run's options (as engine.Run builds them)."""
    cfg = load_config(None, [f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}"])
    opt = build_optimizer(model, cfg.optim)  # SGD, lr 0.1, momentum 0.9, weight decay 1e-4
    sched = build_scheduler(opt, cfg.sched, len(data), cfg.train.epochs, lr=cfg.optim.lr)
    opts = StepOptions(device=torch.device(device), autocast=make_autocast(cfg.train.amp, torch.device(device)),
                       channels_last=cfg.train.channels_last, grad_clip=cfg.optim.grad_clip,
                       nan_policy=cfg.train.nan_policy, label_smoothing=cfg.train.label_smoothing,
                       bn=BNMomentum(model, cfg.train.bn_momentum))
    stop = StopFlag()  # not entered: no signal handlers, but checked every step as in fit()

    def run():
        bar = Progress("lines", len(data), "bench")
        train_one_epoch(model, data, opt, sched, opts, stop=stop, bar=bar)
    return run


def same_model(name_or_ctor, device, channels_last=False, **kwargs):
    torch.manual_seed(0)
    model = name_or_ctor(**kwargs) if callable(name_or_ctor) else create_model(name_or_ctor, **kwargs)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = args.device
    cuda = torch.device(dev).type == "cuda"
    lines = []

    # 1. The loop, on resnet20: minimal loops in both layouts, ours in NCHW and as auto chooses.
    data = batches(args.steps, args.batch, 32, 10, dev)
    auto = decide({"amp": "auto", "channels_last": "auto", "compile": False},
                  same_model("resnet20", dev, num_classes=10), torch.device(dev), (3, 32, 32), 10, args.batch,
                  steps=30 * (45000 // args.batch))
    layout = "channels_last" if auto.channels_last else "NCHW"
    fns = {"minimal loop, NCHW": minimal_loop(same_model("resnet20", dev, num_classes=10), data, amp=auto.amp),
           "minimal loop, channels_last": minimal_loop(same_model("resnet20", dev, True, num_classes=10), data,
                                                       channels_last=True, amp=auto.amp),
           "selfreg train_one_epoch, NCHW": engine_loop(same_model("resnet20", dev, num_classes=10), data, dev,
                                                        amp=auto.amp),
           f"selfreg train_one_epoch, auto ({layout})": engine_loop(
               same_model("resnet20", dev, auto.channels_last, num_classes=10), data, dev, amp=auto.amp,
               channels_last=auto.channels_last)}
    med = medians(interleave(fns, rounds=args.rounds, steps=1, warmup=1, device=dev))
    best = min(("minimal loop, NCHW", "minimal loop, channels_last"), key=med.get)
    base = med[best]
    lines += [f"resnet20, batch {args.batch} at 32x32, amp {auto.amp}, {args.steps} steps per timed pass, "
              f"{args.rounds} rounds; ratio over the faster minimal loop ({best}).", ""]
    lines += table(["loop", "ms/step", "ratio"],
                   [[k, f"{v / args.steps * 1e3:.1f}", f"{v / base:.3f}"] for k, v in med.items()])
    ours = med[f"selfreg train_one_epoch, auto ({layout})"]
    lines += ["", f"- auto chose {layout} ({auto.how['channels_last']})",
              f"- selfreg with auto: {base / ours:.2f}x the throughput of the faster minimal loop (target >= 0.95)"]

    # 2. The model: ours vs torchvision's resnet50 in the minimal loop.
    if not args.skip_resnet50:
        b = args.r50_batch or (64 if cuda else 8)
        size = args.r50_size or (224 if cuda else 112)
        rows = []
        for cl in (False, True):
            data = batches(args.r50_steps, b, size, 1000, dev, channels_last=cl)
            fns = {"torchvision resnet50": minimal_loop(same_model(torchvision.models.resnet50, dev, cl, num_classes=1000), data),
                   "selfreg resnet50": minimal_loop(same_model("resnet50", dev, cl, num_classes=1000), data)}
            med = medians(interleave(fns, rounds=args.rounds, steps=1, warmup=1, device=dev))
            tv = med["torchvision resnet50"]
            rows += [[k, "channels_last" if cl else "NCHW", f"{v / args.r50_steps * 1e3:.1f}", f"{v / tv:.3f}"]
                     for k, v in med.items()]
        lines += ["", f"resnet50, batch {b} at {size}x{size}, {args.r50_steps} steps per timed pass, "
                  f"{args.rounds} rounds, minimal loop; ratio over torchvision's (target <= 1.02).", ""]
        lines += table(["model", "layout", "ms/step", "ratio"], rows)
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, f"Framework tax ({'GPU' if cuda else f'CPU, {args.threads} threads'})",
                      lines, device=dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
