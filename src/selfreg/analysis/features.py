"""Look inside a trained model, as the RegNet paper's Fig. 1 does.

    blocks = find_blocks(model)                          # the building blocks, in forward order
    maps = capture(model, x, blocks[-3:])                # per block: {"input": I, "state": H, "output": O}
    plot_feature_grid(image, blocks[-3:], maps, "fig1a.png")   # Fig. 1(a): rows = blocks, columns = I / H / O
    probe = probe_blocks(...)                            # Fig. 1(b): linear probes on pooled block outputs

Blocks: RegNets (`rrnet*`) name their stages (`stage_modules()`), and each regulated block
has identity taps for its input I (the map fed to the ConvRNN), the regulator state H and
the output O (models/regnet.py). For every other model the blocks are found by a short
table of layouts (torchvision/timm `layer1..4`, timm `stages` / `blocks`, `features`),
falling back to the model's top-level children; they give the block output O only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..layers.taps import record_outputs
from ..stats import mean_std
from ..data.images import BadImage
from ..use.evaluate import eval_splits
from ..use.predict import load_input

KINDS = ("input", "state", "output")
SYMBOL = {"input": "I", "state": "H", "output": "O"}
HEAD_NAMES = {"fc", "head", "classifier", "global_pool", "head_drop", "pre_logits", "fc_norm", "norm", "pool",
              "avgpool", "dropout", "flatten"}


@dataclass
class Block:
    index: int                     # 1-based position among all blocks (the paper's t)
    name: str                      # module path, e.g. "stages.2.0"
    module: nn.Module
    taps: dict[str, nn.Module] = field(default_factory=dict)   # kind -> module whose output is that map

    @property
    def label(self) -> str:
        return f"{self.index} {self.name}"


# ------------------------------------------------------------------------------ finding blocks
def _containers_blocks(containers: Iterable[nn.Module]) -> list[nn.Module]:
    """Blocks of a list of stages: a Sequential/ModuleList stage is its children; a stage
    holding `.blocks` (timm CSP stages) is those; anything else is one block."""
    out = []
    for stage in containers:
        if isinstance(stage, (nn.Sequential, nn.ModuleList)):
            out += list(stage.children())
        elif isinstance(getattr(stage, "blocks", None), (nn.Sequential, nn.ModuleList)):
            out += list(stage.blocks.children())
        else:
            out.append(stage)
    return out


def _by_stage_modules(model: nn.Module) -> list[nn.Module]:
    fn = getattr(model, "stage_modules", None)
    return [b for stage in fn() for b in stage] if callable(fn) else []


def _by_layer_n(model: nn.Module) -> list[nn.Module]:
    names = sorted((n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)), key=lambda n: int(n[5:]))
    return _containers_blocks(getattr(model, n) for n in names)


def _by_attribute(attr: str) -> Callable[[nn.Module], list[nn.Module]]:
    def find(model: nn.Module) -> list[nn.Module]:
        container = getattr(model, attr, None)
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            return []
        return _containers_blocks(container.children())
    return find


def _by_children(model: nn.Module) -> list[nn.Module]:
    return [m for n, m in model.named_children() if n not in HEAD_NAMES and any(True for _ in m.parameters())]


# Tried in order; the first layout that yields blocks wins.
BLOCK_FINDERS: list[tuple[str, Callable[[nn.Module], list[nn.Module]]]] = [
    ("stage_modules", _by_stage_modules),   # selfreg RegNets and ResNet-50
    ("layerN", _by_layer_n),                # torchvision / timm ResNets, ResNeXt, SE-ResNet
    ("stages", _by_attribute("stages")),    # selfreg CIFAR ResNets, timm ByobNet / CSP (darknet)
    ("blocks", _by_attribute("blocks")),    # timm EfficientNet / MobileNet, ViT, MLP-Mixer
    ("features", _by_attribute("features")),  # torchvision splits, VGG, DenseNet, LeNet, NiN, ...
    ("children", _by_children),             # anything else: top-level children with weights
]


def find_blocks(model: nn.Module) -> list[Block]:
    names = {id(m): n for n, m in model.named_modules()}
    for _, finder in BLOCK_FINDERS:
        modules = finder(model)
        if modules:
            break
    else:
        raise UserError(f"found no blocks in {type(model).__name__}")
    blocks = []
    for i, m in enumerate(modules, 1):
        taps = {k: getattr(m, f"tap_{k}") for k in KINDS if isinstance(getattr(m, f"tap_{k}", None), nn.Module)}
        taps.setdefault("output", m)
        blocks.append(Block(i, names.get(id(m), type(m).__name__), m, taps))
    return blocks


def select_blocks(blocks: list[Block], spec: str) -> list[Block]:
    """`spec`: "last3" (default of the commands), "lastN", "all", or 1-based indices "7,8,9" / "7-9"."""
    n = len(blocks)
    spec = spec.strip().lower()
    try:
        if spec == "all":
            return blocks
        if spec.startswith("last"):
            k = int(spec[4:] or 1)
            return blocks[-k:] if k > 0 else []
        picked: list[int] = []
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            picked += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--blocks {spec!r}: use e.g. 7,8,9 or 7-9 or last3 or all") from None
    bad = [i for i in picked if not 1 <= i <= n]
    if bad or not picked:
        raise UserError(f"--blocks {spec!r}: the model has blocks 1..{n}; {bad or 'none'} out of range")
    return [blocks[i - 1] for i in picked]


# ------------------------------------------------------------------------------ capturing maps
def _tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]        # e.g. a block returning (map, state)
    return None


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor,
            blocks: list[Block]) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Run the model once; per block, its captured maps (kinds it has); and the logits."""
    def detached(out):
        t = _tensor(out)
        return None if t is None else t.detach()
    return record_outputs([block.taps for block in blocks], lambda: model(x), convert=detached)


