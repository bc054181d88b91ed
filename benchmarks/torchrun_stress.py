"""Stress test: a 3-run sweep under torchrun (2 gloo ranks on the CPU), repeated N times.

A hang in joining or leaving the process group shows up as a repetition that does not
finish within --timeout; that repetition's whole process group is killed, its last output
lines are printed, and the script counts it. Not part of `make test` (minutes of CPU):

    PYTHONPATH=src python benchmarks/torchrun_stress.py --repeat 10

Exit code 0 when every repetition finished, 1 when any hung or failed.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Three tiny runs: the second and third reuse the process group the first one joined.
RECIPE = {
    "model": {"name": "resnet20"},
    "data": {"name": "digits", "image_size": 8, "batch_size": 32, "subset": 64, "val_fraction": 32},
    "optim": {"lr": 0.05},
    "sched": {"milestones": [5]},
    "train": {"epochs": 1, "tensorboard": False, "plot": False, "progress": "none", "threads": 1},
    "sweep": {"name": "stress", "seeds": [0], "grid": {"model.name": ["resnet20", "resnet32", "rrnet20_gru"]}},
}


def one_sweep(workdir: Path, nproc: int, timeout: float) -> tuple[str, float, str]:
    """Run the sweep once; return (outcome, seconds, last output lines)."""
    recipe = workdir / "stress.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "selfreg", "sweep", str(recipe), "-o", str(workdir / "sw")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        outcome = "ok" if proc.returncode == 0 and "3 of 3 runs finished" in out else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)      # torchrun and both workers
        out, _ = proc.communicate()
        outcome = "HUNG"
    tail = "\n".join(out.strip().splitlines()[-5:])
    return outcome, time.perf_counter() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a repetition counts as hung")
    args = parser.parse_args(argv)
    outcomes = []
    for k in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="selfreg-stress-") as tmp:
            outcome, seconds, tail = one_sweep(Path(tmp), args.nproc, args.timeout)
        outcomes.append(outcome)
        print(f"[{k}/{args.repeat}] {outcome} in {seconds:.1f} s", flush=True)
        if outcome != "ok":
            print("  " + tail.replace("\n", "\n  "), flush=True)
    hung = outcomes.count("HUNG")
    failed = sum(o.startswith("failed") for o in outcomes)
    print(f"{args.repeat} torchrun sweeps of 3 runs on {args.nproc} ranks: {outcomes.count('ok')} finished, "
          f"{hung} hung, {failed} failed (load average {os.getloadavg()[0]:.1f})")
    return 0 if hung == failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
