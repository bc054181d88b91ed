"""Reports over runs: errors as mean +- std over seeds beside the paper's numbers, curves,
and the parameter-efficiency plot of the RegNet paper's Fig. 4; markdown with PNGs, and HTML.

    selfreg report runs/regnet-table3 [-o docs/results/table3/report.md]

The folder is a sweep (its `sweep.yaml` gives the configurations in order and the paper's
numbers) or any folder of runs: then each run folder holding a config.yaml is one run, and
runs whose configs are identical but for the seed (and where the run was written: see
NOT_THE_CONFIGURATION) are the seeds of one configuration, named after their folder less a
trailing `s<seed>` (so `selfreg train --seeds 0,1`'s NAME/s0, NAME/s1 are one configuration).
A report never picks the best seed: every number is a mean over the finished runs.
Its first lines warn when the runs come from different source trees, ran from a dirty
tree or read different data (their provenance.json, selfreg.provenance), and when what it
compares is not comparable: configurations of different lengths (epochs) or on different
datasets, seeds of one configuration that differ, a paper note that does not fit the runs.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from .. import provenance
from ..complexity import count_macs, human
from ..config import LOGGER_KEYS, TrainConfig, flatten
from ..errors import UserError, output_folder
from ..factory import create_model, model_entry, sized_kwargs
from ..stats import difference, mean_std, sampling_error
from ..train.logging import read_metrics


# ---------------------------------------------------------------------------------------
# Collecting runs

@dataclass
class RunRecord:
    dir: Path
    seed: int
    config: dict
    summary: dict | None          # None until the run finished
    rows: list[dict]              # metrics.csv, one dict per epoch
    failed: str | None = None     # failed.txt, written by a sweep
    provenance: dict | None = None  # provenance.json (None for runs made before it existed)
    folder: str = ""              # a folder of runs: its path less a trailing s<seed> (not a sweep's)

    @property
    def minutes(self) -> float:
        return sum(r.get("seconds", 0.0) for r in self.rows) / 60

    def images(self, key: str) -> int | None:
        """The number of images behind `key` (final_val_acc, test_acc...): the summary's count, or for
        runs from before it was recorded, data.val_fraction when that is a count of validation images."""
        split = "test" if key.startswith("test") else "val"
        count = (self.summary or {}).get(f"{split}_images")
        if count is None and split == "val":
            fraction = (self.config.get("data") or {}).get("val_fraction")
            count = int(fraction) if isinstance(fraction, (int, float)) and fraction >= 1 else None
        return count

    @property
    def epochs(self) -> int:
        """Epochs trained (a finished run) or planned (an unfinished one)."""
        if self.summary is not None:
            return int(self.summary.get("epochs", len(self.rows)))
        return int(self.config.get("train", {}).get("epochs", 0))


@dataclass
class Group:
    """One configuration: its runs over seeds."""
    label: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.summary is not None]

    @property
    def config(self) -> dict:
        return self.runs[0].config

    @property
    def epochs(self) -> list[int]:
        """The epoch counts of its finished runs (of all its runs while none has finished)."""
        return sorted({r.epochs for r in (self.finished or self.runs)})

    @property
    def dataset(self) -> str:
        return dataset_name(self.config)

    def images(self, key: str) -> int | None:
        """How many images each finished run measured `key` on, when they agree and it is known."""
        counts = {r.images(key) for r in self.finished}
        return counts.pop() if len(counts) == 1 else None

    def errors(self, key: str) -> np.ndarray:
        """Error in percent, 100 * (1 - accuracy), of each finished run that has `key`."""
        return np.array([100 * (1 - r.summary[key]) for r in self.finished if key in r.summary], dtype=float)


def collect(root: str | Path, left_out: list[tuple[Path, str]] | None = None,
            warn: Callable[[str], None] | None = None) -> tuple[list[Group], dict]:
    """The configurations under `root` in order, and the sweep record (empty if not a sweep).

    A run whose files are damaged is left out: it is appended to `left_out` as (folder, why)
    and `warn` (stderr by default) gets one line naming the file.
    """
    root = Path(root)
    left_out = [] if left_out is None else left_out
    warn = warn or (lambda line: print(line, file=sys.stderr))

    def read(path: Path) -> RunRecord | None:
        try:
            return read_run(path)
        except UserError as exc:
            left_out.append((path, str(exc)))
            warn(f"selfreg: warning: left {path} out of the report: {exc}")
            return None

    def add(label: str, path: Path) -> None:
        run = read(path)
        if run is not None:
            groups.setdefault(label, Group(label)).runs.append(run)

    groups: dict[Any, Group]

    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass a sweep folder (selfreg sweep prints it) or a folder of runs")
    record_path = root / "sweep.yaml"
    if record_path.is_file():
        record = yaml.safe_load(record_path.read_text()) or {}
        groups = {label: Group(label) for label in record.get("labels", [])}
        for run in record.get("runs", []):
            path = root / run["dir"]
            if (path / "config.yaml").is_file():
                add(run["label"], path)
    else:
        record, runs = {}, []
        for config in sorted(root.rglob("config.yaml")):
            path = config.parent
            rel = path.relative_to(root).as_posix()
            run = read(path)
            if run is None:
                continue
            run.folder = (re.sub(r"(^|/)s\d+$", "", rel) if rel != "." else "") or root.name
            runs.append((rel if rel != "." else root.name, run))
        groups = dict(enumerate(seed_groups(runs)))
    found = [g for g in groups.values() if g.runs]
    if not found:
        raise UserError(f"no runs under {root} (no run folder with a config.yaml); train some first")
    return found, record


# Config keys that say where a run was written, how it showed its progress, on how many CPU
# threads or in which memory layout / compiled form it computed the same arithmetic: runs whose
# configs agree on every other key are seeds of one configuration. (train.amp is not here: a
# lower precision is another experiment.) Where its metrics were logged (LOGGER_KEYS) neither.
NOT_THE_CONFIGURATION = frozenset({
    "train.seed", "train.run_name", "train.out_dir", "train.threads", "train.device", "train.progress",
    "train.plot", "train.channels_last", "train.compile",
    "data.download", "data.num_workers", "data.cache_dir",
}) | LOGGER_KEYS


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def config_differences(configs: list[dict]) -> dict[str, list]:
    """{dotted key: [value per config]} for the keys, other than NOT_THE_CONFIGURATION, on
    which the configs disagree."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return {k: [f.get(k) for f in flats] for k in keys
            if k not in NOT_THE_CONFIGURATION and len({_key(f.get(k)) for f in flats}) > 1}


