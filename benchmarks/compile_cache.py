"""Cold and warm torch.compile time per model: what the on-disk compile caches save, and what they cost.

    PYTHONPATH=src python benchmarks/compile_cache.py --models resnet20,rrnet20_gru --threads 2

For each model, two fresh Python processes compile the same training step (forward,
backward, SGD step; batch `--batch` at `--size`) one after the other, sharing one inductor
cache folder (src/selfreg/train/compile_cache.py): the first starts from an empty folder
(cold), the second finds what the first wrote (warm: FX graph and AOTAutograd caches, and on
a GPU Triton's kernels). Each process reports the wall time of its first compiled step
(compilation included) and its median step once compiled, and the second also the median
eager step of the same model (so the table says what compiling saves per step); the
folder's size after both is the disk cost. By default the folder is a fresh temporary one, deleted afterwards, so the
user's own cache is neither used nor touched; `--cache-dir` keeps it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import add_markdown_arg, table, write_section

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="resnet20,rrnet20_gru", help="comma-separated registered models")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--steps", type=int, default=3, help="compiled steps timed after the first")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    p.add_argument("--cache-dir", default="", help="use (and keep) this cache folder instead of a temporary one")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    add_markdown_arg(p)
    return p


def child(args) -> int:
    """One process: compile one model's training step, print a JSON line of timings."""
    import torch.nn.functional as F

    from selfreg import create_model
    from selfreg.train.compile_cache import configure

    torch.set_num_threads(args.threads)
    folder = configure()
    dev = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def stepper(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step() -> float:
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - start
        return step

    def fresh():
        torch.manual_seed(0)
        return create_model(args.model, num_classes=10).to(dev).train()

    median = lambda step: sorted(step() for _ in range(args.steps))[args.steps // 2]  # noqa: E731
    compiled = stepper(torch.compile(fresh()))
    out = {"first_s": compiled(), "cache": str(folder)}
    out["step_s"] = median(compiled)
    if args.eager:
        eager = stepper(fresh())
        eager()                                         # warm-up (cuDNN / oneDNN set-up)
        out["eager_s"] = median(eager)
    print(json.dumps(out))
    return 0


def run_child(args, model: str, folder: Path, eager: bool = False) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder))
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model, "--device", args.device,
           "--threads", str(args.threads), "--batch", str(args.batch), "--size", str(args.size),
           "--steps", str(args.steps)] + (["--eager"] if eager else [])
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last[:120]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child(args)
    from selfreg.train.compile_cache import size_bytes

    rows = []
    for model in args.models.split(","):
        folder = Path(args.cache_dir) / model if args.cache_dir else Path(tempfile.mkdtemp(prefix="selfreg-cc-"))
        try:
            cold = run_child(args, model, folder)
            warm = run_child(args, model, folder, eager=True) if "error" not in cold else {"error": "cold run failed"}
            size = size_bytes(folder)
        finally:
            if not args.cache_dir:
                shutil.rmtree(folder, ignore_errors=True)
        if "error" in cold or "error" in warm:
            rows.append([model, "-", "-", "-", "-", "-", "-", "-", f"failed: {cold.get('error') or warm.get('error')}"])
            continue
        rows.append([model, f"{cold['first_s']:.1f}", f"{warm['first_s']:.1f}",
                     f"{warm['first_s'] / cold['first_s']:.2f}", f"{size / 2**20:.1f}",
                     f"{warm['eager_s'] * 1e3:.1f}", f"{warm['step_s'] * 1e3:.1f}",
                     f"{warm['step_s'] / warm['eager_s']:.2f}", ""])
    where = "GPU" if torch.device(args.device).type == "cuda" else f"CPU, {args.threads} threads"
    lines = [f"batch {args.batch} at {args.size}x{args.size} on {args.device}; first compiled training step "
             "(compilation included) in a fresh process with an empty cache folder (cold), then in another "
             "fresh process with the folder the first one filled (warm); disk = the folder's size after both.",
             ""]
    lines += table(["model", "cold s", "warm s", "warm/cold", "disk MB", "eager ms", "compiled ms",
                    "compiled/eager", "note"], rows)
    lines += ["", "- runs keep this cache in $TORCHINDUCTOR_CACHE_DIR, else $SELFREG_CACHE_DIR/inductor or "
              "~/.cache/selfreg/inductor (selfreg.train.compile_cache); deleting it is safe"]
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, f"Compile cache: cold and warm compile ({where})", lines, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
