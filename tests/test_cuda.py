"""The CUDA path end to end, as users run it: what benchmarks/gpu_check.py's cuda-tests part runs.

    pytest -q -m cuda tests/test_cuda.py        # on a machine with a GPU; every test skips without one

What each test shows (on a small digits run at 8x8, so the whole file takes minutes):
- amp=auto picks bf16 by compute capability (>= 8.0), channels_last on CUDA;
- RegNet-20 GRU and LSTM train in channels_last under bf16 and fp16 (with its loss scaler), eager;
- EMA and SAM under bf16; fp16 with gradient clipping takes its optimizer steps (the scaler's
  scale says how many it skipped);
- a run stopped after an epoch and resumed ends bit for bit where an uninterrupted one does
  (train.deterministic=true, the default);
- torchrun with 2 processes through the engine: identical replicas, sharded evaluation, close
  to one process (GroupNorm: the maths is the same, only the gradient all-reduce's summation
  order differs, so a stated tolerance, not bit-exactness), and a 2-process resume bit-exact
  against the uninterrupted 2-process run. NCCL with 2 GPUs or more; on one GPU (NCCL refuses
  two ranks on one device) both ranks share it over gloo (SELFREG_DIST_BACKEND=gloo). With 2 GPUs
  also SyncBatchNorm over NCCL;
- eval / predict / export of a CUDA run on CUDA;
- last (each compiles cold, the slow part): RegNet-20 GRU under bf16 and LSTM under fp16,
  channels_last, compiled: one compiled graph per run, no graph break, trains like eager.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from procs import env_with_src, selfreg_in_process, torchrun
from selfreg.config import load_config
from selfreg.train.checkpoint import load_checkpoint
from selfreg.train.engine import Run, fit

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
ON_CUDA = f"train.device={DEVICE}"
TINY = ["data.image_size=8", "train.epochs=1", "data.batch_size=128", "model.name=resnet20", ON_CUDA,
        "train.plot=false", "train.progress=none", "train.tensorboard=false"]
quiet = dict(log=lambda s: None)


def tiny(tmp_path, *extra, name="r"):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", f"train.run_name={name}", *extra])


def rows(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, line.split(","))) for line in lines[1:]]


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_finite_run(summary, run_dir):
    for row in rows(run_dir):
        for key in ("train_loss", "val_loss"):
            assert math.isfinite(float(row[key])), (key, row)
    assert 0.0 <= summary["final_val_acc"] <= 1.0
    assert torch.cuda.get_device_name(0) in summary["device"]


# ------------------------------------------------------------------------------ amp=auto
def test_auto_on_cuda_picks_bf16_by_compute_capability_and_channels_last(tmp_path):
    summary = fit(tiny(tmp_path), **quiet)
    speed = summary["speed"]
    want_amp = "bf16" if torch.cuda.get_device_capability(0) >= (8, 0) else "none"
    # One short epoch: no probe, no compile; the CUDA defaults.
    assert (speed["amp"], speed["channels_last"], speed["compile"]) == (want_amp, True, False)


# ------------------------------------------------------------------------------ RegNet-20 cells, eager
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("model", ["rrnet20_gru", "rrnet20_lstm"])
def test_regnet_cells_train_in_channels_last(tmp_path, model, amp):
    run = Run(tiny(tmp_path, f"model.name={model}", f"train.amp={amp}", "train.channels_last=true",
                   "train.compile=false", "train.epochs=2"), **quiet)
    summary = run.fit()
    assert_finite_run(summary, run.run_dir)
    assert (summary["speed"]["amp"], summary["speed"]["channels_last"]) == (amp, True)
    conv = next(p for p in run.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.device.type == "cuda"
    if amp == "fp16":
        assert_scaler_stepped(run)


def assert_scaler_stepped(run):
    """The loss scaler halves its scale at every skipped step and does not grow within 2000 steps,
    so the scale counts the skipped steps; fp16's first steps may overflow, later ones must not."""
    state = run.opts.scaler.state_dict()          # the engine's GradScaler: torch's defaults, scale 2**16 at first
    steps = run.cfg.train.epochs * len(run.loaders["train"])
    skipped = round(math.log2(2.0 ** 16 / state["scale"]))
    tracker = state["_growth_tracker"]            # steps taken since the last skipped one
    assert skipped <= 4 and tracker >= 1 and tracker + skipped <= steps, (steps, skipped, tracker)
    losses = [float(r["train_loss"]) for r in rows(run.run_dir)]
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------------------ EMA, SAM, fp16 + clipping
def test_ema_and_sam_under_bf16(tmp_path):
    summary = fit(tiny(tmp_path, "train.amp=bf16", "train.channels_last=true", "train.compile=false",
                       "train.ema_decay=0.9", "optim.sam=true", "train.epochs=2"), **quiet)
    assert_finite_run(summary, tmp_path / "r")
    for row in rows(tmp_path / "r"):
        assert math.isfinite(float(row["ema_val_loss"])) and 0 <= float(row["ema_val_acc"]) <= 1


