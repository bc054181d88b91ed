"""Training-step time of RegNet-20 (Xu et al.) over ResNet-20, next to their multiply-add ratio.

    PYTHONPATH=src python benchmarks/step_time.py --batch 128 --steps 5 --rounds 3 --threads 2

One step = forward + backward + SGD step on a random batch at 32x32. The models alternate
in one process: after a warm-up, each round times `--steps` steps of every model in turn
(the order rotates from round to round), so drifts in machine load hit all models alike.
Each model's time is the median of all its timed steps; ratios are over resnet20.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from selfreg import create_model
from selfreg.analysis.complexity import count_macs, count_parameters

# (label, registered name, builder kwargs); the first is the baseline of the ratios.
MODELS = [
    ("resnet20", "resnet20", {}),
    ("rrnet20_gru light", "rrnet20_gru", {"form": "light"}),
    ("rrnet20_gru full", "rrnet20_gru", {"form": "full"}),
    ("rrnet20_lstm light", "rrnet20_lstm", {"form": "light"}),
    ("rrnet20_lstm full", "rrnet20_lstm", {"form": "full"}),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", type=int, default=32, help="input height and width")
    return p


class Trainee:
    """A model with its optimizer and a fixed batch; `step()` returns its wall time in s."""

    def __init__(self, name: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor):
        torch.manual_seed(0)
        self.model = create_model(name, num_classes=10, **kwargs).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.loss = nn.CrossEntropyLoss()
        self.x, self.y = x, y

    def step(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()
        return time.perf_counter() - start


def measure(trainees: dict[str, Trainee], rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    for t in trainees.values():
        for _ in range(warmup):
            t.step()
    times: dict[str, list[float]] = {label: [] for label in trainees}
    labels = list(trainees)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotate the order
            times[label] += [trainees[label].step() for _ in range(steps)]
    return times


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    trainees = {label: Trainee(name, kw, x, y) for label, name, kw in MODELS}
    times = measure(trainees, args.rounds, args.steps, args.warmup)

    base_label = MODELS[0][0]
    medians = {label: statistics.median(ts) for label, ts in times.items()}
    macs = {label: count_macs(t.model, args.size) for label, t in trainees.items()}
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps; "
          f"median step time, ratios over {base_label}")
    header = f"{'model':<20} {'params':>9} {'MACs/img':>10} {'MAC ratio':>9} {'step ms':>9} {'time ratio':>10}"
    print(header)
    print("-" * len(header))
    for label, t in trainees.items():
        print(f"{label:<20} {count_parameters(t.model):>9,} {macs[label] / 1e6:>9.1f}M "
              f"{macs[label] / macs[base_label]:>9.2f} {medians[label] * 1e3:>9.1f} "
              f"{medians[label] / medians[base_label]:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
