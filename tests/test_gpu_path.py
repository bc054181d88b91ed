"""The CUDA path's decisions, shown on the CPU: amp=auto on GPUs that only emulate bf16, the
loader's per-image work on the host, seeding that leaves the GPU's generators alone, cached
normalisation tensors, device choice and rank-0-first data under torchrun, one compile per run
(short last batch, evaluation, dynamic BN momentum), strict float32 in export checks, and
evaluation that reads the device once and runs under the run's autocast."""
import copy
import json
import pickle
import random
import sys
import textwrap
import types

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from procs import env_with_src, run
from selfreg.config import load_config
from selfreg.data import transforms
from selfreg.data.loader import FastLoader
from selfreg.errors import UserError
from selfreg.train import autotune, bn
from selfreg.train import distributed as du
from selfreg.train.engine import fit

quiet = dict(log=lambda s: None)


# ---------------------------------------------------------------------------- 1. amp=auto
@pytest.mark.parametrize("capability, amp", [((7, 0), "none"), ((7, 5), "none"), ((8, 0), "bf16"),
                                             ((9, 0), "bf16")])
def test_amp_auto_wants_bf16_units_not_emulation(monkeypatch, capability, amp):
    # A V100 (7.0) or T4 (7.5) passes torch.cuda.is_bf16_supported() by emulation; the rule asks
    # the run's device for its compute capability instead.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    monkeypatch.setattr(torch.version, "hip", None)
    device = torch.device("cuda", 1)
    choice = autotune.decide({"amp": "auto", "channels_last": False, "compile": False}, nn.Linear(2, 2), device,
                             (3, 8, 8), 10, batch=4, steps=1)
    assert choice.amp == amp and asked and all(torch.device(d) == device for d in asked)
    assert ("8.0 or later" if amp == "bf16" else f"{capability[0]}.{capability[1]}") in choice.how["amp"]


