"""Every GPU measurement of docs/performance.md, in one run of at most 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py                 # on the GPU machine (see --carry for what it needs)
    python benchmarks/gpu_check.py --dry-run       # anywhere: what it would run and measure
    python benchmarks/gpu_check.py --carry         # what must travel to the GPU machine, and how to start it

Each part is one of the repo's benchmark scripts (or pytest) in its own process, with CUDA
options, its own time budget and the whole run's deadline (`--budget`, 480 s): a part that
would start with less than `MIN_START_S` seconds left is skipped, and a part still running at
its budget is stopped and reported as such, so the run always ends in time. Each script writes
its own section of `--markdown` (default docs/performance.md); logs and a summary
(summary.md, summary.json) go to `--out`.

Without a CUDA device it is a dry run (the same as --dry-run): it prints every part, what it
measures, its target and command, and exits 0 without running anything.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path("benchmarks")
MIN_START_S = 20
JPEG = ".data/cifar10-jpeg-train.tar.xz"     # the CIFAR-10 JPEG copy's archive, carried (15 MB)
TENSORS = ".data/cifar10t"                  # made from it here: train.pt + test.pt (153 MB, not carried)
WHEELS = ".whl"                             # airbench's wheel (the GPU machine has no network)


@dataclass
class Part:
    name: str
    measures: str
    target: str
    budget_s: int
    argv: list[str]          # after the Python interpreter; {md} and {data} are filled in
    cuda: bool = True        # needs a GPU (every part but the data preparation)


def parts(md: str, data: str, jpeg: str) -> list[Part]:
    """The run, in order; budgets add up to at most the default deadline."""
    fill = lambda argv: [a.format(md=md, data=data, jpeg=jpeg) for a in argv]  # noqa: E731
    return [
        Part("data", f"CIFAR-10 uint8 tensor files in {data} from the JPEG copy {jpeg} (skipped when present)",
             "train.pt and test.pt written", 25,
             fill([str(BENCH / "make_cifar_tensor.py"), "{jpeg}", "{data}"]), cuda=False),
        Part("cuda-tests", "pytest -m cuda: bf16 / fp16 autocast and channels_last steps, torch.compile against "
             "eager, train.*=auto on CUDA, one-process DDP with NCCL", "all pass", 100,
             ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]),
        Part("step-time", "training-step time of the RegNet-20 light/full cells over ResNet-20 on CUDA, next to "
             "their MAC ratios", "light regulator time ratio <= 1.25x its MAC ratio", 35,
             fill([str(BENCH / "step_time.py"), "--device", "cuda", "--steps", "10", "--rounds", "3",
                   "--no-reference", "--markdown", "{md}"])),
        Part("precision", "resnet50 (batch 128, 224x224) bf16 autocast + channels_last against fp32 NCHW",
             ">= 1.5x the fp32 NCHW throughput", 40,
             fill([str(BENCH / "compile_precision.py"), "--device", "cuda", "--skip-compile", "--markdown", "{md}"])),
        Part("data-wait", "time resnet20 waits for the fast loader's batches (CIFAR transform on the GPU)",
             "< 5% of a step", 20,
             fill([str(BENCH / "data_wait.py"), "--device", "cuda", "--markdown", "{md}"])),
        Part("framework-tax", "selfreg's train_one_epoch (NCHW and as train.*=auto picks) against minimal loops "
             "in both layouts, resnet20", ">= 0.95x the faster minimal loop's throughput", 25,
             fill([str(BENCH / "framework_tax.py"), "--device", "cuda", "--skip-resnet50", "--markdown", "{md}"])),
        Part("compile-cache", "cold and warm torch.compile of resnet20 in two fresh processes, cache size on disk, "
             "eager vs compiled step", "warm compile a fraction of cold; compiled step <= eager", 75,
             fill([str(BENCH / "compile_cache.py"), "--device", "cuda", "--models", "resnet20", "--markdown", "{md}"])),
        Part("time-to-94", "configs/fast/cifar10_94.yaml against airbench94 (package) on the same GPU and the same "
             "tensor files", "ours within 2x of airbench94's wall time", 160,
             fill([str(BENCH / "time_to_94.py"), "--data", "{data}", "--markdown", "{md}"])),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the parts and exit (automatic without CUDA)")
    p.add_argument("--carry", action="store_true", help="print what must travel to the GPU machine and exit")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    p.add_argument("--only", default="", help="comma-separated part names")
    p.add_argument("--markdown", default="docs/performance.md", help="the file the scripts write their sections to")
    p.add_argument("--data", default=TENSORS, help="folder for train.pt / test.pt")
    p.add_argument("--jpeg", default=JPEG, help="the JPEG copy (archive or folder) to make them from")
    p.add_argument("--out", default="runs/gpu_check", help="logs and summary")
    return p


def carry_text() -> str:
    return f"""What must travel to the GPU machine (it has no network):

  the repository's tracked files              (src/, benchmarks/, tests/, configs/, docs/)
  {JPEG:<42}  the CIFAR-10 JPEG copy's archive, 15 MB: cp ../shared/data/cifar10-jpeg-train.tar.xz .data/
  {WHEELS + '/':<42}  airbench's wheel: pip wheel --no-deps airbench==0.1.8 -w .whl (.whl/ is git-ignored)