def seed_groups(runs: list[tuple[str, RunRecord]]) -> list[Group]:
    """Runs (relative path, run) of a folder of runs as configurations: a run joins the first
    configuration whose config it shares (but for NOT_THE_CONFIGURATION) and whose seeds do not
    include its own. A configuration is named after its runs' folders (less s<seed>), or after
    the runs' own paths where two configurations would share that name (one folder of "seeds"
    whose configs differ)."""
    members: list[tuple[str, list[tuple[str, RunRecord]]]] = []
    for rel, run in runs:
        key = _key({k: v for k, v in flatten(run.config).items() if k not in NOT_THE_CONFIGURATION})
        home = next((m for m in members if m[0] == key and run.seed not in {r.seed for _, r in m[1]}), None)
        if home is None:
            home = (key, [])
            members.append(home)
        home[1].append((rel, run))
    labels = [", ".join(dict.fromkeys(run.folder for _, run in m)) for _, m in members]
    labels = [", ".join(rel for rel, _ in m) if labels.count(label) > 1 else label
              for label, (_, m) in zip(labels, members)]
    return [Group(label, [run for _, run in m]) for label, (_, m) in zip(labels, members)]


def read_run(path: Path) -> RunRecord:
    config = _read_file(path / "config.yaml", yaml.safe_load) or {}
    summary_path, metrics_path, failed_path = path / "summary.json", path / "metrics.csv", path / "failed.txt"
    summary = _read_file(summary_path, json.loads) if summary_path.is_file() else None
    if not isinstance(config, dict) or not (summary is None or isinstance(summary, dict)):
        raise UserError(f"{path} holds a config.yaml or summary.json that is not a mapping (damaged)")
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    if summary is not None and len(rows) < int(summary.get("epochs", 0)):
        raise UserError(f"{metrics_path} has {len(rows)} epoch rows but summary.json says "
                        f"{summary.get('epochs')} epochs (truncated)")
    failed = failed_path.read_text().strip() if failed_path.is_file() else None
    return RunRecord(path, int(config.get("train", {}).get("seed", 0)), config, summary, rows, failed,
                     provenance.read(path))