def pool(t: torch.Tensor) -> torch.Tensor:
    """Global average pool: (B, C, H, W) -> (B, C); tokens (B, N, C) -> (B, C); (B, C) as is."""
    return {4: lambda: t.mean(dim=(2, 3)), 3: lambda: t.mean(dim=1)}.get(t.ndim, lambda: t.flatten(1))()


def as_maps(t: torch.Tensor) -> torch.Tensor:
    """One sample's map as (C, H, W): tokens (N, C) become a square grid (dropping class tokens)."""
    if t.ndim == 3:
        return t
    if t.ndim == 2:
        side = int(np.sqrt(t.shape[0]))
        return t[t.shape[0] - side * side:].T.reshape(t.shape[1], side, side)
    return t.reshape(-1, 1, 1)


# ------------------------------------------------------------------------------ Fig. 1(a)
def plot_feature_grid(image: torch.Tensor, blocks: list[Block], maps: list[dict[str, torch.Tensor]], path,
                      channels: int = 3, title: str = "") -> None:
    """Rows = blocks; per map kind (I, H, O) the channel mean and the `channels` most active channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(k in m for m in maps)]
    cols = 1 + len(kinds) * (1 + channels)
    rows = len(blocks)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.45 * rows + 0.6), squeeze=False)
    for r, (block, record) in enumerate(zip(blocks, maps)):
        _show(axes[r][0], _display_image(image), "input image" if r == 0 else "", cmap="gray")
        axes[r][0].set_ylabel(block.label, fontsize=8)
        c = 1
        for kind in kinds:
            panels = _panels(record[kind][0], channels) if kind in record else []
            for j in range(1 + channels):
                ax = axes[r][c + j]
                if j < len(panels):
                    label, array = panels[j]
                    _show(ax, array, f"{SYMBOL[kind]}$^{{{block.index}}}$ {label}")
                else:
                    ax.axis("off")
            c += 1 + channels
    legend = {"input": "I = regulator input", "state": "H = regulator state", "output": "O = block output"}
    fig.suptitle("\n".join(filter(None, [title, "; ".join(legend[k] for k in kinds)])), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _panels(t: torch.Tensor, channels: int) -> list[tuple[str, np.ndarray]]:
    maps = as_maps(t.float().cpu())                           # (C, H, W)
    strongest = maps.abs().mean(dim=(1, 2)).argsort(descending=True)[:channels].tolist()
    return [("mean", maps.mean(0).numpy())] + [(f"c{i}", maps[i].numpy()) for i in strongest]


def _display_image(x: torch.Tensor) -> np.ndarray:
    x = x.float().cpu()
    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _show(ax, array: np.ndarray, title: str, cmap: str = "viridis") -> None:
    ax.imshow(array, cmap=cmap)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


# ------------------------------------------------------------------------------ Fig. 1(b)
@dataclass
class ProbeRow:
    block: Block
    dims: int
    probe_acc: float
    head_acc: float | None         # the model's own head on this block's output, where shapes allow


@torch.no_grad()
def pooled_features(model: nn.Module, loader, label_map: torch.Tensor, blocks: list[Block],
                    own_head: bool = True) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray | None]]:
    """Pooled outputs of `blocks` over a loader, its labels (model order) and own-head predictions."""
    model.eval()
    feats: list[list[np.ndarray]] = [[] for _ in blocks]
    heads: list[list[np.ndarray] | None] = [[] if own_head else None for _ in blocks]
    labels = []
    for images, y in loader:
        records, _ = capture(model, images, blocks)
        labels.append(label_map.to(y.device)[y].cpu().numpy())
        for i, record in enumerate(records):
            out = record["output"]
            feats[i].append(pool(out).float().cpu().numpy())
            if heads[i] is not None:
                heads[i] = _head_predict(model, out, heads[i])
    return ([np.concatenate(f) for f in feats], np.concatenate(labels),
            [np.concatenate(h) if h else None for h in heads])


def _head_predict(model: nn.Module, out: torch.Tensor, sofar: list[np.ndarray]) -> list[np.ndarray] | None:
    """The paper's protocol: the trained pooling + last FC on an earlier block (needs its shape)."""
    head = getattr(model, "forward_head", None)
    if head is None:
        return None
    try:
        return sofar + [head(out).argmax(1).cpu().numpy()]
    except (RuntimeError, ValueError, IndexError):
        return None


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise UserError("the probe's training images hold a single class; use more images")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


