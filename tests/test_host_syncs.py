"""The training step as a GPU would run it, shown on the CPU: no host-device sync per step,
checkpoints that load anywhere, and determinism decided in one place (issue 30)."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from selfreg import create_model
from selfreg.config import load_config
from selfreg.train import checkpoint as ckpt
from selfreg.train import engine
from selfreg.train.engine import EpochProgress, StepOptions, make_ema, set_determinism, train_one_epoch

# Operations that make the host wait for a GPU: a read of a device value (.item(), bool(),
# .tolist(), .cpu() of a scalar all end in _local_scalar_dense or a copy to the CPU) and a
# tensor made from Python values (lift_fresh: torch.tensor(x, device=...)).
BLOCKING = {"_local_scalar_dense", "lift_fresh", "lift_fresh_copy", "scalar_tensor"}


class CountBlocking(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in BLOCKING:
            self.count += 1
        return func(*args, **(kwargs or {}))


def blocking_ops(steps: int, **options) -> int:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    opts = StepOptions(device=torch.device("cpu"), autocast=contextlib.nullcontext, check_every=1000, **options)
    if options.get("ema") == "make":
        opts.ema = make_ema(model, 0.9)
    with CountBlocking() as counter:
        train_one_epoch(model, batches, opt, sched, opts, progress=EpochProgress(), stop=engine.StopFlag())
    return counter.count


@pytest.mark.parametrize("options", [{}, {"ema": "make"}, {"grad_clip": 1.0}], ids=["plain", "ema", "clip"])
def test_no_blocking_operation_per_training_step(options):
    """Reads of device values happen at the epoch's end and every check_every steps, never per
    step: the count is the same for 2 and for 6 steps (EMA and clipping included)."""
    assert blocking_ops(2, **options) == blocking_ops(6, **options)


def test_nan_policy_skip_reads_every_step_and_says_so():
    """nan_policy=skip must know before the step whether to take it: one read per step, by design."""
    assert blocking_ops(6, nan_policy="skip") - blocking_ops(2, nan_policy="skip") == 4


def test_resume_loads_the_checkpoint_to_the_cpu(tmp_path, monkeypatch):
    """A checkpoint saved on a GPU (or another GPU count) loads anywhere: always to the CPU, and the
    weights and optimizer state move to the model's device in load_state_dict."""
    tiny = ["data.name=digits", "data.subset=128", "data.val_fraction=64", "data.image_size=8", "model.name=resnet20",
            "train.plot=false", "train.progress=none", "train.tensorboard=false", "train.threads=1",
            f"train.out_dir={tmp_path}", "train.run_name=r"]
    engine.fit(load_config(None, [*tiny, "train.epochs=1"]), log=lambda s: None)
    seen = []
    real = engine.load_checkpoint

    def spy(path, map_location=None, **kwargs):
        seen.append(map_location)
        return real(path, map_location=map_location, **kwargs)

    monkeypatch.setattr(engine, "load_checkpoint", spy)
    engine.fit(load_config(None, [*tiny, "train.epochs=2"]), resume=tmp_path / "r", log=lambda s: None)
    assert seen == ["cpu"]


def test_cuda_rng_states_restore_onto_the_gpus_there_are(monkeypatch):
    """Saved with 2 GPUs, resumed with 1: the visible GPU's state is restored, nothing fails."""
    state = ckpt.rng_state()
    state["cuda"] = [torch.ByteTensor([1, 2, 3]), torch.ByteTensor([4, 5, 6])]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((s.device.type, i)))
    ckpt.set_rng_state(state)
    assert restored == [("cpu", 0)]


def test_determinism_is_decided_in_one_place(monkeypatch):
    """train.deterministic on CUDA: deterministic cuDNN/cuBLAS, no cuDNN autotuning; false: the
    benchmark mode; on the CPU nothing global changes."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled())
    try:
        set_determinism(True, torch.device("cpu"))
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                torch.are_deterministic_algorithms_enabled()) == before
        set_determinism(True, torch.device("cuda", 0))
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_determinism(False, torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[0], before[1]
        torch.use_deterministic_algorithms(before[2])