# ---------------------------------------------------------------------------- 2. Normalize
def test_normalize_builds_its_tensors_once_per_device_and_dtype(monkeypatch):
    stage = transforms.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    x = torch.rand(4, 3, 5, 5)
    reference = TF.normalize(x, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    outs = [stage.apply(x, None) for _ in range(3)] + [stage.sample(x[0])]
    assert len(made) == 2                                    # mean and std, once
    assert all(torch.equal(o, reference) for o in outs[:3]) and torch.equal(outs[3], reference[0])
    stage.apply(x.double(), None)
    assert len(made) == 4 and len(stage._tensors) == 2       # another dtype: its own pair
    copy = pickle.loads(pickle.dumps(stage))                 # DataLoader workers: lists, no tensors
    assert copy._tensors == {} and repr(copy) == repr(stage) == "Normalize([0.5000, 0.4000, 0.3000], " \
                                                                "[0.2000, 0.2500, 0.3000])"
    pipes = transforms.build_pipelines(["cifar"], transforms.Context((8, 8), (8, 8), 3, 3), [0.5] * 3, [0.2] * 3)
    assert isinstance(pipes.train.stages[-1], transforms.Normalize)
    assert isinstance(pipes.eval.stages[-1], transforms.Normalize)


# ---------------------------------------------------------------------------- 3. per-image work
def test_seeded_touches_only_the_cpu_generator_and_restores_it(monkeypatch):
    forks = []
    real_fork = torch.random.fork_rng

    def spy_fork(*args, **kwargs):
        forks.append(kwargs.get("devices", args[0] if args else None))
        return real_fork(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("seeded() touched a CUDA generator or reseeded every device")

    monkeypatch.setattr(torch.random, "fork_rng", spy_fork)
    for name in ("manual_seed", "manual_seed_all", "set_rng_state", "set_rng_state_all", "seed_all"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    monkeypatch.setattr(torch, "manual_seed", refuse)        # it reseeds every CUDA generator too
    torch.random.default_generator.manual_seed(123)
    random.seed(7)
    cpu_state, py_state = torch.get_rng_state(), random.getstate()
    draws = []
    for _ in range(2):
        with transforms.seeded(42):
            draws.append((torch.rand(3), random.random()))
    assert forks == [[], []]                                  # the CPU generator only
    assert torch.equal(torch.get_rng_state(), cpu_state) and random.getstate() == py_state
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1] == draws[1][1]


def test_fast_loader_runs_per_image_stages_on_the_host():
    # "meta" stands in for the GPU: shapes and devices without a GPU's arithmetic.
    ctx = transforms.Context((40, 40), (32, 32), 3, 3)
    pipes = transforms.build_pipelines(["imagenet", "lighting"], ctx, [0.5] * 3, [0.2] * 3)
    assert pipes.train.host_stages() == 1 and pipes.eval.host_stages() == 0
    seen = []
    stage = pipes.train.stages[0]
    real = stage.transform
    stage.transform = lambda img: (seen.append(img.device.type), real(img))[1]
    images, labels = torch.randint(0, 256, (10, 3, 40, 40), dtype=torch.uint8), torch.arange(10)
    loader = FastLoader(images, labels, pipes.train, 4, shuffle=True, seed=0, device=torch.device("meta"))
    assert loader.images.device.type == "cpu"                 # the uint8 images stay in host memory
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(x.device.type == "meta" and y.device.type == "meta" for x, y in batches)
    assert seen == ["cpu"] * 10                                # one call per image, each on the CPU
    # The cut changes no pixel: the same parameters through the two halves give the whole.
    whole = transforms.build_pipelines(["imagenet", "lighting"], ctx, [0.5] * 3, [0.2] * 3).train
    params = whole.draw(4, torch.Generator().manual_seed(3))
    head, tail = whole.split(whole.host_stages())
    with transforms.seeded(0):
        a = whole.apply(images[:4], params)
    with transforms.seeded(0):
        b = tail.apply(head.apply(images[:4], params[:1]), params[1:])
    assert torch.equal(a, b)
    # On the CPU nothing is cut and the images are where they were.
    assert FastLoader(images, labels, pipes.train, 4, shuffle=True, seed=0,
                      device=torch.device("cpu")).host_stages == 0


def test_pil_augmentation_refuses_a_gpu_image():
    ra = transforms.TimmPIL(lambda pil: pil)
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    assert torch.equal(ra(img), img)
    with pytest.raises(ValueError, match="CPU images"):
        ra(img.to("meta"))


# ---------------------------------------------------------------------------- 4. devices, DDP data
@pytest.fixture
def two_gpus(monkeypatch):
    """As if this machine had two GPUs; records set_device and init_process_group."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(du.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(du.dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw.get("device_id"))))
    monkeypatch.setattr(du.atexit, "register", lambda fn: None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", du.BACKEND_ENV):
        monkeypatch.delenv(key, raising=False)
    return calls


def torchrun_env(monkeypatch, rank, world, per_node):
    for key, value in dict(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank % per_node, LOCAL_WORLD_SIZE=per_node).items():
        monkeypatch.setenv(key, str(value))


def test_one_process_on_cuda_n_makes_it_the_current_device(two_gpus):
    ctx = du.setup("cuda:1")
    assert ctx.device == torch.device("cuda", 1) and not ctx.enabled
    assert two_gpus == [("set_device", torch.device("cuda", 1))]
    assert du.setup("cuda").device == torch.device("cuda", 0) and du.setup("auto").device == torch.device("cuda", 0)
    with pytest.raises(UserError, match="2 GPUs are visible"):
        du.setup("cuda:2")
    with pytest.raises(UserError, match="not a device"):
        du.setup("gpu")


@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_torchrun_takes_the_gpu_of_its_local_rank_with_nccl(two_gpus, monkeypatch, name):
    torchrun_env(monkeypatch, rank=1, world=2, per_node=2)
    ctx = du.setup(name)
    assert (ctx.rank, ctx.world_size, ctx.device) == (1, 2, torch.device("cuda", 1))
    assert two_gpus == [("set_device", torch.device("cuda", 1)), ("init", "nccl", torch.device("cuda", 1))]


def test_torchrun_refuses_one_gpu_for_every_process(two_gpus, monkeypatch):
    torchrun_env(monkeypatch, rank=1, world=2, per_node=2)
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES"):     # it used to train on the CPU over gloo
        du.setup("cuda:1")
    assert two_gpus == []
    torchrun_env(monkeypatch, rank=1, world=2, per_node=1)          # one process a node: its GPU 1
    assert du.setup("cuda:1").device == torch.device("cuda", 1)
    torchrun_env(monkeypatch, rank=2, world=4, per_node=4)          # LOCAL_RANK 2 on a 2-GPU machine
    with pytest.raises(UserError, match="LOCAL_RANK 2 asks for GPU 2"):
        du.setup("cuda")


def test_ranks_share_one_gpu_only_over_gloo(two_gpus, monkeypatch):
    # NCCL refuses two ranks on one GPU; a one-GPU machine tests DDP on CUDA over gloo.
    torchrun_env(monkeypatch, rank=1, world=2, per_node=2)
    monkeypatch.setenv(du.BACKEND_ENV, "gloo")
    assert du.setup("cuda:0").device == torch.device("cuda", 0)
    assert two_gpus == [("set_device", torch.device("cuda", 0)), ("init", "gloo", None)]
    monkeypatch.setenv(du.BACKEND_ENV, "mpi")
    with pytest.raises(UserError, match="gloo or nccl"):
        du.setup("cuda:0")


def test_cuda_asked_where_there_is_none_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key in ("RANK", "WORLD_SIZE", du.BACKEND_ENV):
        monkeypatch.delenv(key, raising=False)
    assert du.setup("auto").device == torch.device("cpu")
    with pytest.raises(UserError, match="sees no CUDA device"):
        du.setup("cuda:0")
    torchrun_env(monkeypatch, rank=0, world=2, per_node=2)
    with pytest.raises(UserError, match="sees no CUDA device"):      # not a silent fall-back to gloo
        du.choose_device("cuda")
    assert du.choose_device("auto") == torch.device("cpu")


RANK_ZERO_FIRST = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from selfreg.errors import UserError
    from selfreg.train import distributed as du

    ctx = du.setup("cpu")
    marker = Path(sys.argv[1]) / "built"
    with du.rank_zero_first(ctx):
        if ctx.is_main:
            time.sleep(2)                      # a slow download
            marker.write_text("x")
        else:
            assert marker.is_file(), "rank 1 ran before rank 0 had built"
    print(f"rank {ctx.rank} built in turn", flush=True)
    try:
        with du.rank_zero_first(ctx, "the cache"):
            if ctx.is_main:
                raise RuntimeError("disk full")
            print("rank 1 ran after a failure", flush=True)
    except (UserError, RuntimeError) as exc:
        print(f"rank {ctx.rank}: {type(exc).__name__}: {exc}", flush=True)
    du.barrier(ctx)
""")


def test_rank_zero_builds_first_and_a_failure_stops_the_others(tmp_path):
    script = tmp_path / "rank_zero_first.py"
    script.write_text(RANK_ZERO_FIRST)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                tmp_path], timeout=200, env=env_with_src(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rank 0 built in turn" in proc.stdout and "rank 1 built in turn" in proc.stdout
    assert "rank 0: RuntimeError: disk full" in proc.stdout
    assert "rank 1: UserError: rank 0 failed while building the cache" in proc.stdout
    assert "rank 1 ran after a failure" not in proc.stdout


def test_rank_zero_first_alone_just_runs():
    ran = []
    with du.rank_zero_first(du.DistContext()):
        ran.append(1)
    assert ran == [1]


# ---------------------------------------------------------------------------- 5. one compile per run
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))

    def forward(self, x):
        return self.body(x)


