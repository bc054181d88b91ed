"""Time to 94% on CIFAR-10: configs/fast/cifar10_94.yaml against airbench94 on the same GPU and data.

    python benchmarks/make_cifar_tensor.py JPEG_ROOT .data/cifar10t      # once: uint8 tensor files
    PYTHONPATH=src python benchmarks/time_to_94.py --data .data/cifar10t

Runs airbench94 (Keller Jordan's `airbench` package, `pip install airbench`: 94.01% mean test
accuracy in about 3.8 s on an A100) in a subprocess, then our recipe through
`selfreg.train.engine.fit`, one after the other on the same GPU, both reading the same uint8
tensor files (`--data`: train.pt and test.pt in airbench's format; ours as `data.name=tensors`,
holding `--val` training images out for its per-epoch validation). Prints each one's wall time
and accuracy on test.pt and the ratio ours / airbench (the issue's goal: within 2x).

Timing: airbench runs its one-step warm-up untimed (as its README does), then its loaders,
training (no per-epoch evaluation) and its flip-and-translate TTA evaluation are timed. Ours
is `fit` end to end: data, the auto probe, torch.compile (cold unless the compile cache has
this model), training with per-epoch validation, the test evaluation; the training epochs'
own seconds are shown too. Without CUDA it prints "no CUDA device: skipped"; without the
airbench package or `--data`, the comparison is skipped and says why.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import add_markdown_arg, table, write_section

REPO = Path(__file__).resolve().parent.parent

AIRBENCH = r"""
import json, time, torch, airbench
from airbench.lib_airbench94 import hyp
def loader():
    return airbench.CifarLoader('cifar10', train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                                altflip=True)
airbench.warmup94(train_loader=loader())
torch.cuda.synchronize()
start = time.perf_counter()
model = airbench.train94(train_loader=loader(), verbose=False)
acc = airbench.evaluate(model, airbench.CifarLoader('cifar10', train=False, batch_size=2000),
                        tta_level=hyp['net']['tta_level'])
torch.cuda.synchronize()
print(json.dumps({"seconds": time.perf_counter() - start, "acc": acc}))
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(REPO / "configs" / "fast" / "cifar10_94.yaml"))
    p.add_argument("--data", default="", help="folder with train.pt and test.pt (benchmarks/make_cifar_tensor.py)")
    p.add_argument("--val", type=int, default=500, help="training images ours holds out for validation")
    p.add_argument("--no-airbench", action="store_true", help="time only our recipe")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the airbench subprocess")
    p.add_argument("--out-dir", default="", help="where our run's folder goes (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for our recipe")
    add_markdown_arg(p)
    return p


def run_airbench(data: Path, timeout: float) -> dict:
    """airbench94 in a fresh process whose ./cifar10 is our data folder; {'seconds', 'acc'} or {'error'}."""
    try:
        import airbench  # noqa: F401  (only to say early that it is missing)
    except ImportError:
        return {"error": "the airbench package is not installed (pip install airbench)"}
    with tempfile.TemporaryDirectory(prefix="airbench-") as tmp:
        os.symlink(data.resolve(), Path(tmp) / "cifar10")
        try:
            out = subprocess.run([sys.executable, "-c", AIRBENCH], cwd=tmp, capture_output=True, text=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"airbench ran over {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": "airbench failed: " + ((out.stderr.strip().splitlines() or ["?"])[-1])[:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(recipe: str, overrides: list[str], out_dir: str) -> dict:
    from selfreg.config import load_config
    from selfreg.train.engine import fit
    from selfreg.train.logging import read_metrics

    with tempfile.TemporaryDirectory(prefix="t94-") as tmp:
        cfg = load_config(recipe, [f"train.out_dir={out_dir or tmp}", *overrides])
        start = time.perf_counter()
        summary = fit(cfg)
        seconds = time.perf_counter() - start
        rows = read_metrics(Path(summary["run_dir"]) / "metrics.csv")
    return {"seconds": seconds, "acc": summary.get("test_acc", summary.get("final_val_acc")),
            "train_s": sum(float(r["seconds"]) for r in rows), "epochs": len(rows), "speed": summary.get("speed")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("time to 94%: no CUDA device: skipped")
        return 0
    overrides = list(args.overrides)
    if args.data:
        overrides = ["data.name=tensors", f"data.root={args.data}", f"data.val_fraction={args.val}", *overrides]
    rows, notes, ratio = [], [], None
    air = None
    if args.no_airbench:
        notes.append("- airbench94 comparison skipped (--no-airbench)")
    elif not args.data:
        notes.append("- airbench94 comparison skipped: pass --data FOLDER (benchmarks/make_cifar_tensor.py) so "
                     "both read the same images")
    else:
        air = run_airbench(Path(args.data), args.timeout)
        if "error" in air:
            notes.append(f"- airbench94 comparison skipped: {air['error']}")
            air = None
    ours = run_ours(args.recipe, overrides, args.out_dir)
    rows.append([f"selfreg {Path(args.recipe).name}", f"{ours['seconds']:.1f}",
                 f"{ours['train_s']:.1f} ({ours['epochs']} epochs)", f"{ours['acc']:.2%}" if ours["acc"] else "?"])
    if air is not None:
        rows.append(["airbench94 (package)", f"{air['seconds']:.1f}", "-", f"{air['acc']:.2%}"])
        ratio = ours["seconds"] / air["seconds"]
    data = (f"data: {args.data} (train.pt / test.pt; ours holds out {args.val} training images for validation)"
            if args.data else "data: the recipe's")
    lines = [f"{data}; accuracy on test.pt; wall seconds end to end (ours includes data loading, the auto "
             "probe and torch.compile).", ""]
    lines += table(["run", "wall s", "training epochs s", "test acc"], rows) + [""]
    if ratio:
        lines.append(f"- ours / airbench94 wall time: {ratio:.2f} (goal <= 2)")
    if ours.get("speed"):
        s = ours["speed"]
        lines.append(f"- ours ran with amp {s['amp']}, channels_last {s['channels_last']}, compile {s['compile']}")
    lines += notes
    print("\n".join(lines))
    if args.markdown:
        write_section(args.markdown, "Time to 94% (GPU)", lines, device="cuda")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
