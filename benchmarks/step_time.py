"""Training-step time of RegNet-20 (Xu et al.) over ResNet-20, next to their multiply-add ratio.

    PYTHONPATH=src python benchmarks/step_time.py --batch 128 --steps 5 --rounds 3 --threads 2
    PYTHONPATH=src python benchmarks/step_time.py --device cuda --steps 20 --no-reference   # on a GPU

One step = forward + backward + SGD step on a random batch at 32x32. The models alternate
in one process (benchmarks/_common.py: warm-up, then rounds of `--steps` steps per model
in rotating order; medians), so drifts in machine load hit all models alike; ratios are
over resnet20. The "reference" rows run the same weights through the cells' formulation
as written (`reference_forward`: interleaved copy, grouped 1x1, one activation per gate),
i.e. the cells before the fast path (the blocks' split-weight fusion is the same in both
rows); `--no-reference` leaves them out. The "blocks only" row is RegNet-20 with every
cell replaced by one that returns its input (no gate, no convolution): what the
regulated blocks cost without their regulator, i.e. the floor any faster cell can reach
(its extra 1x1 fusion, two more BatchNorms and ReLUs per block, all memory-bound on the
CPU). The last lines give each light regulator's time ratio over its MAC ratio (the
issue's target on a GPU: at most 1.25) and split it into blocks and cell.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from _common import add_markdown_arg, interleave, medians, table, write_section
from selfreg import create_model
from selfreg.complexity import count_macs, count_parameters
from selfreg.layers.convrnn import ConvCell, use_reference_cells
from selfreg.train.allocator import keep_freed_memory

BLOCKS_ONLY = "rrnet20 blocks only (cell returns its input)"
# (label, registered name, builder kwargs, cells: "fast", "reference" or "none");
# the first is the ratios' baseline.
MODELS = [
    ("resnet20", "resnet20", {}, "fast"),
    (BLOCKS_ONLY, "rrnet20_gru", {"form": "light"}, "none"),
    ("rrnet20_gru light", "rrnet20_gru", {"form": "light"}, "fast"),
    ("rrnet20_gru light (reference)", "rrnet20_gru", {"form": "light"}, "reference"),
    ("rrnet20_gru full", "rrnet20_gru", {"form": "full"}, "fast"),
    ("rrnet20_gru full (reference)", "rrnet20_gru", {"form": "full"}, "reference"),
    ("rrnet20_lstm light", "rrnet20_lstm", {"form": "light"}, "fast"),
    ("rrnet20_lstm light (reference)", "rrnet20_lstm", {"form": "light"}, "reference"),
    ("rrnet20_lstm full", "rrnet20_lstm", {"form": "full"}, "fast"),
    ("rrnet20_lstm full (reference)", "rrnet20_lstm", {"form": "full"}, "reference"),
]


class PassThrough(ConvCell):
    """A cell that costs nothing: H = X. Times the regulated blocks without their cell."""

    def forward(self, x: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x

    reference_forward = forward


def drop_cells(model: nn.Module) -> nn.Module:
    """Replace every regulator cell of `model` by a PassThrough of the same width."""
    for name, child in list(model.named_children()):
        if isinstance(child, ConvCell):
            setattr(model, name, PassThrough(child.channels))
        else:
            drop_cells(child)
    return model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--channels-last", action="store_true", help="models and batch in channels_last")
    p.add_argument("--no-reference", action="store_true", help="leave out the reference-cell rows")
    p.add_argument("--only", default="", help="comma-separated words; keep the rows whose label contains "
                   "one of them (resnet20, the baseline, and the blocks-only row always stay), e.g. --only light")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model (warm-up steps compile; implies --no-reference)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's allocator as it is (selfreg train tunes it on the CPU)")
    add_markdown_arg(p)
    return p


class Trainee:
    """A model with its optimizer and a fixed batch; `step()` runs one training step."""

    def __init__(self, name: str, kwargs: dict, cells: str, x: torch.Tensor, y: torch.Tensor,
                 channels_last: bool = False, compiled: bool = False):
        torch.manual_seed(0)
        self.model = create_model(name, num_classes=10, **kwargs).to(x.device).train()
        if cells == "none":
            drop_cells(self.model)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.reference = cells == "reference"
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.loss = nn.CrossEntropyLoss()
        self.x, self.y = x.contiguous(memory_format=fmt), y

    def step(self) -> None:
        use_reference_cells(self.model, self.reference)  # count_macs resets it to the fast path
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.forward(self.x), self.y).backward()
        self.opt.step()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    tuned = dev.type == "cpu" and not args.system_malloc and keep_freed_memory()
    args.no_reference = args.no_reference or args.compile
    x = torch.randn(args.batch, 3, args.size, args.size).to(dev)
    y = torch.randint(0, 10, (args.batch,)).to(dev)
    words = [w for w in args.only.split(",") if w]
    models = [m for m in MODELS if not (args.no_reference and m[3] == "reference")
              and (m[0] in (MODELS[0][0], BLOCKS_ONLY) or not words or any(w in m[0] for w in words))]
    trainees = {label: Trainee(name, kw, cells, x, y, args.channels_last, args.compile)
                for label, name, kw, cells in models}
    macs = {label: count_macs(t.model, args.size) for label, t in trainees.items()}
    med = medians(interleave({label: t.step for label, t in trainees.items()},
                             args.rounds, args.steps, args.warmup, device=dev))

    base = models[0][0]
    where = "GPU" if dev.type == "cuda" else f"{args.threads} threads"
    mode = ", ".join(["channels_last" if args.channels_last else "NCHW", "compiled" if args.compile else "eager"]
                     + ([] if dev.type == "cuda" else ["glibc tuned as selfreg train does" if tuned
                                                       else "glibc's default allocator"]))
    lines = [f"batch {args.batch}, {args.size}x{args.size}, {where}, {mode}, {args.rounds} rounds x {args.steps} "
             f"steps after {args.warmup} warm-up steps; median step time, ratios over {base}.", ""]
    lines += table(["model", "params", "MACs/img", "MAC ratio", "step ms", "time ratio"],
                   [[label, f"{count_parameters(t.model):,}", f"{macs[label] / 1e6:.1f}M",
                     f"{macs[label] / macs[base]:.2f}", f"{med[label] * 1e3:.1f}", f"{med[label] / med[base]:.2f}"]
                    for label, t in trainees.items()])
    lines.append("")
    for cell in ("gru", "lstm"):
        if f"rrnet20_{cell} light" not in med or f"rrnet20_{cell} full" not in med:
            continue
        light, full = med[f"rrnet20_{cell} light"], med[f"rrnet20_{cell} full"]
        note = f"rrnet20_{cell}: light / full step time {light / full:.2f}"
        if f"rrnet20_{cell} light (reference)" in med:
            note += f"; light fast path / reference {light / med[f'rrnet20_{cell} light (reference)']:.2f}"
        lines.append(f"- {note}")
    for label in (f"rrnet20_{cell} light" for cell in ("gru", "lstm")):
        if label not in med:
            continue
        over = (med[label] / med[base]) / (macs[label] / macs[base])
        target = "on a GPU: time ratio / MAC ratio <= 1.25" if dev.type == "cuda" else "on the CPU: time ratio <= 1.5"
        split = ""
        if BLOCKS_ONLY in med:
            blocks = med[BLOCKS_ONLY] / med[base]
            split = f"; blocks without the cell {blocks:.2f}, the cell {med[label] / med[base] - blocks:.2f}"
        lines.append(f"- {label}: time ratio {med[label] / med[base]:.2f}, time ratio / MAC ratio {over:.2f} "
                     f"(target {target}){split}")
    print("\n".join(lines))
    if args.markdown:
        layout = "channels_last" if args.channels_last else "NCHW"
        write_section(args.markdown, f"Step time: RegNet-20 over ResNet-20 ({where}, {layout}"
                      f"{', compiled' if args.compile else ''})", lines, device=dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
