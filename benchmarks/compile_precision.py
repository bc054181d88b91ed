"""Do torch.compile and bf16 + channels_last pay? Per-step training time against eager fp32.

    PYTHONPATH=src python benchmarks/compile_precision.py --threads 2

1. Compile: each model eager and `torch.compile`d (default mode), timed interleaved once warm
   (compilation happens in the warm-up and is reported on its own line). Target: compiled
   never slower per step than eager. On the CPU this needs a C++ compiler for inductor.
2. Precision (CUDA only): resnet50, bf16 autocast + channels_last against fp32 NCHW. Target:
   at least 1.5x the fp32 NCHW step throughput. Without a GPU it prints
   "no CUDA device: skipped".
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from _common import add_markdown_arg, interleave, medians, table, trainer, write_section
from selfreg import create_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="resnet20,rrnet20_gru", help="comma-separated CIFAR models to compile")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--r50-batch", type=int, default=128)
    p.add_argument("--skip-compile", action="store_true")
    add_markdown_arg(p)
    return p



def fresh(name, dev, **kwargs):
    torch.manual_seed(0)
    return create_model(name, **kwargs).to(dev).train()


def compile_rows(args, dev) -> list[list[str]]:
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    rows = []
    for name in args.models.split(","):
        eager = trainer(fresh(name, dev, num_classes=10), x, y)
        compiled_step = trainer(torch.compile(fresh(name, dev, num_classes=10)), x, y)
        start = time.perf_counter()
        try:
            compiled_step()  # compiles forward and backward
        except Exception as e:  # no C++ compiler, unsupported op, ...: say so, do not guess
            rows.append([name, "eager", "-", "-", f"compile failed: {type(e).__name__}: {str(e)[:80]}"])
            continue
        compile_s = time.perf_counter() - start
        med = medians(interleave({"eager": eager, "compiled": compiled_step}, args.rounds, args.steps,
                                 warmup=2, device=dev))
        rows += [[name, "eager", f"{med['eager'] * 1e3:.1f}", "1.00", ""],
                 [name, "torch.compile", f"{med['compiled'] * 1e3:.1f}", f"{med['compiled'] / med['eager']:.2f}",
                  f"first step (compilation) {compile_s:.0f} s"]]
    return rows


def precision_lines(args, dev) -> list[str]:
    if dev.type != "cuda":
        return ["Precision (resnet50, bf16 + channels_last vs fp32 NCHW): no CUDA device: skipped."]
    b = args.r50_batch
    variants = {}
    for label, cl, amp in (("fp32 NCHW", False, False), ("bf16 autocast + channels_last", True, True)):
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = fresh("resnet50", dev, num_classes=1000).to(memory_format=fmt)
        x = torch.randn(b, 3, 224, 224, device=dev).contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (b,), device=dev)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        variants[label] = trainer(model, x, y, autocast)
    med = medians(interleave(variants, args.rounds, args.steps, warmup=3, device=dev))
    base = med["fp32 NCHW"]
    lines = [f"resnet50, batch {b} at 224x224; throughput relative to fp32 NCHW (target >= 1.5).", ""]
    lines += table(["variant", "ms/step", "images/s", "speed-up"],
                   [[k, f"{v * 1e3:.1f}", f"{b / v:.0f}", f"{base / v:.2f}"] for k, v in med.items()])
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    lines = []
    if args.skip_compile:
        lines.append("Compile: skipped (--skip-compile).")
    else:
        lines += [f"Compile: batch {args.batch} at 32x32 on {dev.type}; median step once warm, ratio over eager "
                  "(target <= 1.00).", ""]
        lines += table(["model", "mode", "ms/step", "ratio", "note"], compile_rows(args, dev))
    lines.append("")
    lines += precision_lines(args, dev)
    print("\n".join(lines))
    if args.markdown:
        where = "GPU" if dev.type == "cuda" else f"CPU, {args.threads} threads"
        write_section(args.markdown, f"Compile and precision ({where})", lines, device=dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
