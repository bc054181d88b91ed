"""torchrun / DistributedDataParallel, the standard way.

`torchrun --nproc_per_node=K -m selfreg train RECIPE` sets RANK, WORLD_SIZE and
LOCAL_RANK; `setup()` reads them, picks this rank's device (`choose_device`: cuda:LOCAL_RANK,
made the current device; an impossible train.device is a one-line error, never a silent CPU)
and joins the process group (NCCL on CUDA, gloo on CPU). Rank 0 alone writes files; every
rank still takes part in every collective; `rank_zero_first` lets rank 0 download and cache
the data before the others read it.

A process joins the group once and leaves it once, at exit: every run of a
sweep reuses the same group. Destroying the group after one run and joining
again for the next raced with torchrun's rendezvous store and could leave
both ranks waiting in `init_process_group` forever.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


# NCCL, the CUDA default, refuses two ranks on one GPU. SELFREG_DIST_BACKEND=gloo joins over gloo
# instead (it moves CUDA tensors through the host) and lets every process of a node take the
# GPU train.device=cuda:N names: how a one-GPU machine tests DDP on CUDA (tests/test_cuda.py).
# Slow; not for training. SyncBatchNorm gathers CUDA tensors, which gloo may not: train.sync_bn=false.
BACKEND_ENV = "SELFREG_DIST_BACKEND"


def forced_backend() -> str:
    """$SELFREG_DIST_BACKEND: "", "gloo" or "nccl"."""
    forced = os.environ.get(BACKEND_ENV, "")
    if forced not in ("", "gloo", "nccl"):
        raise UserError(f"{BACKEND_ENV}={forced!r}: use gloo or nccl (or leave it unset)")
    return forced


def backend_for(device: torch.device) -> str:
    """The process group's backend for `device`: NCCL on CUDA, gloo otherwise, or $SELFREG_DIST_BACKEND."""
    forced = forced_backend()
    if forced == "nccl" and device.type != "cuda":
        raise UserError(f"{BACKEND_ENV}=nccl needs train.device on CUDA, not {device}")
    return forced or ("nccl" if device.type == "cuda" else "gloo")