# ------------------------------------------------------------------------------ the commands
def feature_figure(trained, image_path, spec: str, out, channels: int = 3) -> tuple[list[Block], str]:
    """`selfreg features`: the maps of the chosen blocks for one image file, as a PNG grid.
    Returns the blocks shown and the class the model predicts for the image."""
    try:
        x = load_input(Path(image_path), trained)
    except BadImage as exc:
        raise UserError(f"cannot read image {image_path} ({exc})") from None
    blocks = select_blocks(find_blocks(trained.model), spec)
    device = next(trained.model.parameters()).device
    maps, logits = capture(trained.model, x[None].to(device), blocks)
    p, k = torch.softmax(logits[0].float(), 0).max(0)
    plot_feature_grid(x, blocks, maps, out, channels,
                      title=f"{trained.name} on {Path(image_path).name}: predicted {trained.classes[int(k)]} "
                            f"(p={float(p):.2f})")
    return blocks, trained.classes[int(k)]


@dataclass
class ProbeResult:
    model: str
    source: str
    rows: list[ProbeRow]
    train_images: int
    test_images: int
    test_split: str
    dataset: str

    def to_dict(self) -> dict:
        return {"model": self.model, "checkpoint": self.source, "dataset": self.dataset,
                "train_images": self.train_images, "test_split": self.test_split, "test_images": self.test_images,
                "blocks": [{"index": r.block.index, "name": r.block.name, "dims": r.dims, "probe_acc": r.probe_acc,
                            "head_acc": r.head_acc} for r in self.rows]}


def probe_blocks(trained, data_cfg, spec: str = "last3", limit: int = 5000, device="cpu") -> ProbeResult:
    """`selfreg probe`: fit a linear classifier per block on train, score it on test (or val)."""
    data = eval_splits(trained, data_cfg, ["train", "test"], device, limit=limit, test_fallback=True)
    blocks = select_blocks(find_blocks(trained.model), spec)
    train_x, train_y, _ = pooled_features(trained.model, data["train"].loader, data["train"].label_map, blocks,
                                          own_head=False)
    test_x, test_y, heads = pooled_features(trained.model, data["test"].loader, data["test"].label_map, blocks)
    rows = [ProbeRow(b, tx.shape[1], fit_probe(tx, train_y, sx, test_y),
                     float((h == test_y).mean()) if h is not None else None)
            for b, tx, sx, h in zip(blocks, train_x, test_x, heads)]
    return ProbeResult(trained.name, str(trained.source), rows, data["train"].count, data["test"].count,
                       data["test"].split, data_cfg.name)


