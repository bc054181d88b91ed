"""The GPU check: every CUDA test and GPU measurement, in one run of at most 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py --out OUT --markdown OUT/performance.md   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run       # anywhere: what it would run, measure and how long
    python benchmarks/gpu_check.py --carry         # what must travel to the GPU machine, and how to start it

The required parts, in order (their budgets add up to the 480 s deadline, `--budget`):
  data         CIFAR-10 uint8 tensor files from the carried JPEG archive (CPU)
  cuda-tests   pytest -m cuda tests/test_cuda.py: 2-process DDP through the engine (NCCL on 2+
               GPUs, gloo on one), exact resume, RegNet-20 GRU/LSTM under bf16 / fp16 in
               channels_last eager and compiled, EMA, SAM, fp16 with clipping, eval / predict /
               export on CUDA, amp=auto by compute capability
  time-to-94   configs/fast/cifar10_94.yaml against airbench94 on the same GPU and tensor files
  step-time    the step-time table on CUDA (this script, --step-table): fp32, bf16, bf16 in
               channels_last, and compiled (the eager table is written first, so a compile
               that runs out of time still leaves it)
Then extra parts, run only while time is left (skipped otherwise; `--budget 900` runs them):
precision, data-wait, framework-tax, compile-cache.

Each part runs in its own process group with its own budget and the run's deadline: a part
that would start with less than `MIN_START_S` seconds left is skipped, and a part still running
at its budget is stopped and reported as such, so the run always ends in time. Each benchmark
writes its own section of `--markdown`; logs and a summary (summary.md, summary.json) go to `--out`.

Without a CUDA device it is a dry run (the same as --dry-run): it prints every part, what it
measures, its target, command and budget, and the CUDA tests by name, and runs nothing.
"""
from __future__ import annotations

import argparse
import ast
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
CUDA_TESTS = Path("tests") / "test_cuda.py"
MIN_START_S = 20
DEADLINE_S = 480
JPEG = ".data/cifar10-jpeg-train.tar.xz"     # the CIFAR-10 JPEG copy's archive, carried (15 MB)
TENSORS = ".data/cifar10t"                  # made from it here: train.pt + test.pt (153 MB, not carried)
WHEELS = ".whl"                             # airbench's wheel (the GPU machine has no network)

# The step-time table: models (label, registered name, kwargs), then modes (label, amp, channels_last, compiled).
STEP_MODELS = [("resnet20", "resnet20", {}), ("rrnet20_gru light", "rrnet20_gru", {"form": "light"}),
               ("rrnet20_lstm light", "rrnet20_lstm", {"form": "light"})]
STEP_MODES = [("fp32 NCHW", "none", False, False), ("bf16 NCHW", "bf16", False, False),
              ("bf16 channels_last", "bf16", True, False), ("bf16 channels_last compiled", "bf16", True, True)]
STEP_COMPILED = ("resnet20", "rrnet20_gru light")    # a cold compile each (~30-60 s); each row written when timed


@dataclass
class Part:
    name: str
    measures: str
    target: str
    budget_s: int
    argv: list[str]          # after the Python interpreter; {md} and {data} are filled in
    cuda: bool = True        # needs a GPU (every part but the data preparation)
    extra: bool = False      # run only while time is left after the required parts


def parts(md: str, data: str, jpeg: str) -> list[Part]:
    """The run, in order; the required parts' budgets add up to at most DEADLINE_S."""
    fill = lambda argv: [a.format(md=md, data=data, jpeg=jpeg) for a in argv]  # noqa: E731
    return [
        Part("data", f"CIFAR-10 uint8 tensor files in {data} from the JPEG copy {jpeg} (skipped when present)",
             "train.pt and test.pt written", 20,
             fill([str(BENCH / "make_cifar_tensor.py"), "{jpeg}", "{data}"]), cuda=False),
        Part("cuda-tests", "pytest -m cuda: the engine on CUDA end to end (the tests are listed below)",
             "all pass (the 2-GPU SyncBN test skips on one GPU)", 240,
             ["-m", "pytest", "-v", "-m", "cuda", "-p", "no:cacheprovider", "-o", "timeout=200", str(CUDA_TESTS)]),
        Part("time-to-94", "configs/fast/cifar10_94.yaml against airbench94 (package) on the same GPU and the same "
             "tensor files, wall time end to end", "ours within 2x of airbench94's wall time", 130,
             fill([str(BENCH / "time_to_94.py"), "--data", "{data}", "--markdown", "{md}"])),
        Part("step-time", "training-step time on CUDA, batch 128 at 32x32: " + ", ".join(m[0] for m in STEP_MODELS)
             + " in " + ", ".join(m[0] for m in STEP_MODES) + f" (compiled: {', '.join(STEP_COMPILED)})",
             "light regulator time ratio <= 1.25x its MAC ratio; bf16 channels_last faster than fp32", 90,
             fill([str(BENCH / "gpu_check.py"), "--step-table", "--markdown", "{md}"])),
        Part("precision", "resnet50 (batch 128, 224x224) bf16 autocast + channels_last against fp32 NCHW",
             ">= 1.5x the fp32 NCHW throughput", 40,
             fill([str(BENCH / "compile_precision.py"), "--device", "cuda", "--skip-compile", "--markdown", "{md}"]),
             extra=True),
        Part("data-wait", "time resnet20 waits for the fast loader's batches (CIFAR transform on the GPU)",
             "< 5% of a step", 20,
             fill([str(BENCH / "data_wait.py"), "--device", "cuda", "--markdown", "{md}"]), extra=True),
        Part("framework-tax", "selfreg's train_one_epoch (NCHW and as train.*=auto picks) against minimal loops "
             "in both layouts, resnet20", ">= 0.95x the faster minimal loop's throughput", 25,
             fill([str(BENCH / "framework_tax.py"), "--device", "cuda", "--skip-resnet50", "--markdown", "{md}"]),
             extra=True),
        Part("compile-cache", "cold and warm torch.compile of resnet20 in two fresh processes, cache size on disk, "
             "eager vs compiled step", "warm compile a fraction of cold; compiled step <= eager", 75,
             fill([str(BENCH / "compile_cache.py"), "--device", "cuda", "--models", "resnet20", "--markdown", "{md}"]),
             extra=True),
    ]


