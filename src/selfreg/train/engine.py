"""fit / train_one_epoch / evaluate: the one training loop, nothing model-specific in it.

    summary = fit(load_config("configs/demo.yaml"))
    summary = fit(cfg, resume="runs/demo")          # continue exactly where it stopped

A run directory holds `config.yaml` (the resolved config, which reproduces the
run), `metrics.csv`, `checkpoints/{last,best}.pt`, `plots/curves.png`, `summary.json`,
`provenance.json` (where it came from: selfreg.provenance) and what its loggers write
(`train.loggers`, selfreg.train.loggers: TensorBoard events under `tb/`, an MLflow or W&B run).
Mixed precision, channels_last, torch.compile, EMA, SAM and DistributedDataParallel are all
options here, once.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .. import provenance
from ..complexity import count_parameters
from ..config import Config, changed_keys, flatten, load_config, refused_change, save_config
from ..data import build_dataset, build_loaders
from ..data.datasets import data_source
from ..errors import UserError, check_writable
from ..factory import create_model, sized_kwargs
from ..stats import mean_std
from ..stopping import note_stop
from ..version import __version__
from ..weightfiles import checkpoint_state
from . import autotune
from .allocator import keep_freed_memory
from .precision import make_autocast  # noqa: F401  (also the engine's API, e.g. benchmarks/framework_tax.py)
from . import distributed as dist_utils
from .bn import BNMomentum
from .checkpoint import (link_checkpoint, load_checkpoint, load_model_state, remove_stale_temp_files,
                         rng_state, save_checkpoint, set_rng_state)
from .checks import check_config
from .loggers import Loggers, RunInfo, logger_names
from .logging import Progress, plot_curves, read_metrics
from .optim import SAM, build_optimizer, build_scheduler, schedule_factor


class TrainingDiverged(UserError):
    """A NaN/inf loss under nan_policy=stop."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint has been written."""


@dataclass
class EpochStats:
    loss: float
    acc: float
    count: int
    skipped: int = 0
    acc5: float | None = None     # top-5, counted by `evaluate` when StepOptions.top5 is set


@dataclass
class EpochProgress:
    """Sums over the batches done so far in an epoch: what a mid-epoch checkpoint keeps."""
    batches: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0      # wall time spent on the epoch before a stop, so a resumed epoch's time is whole


@dataclass
class StepOptions:
    """How one training step runs; built once from the config."""
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    channels_last: bool = False
    grad_clip: float = 0.0
    nan_policy: str = "stop"
    label_smoothing: float = 0.0
    mixup: Callable | None = None
    bn: BNMomentum | None = None
    ema: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    ctx: dist_utils.DistContext = field(default_factory=dist_utils.DistContext)
    # The stop flag and the non-finite-loss count are read on the host every N steps (one sync, a
    # collective under DDP): 1 on a lone CPU process, where a read costs nothing; more on a GPU,
    # where every read makes the CPU wait for the device. nan_policy=skip reads every step.
    check_every: int = 1
    # `evaluate` also counts top-5 accuracy (the Run sets it for datasets of more than 5 classes).
    top5: bool = False


class StopFlag:
    """Set by SIGINT/SIGTERM; checked between steps so a step is never cut in half."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        note_stop()           # a selfreg command ignores any SIGINT after this one (selfreg.stopping)


def set_determinism(on: bool, device: torch.device) -> None:
    """The one place that decides how reproducible GPU kernels are (train.deterministic).

    On CUDA: deterministic cuDNN and cuBLAS kernels and no cuDNN autotuning (whose choice of
    algorithm varies from run to run), or cuDNN's benchmark mode for speed. cuBLAS reads its
    workspace setting when its first handle is made, before the model reaches the GPU.
    The CPU's kernels are deterministic already: nothing global is changed there."""
    if device.type != "cuda":
        return
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
    torch.use_deterministic_algorithms(on, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(images: torch.Tensor, labels: torch.Tensor, opts: StepOptions):
    images = images.to(opts.device, non_blocking=True)
    if opts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(opts.device, non_blocking=True)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    if targets.ndim == 2:  # soft targets from mixup/cutmix (smoothing already folded in)
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=opts.label_smoothing)


