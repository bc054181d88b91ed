"""Our parameter and multiply-add counts next to the ones printed in Xu et al. (TNNLS 2022).

`PAPER_VALUES` is the paper's numbers as data, `compare()` measures ours, and
`markdown_table()` renders both; tests/test_regnet.py asserts the checked rows are within
`TOLERANCE`, benchmarks/param_table.py prints the table that docs/regnet.md shows.

Units: the paper's "FLOPs" in Tables VI-VII are multiply-adds (ResNet-50: 4.1G), while
Table I's are FLOPs proper, two per multiply-add: its light row (+15M) is twice our +7.6M
multiply-adds. The Table I FLOP rows are printed for reference and not checked, since that
convention is inferred from one of them; the full row is not reached in either unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from ..factory import create_model, model_entry
from ..complexity import count_macs, count_parameters, human

TOLERANCE = 0.15

METRICS = ("params", "macs", "flops")  # flops = 2 x macs


@dataclass(frozen=True)
class PaperValue:
    model: str
    metric: str                # one of METRICS
    paper: float
    source: str                # where in the paper
    over: str | None = None    # compare the increase over this model instead of the total
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra builder arguments, e.g. (("form", "full"),)
    num_classes: int = 10
    checked: bool = True       # False: shown for reference only (see the module docstring)

    @property
    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.kwargs)
        return f"{self.model}{extra}" + (f" over {self.over}" if self.over else "")


PAPER_VALUES: tuple[PaperValue, ...] = (
    PaperValue("rrnet20_lstm", "params", 0.32e6, "IV-A2"),
    *(PaperValue(f"rrnet{d}_{cell}", "params", inc, "Table IV", over=f"resnet{d}")
      for d, cell, inc in [(20, "gru", 0.04e6), (20, "lstm", 0.04e6), (32, "gru", 0.06e6),
                           (32, "lstm", 0.07e6), (56, "gru", 0.11e6), (56, "lstm", 0.12e6)]),
    PaperValue("rrnet20_gru", "params", 44e3, "Table I", over="resnet20"),
    PaperValue("rrnet20_gru", "params", 330e3, "Table I", over="resnet20", kwargs=(("form", "full"),)),
    PaperValue("rrnet20_gru", "flops", 15e6, "Table I", over="resnet20", checked=False),
    PaperValue("rrnet20_gru", "flops", 346e6, "Table I", over="resnet20", kwargs=(("form", "full"),),
               checked=False),
    PaperValue("resnet20", "params", 0.273e6, "Table V"),
    *(PaperValue(f"rrnet20_{cell}_s{s}", "params", p, "Table V")
      for (cell, s), p in {("gru", 1): 0.279e6, ("gru", 2): 0.285e6, ("gru", 3): 0.306e6,
                           ("lstm", 1): 0.281e6, ("lstm", 2): 0.290e6, ("lstm", 3): 0.325e6}.items()),
    PaperValue("resnet50", "params", 26.6e6, "Table VI", num_classes=1000),
    PaperValue("rrnet50", "params", 31.3e6, "Table VI", num_classes=1000),
    PaperValue("resnet50", "macs", 4.14e9, "Table VI", num_classes=1000),
    PaperValue("rrnet50", "macs", 5.12e9, "Table VI", num_classes=1000),
)


@lru_cache(maxsize=None)
def measure(model: str, metric: str, kwargs: tuple = (), num_classes: int = 10) -> int:
    """Our count of `metric` for a registered model (MACs at its native input size).

    Built on the meta device: shapes only, no memory and no arithmetic, so counting
    ResNet-50 at 224x224 takes milliseconds whatever the load on the machine.
    """
    with torch.device("meta"):
        net = create_model(model, num_classes=num_classes, **dict(kwargs))
        if metric == "params":
            return count_parameters(net)
        macs = count_macs(net, model_entry(model).meta.get("input_size", 224))
    return macs if metric == "macs" else 2 * macs


@dataclass
class Comparison:
    value: PaperValue
    ours: int
    rel: float = field(init=False)  # (ours - paper) / paper

    def __post_init__(self):
        self.rel = (self.ours - self.value.paper) / self.value.paper


def compare(value: PaperValue) -> Comparison:
    ours = measure(value.model, value.metric, value.kwargs, value.num_classes)
    if value.over:
        ours -= measure(value.over, value.metric, (), value.num_classes)
    return Comparison(value, ours)


def markdown_table(rows: list[Comparison]) -> str:
    lines = ["| model | quantity | ours | paper | ours vs paper | source | checked |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        v = row.value
        sign = "+" if v.over else ""
        quantity = v.metric + (" (increase)" if v.over else "")
        if v.metric == "params":
            quantity += f", {v.num_classes} classes"
        lines.append(f"| {v.label} | {quantity} | {sign}{human(row.ours)} ({row.ours:,}) | "
                     f"{sign}{human(v.paper)} | {row.rel:+.1%} | {v.source} | "
                     f"{'yes' if v.checked else 'no'} |")
    return "\n".join(lines)