def group_by_model(models: list[str]) -> dict[str, list[int]]:
    """Positions of each model name in `models`, in first-seen order: several files of one model
    are its seeds."""
    groups: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        groups.setdefault(model, []).append(i)
    return groups


def accuracies_at(results: list[ProbeResult], pos: int, key: str) -> list[float]:
    """`key` (probe_acc / head_acc) in % of each result's block `pos` from the last, where it exists."""
    rows = [r.rows[-pos] for r in results if pos <= len(r.rows)]
    return [100 * getattr(row, key) for row in rows if getattr(row, key) is not None]


def plot_probe(results: list[ProbeResult], path) -> None:
    """Fig. 1(b) as a chart: accuracy per block (x), one bar per model; left the model's own
    pooling + classifier on that block (the paper's protocol), right the linear probe. Several
    files of one model (seeds) make one bar at their mean, with each file as a dot and the sample
    standard deviation as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = max(len(r.rows) for r in results)
    positions = list(range(depth, 0, -1))                   # counted from the last block, as probe_table
    panels = [("head_acc", "model's own pooling + classifier\n(the paper's Fig. 1(b))"),
              ("probe_acc", "linear probe on the pooled output")]
    panels = [(key, name) for key, name in panels
              if any(getattr(row, key) is not None for r in results for row in r.rows)]
    groups = group_by_model([r.model for r in results])
    width = 0.8 / len(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        for g, (model, members) in enumerate(groups.items()):
            letters = ", ".join(chr(97 + i) for i in members)
            label = f"{model} [{letters}]" + (f", mean of {len(members)}" if len(members) > 1 else "")
            xs, ys, spreads = [], [], []
            for x, pos in enumerate(positions):
                values = accuracies_at([results[i] for i in members], pos, key)
                if values:
                    mean, std = mean_std(values)
                    xs.append(x + (g - (len(groups) - 1) / 2) * width)
                    ys.append(mean)
                    spreads.append(std)
                    if len(values) > 1:
                        ax.plot([xs[-1]] * len(values), values, "k.", markersize=3)
            bars = ax.bar(xs, ys, width, label=label, yerr=spreads if len(members) > 1 else None, capsize=2)
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(range(depth), [_block_tick(results, pos) for pos in positions], fontsize=8)
        ax.set_ylabel(f"accuracy on {results[0].test_images} {results[0].test_split} images (%)", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(name, fontsize=9)
    # One legend below both panels: inside a panel it would cover bars of ~90%.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(groups), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _block_tick(results: list[ProbeResult], pos: int) -> str:
    """'block 7' where every checkpoint's block at this position has the same number, else 'last-2'."""
    indices = {r.rows[-pos].block.index for r in results if pos <= len(r.rows)}
    place = "last" if pos == 1 else f"last-{pos - 1}"
    return f"block {indices.pop()}" if len(indices) == 1 else place


def probe_table(results: list[ProbeResult]) -> str:
    """Side by side: one column per checkpoint, one row per block position counted from the last."""
    depth = max(len(r.rows) for r in results)
    table = [["block"] + [f"{r.model} [{chr(97 + i)}]" for i, r in enumerate(results)]]
    for pos in range(depth, 0, -1):
        cells = ["last" if pos == 1 else f"last-{pos - 1}"]
        for r in results:
            row = r.rows[-pos] if pos <= len(r.rows) else None
            head = f" (head {100 * row.head_acc:.1f}%)" if row is not None and row.head_acc is not None else ""
            cells.append(f"#{row.block.index} {100 * row.probe_acc:.2f}%{head}" if row is not None else "-")
        table.append(cells)
    widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.append("")
    for i, r in enumerate(results):
        blocks = ", ".join(f"#{row.block.index} {row.block.name} ({row.dims} dims)" for row in r.rows)
        lines.append(f"[{chr(97 + i)}] {r.source}: {r.dataset}, probe fit on {r.train_images} train images, "
                     f"scored on {r.test_images} {r.test_split} images; blocks {blocks}")
    lines.append("probe: logistic regression on the globally pooled block output; head: the model's own "
                 "pooling + classifier applied to that block (the RegNet paper's Fig. 1(b)), where the shapes fit")
    return "\n".join(lines)