def _read_file(path: Path, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text())
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------
# Numbers

def fmt_pm(stats: tuple[float, float] | None, n: int) -> str:
    if stats is None:
        return "-"
    return f"{stats[0]:.2f} ± {stats[1]:.2f}" if n > 1 else f"{stats[0]:.2f}"


def family(group: Group) -> str:
    """The model family of the registry, with the regulator's cell form when it is set."""
    model = group.config.get("model", {})
    try:
        fam = model_entry(model.get("name", "?")).meta.get("family", model.get("name"))
    except UserError:
        fam = model.get("name", "?")
    form = (model.get("kwargs") or {}).get("form")
    return f"{fam} ({form})" if form else str(fam)


_MAC_CACHE: dict[str, int | None] = {}


def model_macs(group: Group) -> int | None:
    """Forward multiply-adds for one image at the run's input size (None if it cannot be counted)."""
    summary = next((r.summary for r in group.finished), None)
    if summary is None or not isinstance(summary.get("image_size"), int):
        return None
    model = group.config.get("model", {})
    name, size = model.get("name"), summary["image_size"]
    kwargs = dict(model.get("kwargs") or {})
    key = json.dumps([name, kwargs, size, summary.get("num_classes"), summary.get("in_chans")], sort_keys=True)
    if key not in _MAC_CACHE:
        _MAC_CACHE[key] = None
        for device in ("meta", "cpu"):
            try:
                with torch.device(device):
                    net = create_model(name, num_classes=summary["num_classes"], in_chans=summary["in_chans"],
                                       **sized_kwargs(kwargs, size))
                _MAC_CACHE[key] = count_macs(net, size, summary["in_chans"])
                break
            except (NotImplementedError, RuntimeError):
                continue
    return _MAC_CACHE[key]


def paper_value(record: dict, label: str) -> float | None:
    values = (record.get("paper") or {}).get("values") or {}
    value = values.get(label)
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------
# The document: a list of blocks rendered to markdown and to HTML alike

@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", path, alt))


def to_markdown(doc: Doc, base: Path) -> str:
    out = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(r) + " |" for r in rows]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1].relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