def count_compiles(make, steps=6, bn_setting=None):
    """Frames compiled over: `steps` training batches of 8 (the last of 5), then an evaluation."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    torch.manual_seed(0)
    model = Net()
    moments = bn.BNMomentum(model, bn_setting)
    wrapped = make(model, counter)
    wrapped.train()
    for i in range(steps):
        moments.before_step(i)
        wrapped(torch.randn(8 if i < steps - 1 else 5, 3, 8, 8)).sum().backward()
    wrapped.eval()
    with torch.no_grad():
        wrapped(torch.randn(16, 3, 8, 8))
    return counter.frame_count


def test_compiled_runs_one_graph_where_the_default_compiled_three(monkeypatch):
    default = count_compiles(lambda m, backend: torch.compile(m, backend=backend))

    def ours(model, backend):
        monkeypatch.setattr(autotune, "BACKEND", backend)
        return autotune.Compiled(model, batch=8)
    assert default == 3 and count_compiles(ours) == 1


def test_dynamic_bn_momentum_is_not_a_recompile_per_step(monkeypatch):
    def ours(model, backend):
        monkeypatch.setattr(autotune, "BACKEND", backend)
        return autotune.Compiled(model, batch=8)
    assert count_compiles(ours, steps=12, bn_setting="dynamic") == 1


def test_dynamic_bn_momentum_compiled_averages_like_eager():
    torch.manual_seed(0)
    eager = Net()
    compiled_model = copy.deepcopy(eager)
    batches = [torch.randn(8, 3, 8, 8) * (i + 1) + i for i in range(5)]
    results = []
    for model, compile_ in ((eager, False), (compiled_model, True)):
        moments = bn.BNMomentum(model, "dynamic")
        run_model = torch.compile(model, backend="aot_eager", dynamic=False) if compile_ else model
        model.train()
        for i, b in enumerate(batches):
            moments.before_step(i)
            run_model(b).sum().backward()
        results.append(model.body[1])
    conv_out = [eager.body[0](b).detach() for b in batches]    # the conv's weights are untouched by backward here
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv_out]).mean(0)
    torch.testing.assert_close(results[0].running_mean, expected)
    torch.testing.assert_close(results[1].running_mean, results[0].running_mean)
    torch.testing.assert_close(results[1].running_var, results[0].running_var)


def test_a_compiled_run_compiles_once(tmp_path, monkeypatch):
    # 1150 training digits in batches of 256: four full batches and one of 126, two epochs,
    # an evaluation after each, and BN momentum changing every step: one compiled graph.
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    monkeypatch.setattr(autotune, "BACKEND", counter)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(None, ["data.image_size=8", "train.epochs=2", "data.batch_size=256", "model.name=resnet20",
                             "train.threads=1", "train.plot=false", "train.progress=none", "train.tensorboard=false",
                             "train.amp=none", "train.channels_last=false", "train.compile=true",
                             "train.bn_momentum=dynamic", f"train.out_dir={tmp_path}", "train.run_name=r"])
    before = dict(torch._dynamo.utils.counters["graph_break"])
    summary = fit(cfg, **quiet)
    assert summary["speed"]["compile"] is True and summary["epochs"] == 2
    assert counter.frame_count == 1
    assert dict(torch._dynamo.utils.counters["graph_break"]) == before


# ---------------------------------------------------------------------------- 6. use/
def test_export_check_computes_in_full_float32(tmp_path):
    from selfreg.use import export

    seen = []
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision

    def run_exported(x):
        seen.append((conv.fp32_precision, matmul.fp32_precision))
        return model(x)

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    trained = types.SimpleNamespace(transform=types.SimpleNamespace(image_size=(4, 4)), in_chans=3, name="lin",
                                    model=model)
    result = export.ExportResult("onnx", tmp_path / "never-written.onnx")
    export.compare(run_exported, model, trained, result)
    assert seen == [("ieee", "ieee")] * len(export.CHECK_BATCHES) and result.max_abs_diff == 0.0
    assert (conv.fp32_precision, matmul.fp32_precision) == before


class Batches:
    """A loader of fixed batches (what `EvalSplit.loader` yields)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_evaluate_split_reads_the_device_once(monkeypatch):
    from selfreg.use.evaluate import EvalSplit, evaluate_split

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7)).eval()
    batches = [(torch.randn(6, 3, 2, 2), torch.randint(0, 7, (6,))) for _ in range(5)]
    data = EvalSplit(Batches(batches), torch.arange(7).flip(0), "toy", "val", 30)
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
    result = evaluate_split(model, data, [str(i) for i in range(7)], k=3)
    assert len(reads) <= 4                                     # count, loss, top-1, top-k: not per batch
    monkeypatch.undo()
    x, y = torch.cat([b[0] for b in batches]), data.label_map[torch.cat([b[1] for b in batches])]
    logits = model(x)
    assert result.count == 30
    assert result.top1 == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert result.topk == pytest.approx((logits.topk(3, 1).indices == y[:, None]).any(1).float().mean().item())
    assert result.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert result.confusion.sum() == 30 and result.confusion.trace() == round(result.top1 * 30)


