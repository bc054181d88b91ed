"""Run records: metrics.csv (the record of a run), progress, curves PNG. Where else a run's
metrics go (TensorBoard, MLflow, W&B) is selfreg.train.loggers, one file per logger."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from ..errors import UserError

BASE_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


class MetricsCSV:
    """One row per epoch. Columns are fixed by the first row written: BASE_FIELDS first, then the
    row's others in its order, except that a top-5 column sits right after its top-1 column
    (val_acc, val_acc5). A resumed run appends under the header it began with."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        if new:
            fields = list(BASE_FIELDS)
            for k in row:
                if k in fields:
                    continue
                top1 = k[:-1] if k.endswith("_acc5") else None
                fields.insert(fields.index(top1) + 1 if top1 in fields else len(fields), k)
        else:
            with self.path.open() as f:
                fields = next(csv.reader(f))
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k, "")) for k in fields})

    def last_epoch(self) -> int:
        """The epoch of the last row, 0 when there is none."""
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            rows = list(csv.reader(f))[1:]
        return int(float(rows[-1][0])) if rows else 0

    def truncate_after(self, epoch: int) -> None:
        """Drop rows past `epoch` (a resumed run rewrites the epochs it repeats)."""
        if not self.path.exists():
            return
        with self.path.open() as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if float(r[0]) <= epoch]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.csv as one dict of floats per epoch; a damaged file is a one-line `UserError`.

    Empty cells (a column that started later, e.g. skipped_steps) read as NaN; a row with
    fewer cells than the header (a write cut short), a non-numeric cell, bytes that are not
    text or a file without its header mean the file is damaged.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0] != "epoch":
                raise ValueError("no header line starting with 'epoch'")
            rows = []
            for line, cells in enumerate(reader, start=2):
                if len(cells) != len(header):
                    raise ValueError(f"line {line} has {len(cells)} cells, the header {len(header)} (cut short?)")
                try:
                    rows.append({k: float(v) if v != "" else float("nan") for k, v in zip(header, cells)})
                except ValueError:
                    raise ValueError(f"line {line} holds a value that is not a number") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is damaged (not a CSV text file: {type(exc).__name__})") from None
    except ValueError as exc:
        raise UserError(f"{path} is damaged ({exc})") from None
    return rows


class Progress:
    """A tqdm bar (throughput, ETA) on a terminal; a plain line every 30 s otherwise."""

    LINE_SECONDS = 30.0

    def __init__(self, mode: str, total: int, desc: str, enabled: bool = True):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.total, self.desc, self.count, self.images = total, desc, 0, 0
        self.start = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        self.last_print = self.start

    def update(self, images: int, loss: float | None = None) -> None:
        self.count += 1
        self.images += images
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
        elif self.mode == "lines" and time.perf_counter() - self.last_print >= self.LINE_SECONDS:
            # Plain lines (logs, CI): at most one every LINE_SECONDS, so short epochs print none.
            self.last_print = time.perf_counter()
            elapsed = self.last_print - self.start
            eta = elapsed / self.count * (self.total - self.count)
            print(f"  {self.desc} {self.count}/{self.total} batches  {self.images / elapsed:.0f} img/s  "
                  f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str = "") -> None:
    """Loss and accuracy against epoch, train and val, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "ema_val"):
        if f"{split}_loss" not in rows[0]:
            continue
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], marker=".", label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in rows], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