def loss_is_finite(loss: torch.Tensor, opts: StepOptions) -> bool:
    """For nan_policy=skip, which must know before the step: a host sync every step; under DDP
    all ranks agree so none steps alone."""
    bad = (~torch.isfinite(loss.detach())).float()
    if opts.ctx.enabled:
        (bad,) = dist_utils.all_reduce_sum(opts.ctx, bad)
    return bad.item() == 0


def step_checks(stop: StopFlag | None, nonfinite: torch.Tensor, opts: StepOptions) -> tuple[bool, bool]:
    """(stop agreed, a non-finite loss seen) over every rank: one read of the device, one collective."""
    requested = stop is not None and stop.requested
    if not opts.ctx.enabled:
        return requested, bool(nonfinite.item() > 0) if opts.nan_policy == "stop" else False
    flag = torch.tensor([float(requested), 0.0], device=opts.device)
    flag[1] = nonfinite
    (flag,) = dist_utils.all_reduce_sum(opts.ctx, flag)
    stop_now, bad = flag.tolist()
    return stop_now > 0, bad > 0


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler,
                    opts: StepOptions, epoch: int = 1, progress: EpochProgress | None = None,
                    stop: StopFlag | None = None, bar: Progress | None = None) -> EpochStats:
    """One pass over `loader`; resumes after `progress.batches` batches when given.

    Raises `Interrupted` (after the caller's checkpoint hook sees `progress`) when the
    stop flag is set, and `TrainingDiverged` on a non-finite loss under nan_policy=stop.
    """
    model.train()
    progress = progress or EpochProgress()
    loss_sum = torch.tensor(progress.loss_sum, device=opts.device, dtype=torch.float64)
    correct = torch.tensor(progress.correct, device=opts.device, dtype=torch.float64)
    seen, skipped = progress.seen, progress.skipped
    nonfinite = torch.zeros((), device=opts.device)     # non-finite losses since the last check
    sam = isinstance(optimizer, SAM)
    skip_policy = opts.nan_policy == "skip"
    for batch_idx, (images, labels) in enumerate(loader):
        if batch_idx < progress.batches:
            continue  # already trained on before the interruption (same batches: seeded loader)
        images, labels = to_device(images, labels, opts)
        targets = labels
        if opts.mixup is not None:
            images, targets = opts.mixup(images, labels)
        if opts.bn is not None:
            opts.bn.before_step(batch_idx)

        def forward_backward():
            optimizer.zero_grad(set_to_none=True)
            with opts.autocast():
                out = model(images)
                batch_loss = loss_fn(out, targets, opts)
            if opts.scaler is not None:
                opts.scaler.scale(batch_loss).backward()
            else:
                batch_loss.backward()
            return out, batch_loss

        logits, loss = forward_backward()
        if skip_policy and not loss_is_finite(loss, opts):
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
        else:
            if not skip_policy:   # counted on the device, read every check_every steps
                nonfinite += (~torch.isfinite(loss.detach())).float()
            clip_gradients(model, optimizer, opts)
            if sam:
                optimizer.step(closure=lambda: (forward_backward(), clip_gradients(model, optimizer, opts)))
            elif opts.scaler is not None:
                opts.scaler.step(optimizer)
                opts.scaler.update()
            else:
                optimizer.step()
            if opts.ema is not None:
                opts.ema.update_parameters(unwrap(model))
            loss_sum += loss.detach().double() * labels.size(0)
            hard = targets.argmax(1) if targets.ndim == 2 else targets
            correct += (logits.detach().argmax(1) == hard).sum()
            seen += labels.size(0)
        scheduler.step()
        if bar is not None:
            bar.update(labels.size(0))
        last = batch_idx + 1 == len(loader)
        if (batch_idx + 1) % opts.check_every == 0 or last:
            stop_now, diverged = step_checks(stop, nonfinite, opts)
            if diverged:
                first = scheduler.last_epoch - ((batch_idx % opts.check_every) + 1)
                where = (f"step {scheduler.last_epoch - 1}" if opts.check_every == 1
                         else f"steps {first}..{scheduler.last_epoch - 1}")
                raise TrainingDiverged(
                    f"the loss became non-finite (nan or inf) at epoch {epoch}, {where} (batch {batch_idx}); "
                    "the last good checkpoint is kept; lower optim.lr or set train.nan_policy=skip")
            if stop_now and not last:
                progress.batches, progress.loss_sum, progress.correct = batch_idx + 1, loss_sum.item(), correct.item()
                progress.seen, progress.skipped = seen, skipped
                raise Interrupted()
    loss_sum, correct, n, skipped_t = dist_utils.all_reduce_sum(
        opts.ctx, loss_sum, correct, torch.tensor(float(seen), device=opts.device),
        torch.tensor(float(skipped), device=opts.device))
    n = max(1.0, n.item())
    return EpochStats(loss_sum.item() / n, correct.item() / n, int(n), int(skipped_t.item()))


