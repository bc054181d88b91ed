"""Where a training step's time goes: torch.profiler's top operators, model against model.

    PYTHONPATH=src python benchmarks/profile_step.py --threads 2 --models resnet20,rrnet20_gru,rrnet20_lstm

Profiles `--steps` training steps (forward, backward, SGD) of each model after warm-up steps and
prints, per model, the operators with the most self CPU time and their share of the total. The
profiler's own overhead inflates short operators; use step_time.py for the ratios themselves.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from _common import add_markdown_arg, table, write_section
from selfreg import create_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,rrnet20_gru,rrnet20_lstm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=8)
    add_markdown_arg(p)
    return p


def profile_model(name: str, args) -> tuple[float, list[tuple[str, float]]]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    return total / args.steps / 1e3, sorted(events, key=lambda e: -e[1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [f"batch {args.batch} at 32x32, {args.threads} threads, {args.steps} profiled steps after "
             f"{args.warmup} warm-up steps; self CPU time per operator.", ""]
    for name in args.models.split(","):
        ms, events = profile_model(name, args)
        total = sum(t for _, t in events)
        lines += [f"{name}: {ms:.0f} ms of operator time per step", ""]
        lines += table(["operator", "ms/step", "share"],
                       [[k, f"{t / args.steps / 1e3:.1f}", f"{t / total:.1%}"] for k, t in events[:args.top]])
        lines.append("")
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, f"Profile: where a step's time goes (CPU, {args.threads} threads)", lines[:-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
