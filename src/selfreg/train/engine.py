"""fit / train_one_epoch / evaluate: the one training loop, nothing model-specific in it.

    summary = fit(load_config("configs/demo.yaml"))

A run directory holds `config.yaml` (the resolved config, which reproduces the
run), `metrics.csv`, `checkpoints/last.pt` and `plots/curves.png`.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..analysis.complexity import count_parameters
from ..config import Config, save_config
from ..data import build_dataset, build_loaders
from ..registry import create_model
from .checkpoint import save_checkpoint
from .logging import MetricsCSV, plot_curves
from .optim import build_optimizer, build_scheduler


@dataclass
class EpochStats:
    loss: float
    acc: float
    count: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler,
                    device: torch.device) -> EpochStats:
    """One pass over `loader`, whose batches come out already augmented."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # Accumulate on device: no host sync per step.
        total_loss += loss.detach() * labels.size(0)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.size(0)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, seen)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> EpochStats:
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.size(0)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, seen)


def make_run_dir(cfg: Config) -> Path:
    """out_dir/run_name, with a numeric suffix when that folder already holds a run."""
    name = cfg.train.run_name or f"{cfg.model.name}-{cfg.data.name}-s{cfg.train.seed}"
    base = Path(cfg.train.out_dir) / name
    path, k = base, 1
    while (path / "config.yaml").exists():
        path = base.with_name(f"{base.name}-{k}")
        k += 1
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


def fit(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Train `cfg.train.epochs` epochs, evaluating on val after each; return the summary."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)

    splits = build_dataset(cfg.data)
    loaders = build_loaders(splits, cfg.data, seed=cfg.train.seed, device=device)
    model = create_model(cfg.model.name, num_classes=splits.num_classes, in_chans=splits.in_chans,
                         **cfg.model.kwargs).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, len(loaders["train"]), cfg.train.epochs)

    run_dir = make_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    metrics = MetricsCSV(run_dir / "metrics.csv")
    n_params = count_parameters(model)
    log(f"run {run_dir}: {cfg.model.name} ({n_params:,} parameters) on {cfg.data.name} "
        f"({len(splits.train)} train / {len(splits.val)} val), {cfg.train.epochs} epochs on {device}")
    for note in splits.notes:
        log(f"data: {note}")

    best_acc, best_epoch = -1.0, 0
    for epoch in range(1, cfg.train.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loaders["train"].set_epoch(epoch)
        train = train_one_epoch(model, loaders["train"], optimizer, scheduler, device)
        val = evaluate(model, loaders["val"], device)
        seconds = time.perf_counter() - start
        metrics.append({"epoch": epoch, "lr": lr, "train_loss": train.loss, "train_acc": train.acc,
                        "val_loss": val.loss, "val_acc": val.acc, "seconds": seconds})
        if val.acc > best_acc:
            best_acc, best_epoch = val.acc, epoch
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch,
                         "config": cfg.to_dict(), "classes": splits.classes,
                         "selfreg_version": __version__},
                        run_dir / "checkpoints" / "last.pt")
        if cfg.train.plot:
            plot_curves(run_dir / "metrics.csv", run_dir / "plots" / "curves.png",
                        title=f"{cfg.model.name} on {cfg.data.name}")
        log(f"epoch {epoch:3d}/{cfg.train.epochs}  lr {lr:.4g}  train loss {train.loss:.4f} "
            f"acc {100 * train.acc:.2f}%  val loss {val.loss:.4f} acc {100 * val.acc:.2f}%  ({seconds:.1f}s)")

    summary = {"run_dir": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name,
               "params": n_params, "epochs": cfg.train.epochs, "seed": cfg.train.seed,
               "final_val_acc": val.acc, "best_val_acc": best_acc, "best_epoch": best_epoch,
               "selfreg_version": __version__}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"final validation accuracy {100 * val.acc:.2f}% (best {100 * best_acc:.2f}% at epoch {best_epoch}); "
        f"run directory {run_dir}")
    return summary