def clip_gradients(model: nn.Module, optimizer, opts: StepOptions) -> None:
    if opts.grad_clip > 0:
        if opts.scaler is not None:
            opts.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows of `logits` (B, classes) hold their label among their k largest values:
    a tensor on the logits' device (no host sync). Ties are broken by `torch.topk`."""
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader, opts: StepOptions) -> EpochStats:
    """Loss and top-1 accuracy (and top-5 under `opts.top5`), summed over ranks; sharded eval
    sets hold no duplicates. Counts stay on the device until the end: one read, not one per batch."""
    model.eval()
    loss_sum = torch.zeros((), device=opts.device, dtype=torch.float64)
    correct = torch.zeros((), device=opts.device, dtype=torch.float64)
    correct5 = torch.zeros((), device=opts.device, dtype=torch.float64)
    seen = torch.zeros((), device=opts.device, dtype=torch.float64)
    for images, labels in loader:
        images, labels = to_device(images, labels, opts)
        with opts.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        if opts.top5:
            correct5 += topk_correct(logits, labels, 5)
        seen += labels.size(0)
    loss_sum, correct, seen, correct5 = dist_utils.all_reduce_sum(opts.ctx, loss_sum, correct, seen, correct5)
    n = max(1.0, seen.item())
    return EpochStats(loss_sum.item() / n, correct.item() / n, int(seen.item()),
                      acc5=correct5.item() / n if opts.top5 else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (whose state_dict we save)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def run_name(cfg: Config) -> str:
    return cfg.train.run_name or f"{cfg.model.name}-{cfg.data.name}-s{cfg.train.seed}"


def make_run_dir(cfg: Config) -> tuple[Path, bool]:
    """out_dir/run_name, with a numeric suffix when that folder already holds a run (under
    train.resume=auto the folder itself: what it holds has no checkpoint, see run_to_continue);
    and whether the folder was made here (a run that stops before its first step removes it)."""
    base = Path(cfg.train.out_dir) / run_name(cfg)
    path, k = base, 1
    while (path / "config.yaml").exists() and cfg.train.resume != "auto":
        path = base.with_name(f"{base.name}-{k}")
        k += 1
    made = not path.exists()
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path, made


def describe_device(device: torch.device) -> str:
    """What a run ran on, for reports: the GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def make_mixup(cfg: Config, num_classes: int):
    if cfg.train.mixup <= 0 and cfg.train.cutmix <= 0:
        return None
    from timm.data import Mixup

    if cfg.data.batch_size % 2:
        raise UserError("mixup/cutmix need an even data.batch_size")
    return Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix, prob=cfg.train.mixup_prob,
                 label_smoothing=cfg.train.label_smoothing, num_classes=num_classes)


def make_ema(model: nn.Module, decay: float):
    if decay <= 0:
        return None
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    return HostCountedEMA(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class HostCountedEMA(torch.optim.swa_utils.AveragedModel):
    """torch's AveragedModel EMA (parameters and buffers), the same maths and state, but its step
    count is mirrored on the host: AveragedModel.update_parameters reads the `n_averaged` buffer
    twice a step (`== 0`, `> 0`), each a device-to-host sync on a GPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = 0

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

        mine = [t.detach() for t in itertools.chain(self.module.parameters(), self.module.buffers())]
        theirs = [t.detach().to(m.device) for m, t in
                  zip(mine, itertools.chain(model.parameters(), model.buffers()), strict=True)]
        if self.count == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            for (_device, _), ([a, b], _) in _group_tensors_by_device_and_dtype([mine, theirs]).items():
                self.multi_avg_fn(a, b, self.n_averaged)
        self.n_averaged += 1
        self.count += 1

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.count = int(self.n_averaged)          # once, when a run resumes
        return result


class Run:
    """Everything one training run holds, built from a Config (optionally from a checkpoint)."""

    def __init__(self, cfg: Config, resume: str | Path | None = None, log: Callable[[str], None] = print):
        # Check first, write last: every name, the output folder and the checkpoint to resume
        # from are checked before data or models are built, and nothing is written until then.
        # Each step below is a method of that name, run in this order.
        check_config(cfg)
        self.cfg = cfg
        self.ctx = dist_utils.setup(cfg.train.device)
        self.log = log if self.ctx.is_main else (lambda s: None)
        saved = self._check_places(resume)
        self._set_process_options()
        self._build_data()
        self._build_model()              # seeded right before it: see there
        self._resolve_speed(resume)      # every `auto` -> a value (compile=auto's trial may revise it mid-run)
        self._build_optimizer()
        self._build_step_options()
        self._restore_or_start(saved)
        self._write_run_files(resume)    # the first writes: run dir, config.yaml, provenance, speed.json
        self._wrap_model()
        self._start_loggers(resume)      # last: a logger that cannot start stops the run before its first step

    # ------------------------------------------------------------------ building a run, step by step
    def _check_places(self, resume: str | Path | None) -> dict | None:
        """The folders the run will write to, and the checkpoint it resumes from (None: none)."""
        if resume is not None:
            self.run_dir = Path(resume)
            check_writable(self.run_dir, "fix the run folder's permissions or free space on it")
            return self._checkpoint_to_resume(device=self.ctx.device)
        if self.ctx.is_main:
            check_writable(Path(self.cfg.train.out_dir), "choose another train.out_dir or fix its permissions")
        return None

    def _set_process_options(self) -> None:
        """Threads, the allocator and how deterministic the kernels are: process-wide, before anything runs."""
        cfg = self.cfg
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if self.ctx.device.type == "cpu":
            keep_freed_memory()            # large activations reused, not page-faulted every step
        set_determinism(cfg.train.deterministic, self.ctx.device)

    def _build_data(self) -> None:
        cfg = self.cfg
        with dist_utils.rank_zero_first(self.ctx):   # one download or cache build, then the others read it
            self.splits = build_dataset(cfg.data)
        self.loaders = build_loaders(self.splits, cfg.data, seed=cfg.train.seed, device=self.ctx.device,
                                     rank=self.ctx.rank, world_size=self.ctx.world_size)
        if self.splits.own_val and cfg.data.val_fraction is not None:   # said in the data's notes
            self.cfg = replace(cfg, data=replace(cfg.data, val_fraction=None))

    def _build_model(self) -> None:
        cfg = self.cfg
        # Seeded after the data is built, right before the first draw of the run (the model's
        # init): building data may draw from the global RNGs or not (a DataLoader scanning or
        # decoding a folder on a cache miss draws its base seed; a cache hit does not), and the
        # run must not depend on which happened.
        seed_everything(cfg.train.seed + self.ctx.rank)
        # What the data says; the factory passes img_size on to the models that declare it.
        self.model = create_model(cfg.model.name, num_classes=self.splits.num_classes,
                                  in_chans=self.splits.in_chans, pretrained=cfg.model.pretrained, log=self.log,
                                  **sized_kwargs(cfg.model.kwargs, self.splits.image_size))
        self.n_params = count_parameters(self.model)
        self.model.to(self.ctx.device)

    def _resolve_speed(self, resume: str | Path | None) -> None:
        """train.amp / channels_last / compile = auto -> concrete values (recorded in config.yaml,
        summary.json), then the model laid out as decided."""
        self.cfg, self.speed = autotune.resolve(self.cfg, self.model, self.splits, self.loaders["train"], self.ctx,
                                                resume, self.log)
        cfg = self.cfg
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.train.sync_bn and self.ctx.enabled and dist_utils.comm_device(self.ctx).type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if cfg.optim.sam and cfg.train.amp == "fp16":
            raise UserError("optim.sam with train.amp=fp16 is not supported; use bf16 or fp32")
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, len(self.loaders["train"]),
                                         cfg.train.epochs, lr=cfg.optim.lr)

    def _build_step_options(self) -> None:
        """Precision, EMA, mixup, BN momentum: how each step runs (StepOptions)."""
        cfg, device = self.cfg, self.ctx.device
        autocast = make_autocast(cfg.train.amp, device)  # rejects fp16 off CUDA before a scaler exists
        scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
        self.ema = make_ema(self.model, cfg.train.ema_decay)
        self.opts = StepOptions(
            device=device, autocast=autocast,
            channels_last=cfg.train.channels_last, grad_clip=cfg.optim.grad_clip,
            nan_policy=cfg.train.nan_policy, label_smoothing=cfg.train.label_smoothing,
            mixup=make_mixup(cfg, self.splits.num_classes), bn=BNMomentum(self.model, cfg.train.bn_momentum),
            ema=self.ema, scaler=scaler, ctx=self.ctx,
            check_every=1 if device.type == "cpu" and not self.ctx.enabled else 50,
            top5=self.splits.num_classes > 5)   # top-5 of 5 classes or fewer is 100%: not counted

    def _restore_or_start(self, saved: dict | None) -> None:
        """Epoch 0 of a new run, or the state of the checkpoint a resume continues."""
        self.epoch, self.best_acc, self.best_epoch = 0, -1.0, 0
        self.progress: EpochProgress | None = None
        self.last_row: dict | None = None
        if saved is not None:
            self._restore(saved)

    def _write_run_files(self, resume: str | Path | None) -> None:
        """The run folder (a new run's is made here), config.yaml, provenance.json and speed.json. Rank 0 only."""
        cfg = self.cfg
        self.made_run_dir = False
        if resume is None:
            self.run_dir, self.made_run_dir = make_run_dir(cfg) if self.ctx.is_main else (Path("."), False)
        if self.ctx.is_main:   # last: a resume that fails above leaves the run's config as it was
            self._save_config_if_changed()
        # Where the run came from (provenance.json, source.patch; a resume appends). Rank 0 only.
        self.provenance = provenance.begin(
            self.run_dir, resumed=resume is not None, seed=cfg.train.seed, world_size=self.ctx.world_size,
            device=describe_device(self.ctx.device),
            data=provenance.data_fingerprint(cfg.data.name, *data_source(cfg.data)),
            log=self.log) if self.ctx.is_main else {}
        if self.ctx.is_main:
            self.speed.save(self.run_dir)

    def _wrap_model(self) -> None:
        """The model the steps run: under DDP, and compiled when train.compile says so."""
        cfg, device = self.cfg, self.ctx.device
        self.train_model = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            dist_utils.match_grad_layout(self.model, self._example_batch())
            self.train_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile:  # under compile=auto, a trial in the run's first steps (autotune.CompileTrial)
            self.train_model = autotune.compile_model(self.train_model, self.speed, cfg, self._record_compile_trial,
                                                      self.ctx)

    def _start_loggers(self, resume: str | Path | None) -> None:
        """Where each epoch's metrics go (metrics.csv first), rank 0 only. Last: a logger that cannot
        start stops the run here, in one line, before its first step."""
        try:
            self.loggers = Loggers.start(logger_names(self.cfg.train), RunInfo(
                self.run_dir, self.cfg, epoch=self.epoch, resumed=resume is not None, last_row=self.last_row),
                log=self.log) if self.ctx.is_main else Loggers()
        except UserError:
            # No step was taken: the folder this run made holds nothing worth keeping, and left
            # there it would push the corrected command's run to RUN_NAME-1.
            if self.made_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """What checkpoints/last.pt holds (weightfiles.checkpoint_state, beside its reader)."""
        return checkpoint_state(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.opts.scaler.state_dict() if self.opts.scaler else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            epoch=self.epoch, step=self.scheduler.last_epoch,
            progress=vars(self.progress) if self.progress else None,
            best_acc=self.best_acc, best_epoch=self.best_epoch,
            rng=rng_state(), config=self.cfg.to_dict(), metrics_row=self.last_row,
            classes=self.splits.classes, version=__version__, provenance=self.provenance,
            transform=self.splits.eval_spec.to_dict())

    def save(self, best: bool = False) -> None:
        if not self.ctx.is_main:
            return
        state = self.state()
        last = self.run_dir / "checkpoints" / "last.pt"
        save_checkpoint(state, last)
        if best:
            link_checkpoint(last, last.with_name("best.pt"))

    def _example_batch(self) -> torch.Tensor:
        """Two zero images of the run's input shape, on its device, in its memory format."""
        size = self.splits.image_size
        h, w = (size, size) if isinstance(size, int) else size
        x = torch.zeros(2, self.splits.in_chans, h, w, device=self.ctx.device)
        return x.to(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def _checkpoint_to_resume(self, device: torch.device) -> dict | None:
        """The state in RUN/checkpoints/last.pt, or None for a run killed before its first checkpoint."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.ctx.is_main:
            remove_stale_temp_files(path.parent)
        if not path.is_file():
            self.log(f"{self.run_dir} has no checkpoint yet (stopped during its first epoch): "
                     "starting it from the beginning")
            return None
        # Always to the CPU: RNG states must stay CPU tensors, and a checkpoint saved on another
        # device (or another GPU count) loads anywhere; load_state_dict moves weights and
        # optimizer state to the model's device.
        return load_checkpoint(path, map_location="cpu")

    def _save_config_if_changed(self) -> None:
        """The one writer of config.yaml: the run's final config, when the file does not hold it yet
        (a new run; a resume with overrides; a resume whose file still says `auto`)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file() or changed_keys(load_config(path), self.cfg):
            save_config(self.cfg, path)

    def _record_compile_trial(self, choice: autotune.SpeedChoice) -> None:
        """compile=auto's trial has decided (autotune.CompileTrial): the config, config.yaml and
        speed.json say what it kept, so a rerun or a resume trains the same way."""
        self.cfg.train.compile = choice.compile
        if self.ctx.is_main:
            choice.save(self.run_dir)
            self._save_config_if_changed()

    def _restore(self, state: dict) -> None:
        source = self.run_dir / "checkpoints" / "last.pt"
        load_model_state(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.opts.scaler is not None and state.get("scaler"):
            self.opts.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.best_acc, self.best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        self._note_replanned_schedule(state)
        self.last_row = state.get("metrics_row")
        self.progress = EpochProgress(**state["progress"]) if state.get("progress") else None
        if self.ctx.is_main:
            set_rng_state(state["rng"])
        else:  # only rank 0's generators are saved; other ranks draw a fresh, distinct stream
            seed_everything(self.cfg.train.seed + self.ctx.rank + 1000 * self.epoch)

    def _note_replanned_schedule(self, state: dict) -> None:
        """A resume with another train.epochs re-plans any schedule whose shape depends on the
        run's length (one-cycle, cosine, ...): the learning rate jumps. Say so once, with both values."""
        old = ((state.get("config") or {}).get("train") or {}).get("epochs")
        new = self.cfg.train.epochs
        if old is None or old == new:
            return
        steps, step, lr = len(self.loaders["train"]), self.scheduler.last_epoch, self.cfg.optim.lr
        planned = lr * schedule_factor(self.cfg.sched, steps, old, lr)(step)
        replanned = lr * schedule_factor(self.cfg.sched, steps, new, lr)(step)
        if not math.isclose(planned, replanned, rel_tol=1e-6):
            self.log(f"note: train.epochs {old} -> {new} re-plans the {self.cfg.sched.name} schedule over {new} "
                     f"epochs: the learning rate goes on at {replanned:.4g}, where the {old}-epoch plan was at "
                     f"{planned:.4g}; start a new run to keep one schedule")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train the epochs left; the loggers then hear how the run ended (with its files if it finished)."""
        try:
            summary = self._fit()
        except BaseException as exc:
            self.loggers.finish("interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed")
            raise
        self.loggers.finish("finished")
        return summary

    def _fit(self) -> dict:
        cfg = self.cfg
        start_epoch = self.epoch + 1
        self.log(f"run {self.run_dir}: {cfg.model.name} ({self.n_params:,} parameters) on {cfg.data.name} "
                 f"({len(self.splits.train)} train / {len(self.splits.val)} val), epochs {start_epoch}.."
                 f"{cfg.train.epochs} on {self.ctx.device}"
                 + (f" x {self.ctx.world_size} processes" if self.ctx.enabled else ""))
        for note in getattr(self.splits, "notes", []):
            self.log(f"data: {note}")
        if start_epoch > cfg.train.epochs and self.progress is None:
            self.log(f"run already finished ({self.epoch} epochs); raise train.epochs to continue it")
        with StopFlag() as stop:
            for epoch in range(start_epoch, cfg.train.epochs + 1):
                self._one_epoch(epoch, stop)
        self.test_stats = None
        if "test" in self.loaders:  # only present when data.eval_test asked for it
            self.test_stats = evaluate(self.train_model, self.loaders["test"], self.opts)
            self.log(f"test loss {self.test_stats.loss:.4f} acc {100 * self.test_stats.acc:.2f}% "
                     f"({self.test_stats.count} images, data.eval_test=true)")
        if self.ctx.enabled:
            in_sync = dist_utils.replicas_in_sync(self.ctx, self.model)
            self.log(f"weights identical across {self.ctx.world_size} ranks: {'yes' if in_sync else 'NO'}")
        return self._summary()

    def _one_epoch(self, epoch: int, stop: StopFlag) -> None:
        cfg = self.cfg
        loader = self.loaders["train"]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        # The lr at the epoch's first step (also right when resuming mid-epoch).
        lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0]((epoch - 1) * len(loader))
        bar = Progress(cfg.train.progress, len(loader), f"epoch {epoch}", enabled=self.ctx.is_main)
        progress = self.progress or EpochProgress()
        self.progress = None
        start = time.perf_counter() - progress.seconds
        try:
            train = train_one_epoch(self.train_model, loader, self.optimizer, self.scheduler, self.opts,
                                    epoch, progress, stop, bar)
        except Interrupted:
            progress.seconds = time.perf_counter() - start
            self.epoch, self.progress = epoch - 1, progress
            self.save()
            raise Interrupted(f"{stop.signal_name}: saved a checkpoint at epoch {epoch}, batch "
                              f"{progress.batches}; continue with: selfreg train --resume {self.run_dir}") from None
        finally:
            bar.close()
        val = evaluate(self.train_model, self.loaders["val"], self.opts)
        row = {"epoch": epoch, "lr": lr, "train_loss": train.loss, "train_acc": train.acc,
               "val_loss": val.loss, "val_acc": val.acc, "seconds": time.perf_counter() - start}
        if val.acc5 is not None:   # more than 5 classes; metrics.csv puts it beside val_acc
            row["val_acc5"] = val.acc5
        if self.ema is not None:
            ema = evaluate(self.ema, self.loaders["val"], self.opts)
            row.update(ema_val_loss=ema.loss, ema_val_acc=ema.acc)
            if ema.acc5 is not None:
                row["ema_val_acc5"] = ema.acc5
        if train.skipped:
            row["skipped_steps"] = train.skipped
        self.epoch, self.last_row = epoch, row
        improved = val.acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = val.acc, epoch
        if self.ctx.is_main:
            # The checkpoint first, then its row: metrics.csv never describes an epoch that no
            # checkpoint holds (the checkpoint carries the row, so a resume can restore it).
            self.save(best=improved)
            self.loggers.log_metrics(row, epoch)
            if cfg.train.plot:
                plot_curves(self.run_dir / "metrics.csv", self.run_dir / "plots" / "curves.png",
                            title=f"{cfg.model.name} on {cfg.data.name}")
        self.log(f"epoch {epoch:3d}/{cfg.train.epochs}  lr {lr:.4g}  train loss {train.loss:.4f} "
                 f"acc {100 * train.acc:.2f}%  val loss {val.loss:.4f} acc {100 * val.acc:.2f}%  "
                 + (f"top-5 {100 * val.acc5:.2f}%  " if val.acc5 is not None else "") +
                 f"({row['seconds']:.1f}s)" + (f"  skipped {train.skipped} steps" if train.skipped else ""))
        if step_checks(stop, torch.zeros((), device=self.ctx.device), self.opts)[0]:   # every rank alike
            raise Interrupted(f"{stop.signal_name or 'SIGTERM'}: stopped after epoch {epoch} (checkpoint saved); "
                              f"continue with: selfreg train --resume {self.run_dir}")

    def _summary(self) -> dict:
        rows = read_metrics(self.run_dir / "metrics.csv") if self.ctx.is_main else []
        final = rows[-1]["val_acc"] if rows else float("nan")
        summary = {"run_dir": str(self.run_dir), "model": self.cfg.model.name, "dataset": self.cfg.data.name,
                   "params": self.n_params, "num_classes": self.splits.num_classes,
                   "in_chans": self.splits.in_chans, "image_size": self.splits.image_size,
                   "epochs": self.epoch, "seed": self.cfg.train.seed,
                   "final_val_acc": final, "best_val_acc": self.best_acc, "best_epoch": self.best_epoch,
                   **top5_summary(rows, self.best_epoch), "val_images": len(self.splits.val),
                   "world_size": self.ctx.world_size, "device": describe_device(self.ctx.device),
                   "selfreg_version": __version__, "speed": self.speed.summary()}
        if getattr(self, "test_stats", None) is not None:
            summary.update(test_acc=self.test_stats.acc, test_loss=self.test_stats.loss,
                           test_images=len(self.splits.test))
            if self.test_stats.acc5 is not None:
                summary["test_acc5"] = self.test_stats.acc5
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            provenance.finish(self.run_dir, self.provenance)
            self.log(f"final validation accuracy {100 * final:.2f}% (best {100 * self.best_acc:.2f}% at epoch "
                     f"{self.best_epoch}); run directory {self.run_dir}")
        return summary


def top5_summary(rows: list[dict], best_epoch: int) -> dict:
    """summary.json's top-5 keys, from metrics.csv's `val_acc5` column (none without it: 5 classes
    or fewer, or a run begun before the column existed): `final_val_acc5` of the last epoch and
    `best_val_acc5`, the top-5 at `best_epoch` (the epoch of best top-1, whose weights best.pt holds)."""
    if not rows or "val_acc5" not in rows[-1]:
        return {}
    best = [r["val_acc5"] for r in rows if int(r["epoch"]) == best_epoch]
    return {"final_val_acc5": rows[-1]["val_acc5"], "best_val_acc5": best[0] if best else float("nan")}


def fit(cfg: Config, resume: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train (or continue) one run; return its summary."""
    if resume is None and cfg.train.resume == "auto":
        resume = run_to_continue(cfg)
    # Under torchrun the process group outlives the run: the next run of a sweep reuses it.
    return Run(cfg, resume=resume, log=log).fit()


def run_to_continue(cfg: Config) -> Path | None:
    """train.resume=auto: the run in out_dir/run_name when it has a checkpoint and `cfg` continues
    it (a changed config is one line), else None (a new run, started in that same folder).

    One mechanism for every restart: a torchrun worker restarted after a failure, a requeued
    SLURM job, or the same command typed again. Every rank decides alike: no rank can see a
    checkpoint another cannot, since writing one needs every rank past the same epoch."""
    run_dir = Path(cfg.train.out_dir) / run_name(cfg)
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / "config.yaml").is_file():
        return None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    key = refused_change(saved, cfg.to_dict())
    if key is not None:
        raise UserError(f"train.resume=auto: {run_dir} was trained with {key}={flatten(saved).get(key)!r}, not "
                        f"{flatten(cfg.to_dict()).get(key)!r}; set train.run_name to start another run there")
    return run_dir


def fit_seeds(cfg: Config, seeds: list[int], log: Callable[[str], None] = print) -> dict:
    """One run per seed under out_dir/<name>/s<seed>, and a summary.json of mean and std.

    The Torch ResNet study's protocol: report the mean over seeds, never the best run.
    """
    import copy

    name = cfg.train.run_name or f"{cfg.model.name}-{cfg.data.name}"
    group = Path(cfg.train.out_dir) / name
    runs = []
    for seed in seeds:
        one = copy.deepcopy(cfg)
        one.train.seed = seed
        one.train.run_name = f"{name}/s{seed}"
        runs.append(fit(one, log=log))
    summary = {"runs": [r["run_dir"] for r in runs], "seeds": list(seeds)}
    for key in ("final_val_acc", "best_val_acc", "final_val_acc5", "best_val_acc5"):
        if key.endswith("5") and not all(key in r for r in runs):
            continue   # top-5: only for more than 5 classes
        values = [float(r[key]) for r in runs]
        mean, std = mean_std(values)
        summary[key] = {"mean": mean, "std": std, "values": values}
    group.mkdir(parents=True, exist_ok=True)
    (group / "summary.json").write_text(json.dumps(summary, indent=2))
    f, b = summary["final_val_acc"], summary["best_val_acc"]
    log(f"{len(seeds)} seeds: final val acc {100 * f['mean']:.2f} +- {100 * f['std']:.2f}%, "
        f"best {100 * b['mean']:.2f} +- {100 * b['std']:.2f}% (mean +- std); {group / 'summary.json'}")
    return summary
