"""torchrun with 2 CPU processes (gloo): identical weights on both ranks, one checkpoint,
and the same result as one process with the same global batch."""
import pytest
import torch

from procs import selfreg_in_process, torchrun
from selfreg.train.checkpoint import load_checkpoint

# GroupNorm: a batch split over 2 processes normalises exactly as one process does
# (SyncBatchNorm needs CUDA). No augmentation, so both runs see identical images.
ARGS = ["data.image_size=8", "train.epochs=2", "optim.lr=0.02", "data.batch_size=256", "model.name=resnet20",
        "model.kwargs.norm_layer=group", "train.threads=1", "train.plot=false", "train.progress=none",
        "data.augment=none", "sched.milestones=[1]"]


def train(out, name, nproc):
    args = ["train", "configs/demo.yaml", *ARGS, f"train.out_dir={out}", f"train.run_name={name}"]
    # One process: in this one (one thread, as each rank), sparing an interpreter start.
    proc = torchrun(nproc, *args, timeout=240) if nproc > 1 else selfreg_in_process(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    ddp = train(tmp_path, "ddp", nproc=2)
    assert "weights identical across 2 ranks: yes" in ddp.stdout
    train(tmp_path, "single", nproc=1)
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
