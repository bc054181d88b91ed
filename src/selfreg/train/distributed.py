"""torchrun / DistributedDataParallel, the standard way.

`torchrun --nproc_per_node=K -m selfreg train RECIPE` sets RANK, WORLD_SIZE and
LOCAL_RANK; `setup()` reads them, joins the process group (NCCL on CUDA, gloo
on CPU) and picks this rank's device. Rank 0 alone writes files; every rank
still takes part in every collective.

A process joins the group once and leaves it once, at exit: every run of a
sweep reuses the same group. Destroying the group after one run and joining
again for the next raced with torchrun's rendezvous store and could leave
both ranks waiting in `init_process_group` forever.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def setup(device_name: str = "auto") -> DistContext:
    """Single process unless launched by torchrun; then join the process group."""
    want_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        if device_name == "auto":
            device = torch.device("cuda" if want_cuda else "cpu")
        else:
            device = torch.device(device_name)
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(shutdown)
    return DistContext(rank, world, local_rank, device)


def shutdown() -> None:
    """Leave the process group; runs once, at interpreter exit (registered by `setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, *values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over ranks (a no-op in a single process); returns new tensors."""
    if not ctx.enabled:
        return list(values)
    packed = torch.stack([v.detach().to(torch.float64) for v in values])
    if ctx.device.type == "cpu":
        dist.all_reduce(packed)
    else:
        packed = packed.to(ctx.device)
        dist.all_reduce(packed)
    return list(packed.unbind())


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


@torch.no_grad()
def replicas_in_sync(ctx: DistContext, model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters and buffers (checked once, at the end)."""
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in model.state_dict().values()
                      if t.is_floating_point()])
    digest = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(len(flat))).sum()])
    if ctx.device.type != "cpu":
        digest = digest.to(ctx.device)
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
