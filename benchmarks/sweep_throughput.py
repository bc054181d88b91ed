"""Sweep throughput on a CPU: K runs of T threads at once, or one run of all the threads?

    PYTHONPATH=src python benchmarks/sweep_throughput.py --recipe configs/regnet/table3_paper_c10.yaml

For each model of the recipe's grid this measures training images per second summed over the
runs at work, for `--parallel 2 train.threads=1` (two processes, one thread each, training at
the same time: what `selfreg sweep --parallel 2` does) against `--parallel 1 train.threads=2`
(one process, two threads), in both memory layouts. Each worker is a real process that trains
the model with the recipe's optimizer and batch size on a random batch at 32x32, after a
warm-up, for `--seconds`; concurrent workers start their timed window together (a go file).
The settings alternate round by round in one run, so a drift in the machine's load hits both
alike; the medians over rounds are compared. The data loader is left out: the recipe serves
decoded uint8 tensors from memory (data.cache), a small share of a step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import add_markdown_arg, machine, table, write_section

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    """One training process: warm up, say ready, wait for the go file, train --seconds, print images/s."""
    from selfreg import create_model
    from selfreg.config import load_config
    from selfreg.train.allocator import keep_freed_memory
    from selfreg.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    keep_freed_memory()                                   # as selfreg train does on the CPU
    cfg = load_config(args.recipe, [f"model.name={args.model}"])
    model = create_model(args.model, num_classes=10, in_chans=3, img_size=32, **cfg.model.kwargs)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = build_optimizer(model, cfg.optim)
    x = torch.randn(cfg.data.batch_size, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (cfg.data.batch_size,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        step()
        n += 1
    print(json.dumps({"images_per_s": n * cfg.data.batch_size / (time.perf_counter() - start)}))


def measure(recipe: str, model: str, processes: int, threads: int, channels_last: bool, seconds: float) -> float:
    """Images/s summed over `processes` concurrent workers of `threads` threads each."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
        procs = []
        for i in range(processes):
            cmd = [sys.executable, __file__, "--worker", model, "--recipe", recipe, "--threads", str(threads),
                   "--seconds", str(seconds), "--ready", str(Path(tmp) / f"ready{i}"), "--go", str(go)]
            procs.append(subprocess.Popen(cmd + (["--channels-last"] if channels_last else []),
                                          stdout=subprocess.PIPE, text=True, env=env))
        deadline = time.time() + 600
        while not all((Path(tmp) / f"ready{i}").exists() for i in range(processes)):
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a worker for {model} failed before its timed window")
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=seconds * 10 + 120)[0] for p in procs]
        return sum(json.loads(out.strip().splitlines()[-1])["images_per_s"] for out in outs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="configs/regnet/table3_paper_c10.yaml")
    p.add_argument("--models", default="resnet20,rrnet20_gru,rrnet20_lstm")
    p.add_argument("--seconds", type=float, default=20.0, help="timed window per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--layouts", default="nchw,nhwc", help="memory layouts to measure (nchw, nhwc)")
    add_markdown_arg(p)
    # worker mode (internal)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready", default="", help=argparse.SUPPRESS)
    p.add_argument("--go", default="", help=argparse.SUPPRESS)
    return p


SETTINGS = {"--parallel 2 train.threads=1": (2, 1), "--parallel 1 train.threads=2": (1, 2)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        args.model = args.worker
        worker(args)
        return 0
    print(f"Machine: {machine()}")
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    results: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for model in args.models.split(","):
            order = list(SETTINGS.items()) if r % 2 == 0 else list(SETTINGS.items())[::-1]
            for layout in layouts:
                for name, (procs, threads) in order:
                    ips = measure(args.recipe, model, procs, threads, layout == "nhwc", args.seconds)
                    results.setdefault((model, layout, name), []).append(ips)
                    print(f"round {r + 1}: {model:13s} {layout} {name}: {ips:7.1f} images/s", flush=True)
    rows = []
    for model in args.models.split(","):
        for layout in layouts:
            a, b = (statistics.median(results[(model, layout, n)]) for n in SETTINGS)
            rows.append([model, layout, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}x"])
    lines = table(["model", "layout", *(f"{n} (images/s)" for n in SETTINGS), "ratio"], rows)
    lines += ["", f"Medians of {args.rounds} rounds of {args.seconds:g} s per cell, summed over the processes "
              "at work; ratio > 1: two one-thread runs at once train more images per second."]
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, "Sweep throughput", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