def test_fp16_with_gradient_clipping_takes_its_steps(tmp_path):
    run = Run(tiny(tmp_path, "train.amp=fp16", "train.channels_last=true", "train.compile=false",
                   "optim.grad_clip=1.0", "train.epochs=3"), **quiet)
    summary = run.fit()
    assert_finite_run(summary, run.run_dir)
    assert_scaler_stepped(run)


def test_no_cuda_generator_is_reseeded_by_the_loader():
    """A per-image (PIL/torchvision) augmentation seeds only the CPU generator (data.transforms.seeded)."""
    from selfreg.data.transforms import seeded

    torch.cuda.manual_seed(1234)
    before = torch.cuda.get_rng_state()
    with seeded(7):
        torch.rand(3)
    assert torch.equal(torch.cuda.get_rng_state(), before)


# ------------------------------------------------------------------------------ exact resume, one process
def test_resume_on_cuda_is_bit_exact(tmp_path):
    same = ["train.amp=bf16", "train.channels_last=true", "train.compile=false", "data.augment=shift",
            "train.deterministic=true"]
    fit(tiny(tmp_path, *same, "train.epochs=2", name="whole"), **quiet)
    fit(tiny(tmp_path, *same, "train.epochs=1", name="part"), **quiet)
    done = selfreg_in_process("train", "--resume", tmp_path / "part", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "whole")) == strip(rows(tmp_path / "part"))


# ------------------------------------------------------------------------------ DDP through the engine
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
# GroupNorm: a batch split over 2 processes normalises exactly as one process does.
DDP_ARGS = ["data.image_size=8", "optim.lr=0.02", "data.batch_size=256", "model.name=resnet20",
            "model.kwargs.norm_layer=group", "train.plot=false", "train.progress=none", "train.tensorboard=false",
            "data.augment=none", "train.amp=none", "train.channels_last=true", "train.compile=false",
            "train.deterministic=true"]


def ddp_env():
    """NCCL on 2 GPUs (each rank its own); on one GPU both ranks share it over gloo."""
    if GPUS >= 2:
        return ["train.device=cuda"], env_with_src(OMP_NUM_THREADS="1")
    return ["train.device=cuda:0"], env_with_src(OMP_NUM_THREADS="1", SELFREG_DIST_BACKEND="gloo")


def ddp_train(out, name, *extra, resume=None):
    device, env = ddp_env()
    args = ["train", "--resume", resume, *extra] if resume else \
        ["train", "configs/demo.yaml", *DDP_ARGS, *device, f"train.out_dir={out}", f"train.run_name={name}", *extra]
    proc = torchrun(2, *args, timeout=200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "weights identical across 2 ranks: yes" in proc.stdout, proc.stdout[-2000:]
    return proc


def test_two_process_ddp_on_cuda_matches_one_process_and_resumes_exactly(tmp_path):
    ddp_train(tmp_path, "ddp", "train.epochs=2")
    single = selfreg_in_process("train", "configs/demo.yaml", *DDP_ARGS, ON_CUDA, "train.epochs=2",
                                f"train.out_dir={tmp_path}", "train.run_name=single")
    assert single.returncode == 0, single.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]          # rank 1 wrote no run
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    # Same data, same global batch: only the summation order of the gradient all-reduce (two
    # half-batch means vs one mean) differs, amplified over 10 momentum-SGD steps (this very
    # test on the CPU over gloo: 6e-4 at most on weights up to 0.4), so not bit-exact.
    for key, ref in b.items():
        torch.testing.assert_close(a[key], ref, rtol=1e-2, atol=2e-3, msg=key)
    ra, rb = rows(tmp_path / "ddp"), rows(tmp_path / "single")
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=2e-3)
        # Sharded evaluation: every validation image counted once over the 2 ranks.
        assert float(x["val_loss"]) == pytest.approx(float(y["val_loss"]), rel=2e-3)
        assert abs(float(x["val_acc"]) - float(y["val_acc"])) <= 2 / 288 + 1e-9
    # Stopped after one epoch, resumed by a new torchrun: bit-exact against the uninterrupted one.
    ddp_train(tmp_path, "part", "train.epochs=1")
    ddp_train(tmp_path, "part", "train.epochs=2", resume=tmp_path / "part")
    c = weights(tmp_path / "part")
    for key in a:
        assert torch.equal(a[key], c[key]), key