def test_evaluation_runs_under_the_runs_autocast(tmp_path):
    from selfreg.use.evaluate import EvalSplit, evaluate_split, run_amp

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    trained = types.SimpleNamespace(source=run_dir / "checkpoints" / "best.pt")
    assert run_amp(trained, "cpu") == "none"                       # nothing recorded
    for speed, device, want in [({"amp": "bf16", "device": "cpu"}, "cpu", "bf16"),
                                ({"amp": "bf16", "device": "cuda"}, "cpu", "none"),   # a GPU run on the CPU
                                ({"amp": "fp16", "device": "cpu"}, "cpu", "none"),
                                ({"amp": "none", "device": "cpu"}, "cpu", "none")]:
        (run_dir / "speed.json").write_text(json.dumps(speed))
        assert run_amp(trained, device) == want, speed
    (run_dir / "speed.json").unlink()
    (run_dir / "config.yaml").write_text("train:\n  amp: bf16\n  device: cpu\n")
    assert run_amp(trained, "cpu") == "bf16"
    loose = types.SimpleNamespace(source=tmp_path / "weights.safetensors")
    assert run_amp(loose, "cpu") == "none"                         # a weights file says nothing

    dtypes = []

    class Probe(nn.Module):
        def forward(self, x):
            out = x.flatten(1) @ torch.ones(x[0].numel(), 3)
            dtypes.append(out.dtype)
            return out

    data = EvalSplit(Batches([(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))]), torch.arange(3), "t", "val",
                     4, amp="bf16")
    evaluate_split(Probe(), data, ["a", "b", "c"])
    evaluate_split(Probe(), data, ["a", "b", "c"], amp="none")
    assert dtypes == [torch.bfloat16, torch.float32]