Not carried: .venv (made for this machine; its torch is not the GPU image's), and the tensor files
{TENSORS}/ (153 MB; the 'data' part makes them there from the archive in seconds).

The GPU machine needs Python with torch (CUDA), torchvision, timm, tensorboard, matplotlib, scikit-learn,
pyyaml, tqdm, safetensors and pytest, which this project's GPU image has; elsewhere `pip install -e .[dev]`
and `pip install airbench`. Then, from the repository root:

  pip install -q --no-deps --no-index --target /tmp/site {WHEELS}/*.whl && export PYTHONPATH=src:/tmp/site
  python benchmarks/gpu_check.py --out OUT --markdown OUT/performance.md   # OUT: a folder that comes back

OUT/performance.md starts as a copy of docs/performance.md and gains the GPU sections: copy it back over
docs/performance.md here. OUT/summary.md says what passed; OUT/*.log hold each part's output.
Paths to name as carried: {JPEG} {WHEELS}"""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.carry:
        print(carry_text())
        return 0
    absolute = lambda p: str(Path(p).resolve())  # noqa: E731 (the parts run from the repository root)
    plan = parts(args.markdown, args.data, args.jpeg) if args.dry_run else \
        parts(absolute(args.markdown), absolute(args.data), absolute(args.jpeg))
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {p.name for p in plan}]
        if unknown:
            print(f"gpu_check: unknown part(s) {', '.join(unknown)}; parts: {', '.join(p.name for p in plan)}",
                  file=sys.stderr)
            return 2
        plan = [p for p in plan if p.name in wanted]
    cuda = False
    if not args.dry_run:
        import torch

        cuda = torch.cuda.is_available()
    if args.dry_run or not cuda:
        print(("dry run" if args.dry_run else "no CUDA device: dry run") +
              f"; {len(plan)} parts, deadline {args.budget:.0f} s, sections written to {args.markdown}:")
        for p in plan:
            print(f"\n[{p.name}] ({p.budget_s} s{'' if p.cuda else ', no GPU needed'})\n  measures: {p.measures}\n"
                  f"  target:   {p.target}\n  command:  python {' '.join(p.argv)}"
                  + ("\n  skipped here: needs CUDA" if p.cuda and not cuda else ""))
        print(f"\nbudgets add up to {sum(p.budget_s for p in plan)} s; python benchmarks/gpu_check.py --carry "
              "says what the GPU machine needs")
        return 0
    return run(plan, args)


def run(plan: list[Part], args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = Path(args.markdown)
    if not md.exists() and (REPO / "docs" / "performance.md").is_file():   # start from the page's other sections
        md.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "docs" / "performance.md", md)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    deadline = time.monotonic() + args.budget
    results = []
    for p in plan:
        left = deadline - time.monotonic()
        if p.name == "data" and (Path(args.data) / "train.pt").is_file():
            results.append({"part": p.name, "status": "present", "seconds": 0.0, "lines": []})
            continue
        if left < MIN_START_S:
            results.append({"part": p.name, "status": f"skipped: {left:.0f} s left", "seconds": 0.0, "lines": []})
            continue
        limit = min(p.budget_s, left)
        start = time.monotonic()
        log = out / f"{p.name}.log"
        print(f"[{p.name}] up to {limit:.0f} s: python {' '.join(p.argv)}", flush=True)
        # Its own process group, so a part's children (torchrun's workers, airbench) stop with it.
        proc = subprocess.Popen([sys.executable, *p.argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            status = f"stopped at its {limit:.0f} s budget"
        log.write_text(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("- ") or " passed" in ln or " failed" in ln
                 or "skipped" in ln.lower()][-8:]
        results.append({"part": p.name, "status": status, "seconds": round(time.monotonic() - start, 1),
                        "lines": lines})
        print(f"[{p.name}] {status} in {results[-1]['seconds']:.0f} s", *[f"    {ln}" for ln in lines], sep="\n",
              flush=True)
    total = args.budget - (deadline - time.monotonic())
    summary = [f"# GPU check ({total:.0f} s of {args.budget:.0f})", "", "| part | status | s |", "| --- | --- | --- |"]
    summary += [f"| {r['part']} | {r['status']} | {r['seconds']:.0f} |" for r in results]
    for r in results:
        if r["lines"]:
            summary += ["", f"{r['part']}:", *[f"    {ln}" for ln in r["lines"]]]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    (out / "summary.json").write_text(json.dumps({"seconds": total, "parts": results}, indent=2))
    print("\n".join(summary))
    return 0 if all(r["status"] in ("ok", "present") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
