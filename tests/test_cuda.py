"""CUDA paths of the engine: bf16/fp16 autocast, channels_last, torch.compile, auto, one-process NCCL DDP.

Run on a GPU machine with `pytest -m cuda` (benchmarks/gpu_check.py does); every test skips
without CUDA, so the CPU suite only counts them as skipped.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO
from selfreg.config import load_config
from selfreg.train.engine import fit

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = ["data.image_size=8", "train.epochs=1", "data.batch_size=128", "model.name=resnet20", "train.device=cuda",
        "train.plot=false", "train.progress=none", "train.tensorboard=false"]
quiet = dict(log=lambda s: None)


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", "train.run_name=r", *extra])


# bf16 and fp16 (with its loss scaler), each layout; fp32 NCHW runs in the compile test.
@pytest.mark.parametrize("amp, channels_last", [("bf16", True), ("fp16", True), ("fp16", False)])
def test_amp_and_layout_train_finite(tmp_path, amp, channels_last):
    summary = fit(tiny(tmp_path, f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
                       "train.compile=false"), **quiet)
    assert 0.0 <= summary["final_val_acc"] <= 1.0
    assert (summary["speed"]["amp"], summary["speed"]["channels_last"]) == (amp, channels_last)
    assert torch.cuda.get_device_name(0) in summary["device"]


def test_compile_trains_and_matches_eager_closely(tmp_path):
    # Batches that divide the splits (1150 train, 288 val): one shape each, so one compile each.
    same = ["train.amp=none", "train.channels_last=false", "data.batch_size=115", "data.eval_batch_size=288"]
    eager = fit(tiny(tmp_path / "e", *same, "train.compile=false"), **quiet)
    compiled = fit(tiny(tmp_path / "c", *same, "train.compile=true"), **quiet)
    assert compiled["speed"]["compile"] is True and compiled["speed"]["compile_cache"]
    assert abs(compiled["final_val_acc"] - eager["final_val_acc"]) < 0.2


def test_auto_on_cuda_picks_bf16_and_channels_last(tmp_path):
    summary = fit(tiny(tmp_path), **quiet)
    speed = summary["speed"]
    want_amp = "bf16" if torch.cuda.is_bf16_supported() else "none"
    # One short epoch: no probe, no compile; the CUDA defaults.
    assert (speed["amp"], speed["channels_last"], speed["compile"]) == (want_amp, True, False)


DDP_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from selfreg import create_model
    from selfreg.train import distributed as du

    ctx = du.setup("cuda")
    if not dist.is_initialized():            # one process: selfreg stays single; join NCCL here
        torch.cuda.set_device(0)
        dist.init_process_group("nccl")
    assert dist.get_backend() == "nccl", dist.get_backend()
    model = create_model("resnet20", num_classes=10).cuda().to(memory_format=torch.channels_last)
    ddp = DDP(model, device_ids=[0])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x = torch.randn(32, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(ddp(x).float(), y)
    loss.backward()
    opt.step()
    total = torch.ones(1, device="cuda")
    dist.all_reduce(total)
    assert total.item() == dist.get_world_size() == 1
    ok = du.replicas_in_sync(du.DistContext(0, 1, 0, torch.device("cuda", 0)), model)
    print("nccl ddp step ok", loss.item(), ok)
    dist.destroy_process_group()
""")


def test_one_process_nccl_ddp_step(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(script)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "nccl ddp step ok" in proc.stdout
