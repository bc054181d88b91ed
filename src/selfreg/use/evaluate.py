"""`selfreg eval`: accuracy, loss, per-class accuracy and a confusion matrix of a trained model.

    data_cfg = eval_data_config(trained, name="folder", root="photos", overrides=["data.cache=true"])
    images = eval_split(trained, data_cfg, "test")       # EvalSplit: loader + label map to the model's classes
    result = evaluate_split(trained.model, images, tta="flip")
    write_report(result, out_dir)                        # metrics.json, confusion.png

The data are any registered dataset (the checkpoint's own by default) whose class names
are the checkpoint's; their order may differ (labels are remapped by name). Images go
through the checkpoint's saved eval transform, not one rebuilt from the new data, so a
folder of photos is normalised as the training data was.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig, from_dict, parse_override, set_dotted
from ..data.datasets import DATASETS, Transformed, build_dataset, select
from ..data.loader import LOADERS, choose_loader
from ..errors import UserError
from ..train.precision import make_autocast
from .trained import Trained, run_dir_of

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------- test-time augmentation
# name -> log-probabilities of a batch; averaging happens on probabilities.
def _no_tta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(x).float(), dim=1)


def _flip_tta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    both = torch.stack([F.log_softmax(model(x).float(), 1), F.log_softmax(model(x.flip(-1)).float(), 1)])
    return torch.logsumexp(both, 0) - math.log(2)


TTA: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {"none": _no_tta, "flip": _flip_tta}


# ---------------------------------------------------------------------------- data
def eval_data_config(trained: Trained, name: str | None = None, root: str | None = None,
                     overrides: list[str] | tuple[str, ...] = ()):
    """The checkpoint's data config, or (another dataset) defaults fitted to the checkpoint,
    then `root` and `data.key=value` overrides (the `data.` prefix may be left out)."""

    own = trained.data.get("name")
    if name is None and not own:
        raise UserError(f"{trained.source} holds no data config (a weights file); pass --data NAME")
    own_config = name is None or name == own
    if own_config:
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        raw = {k: v for k, v in trained.data.items() if k in fields}
        unknown = sorted(set(trained.data) - fields)
        if unknown:   # a checkpoint from another selfreg version: say what is not used
            print(f"selfreg: warning: {trained.source} has data config keys this selfreg does not know, "
                  f"ignored: {', '.join('data.' + k for k in unknown)}", file=sys.stderr)
    else:
        h, w = trained.transform.image_size
        # The saved transform does the resizing; `imagenet` keeps photo sizes for its centre crop.
        raw = {"name": name, "image_size": h if h == w else 0,
               "augment": ["imagenet"] if trained.transform.resize == "center_crop" else ["none"]}
    if root is not None:
        raw["root"] = root
    tree = {"data": raw}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(tree, key if key.startswith("data.") else f"data.{key}", value)
    if own_config and "root" not in tree["data"] and reads_root(tree["data"].get("name")):
        # weights files carry no machine's paths (weightfiles.MACHINE_DATA_KEYS)
        raise UserError(f"{trained.source} does not say where its {tree['data'].get('name', 'dataset')} data "
                        f"lies on this machine; pass --root DIR (for a folder dataset: the folder holding "
                        f"train/, val/ or test/ with one folder per class)")
    if set(tree) != {"data"}:
        raise UserError(f"eval takes data.* overrides only, got {', '.join(k for k in tree if k != 'data')}.*")
    return from_dict(DataConfig, tree["data"], prefix="data.")


def reads_root(dataset: str | None) -> bool:
    """Whether the dataset reads its images from data.root (digits ships inside scikit-learn)."""
    try:
        return DATASETS.entry(str(dataset)).meta.get("reads_root", True)
    except UserError:
        return True


@dataclass
class EvalSplit:
    loader: Any                    # yields (float images, dataset labels)
    label_map: torch.Tensor        # dataset label -> model class index
    dataset: str
    split: str
    count: int
    amp: str = "none"              # the autocast the run validated under, where known (`run_amp`)


def run_amp(trained: Trained, device: torch.device | str) -> str:
    """The autocast (none | bf16 | fp16) a run checkpoint's own training validated under, for
    evaluating it on `device` as it was measured: its speed.json (what train.amp=auto chose),
    else its config.yaml. "none" for a weights file, a run of another device type (a GPU run
    evaluated on the CPU computes in float32), or a setting the device cannot run."""
    import yaml

    device = torch.device(device)
    if trained.source.parent.name != "checkpoints":
        return "none"
    run = run_dir_of(trained.source)
    amp, where = None, None
    try:
        if (run / "speed.json").is_file():
            speed = json.loads((run / "speed.json").read_text())
            amp, where = speed.get("amp"), speed.get("device")
        if amp is None and (run / "config.yaml").is_file():
            train = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("train") or {}
            amp, where = train.get("amp"), str(train.get("device", "auto"))
    except (OSError, ValueError, yaml.YAMLError):
        return "none"
    if amp not in ("bf16", "fp16"):
        return "none"
    try:   # speed.json says "cuda" / "cpu"; a config.yaml's train.device=auto could have been either
        trained_on = device.type if where in (None, "auto") else torch.device(where).type
    except (RuntimeError, ValueError):
        return "none"
    if trained_on != device.type or (amp == "fp16" and device.type != "cuda"):
        return "none"
    return amp


def class_map(data_classes: list[str], model_classes: list[str], dataset: str) -> torch.Tensor:
    """Dataset label -> model class index, matched by name; any difference is one line listing both."""
    if sorted(data_classes) != sorted(model_classes):
        raise UserError(f"the classes of dataset {dataset} do not match the checkpoint's: dataset "
                        f"[{_short(data_classes)}] ({len(data_classes)}), checkpoint [{_short(model_classes)}] "
                        f"({len(model_classes)})")
    index = {c: i for i, c in enumerate(model_classes)}
    return torch.tensor([index[c] for c in data_classes], dtype=torch.long)


def _short(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def eval_split(trained: Trained, data_cfg, split: str, device: torch.device | str = "cpu") -> EvalSplit:
    """The split's stored images through the checkpoint's eval transform, and the label map."""
    return eval_splits(trained, data_cfg, [split], device)[split]


def eval_splits(trained: Trained, data_cfg, wanted: list[str], device: torch.device | str = "cpu",
                limit: int = 0, test_fallback: bool = False) -> dict[str, EvalSplit]:
    """Several splits of one dataset build. `limit` > 0 keeps a fixed-seed random sample of
    that many images per split; `test_fallback` uses val where the dataset has no test split."""

    for split in wanted:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    splits = build_dataset(data_cfg, with_test="test" in wanted, needed=wanted)
    label_map = class_map(list(splits.classes), trained.classes, data_cfg.name)
    out = {}
    for split in wanted:
        chosen, name = getattr(splits, split), split
        if chosen is None and test_fallback:
            chosen, name = splits.val, "val"
        if chosen is None:
            raise UserError(f"dataset {data_cfg.name} has no test split; use --split val")
        out[split] = _loader(trained, data_cfg, splits, chosen.base, name, label_map, torch.device(device), limit)
    return out


def _loader(trained: Trained, data_cfg, splits, base, split: str, label_map: torch.Tensor,
            device: torch.device, limit: int) -> EvalSplit:

    if 0 < limit < len(base):
        idx = torch.randperm(len(base), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        base = select(base, idx)
    native_channels = base[0][0].shape[0]
    dataset = Transformed(base, trained.transform.pipeline(native_channels))
    make = LOADERS[choose_loader(data_cfg.loader, splits)]
    loader = make(dataset, data_cfg.eval_batch_size, shuffle=False, seed=0, device=device, rank=0,
                  world_size=1, num_workers=data_cfg.num_workers)
    return EvalSplit(loader, label_map, data_cfg.name, split, len(dataset), amp=run_amp(trained, device))


# ---------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    classes: list[str]
    confusion: np.ndarray          # (true, predicted) counts, in the model's class order
    loss: float
    top1: float
    topk: float | None             # None where k >= the class count (it would be 100%)
    k: int
    count: int
    tta: str = "none"

    @property
    def per_class(self) -> dict[str, dict[str, float]]:
        totals = self.confusion.sum(1)
        return {c: {"acc": float(self.confusion[i, i] / totals[i]) if totals[i] else float("nan"),
                    "images": int(totals[i])} for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        topk = {f"top{self.k}": self.topk, "k": self.k} if self.topk is not None else {}
        return {"images": self.count, "tta": self.tta, "loss": self.loss, "top1": self.top1, **topk,
                "per_class": self.per_class, "classes": self.classes, "confusion": self.confusion.tolist()}


@torch.no_grad()
def evaluate_split(model: nn.Module, data: EvalSplit, classes: list[str], tta: str = "none", k: int = 5,
                   channels_last: bool = False, amp: str | None = None) -> EvalResult:
    """Top-1 and top-k accuracy (top-k only for more than k classes, where it is not 100% by
    construction), loss and confusion matrix. `channels_last` evaluates in NHWC, as a run that
    trained in it measured its accuracy (the two layouts round differently, so a near-tie image
    can flip between them). `amp` (none | bf16 | fp16): the autocast to run the model under;
    default the one the run validated under (`data.amp`, from its folder where known).

    Counts stay on the model's device until the end: one read, not three per batch."""
    if tta not in TTA:
        raise UserError(f"unknown --tta {tta!r}; valid: {', '.join(TTA)}")
    if k < 1:
        raise UserError(f"--topk must be at least 1, got {k}")
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = len(classes)
    with_topk = k < n
    autocast = None
    confusion = loss_sum = top1 = topk = seen = label_map = None
    for images, labels in data.loader:
        if confusion is None:        # on the loader's device, made once
            dev = labels.device
            autocast = make_autocast(data.amp if amp is None else amp, images.device)
            label_map = data.label_map.to(dev)
            confusion = torch.zeros(n * n, dtype=torch.long, device=dev)
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            top1, topk, seen = (torch.zeros((), dtype=torch.long, device=dev) for _ in range(3))
        labels = label_map[labels]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logp = TTA[tta](model, images)                               # (B, classes), float32
        loss_sum += F.nll_loss(logp, labels, reduction="sum").double()
        best = logp.topk(min(k, n), dim=1).indices                       # (B, k)
        top1 += (best[:, 0] == labels).sum()
        topk += (best == labels[:, None]).any(1).sum()
        seen += labels.numel()
        confusion += torch.bincount(labels * n + best[:, 0], minlength=n * n)
    count = int(seen.item()) if seen is not None else 0                  # the one host read
    if count == 0:
        raise UserError(f"the {data.split} split of {data.dataset} holds no images")
    return EvalResult(list(classes), confusion.view(n, n).cpu().numpy(), loss_sum.item() / count,
                      top1.item() / count, topk.item() / count if with_topk else None, k, count, tta)