def _inline_md(text: str) -> str:
    """The little markdown our paragraphs use (`code`, **bold**), as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def to_html(doc: Doc, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
           "code{background:#f4f4f4;padding:1px 3px}</style></head><body>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_inline_md(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_md(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_md(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            out.append(f"<p><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Curves of up to this many epochs mark each epoch: a line through one point draws nothing.
MARKED_EPOCHS = 30


def _band(ax, runs: list[RunRecord], key: str, scale, label: str, color) -> None:
    """Mean over seeds with a +-std band, over the epochs every run has reached; each epoch
    marked on a short curve, and the std as an error bar where there is one epoch."""
    series = [[scale(r[key]) for r in run.rows if key in r] for run in runs if run.rows]
    series = [s for s in series if s]
    if not series:
        return
    n = min(len(s) for s in series)
    values = np.array([s[:n] for s in series], dtype=float)
    epochs = np.arange(1, n + 1)
    mean = values.mean(0)
    marker = {"marker": "o", "markersize": 6 if n == 1 else 3} if n <= MARKED_EPOCHS else {}
    ax.plot(epochs, mean, label=label, color=color, **marker)
    if len(series) > 1:
        std = values.std(0, ddof=1)
        if n == 1:
            ax.errorbar(epochs, mean, yerr=std, color=color, capsize=4, fmt="none")
        else:
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)


def plot_group_curves(groups: list[Group], path: Path) -> None:
    plt = _plt()
    fig = curves_figure(groups)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(groups: list[Group]):
    """Training loss and validation error against epoch, one colour per configuration."""
    plt = _plt()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for i, g in enumerate(groups):
        color = colors(i % colors.N)
        _band(ax_loss, g.runs, "train_loss", float, g.label, color)
        _band(ax_err, g.runs, "val_acc", lambda a: 100 * (1 - a), g.label, color)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss (mean ± std over seeds)")
    ax_err.set(xlabel="epoch", ylabel="validation error (%)", title="validation error (mean ± std over seeds)")
    from matplotlib.ticker import MaxNLocator

    last = max((len(r.rows) for g in groups for r in g.runs), default=1)
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if last <= 10:                                            # whole epochs, not 0.96 .. 1.04
            ax.set_xticks(range(1, last + 1))
            ax.set_xlim(0.5, last + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_err.legend(fontsize=7, ncol=2 if len(groups) > 8 else 1)
    fig.tight_layout()
    return fig


def plot_efficiency(groups: list[Group], path: Path, metric: str) -> bool:
    """Fig. 4: error against parameters, one line per family (and one panel per dataset)."""
    points: dict[str, dict[str, list]] = {}
    for g in groups:
        errors = g.errors(metric)
        if not len(errors):
            continue
        dataset = g.config.get("data", {}).get("name", "?")
        params = g.finished[0].summary["params"]
        points.setdefault(dataset, {}).setdefault(family(g), []).append(
            (params, errors.mean(), errors.std(ddof=1) if len(errors) > 1 else 0.0, g.label))
    if not points:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(points), figsize=(6.5 * len(points), 4.5), squeeze=False)
    for ax, (dataset, families) in zip(axes[0], points.items()):
        for fam, pts in sorted(families.items()):
            pts.sort()
            x = [p[0] / 1e6 for p in pts]
            ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=fam)
            for p in pts:
                ax.annotate(p[3], (p[0] / 1e6, p[1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="parameters (M)", ylabel=f"{metric_name(metric)} (%)", title=f"{dataset}: error vs parameters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def metric_name(key: str) -> str:
    return {"final_val_acc": "final validation error", "best_val_acc": "best validation error",
            "test_acc": "test error"}[key]


# Datasets whose identity is their data.root (any tree of images, any tensor file).
ROOTED_DATASETS = frozenset({"folder", "tensors"})


def dataset_name(config: dict) -> str:
    """The dataset a run trained on: its data.name, with data.root where the name alone does
    not say which images (folder, tensors)."""
    data = config.get("data", {})
    name = str(data.get("name", "?"))
    return f"{name} ({data['root']})" if name in ROOTED_DATASETS and data.get("root") else name


def _epochs(group: Group, unit: bool = True) -> str:
    counts = group.epochs
    text = " or ".join(map(str, counts)) or "?"
    return text + ((" epoch" if counts == [1] else " epochs") if unit else "")


def comparability_warnings(groups: list[Group]) -> list[str]:
    """Lines for the top of a report when what it compares is not comparable: seeds of one
    configuration that differ, one folder of seeds split into configurations, configurations
    of different lengths or on different datasets."""
    lines = []
    for g in groups:
        differ = config_differences([r.config for r in g.runs])
        if g.runs[0].folder or not differ:
            continue        # a folder of runs splits such runs into configurations (below)
        lines.append(f"**Warning**: the seeds of {g.label} differ in "
                     + "; ".join(f"{k} ({' / '.join(map(str, v))})" for k, v in differ.items())
                     + ": its mean ± std mixes them.")
    folders: dict[str, list[Group]] = {}
    for g in groups:
        for folder in dict.fromkeys(r.folder for r in g.runs if r.folder):
            folders.setdefault(folder, []).append(g)
    for folder, split in folders.items():
        if len(split) > 1:
            differ = config_differences([g.config for g in split])
            why = ("differ in " + "; ".join(f"{k} ({' / '.join(map(str, v))})" for k, v in differ.items())
                   if differ else "repeat one config and seed")
            lines.append(f"**Not seeds of one configuration**: the runs under `{folder}` {why}, so the "
                         "report keeps them apart: " + ", ".join(g.label for g in split) + ".")
    by_epochs: dict[str, list[str]] = {}
    for g in groups:
        by_epochs.setdefault(_epochs(g), []).append(g.label)
    if len(by_epochs) > 1:
        lines.append("**Not comparable as a measure of the model**: the configurations ran different numbers "
                     "of epochs (" + "; ".join(f"{e}: {', '.join(labels)}" for e, labels in by_epochs.items())
                     + "), so a gap between them (Against, Results, curves, Fig. 4) measures training length "
                       "as much as the model.")
    by_dataset: dict[str, list[str]] = {}
    for g in groups:
        by_dataset.setdefault(g.dataset, []).append(g.label)
    if len(by_dataset) > 1:
        lines.append("**Different datasets**: " + "; ".join(f"{d}: {', '.join(labels)}"
                                                           for d, labels in by_dataset.items())
                     + ". Errors on different datasets are not comparable: the Against section compares "
                       "each configuration only with one on its own dataset and Fig. 4 has a panel per "
                       "dataset; the Results table lists them together for reference only.")
    return lines


# ---------------------------------------------------------------------------------------
# The report

def comparison_metric(groups: list[Group]) -> str:
    """Test error when every finished run has one (the paper's measure), else final validation error."""
    finished = [r for g in groups for r in g.finished]
    return "test_acc" if finished and all("test_acc" in r.summary for r in finished) else "final_val_acc"


def build_report(root: str | Path, out: str | Path | None = None, command: str = "", note: str = "",
                 baseline: str = "") -> Path:
    """Write report.md, its figures and report.html; return the markdown path."""
    root = Path(root)
    left_out: list[tuple[Path, str]] = []
    groups, record = collect(root, left_out)
    base = baseline_group(groups, baseline)          # before anything is written
    out = Path(out) if out else root / "report.md"
    figures = output_folder(out.parent / f"{out.stem}-figures", "choose another -o or fix its permissions")
    metric = comparison_metric(groups)
    paper = record.get("paper") or {}
    has_paper = bool(paper.get("values"))
    paper_off = paper_does_not_apply(record, groups) if has_paper else ""

    doc = Doc()
    title = f"Report: {record.get('name', root.name)}"
    doc.heading(title, 1)
    for line in provenance.consistency_warnings([r.provenance for g in groups for r in g.runs],
                                                provenance.read_agreement(root)):
        doc.para(line)
    for line in comparability_warnings(groups):
        doc.para(line)
    doc.para(f"Made by `{command or f'selfreg report {root}'}` from {sum(len(g.runs) for g in groups)} runs "
             f"under `{root}`.")
    commands = record.get("commands") or ([record["command"]] if record.get("command") else [])
    if commands:
        doc.para(f"The runs (recipe `{record.get('recipe', '?')}`): "
                 + "; then ".join(f"`{c}`" for c in commands if c) + ".")
    if note:
        doc.para(f"**Note**: {note}")
    if record.get("smoke"):
        doc.para("**Smoke scale**: the recipe's smoke variant (few images, few epochs). These numbers test "
                 "the machinery; they are not comparable with the paper's.")
    elif paper_off:
        doc.para(f"**The paper comparison does not apply**: {paper_off}.")
    if left_out:
        doc.para(f"**Left out**: {len(left_out)} run(s) whose files are damaged: "
                 + "; ".join(f"`{p}`: {why}" for p, why in left_out) + ".")
    doc.para(describe_runs(groups))
    against_baseline(doc, groups, metric, base)

    # Error columns: top-1 of each measure, with its top-5 beside it where any run has one.
    finished = [r for g in groups for r in g.finished]
    columns = [("final_val_acc", "final val err (%)"), ("final_val_acc5", "final val top-5 err (%)"),
               ("best_val_acc", "best val err (%)"), ("best_val_acc5", "best val top-5 err (%)"),
               ("test_acc", "test err (%)"), ("test_acc5", "test top-5 err (%)")]
    columns = [(key, name) for key, name in columns
               if key in ("final_val_acc", "best_val_acc") or any(key in r.summary for r in finished)]
    header = ["configuration", "family", "seeds", "epochs", "params", "MACs"] + [name for _, name in columns]
    header += ["minutes / run"]
    if has_paper:
        header += [f"paper: {paper.get('metric', 'error (%)')}"]
        header += [] if paper_off else [f"ours − paper ({metric_name(metric)})"]
    rows = []
    for g in groups:
        n = len(g.finished)
        params = g.finished[0].summary["params"] if n else None
        macs = model_macs(g) if n else None
        row = [g.label, family(g), f"{n}/{len(g.runs)}", _epochs(g, unit=False), f"{params:,}" if params else "-",
               human(macs) if macs else "-"]
        row += [fmt_pm(mean_std(g.errors(key)), len(g.errors(key))) for key, _ in columns]
        minutes = [r.minutes for r in g.finished]
        row.append(f"{np.mean(minutes):.1f}" if minutes else "-")
        if has_paper:
            ours, theirs = mean_std(g.errors(metric)), paper_value(record, g.label)
            row += [f"{theirs:.2f}" if theirs is not None else "-"]
            row += [] if paper_off else [f"{ours[0] - theirs:+.2f}" if ours and theirs is not None else "-"]
        rows.append(row)
    doc.heading("Results")
    doc.table(header, rows)
    notes = ["Errors are 100 − accuracy, mean ± sample std over the finished seeds (never the best seed); "
             "`seeds` counts finished / started runs (a recipe may plan more); `epochs` the epochs they ran. "
             "Final = after the last epoch; best = the best epoch's "
             "validation error, which peeks at validation and is shown for reference only."]
    if any(key.endswith("5") for key, _ in columns):
        notes.append("Top-5 errors (100 − top-5 accuracy) are shown where the runs recorded them (datasets of "
                     "more than 5 classes); `-` where a configuration has none.")
    if has_paper and paper_off:
        notes.append(f"The paper column is for orientation only: the paper comparison does not apply, "
                     f"as {paper_off}.")
    elif has_paper:
        notes.append(f"Paper numbers: {paper.get('source', 'as given in the recipe')}. The difference uses our "
                     f"{metric_name(metric)}" + ("" if metric == "test_acc" else
                                                 " (no test split was evaluated, so validation stands in)") + ".")
        if recipe_epochs(record) is None:
            notes.append(f"Whether these runs kept the recipe's epoch count was not checked (its file "
                         f"`{record.get('recipe', '?')}` was not found).")
    notes += single_seed_notes(groups, metric)
    notes.append(minutes_note(finished))
    doc.para(" ".join(notes))
    failed = [(g.label, r) for g in groups for r in g.runs if r.failed]
    if failed:
        doc.para("Failed runs: " + "; ".join(f"{label} s{r.seed}: {r.failed}" for label, r in failed))

    doc.heading("Curves")
    plot_group_curves(groups, figures / "curves.png")
    doc.image(figures / "curves.png", "training loss and validation error per configuration")
    if plot_efficiency(groups, figures / "efficiency.png", metric):
        doc.heading("Parameter efficiency (the paper's Fig. 4)")
        doc.image(figures / "efficiency.png", "error against parameters, one line per family")

    doc.heading("Every run")
    run_rows = []
    for g in groups:
        for r in g.runs:
            s = r.summary or {}
            state = "finished" if r.summary else ("failed" if r.failed else f"{len(r.rows)} epochs, unfinished")
            run_rows.append([g.label, str(r.seed), state, str(len(r.rows)),
                             f"{100 * (1 - s['final_val_acc']):.2f}" if s else "-",
                             f"{100 * (1 - s['best_val_acc']):.2f}" if s else "-",
                             f"{100 * (1 - s['test_acc']):.2f}" if "test_acc" in s else "-",
                             f"{r.minutes:.1f}", session_count(r), str(s.get("device", "-")),
                             provenance.run_source(r.provenance), provenance.run_data(r.provenance)])
    doc.table(["configuration", "seed", "state", "epochs", "final val err", "best val err", "test err",
               "minutes", "sessions", "device", "commit", "data"], run_rows)
    doc.para("commit: the git commit of selfreg's source each run (and each resume) ran from, `dirty` when "
             "it had uncommitted changes (kept in the run folder as source.patch); data: the first 8 hex "
             "digits of the data's fingerprint (sha256 of its files' names and sizes). Both from the run's "
             "provenance.json.")

    out.write_text(to_markdown(doc, out.parent))
    out.with_suffix(".html").write_text(to_html(doc, title))
    return out


def session_count(run: RunRecord) -> str:
    """How many processes trained the run: its first and each resume ('-' without provenance)."""
    return str(len(provenance.sessions(run.provenance))) if run.provenance else "-"


def minutes_note(finished: list[RunRecord]) -> str:
    """Why `minutes / run` is a record of these runs and not a measure of speed."""
    resumed = sum(1 for r in finished if session_count(r) not in ("-", "1"))
    text = ("`minutes / run` sums the seconds of each run's epochs (metrics.csv, mean over seeds): what the runs "
            "took where they ran, not a speed measure, since another run or a test beside one slows it; "
            "`benchmarks/` measure speed side by side.")
    if resumed:
        text += (f" {resumed} of the {len(finished)} finished run(s) resumed in later sessions (`sessions` in "
                 "\"Every run\"), each with its own machine load.")
    return text


def baseline_group(groups: list[Group], baseline: str = "") -> Group:
    """The configuration named `baseline` (default: the first); an unknown name is one line."""
    found = next((g for g in groups if g.label == baseline), None) if baseline else groups[0]
    if found is None:
        raise UserError(f"--baseline {baseline!r} is not a configuration of this report; "
                        f"its configurations: {', '.join(g.label for g in groups)}")
    return found


def against_baseline(doc: Doc, groups: list[Group], metric: str, base: Group) -> None:
    """The report's first answer: each configuration's error against the baseline's, by how
    much, and whether that is larger than the seed spread. A configuration on another dataset
    than the baseline's is compared with the first configuration on its own dataset instead;
    one of another length is flagged as not comparable as a measure of the model."""
    others = [g for g in groups if g is not base]
    if not others or not len(base.errors(metric)):
        return
    lines = []
    for g in others:
        if g.dataset == base.dataset:
            lines.append(f"{g.label}: {compare(g, base, metric)}")
            continue
        ref = next(h for h in groups if h.dataset == g.dataset)
        apart = f"on {g.dataset}, {base.label} on {base.dataset}: different datasets, not comparable"
        if ref is g:
            rest = [h.label for h in others if h is not g and h.dataset == g.dataset]
            lines.append(f"{g.label}: {apart}" + (f"; the reference for {', '.join(rest)}." if rest else "."))
        else:
            lines.append(f"{g.label}: {apart}; against {ref.label} (the first on {g.dataset}): "
                         + compare(g, ref, metric))
    doc.heading(f"Against {base.label}")
    doc.bullets(lines)


def compare(group: Group, ref: Group, metric: str) -> str:
    """'final validation error 0.12 percentage points lower than resnet20's (...), at +14.0%
    parameters and +18.6% MACs.', and a flag when the two ran different numbers of epochs."""
    d = difference(ref.errors(metric), group.errors(metric))
    if d is None:
        return "no finished run yet." if not len(group.errors(metric)) else f"{ref.label} has no finished run yet."
    if abs(d.mean) < 0.005:          # 0.00 at the precision printed
        gap = f"{metric_name(metric)} the same as {ref.label}'s"
    else:
        gap = (f"{metric_name(metric)} {abs(d.mean):.2f} percentage points "
               f"{'lower' if d.mean < 0 else 'higher'} than {ref.label}'s")
    if d.n_base < 2 or d.n_other < 2:
        judged = (f"{d.n_base} / {d.n_other} seeds: the seed-to-seed spread is not known yet"
                  + sampling_note(group, ref, metric))
    else:
        judged = ("larger than the seed-to-seed spread (the seeds do not overlap)" if d.beyond_spread
                  else "not larger than the seed-to-seed spread")
        judged += (f"; std {d.base_std:.2f} / {d.other_std:.2f} over {d.n_base} / {d.n_other} seeds"
                   + (f", Welch p = {d.p_value:.3f}" if d.p_value is not None else ""))
    line = f"{gap} ({judged}){relative_cost(group, ref)}."
    if group.epochs != ref.epochs:
        line += (f" **Not comparable as a measure of the model**: {ref.label} ran {_epochs(ref)}, "
                 f"{group.label} {_epochs(group, unit=False)}.")
    return line


def single_seed_notes(groups: list[Group], metric: str) -> list[str]:
    """For each configuration with one finished seed, the spread that is known: the binomial
    sampling error of its number, and the gap that another single run at a similar error must
    exceed to lie beyond 2 sigma of the difference."""
    notes = []
    for g in groups:
        errors, n = g.errors(metric), g.images(metric)
        if len(errors) == 1 and n:
            sigma = sampling_error(1 - errors[0] / 100, n)
            notes.append(f"{g.label} has one seed: the sampling error of its {metric_name(metric)} on {n:,} images "
                         f"is {sigma:.2f} points (1 sigma), so a single run of another configuration at a "
                         f"similar error differs from it beyond sampling error only by more than "
                         f"{2 * math.hypot(sigma, sigma):.2f} points (2 sigma of the difference).")
    return notes


def sampling_note(group: Group, ref: Group, metric: str) -> str:
    """With one seed a side, the one spread that is known: the binomial sampling error of the two
    means' difference from the number of images they were measured on ('' when that is unknown)."""
    n_a, n_b = ref.images(metric), group.images(metric)
    if not n_a or not n_b:
        return ""
    err_a, err_b = ref.errors(metric).mean(), group.errors(metric).mean()
    sigma = math.hypot(sampling_error(1 - err_a / 100, n_a), sampling_error(1 - err_b / 100, n_b))
    gap = abs(err_b - err_a)
    images = f"{n_a:,}" if n_a == n_b else f"{n_a:,} / {n_b:,}"
    return (f"; the sampling error of the difference on {images} images is {sigma:.2f} points (1 sigma), "
            f"so this gap is {'beyond' if gap > 2 * sigma else 'within'} 2 sigma of it")


def recipe_epochs(record: dict) -> list[int] | None:
    """The epoch counts the sweep's recipe gives its runs (train.epochs, and any the grid sets),
    or None when the recipe file is not found (it is named relative to where the sweep ran)."""
    name = record.get("recipe")
    if not name:
        return None
    repo = Path(__file__).resolve().parents[3]
    for path in (Path(name), repo / name):
        if path.is_file():
            break
    else:
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    counts = {(raw.get("train") or {}).get("epochs", TrainConfig.epochs)}

    def grid_values(tree: Any) -> None:
        if isinstance(tree, dict):
            for key, value in tree.items():
                if key == "train.epochs":
                    counts.update(value if isinstance(value, list) else [value])
                else:
                    grid_values(value)

    grid_values((raw.get("sweep") or {}).get("grid"))
    return sorted(int(c) for c in counts)


def paper_does_not_apply(record: dict, groups: list[Group]) -> str:
    """Why the recipe's paper numbers (and its note on them) do not fit these runs, or "": a
    smoke sweep, or runs of another length than the recipe's."""
    if record.get("smoke"):
        return "these are smoke runs (`smoke: true` in sweep.yaml), not the recipe's runs"
    planned = recipe_epochs(record)
    ran = sorted({e for g in groups for e in g.epochs})
    if planned is not None and set(ran) - set(planned):
        return (f"these runs trained {' or '.join(map(str, ran))} epoch{'' if ran == [1] else 's'} where the "
                f"recipe (`{record.get('recipe')}`) trains {' or '.join(map(str, planned))}")
    return ""


def relative_cost(group: Group, base: Group) -> str:
    """What a configuration costs against the baseline, from the numbers the Results table shows:
    ", at +14.0% parameters and +18.6% MACs" (the part that cannot be known is left out)."""
    parts = []
    for what, mine, theirs in (("parameters", group.finished[0].summary.get("params"),
                                base.finished[0].summary.get("params")),
                               ("MACs", model_macs(group), model_macs(base))):
        if mine and theirs:
            parts.append(f"{100 * (mine / theirs - 1):+.1f}% {what}")
    return f", at {' and '.join(parts)}" if parts else ""


def describe_runs(groups: list[Group]) -> str:
    """One line on what the runs trained on: datasets, sizes, epochs, devices."""
    summaries = [r.summary for g in groups for r in g.finished]
    configs = [r.config for g in groups for r in g.runs]
    datasets = sorted({c.get("data", {}).get("name", "?") for c in configs})
    subsets = sorted({c.get("data", {}).get("subset", 0) for c in configs})
    epochs = sorted({c.get("train", {}).get("epochs", 0) for c in configs})
    devices = sorted({str(s.get("device", "?")) for s in summaries}) or ["-"]
    subset_text = "all training images" if subsets == [0] else f"training subset of {', '.join(map(str, subsets))} images"
    return (f"Data: {', '.join(datasets)} ({subset_text}); epochs: {', '.join(map(str, epochs))}; "
            f"device: {', '.join(devices)}.")