def cuda_test_names(path: Path = REPO / CUDA_TESTS) -> list[str]:
    """The test functions of tests/test_cuda.py, with their parameters, read without importing torch."""
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            params = [ast.unparse(d.args[1]) for d in node.decorator_list
                      if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize") and len(d.args) > 1]
            names.append(node.name + "".join(f" x {p}" for p in params))
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the parts and exit (automatic without CUDA)")
    p.add_argument("--carry", action="store_true", help="print what must travel to the GPU machine and exit")
    p.add_argument("--budget", type=float, default=DEADLINE_S, help="seconds for the whole run")
    p.add_argument("--only", default="", help="comma-separated part names")
    p.add_argument("--markdown", default="docs/performance.md", help="the file the scripts write their sections to")
    p.add_argument("--data", default=TENSORS, help="folder for train.pt / test.pt")
    p.add_argument("--jpeg", default=JPEG, help="the JPEG copy (archive or folder) to make them from")
    p.add_argument("--out", default="runs/gpu_check", help="logs and summary")
    p.add_argument("--step-table", action="store_true", help="measure the step-time table (the step-time part)")
    p.add_argument("--steps", type=int, default=10, help="step table: timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3, help="step table: rounds")
    p.add_argument("--batch", type=int, default=128, help="step table: batch size")
    p.add_argument("--size", type=int, default=32, help="step table: input height and width")
    p.add_argument("--device", default="cuda", help="step table: cuda (cpu only to try the script)")
    p.add_argument("--no-compile", action="store_true", help="step table: leave out the compiled rows")
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
    if args.step_table:
        return step_table(args)
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
        dry_run(plan, args, cuda)
        return 0
    return run(plan, args)


def dry_run(plan: list[Part], args, cuda: bool) -> None:
    required = [p for p in plan if not p.extra]
    print(("dry run" if args.dry_run else "no CUDA device: dry run") +
          f"; {len(plan)} parts, deadline {args.budget:.0f} s, sections written to {args.markdown}:")
    for p in plan:
        when = "extra, only while time is left" if p.extra else "required"
        print(f"\n[{p.name}] ({p.budget_s} s, {when}{'' if p.cuda else ', no GPU needed'})\n"
              f"  measures: {p.measures}\n  target:   {p.target}\n  command:  python {' '.join(p.argv)}"
              + ("\n  skipped here: needs CUDA" if p.cuda and not cuda and not args.dry_run else ""))
        if p.name == "cuda-tests":
            print("  tests:    " + "\n            ".join(cuda_test_names()))
    print(f"\nrequired parts' budgets add up to {sum(p.budget_s for p in required)} s (deadline {DEADLINE_S} s); "
          "python benchmarks/gpu_check.py --carry says what the GPU machine needs")


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
            results.append({"part": p.name, "status": f"skipped: {left:.0f} s left", "seconds": 0.0, "lines": [],
                            "extra": p.extra})
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
        results.append({"part": p.name, "status": status, "seconds": round(time.monotonic() - start, 1),
                        "lines": summary_lines(text), "extra": p.extra})
        print(f"[{p.name}] {status} in {results[-1]['seconds']:.0f} s", *[f"    {ln}" for ln in results[-1]["lines"]],
              sep="\n", flush=True)
    total = args.budget - (deadline - time.monotonic())
    summary = [f"# GPU check ({total:.0f} s of {args.budget:.0f})", "", "| part | status | s |", "| --- | --- | --- |"]
    summary += [f"| {r['part']}{' (extra)' if r.get('extra') else ''} | {r['status']} | {r['seconds']:.0f} |"
                for r in results]
    for r in results:
        if r["lines"]:
            summary += ["", f"{r['part']}:", *[f"    {ln}" for ln in r["lines"]]]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    (out / "summary.json").write_text(json.dumps({"seconds": total, "parts": results}, indent=2))
    print("\n".join(summary))
    return 0 if all(r["status"] in ("ok", "present") for r in results if not r.get("extra")) else 1


def summary_lines(text: str, keep: int = 24) -> list[str]:
    """A part's result lines: the benchmarks' '- ' notes and pytest's per-test outcomes and totals."""
    words = (" passed", " failed", " PASSED", " FAILED", " ERROR", " SKIPPED", "skipped")
    return [ln for ln in text.splitlines() if ln.startswith("- ") or any(w in ln for w in words)][-keep:]


# ---------------------------------------------------------------------------------------
# The step-time part: one table on CUDA, fp32 / bf16 / channels_last / compiled

def step_table(args) -> int:
    import contextlib

    import torch

    from _common import interleave, medians, table, trainer, write_section
    from selfreg import create_model
    from selfreg.complexity import count_macs

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("step-time table: no CUDA device: skipped")
        return 0
    torch.backends.cudnn.benchmark = True            # speed, as train.deterministic=false runs
    x32 = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def stepper(name, kwargs, amp, channels_last, compiled):
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = create_model(name, num_classes=10, **kwargs).to(dev).to(memory_format=fmt).train()
        forward = torch.compile(model, dynamic=False) if compiled else model
        x = x32.contiguous(memory_format=fmt)
        autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
        return trainer(forward, x, y, autocast)

    macs = {label: count_macs(create_model(name, num_classes=10, **kw), args.size) for label, name, kw in STEP_MODELS}
    base = STEP_MODELS[0][0]
    med: dict[tuple[str, str], float] = {}
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type

    def write():
        rows = []
        for label, _, _ in STEP_MODELS:
            row = [label, f"{macs[label] / macs[base]:.2f}"]
            for mode in STEP_MODES:
                ms = med.get((label, mode[0]))
                row.append(f"{ms * 1e3:.2f}" if ms else "-")
            rows.append(row)
        lines = [f"batch {args.batch} at {args.size}x{args.size} on {where}, one SGD step (forward, backward, "
                 "update) per call, cuDNN benchmark mode; "
                 f"{args.rounds} rounds x {args.steps} steps after 3 warm-up steps, interleaved; median ms per step. "
                 "Compiled: torch.compile(dynamic=False), warm-up steps include the compile.", ""]
        lines += table(["model", "MAC ratio", *[f"{m[0]} ms" for m in STEP_MODES]], rows) + [""]
        for label, _, _ in STEP_MODELS[1:]:
            for mode in (m[0] for m in STEP_MODES):
                if (label, mode) in med and (base, mode) in med:
                    ratio = med[(label, mode)] / med[(base, mode)]
                    lines.append(f"- {label}, {mode}: time ratio {ratio:.2f}, time ratio / MAC ratio "
                                 f"{ratio / (macs[label] / macs[base]):.2f} (target on a GPU: <= 1.25)")
        for label, _, _ in STEP_MODELS:
            fp32, fast = med.get((label, STEP_MODES[0][0])), med.get((label, STEP_MODES[2][0]))
            if fp32 and fast:
                lines.append(f"- {label}: bf16 channels_last / fp32 NCHW step time {fast / fp32:.2f}")
        missing = [f"{label} {m[0]}" for m in STEP_MODES for label, _, _ in STEP_MODELS if (label, m[0]) not in med]
        if missing:
            lines.append(f"- not measured in this run: {', '.join(missing)}")
        print("\n".join(lines), flush=True)
        if args.markdown:
            title = "Step time on CUDA: fp32, bf16, channels_last, compiled" if dev.type == "cuda" else \
                f"Step time on {dev.type} (a trial of gpu_check --step-table)"
            write_section(args.markdown, title, lines, device=dev)

    eager_modes = [m for m in STEP_MODES if not m[3]]
    for mode in eager_modes:
        fns = {label: stepper(name, kw, mode[1], mode[2], False) for label, name, kw in STEP_MODELS}
        for label, t in medians(interleave(fns, args.rounds, args.steps, 3, device=dev)).items():
            med[(label, mode[0])] = t
    write()                                          # on disk before any compile
    for mode in (m for m in STEP_MODES if m[3] and not args.no_compile):   # one model at a time, each row written
        for label, name, kw in STEP_MODELS:
            if label in STEP_COMPILED:
                times = interleave({label: stepper(name, kw, mode[1], mode[2], True)}, args.rounds, args.steps, 3,
                                   device=dev)
                med[(label, mode[0])] = medians(times)[label]
                write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