@pytest.mark.skipif(GPUS < 2, reason="SyncBatchNorm over NCCL needs 2 GPUs (NCCL refuses two ranks on one)")
def test_two_gpu_nccl_with_sync_batchnorm(tmp_path):
    proc = ddp_train(tmp_path, "sync", "train.epochs=2", "model.kwargs.norm_layer=batch", "train.sync_bn=true")
    single = selfreg_in_process("train", "configs/demo.yaml", *DDP_ARGS, "model.kwargs.norm_layer=batch",
                                ON_CUDA, "train.epochs=2", f"train.out_dir={tmp_path}",
                                "train.run_name=single")
    assert single.returncode == 0, single.stderr
    assert "2 processes" in proc.stdout
    a, b = weights(tmp_path / "sync"), weights(tmp_path / "single")
    # SyncBatchNorm reduces the batch statistics over ranks in another order than cuDNN's
    # batch norm over one batch: a looser tolerance than GroupNorm's.
    for key, ref in b.items():
        if ref.is_floating_point():
            torch.testing.assert_close(a[key], ref, rtol=1e-2, atol=1e-3, msg=key)


# ------------------------------------------------------------------------------ eval / predict / export
def test_eval_predict_export_on_cuda(tmp_path):
    summary = fit(tiny(tmp_path, "train.amp=bf16", "train.channels_last=true", "train.compile=false",
                       "train.epochs=2"), **quiet)
    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    proc = selfreg_in_process("eval", ckpt, "--split", "val", "--device", DEVICE, "--channels-last",
                              "-o", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The run's own bf16 autocast and layout (from its speed.json): the engine's number, up to a
    # near-tie image (another batch composition may pick other cuDNN kernels).
    assert abs(metrics["top1"] - summary["final_val_acc"]) * metrics["images"] <= 1

    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(4):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    proc = selfreg_in_process("predict", ckpt, *paths, "--device", DEVICE, "--json")
    assert proc.returncode == 0, proc.stderr
    predictions = json.loads(proc.stdout)
    assert len(predictions) == 4 and all(not p.get("error") for p in predictions)

    for fmt in ("onnx", "torchscript", "safetensors"):
        legacy = ["--exporter", "legacy"] if fmt == "onnx" else []     # the quicker exporter: seconds, not tens
        proc = selfreg_in_process("export", ckpt, "--format", fmt, "--device", DEVICE, *legacy,
                                  "-o", tmp_path / "export" / f"model.{fmt}")
        # onnx needs the onnx package; without it the one-line error says so.
        if fmt == "onnx" and proc.returncode != 0 and "pip install" in proc.stderr:
            continue
        assert proc.returncode == 0, (fmt, proc.stderr)


# ------------------------------------------------------------------------------ compiled (last: cold compiles)
@pytest.mark.parametrize("model, amp", [("rrnet20_gru", "bf16"), ("rrnet20_lstm", "fp16")])
def test_compiled_regnet_compiles_once_and_trains_like_eager(tmp_path, model, amp):
    from torch._dynamo.utils import counters

    same = [f"model.name={model}", f"train.amp={amp}", "train.channels_last=true", "train.epochs=2",
            "data.augment=none"]
    eager = fit(tiny(tmp_path, *same, "train.compile=false", name="eager"), **quiet)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    # 2 epochs of 9 batches, the last of each short, and an evaluation after each: one graph.
    run = Run(tiny(tmp_path, *same, "train.compile=true", name="compiled"), **quiet)
    compiled = run.fit()
    assert compiled["speed"]["compile"] is True
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert sum(counters["graph_break"].values()) == breaks
    assert_finite_run(compiled, run.run_dir)
    assert abs(compiled["final_val_acc"] - eager["final_val_acc"]) < 0.2
    if amp == "fp16":
        assert_scaler_stepped(run)
