"""torchrun with 2 CPU processes (gloo): identical weights on both ranks, one checkpoint,
the same result as one process with the same global batch, and rank 0 alone logging."""
import glob

import pytest
import torch

from procs import selfreg_in_process, torchrun
from trackers import mlflow_runs, offline_wandb
from selfreg.train.checkpoint import load_checkpoint

# GroupNorm: a batch split over 2 processes normalises exactly as one process does
# (SyncBatchNorm needs CUDA). No augmentation, so both runs see identical images.
ARGS = ["data.image_size=8", "train.epochs=2", "optim.lr=0.02", "data.batch_size=256", "model.name=resnet20",
        "model.kwargs.norm_layer=group", "train.threads=1", "train.plot=false", "train.progress=none",
        "data.augment=none", "sched.milestones=[1]"]


def train(out, name, nproc, *extra):
    args = ["train", "configs/demo.yaml", *ARGS, f"train.out_dir={out}", f"train.run_name={name}", *extra]
    # One process: in this one (one thread, as each rank), sparing an interpreter start.
    proc = torchrun(nproc, *args, timeout=240) if nproc > 1 else selfreg_in_process(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")   # its sqlite store's own SQLAlchemy warnings
def test_two_process_ddp_matches_single_process_and_rank_0_alone_logs(tmp_path, monkeypatch):
    """Also the loggers under DDP (one torchrun serves both checks): one MLflow run, one W&B run,
    one metrics.csv, all from rank 0."""
    trackers = tmp_path.parent / f"{tmp_path.name}-trackers"
    offline_wandb(monkeypatch, trackers)
    ddp = train(tmp_path, "ddp", 2, "train.loggers=[csv, mlflow, wandb]", f"train.mlflow_uri={trackers / 'mlruns'}")
    assert "weights identical across 2 ranks: yes" in ddp.stdout
    _, runs = mlflow_runs(trackers / "mlruns")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(glob.glob(str(trackers / "wandb_dir" / "wandb" / "offline-run-*"))) == 1
    train(tmp_path, "single", 1)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["ddp", "single"]  # rank 1 wrote no run
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    a = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    # Same data, same global batch: only float summation order differs (gradient all-reduce of
    # two half-batch means vs one mean), amplified a little over 10 momentum-SGD steps.
    for k, ref in b["model"].items():
        torch.testing.assert_close(a["model"][k], ref, rtol=1e-3, atol=2e-4, msg=k)
    rows_a = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    rows_b = (tmp_path / "single" / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 3
    # Train loss is all-reduced over ranks: the same number as one process computes.
    col = rows_a[0].split(",").index("train_loss")
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        assert float(ra.split(",")[col]) == pytest.approx(float(rb.split(",")[col]), rel=2e-3)


def worker_pids(agent_pid: int) -> list[int]:
    """The training processes torchrun's agent started (its children running selfreg)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if int(line.split()[1]) == agent_pid and "selfreg" in line]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_and_its_run_continues_exactly(tmp_path):
    """torchrun with restarts, `kill -9` of one worker after an epoch: the restarted workers
    find their run (train.resume=auto) and continue it, ending with the weights of a run that was
    never interrupted; no "Grad strides do not match" warning (digits' 1-channel stem)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from procs import REPO, env_with_src, spawn

    args = ["train", "configs/demo.yaml", *ARGS, "train.epochs=4", "data.augment=shift", "train.resume=auto",
            "model.kwargs.norm_layer=batch", f"train.out_dir={tmp_path}"]
    reference = torchrun(2, *args, "train.run_name=reference", timeout=300)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert "Grad strides do not match" not in reference.stderr, reference.stderr[-2000:]
    # One restart, as the command: each restart round keys the process group's store
    # apart (distributed.round_store), so the restarted round never reads the dead round's
    # addresses (its gloo connect was refused or hung under load before: pytorch/pytorch#167288).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "selfreg", *args, "train.run_name=killed"]
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    with spawn(cmd, cwd=REPO, env=env_with_src(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, text=True) as agent:
        deadline = time.time() + 300
        while not checkpoint.is_file():
            assert agent.poll() is None and time.time() < deadline, agent.communicate()[0][-3000:]
            time.sleep(0.1)
        os.kill(worker_pids(agent.pid)[-1], signal.SIGKILL)
        out, _ = agent.communicate(timeout=400)
    assert agent.returncode == 0, out[-3000:]
    starts = re.findall(r"epochs (\d+)\.\.4", out)
    assert starts[0] == "1" and len(starts) == 2 and int(starts[1]) > 1, out[-3000:]   # continued, not restarted
    a = load_checkpoint(checkpoint)
    b = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for k, ref in b["model"].items():
        assert torch.equal(a["model"][k], ref), k