def choose_device(name: str = "auto", *, torchrun: bool | None = None) -> torch.device:
    """The device `train.device` names for this process; a one-line UserError where it cannot be had.

    auto: this process's GPU when CUDA is available, else the CPU. cuda: this process's GPU,
    which under torchrun is cuda:LOCAL_RANK and alone is the current device (cuda:0 unless set).
    cuda:N alone: GPU N. Under torchrun with several processes per node, cuda:N would put
    every process on GPU N: refused (each process takes the GPU of its LOCAL_RANK; pick GPUs with
    CUDA_VISIBLE_DEVICES). A GPU asked for where there is none, or an index past the last
    GPU, is refused too (it used to fall back to the CPU silently, or fail later in torch).
    """
    torchrun = launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 if torchrun is None else torchrun
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    try:
        asked = torch.device("cuda" if name == "auto" else name)
    except (RuntimeError, ValueError):
        raise UserError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if asked.type == "cpu":
        return torch.device("cpu")
    if asked.type != "cuda":
        if torchrun:
            raise UserError(f"train.device={name}: under torchrun use auto, cpu or cuda")
        return asked
    if not torch.cuda.is_available():
        raise UserError(f"train.device={name}, but torch sees no CUDA device here "
                        f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                        "use train.device=auto or cpu")
    count = torch.cuda.device_count()
    if asked.index is None:
        index = local_rank if torchrun else torch.cuda.current_device()
        where = f"LOCAL_RANK {local_rank}" if torchrun else "the current device"
    else:
        index, where = asked.index, f"train.device={name}"
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        if torchrun and per_node > 1 and forced_backend() != "gloo":
            raise UserError(f"train.device={name} under torchrun would put all {per_node} processes of a node on "
                            f"GPU {index}; set train.device=cuda (each process takes cuda:LOCAL_RANK) and choose "
                            "the GPUs with CUDA_VISIBLE_DEVICES")
    if index >= count:
        raise UserError(f"{where} asks for GPU {index}, but {count} GPU{'s are' if count != 1 else ' is'} visible "
                        f"(cuda:0..{count - 1}); check --nproc_per_node and CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


def setup(device_name: str = "auto") -> DistContext:
    """Single process unless launched by torchrun; then join the process group.

    A CUDA device becomes the process's current device (`torch.cuda.set_device`), so kernels,
    NCCL and any `cuda` without an index land on it and not on GPU 0."""
    single = not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1
    device = choose_device(device_name, torchrun=not single)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if single:
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        backend = backend_for(device)
        store = round_store(rank, world)
        joined = {"store": store, "rank": rank, "world_size": world} if store is not None else {}
        if backend == "nccl":   # bound to this process's GPU (barriers too)
            dist.init_process_group(backend="nccl", device_id=device, **joined)
        else:
            dist.init_process_group(backend=backend, **joined)
        atexit.register(shutdown)
    return DistContext(rank, world, local_rank, device)


def round_store(rank: int, world: int) -> dist.Store | None:
    """The env:// store (MASTER_ADDR/MASTER_PORT), with the keys of each torchrun restart round
    under a prefix of their own. torchrun's agent keeps one store across restarts, and the
    process group writes the same keys every round: a restarted round could read the addresses
    of the round before it, whose processes are dead, and its gloo connect was refused or hung
    (pytorch/pytorch#167288)."""
    from torch.distributed.rendezvous import rendezvous

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:   # not torchrun's agent: plain env://
        return None
    store, _, _ = next(rendezvous("env://", rank, world))
    return dist.PrefixStore(f"selfreg/round_{restart}/", store)


def shutdown() -> None:
    """Leave the process group; runs once, at interpreter exit (registered by `setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, *values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over ranks (a no-op in a single process); returns new tensors."""
    if not ctx.enabled:
        return list(values)
    packed = torch.stack([v.detach().to(torch.float64) for v in values])
    home = packed.device
    packed = packed.to(comm_device(ctx))
    dist.all_reduce(packed)
    return list(packed.to(home).unbind())


def comm_device(ctx: DistContext) -> torch.device:
    """Where collectives' tensors go: the GPU under NCCL, the CPU under gloo (also with CUDA ranks)."""
    if ctx.device.type == "cuda" and dist.is_initialized() and dist.get_backend() == "nccl":
        return ctx.device
    return torch.device("cpu")


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# How long the other ranks wait for rank 0 to build the data (a download and a decode cache of
# a large dataset can take hours). Rank 0 dying ends the wait sooner: torchrun stops them all.
RANK_ZERO_FIRST_TIMEOUT = datetime.timedelta(hours=24)
_rank_zero_first_calls = 0


@contextlib.contextmanager
def rank_zero_first(ctx: DistContext, what: str = "the data"):
    """Rank 0 runs the block first; the other ranks run it once rank 0 is through.

        with dist_utils.rank_zero_first(self.ctx):
            splits = build_dataset(cfg.data)       # rank 0 downloads and writes the caches, the rest read them

    Without it every rank downloaded the same archives and decoded the same cache files at
    once. The others wait on the process group's key-value store, not in a collective (NCCL's
    and gloo's timeouts are minutes; rank 0 may need hours). When rank 0's block raises, the
    others raise a one-line UserError instead of running theirs. A no-op in one process.
    """
    global _rank_zero_first_calls
    if not ctx.enabled:
        yield
        return
    _rank_zero_first_calls += 1          # every rank makes the same calls in the same order
    key = f"selfreg/rank_zero_first/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_rank_zero_first_calls}"
    store = _store()
    if ctx.is_main:
        ok = False
        try:
            yield
            ok = True
        finally:
            if store is not None:
                store.set(key, "ok" if ok else "failed")
            else:
                _fallback_agree(ctx, ok)
        return
    if store is not None:
        store.wait([key], RANK_ZERO_FIRST_TIMEOUT)
        ok = store.get(key) == b"ok"
    else:
        ok = _fallback_agree(ctx, False)
    if not ok:
        raise UserError(f"rank 0 failed while building {what} (its error is above); rank {ctx.rank} stops too")
    yield


def _store():
    """The default process group's key-value store (torchrun's rendezvous), or None where torch hides it."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private function: any trouble means "use a collective"
        return None


def _fallback_agree(ctx: DistContext, ok: bool) -> bool:
    """Rank 0's `ok` on every rank, through a collective (where no store is reachable)."""
    (total,) = all_reduce_sum(ctx, torch.tensor(float(ok and ctx.is_main)))
    return total.item() > 0


@torch.no_grad()
def replicas_in_sync(ctx: DistContext, model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers (checked once, at the end)."""
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in model.state_dict().values()
                      if t.is_floating_point()])
    digest = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(len(flat))).sum()])
    digest = digest.to(comm_device(ctx))
    gathered = [torch.empty_like(digest) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def match_grad_layout(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Give every parameter the strides its gradient comes with; return how many changed.

    DDP lays its gradient buckets out like the parameters and copies every gradient whose
    strides differ ("Grad strides do not match bucket view strides", a copy per bucket per
    step). Weights with a dimension of size 1 (depthwise [C, 1, k, k], a 1-channel stem) are
    contiguous in more than one layout, and convolution's backward may return their gradient
    in another one than the weight's. One backward of a copy of the model on `example` (the
    run's input shape and memory format) says which; the model itself is not run, and the
    global RNG is left as it was.
    """
    import copy

    probe = copy.deepcopy(model).train()
    devices = [example.device] if example.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        probe(example).float().sum().backward()
    changed = 0
    with torch.no_grad():
        for p, q in zip(model.parameters(), probe.parameters()):
            if q.grad is not None and q.grad.stride() != p.stride():
                p.data = torch.empty_strided(p.shape, q.grad.stride(), dtype=p.dtype, device=p.device).copy_(p.data)
                changed += 1
    return changed