# ---------------------------------------------------------------------------- output
def default_out_dir(trained: Trained, dataset: str, split: str, tta: str) -> Path:
    """RUN/eval/<split> for a run checkpoint (RUN/checkpoints/x.pt), else next to the file;
    another dataset than the run's gets its name in front, TTA its name behind."""

    run = run_dir_of(trained.source)
    name = split if dataset == trained.data.get("name") else f"{dataset}-{split}"
    return run / "eval" / (name if tta == "none" else f"{name}-{tta}")


def write_report(result: EvalResult, out_dir: Path, header: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / "metrics.json"
    metrics.write_text(json.dumps({**header, **result.to_dict()}, indent=2) + "\n")
    png = out_dir / "confusion.png"
    plot_confusion(result, png, title=f"{header.get('model', '')} on {header.get('dataset', '')} "
                                      f"{header.get('split', '')}: top-1 {100 * result.top1:.2f}%")
    return [metrics, png]


def plot_confusion(result: EvalResult, path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each row: where that true class went); counts when small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result.confusion
    n = len(result.classes)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 50:
        ax.set_xticks(range(n), result.classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), result.classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(result: EvalResult, header: dict[str, Any], max_classes: int = 20) -> list[str]:
    lines = [f"{header['model']} on {header['dataset']} {header['split']} ({result.count} images"
             + (f", tta {result.tta}" if result.tta != "none" else "") + f"): top-1 {100 * result.top1:.2f}%  "
             + (f"top-{result.k} {100 * result.topk:.2f}%  " if result.topk is not None else "")
             + f"loss {result.loss:.4f}"]
    per = result.per_class
    names = list(per)
    if len(names) > max_classes:  # the worst classes are the interesting ones
        names = sorted(names, key=lambda c: per[c]["acc"])[:max_classes]
        lines.append(f"per-class accuracy (the {max_classes} lowest of {len(per)}):")
    else:
        lines.append("per-class accuracy:")
    width = max(len(c) for c in names)
    lines += [f"  {c:<{width}}  {100 * per[c]['acc']:6.2f}%  ({per[c]['images']} images)" for c in names]
    return lines


def measure_file(path: str | Path, root: str | None, split: str, dataset: str | None = None,
                 overrides: list[str] | tuple[str, ...] = (), device: torch.device | str = "cpu",
                 name: str | None = None, channels_last: bool = False) -> tuple[float, int]:
    """(top-1, images) of a checkpoint or weights file on `split`, as `selfreg eval` measures it
    (its own data config unless `dataset` names another; no TTA), in NHWC when `channels_last`."""
    from .trained import load_trained

    trained = load_trained(path, name=name, device=device)
    images = eval_split(trained, eval_data_config(trained, dataset, root, overrides), split, device)
    result = evaluate_split(trained.model, images, trained.classes, channels_last=channels_last)
    return result.top1, result.count
