"""Our parameter and multiply-add counts against the ones printed in Xu et al. (TNNLS 2022).

What is compared is the *increase over the baseline*: ours (model minus our baseline)
against the paper's (its number for the model minus its number for the baseline, from the
same table and column), never totals. Table V's single-stage regulators add 0.9-10.5% to a
ResNet-20, so a total within some percent says little: a plain ResNet-20 is within 15% of
five of Table V's six C-10 RegNet(i) totals. Totals are printed next to the increases, for
reference.

`PAPER_ROWS` holds the paper's numbers as printed (strings: "+0.04M", "0.279M", "+44K"),
`compare()` measures ours and judges a row, `markdown_table()` renders the rows and
benchmarks/param_table.py prints the table that docs/regnet.md shows; tests/test_regnet.py
asserts each row's result.

Tolerance, from the printed precision (never a percentage): a printed number is known to
half a unit of its last digit (0.279M: +-0.0005M). An increase computed from two printed
numbers (Table V's 0.279M - 0.273M, Table VI's 31.3M - 26.6M) is known to the sum of
their half units, one unit of the last digit (+-0.001M, +-0.1M). An increase the paper
prints itself (Table I's +44K, Table IV's +0.04M) is given the same one unit (+-1K,
+-0.01M), not half: it may be the difference of two totals rounded to that digit (the text
prints totals that way: 0.32M, 0.47M), and Table IV's own columns print +0.06M (C-10) and
+0.07M (C-100) for RegNet-32 GRU, two models whose increases over their ResNets are equal
(they differ only in the classifier, which both networks share): with +-0.005M both hold
only if that increase is exactly 0.065M.

A row's result is
- "pass" / "FAIL": |ours - paper| against that tolerance, on the increase;
- "paper inconsistent": the paper contradicts itself there, so no count can match it; the
  check finds it (`contradictions()`, and the readings of `Row.readings`), shows the
  numbers and counts the row neither way:
  * Table V: a regulator in each stage i alone (RegNet(i)) adds what the all-stage
    RegNet-20 adds, stage by stage (the paper: "maintaining the original ResNet structure
    in the other layers"), so the three single-stage increases must sum to the all-stage
    one. In all four groups (GRU, LSTM x C-10, C-100) they sum to more than the all-stage
    increase, beyond both tolerances: more than Table IV's +0.04M, except C-10 GRU whose
    +0.051M +- 0.003M exceeds Table I's +44K; which of the rows is off cannot be told.
  * Table VI: RegNet-50's +4.7M parameters and +0.98G over ResNet-50 are reached by no
    reading of Eq. 3 with any cell (RNN, GRU, LSTM) in either form (light, full), in
    multiply-adds or in FLOPs; the readings are measured and printed.
- "not checked": the unit is unknown. Table I's FLOPs: its light row (+15M) is two FLOPs
  per multiply-add of ours, its full row (+346M) is neither convention, so the unit would
  be inferred from the row it is then checked against.
- "baseline": the baseline's own total, printed for reference.

Units: Table VI's "FLOPs" of ResNet-50 (4.14G) are multiply-adds (MACs; torchvision's
ResNet-50 has 4.09G); `measure()` gives MACs, and "flops" is twice that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from .model_table import measure as table_measure

METRICS = ("params", "macs", "flops")  # flops = 2 x macs
RESULTS = ("pass", "FAIL", "paper inconsistent", "not checked", "baseline")
SCALES = {"K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class Printed:
    """A number as the paper prints it ("+0.04M", "0.279M", "+44K"), with its precision."""
    text: str

    def _parts(self) -> tuple[str, str, str]:
        match = re.fullmatch(r"([+-]?)(\d+(?:\.(\d+))?)([KMG])", self.text)
        if not match:
            raise ValueError(f"not a printed count: {self.text!r}")
        sign, number, _, unit = match.groups()
        return sign, number, unit

    @property
    def value(self) -> float:
        sign, number, unit = self._parts()
        return (-1 if sign == "-" else 1) * float(number) * SCALES[unit]

    @property
    def decimals(self) -> int:
        number = self._parts()[1]
        return len(number.split(".")[1]) if "." in number else 0

    @property
    def unit(self) -> str:
        return self._parts()[2]

    @property
    def half_unit(self) -> float:
        """Half a unit of the last printed digit: how far the rounded number may be off."""
        return 0.5 * 10 ** -self.decimals * SCALES[self.unit]

    def like(self, value: float, sign: bool = True) -> str:
        """`value` printed as this number is (same unit, same decimals)."""
        text = f"{value / SCALES[self.unit]:.{self.decimals}f}{self.unit}"
        return ("+" + text if sign and value >= 0 else text)


@dataclass(frozen=True)
class Row:
    """One number of the paper against ours.

    The paper's increase is `increase` when the paper prints it (Tables I, IV), else
    `total - baseline_total` (Tables V, VI). `increase` may be a pair (a, b): the paper's
    a minus its b (Table I's full row over its light row). A row without `baseline` is a
    baseline's own total.
    """
    source: str                                  # table (and column) of the paper
    model: str
    baseline: str | None = None
    metric: str = "params"                       # one of METRICS
    increase: str | tuple[str, str] | None = None
    total: str | None = None
    baseline_total: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()     # builder arguments, e.g. (("form", "full"),)
    baseline_kwargs: tuple[tuple[str, Any], ...] = ()
    num_classes: int = 10
    input_size: int = 32                         # the paper's input, for MACs
    unchecked: str | None = None                 # why the row is not judged (unit unknown)
    # Other readings of the paper's architecture, (builder arguments, metric): if none of them
    # (the row's own included) is within tolerance, the paper contradicts its own description.
    readings: tuple[tuple[tuple[tuple[str, Any], ...], str], ...] = ()

    @property
    def label(self) -> str:
        def name(model, kwargs):
            return model + "".join(f", {k}={v}" for k, v in kwargs)
        if self.baseline is None:
            return name(self.model, self.kwargs)
        return f"{name(self.model, self.kwargs)} over {name(self.baseline, self.baseline_kwargs)}"

    def paper_increase(self) -> tuple[float, float, str]:
        """(value, tolerance, text) of the paper's increase; see the module docstring."""
        if isinstance(self.increase, str):
            p = Printed(self.increase)
            return p.value, 2 * p.half_unit, p.text
        a, b = (Printed(t) for t in self.increase) if self.increase else (
            Printed(self.total), Printed(self.baseline_total))
        value = a.value - b.value
        fine = a if a.decimals >= b.decimals else b
        return value, a.half_unit + b.half_unit, fine.like(value)

    def within(self, ours_increase: float) -> bool:
        paper, tolerance, _ = self.paper_increase()
        return abs(ours_increase - paper) <= tolerance


def _table_iv_v_rows() -> list[Row]:
    rows = []
    table_iv = {  # (depth, cell): (C-10, C-100), as printed "at the right corner of the error rates"
        (20, "gru"): ("+0.04M", "+0.04M"), (20, "lstm"): ("+0.04M", "+0.04M"),
        (32, "gru"): ("+0.06M", "+0.07M"), (32, "lstm"): ("+0.07M", "+0.07M"),
        (56, "gru"): ("+0.11M", "+0.11M"), (56, "lstm"): ("+0.12M", "+0.12M")}
    for column, classes in (("C-10", 10), ("C-100", 100)):
        i = 0 if classes == 10 else 1
        rows += [Row(f"Table IV, {column}", f"rrnet{d}_{cell}", f"resnet{d}", increase=inc[i], num_classes=classes)
                 for (d, cell), inc in table_iv.items()]
    table_v = {  # totals: ResNet-20, then RegNet(1..3) with GRU and with LSTM; (C-10, C-100)
        "resnet20": ("0.273M", "0.278M"),
        "rrnet20_gru_s1": ("0.279M", "0.285M"), "rrnet20_gru_s2": ("0.285M", "0.291M"),
        "rrnet20_gru_s3": ("0.306M", "0.312M"),
        "rrnet20_lstm_s1": ("0.281M", "0.286M"), "rrnet20_lstm_s2": ("0.290M", "0.296M"),
        "rrnet20_lstm_s3": ("0.325M", "0.331M")}
    for column, classes in (("C-10", 10), ("C-100", 100)):
        i = 0 if classes == 10 else 1
        base = table_v["resnet20"][i]
        rows.append(Row(f"Table V, {column}", "resnet20", total=base, num_classes=classes))
        rows += [Row(f"Table V, {column}", model, "resnet20", total=totals[i], baseline_total=base,
                     num_classes=classes) for model, totals in table_v.items() if model != "resnet20"]
    return rows


FULL = (("form", "full"),)
_CELL_READINGS = tuple((("regulator", cell), ("form", form)) for cell in ("rnn", "gru", "lstm")
                       for form in ("light", "full"))

PAPER_ROWS: tuple[Row, ...] = (
    # Table I: RegNet-20 with ConvGRU on CIFAR-10, the light cell (the paper's) and full 3x3 gates.
    Row("Table I, C-10", "rrnet20_gru", "resnet20", increase="+44K"),
    Row("Table I, C-10", "rrnet20_gru", "resnet20", increase="+330K", kwargs=FULL),
    Row("Table I, C-10", "rrnet20_gru", "rrnet20_gru", increase=("+330K", "+44K"), kwargs=FULL),
    Row("Table I, C-10", "rrnet20_gru", "resnet20", "flops", increase="+15M",
        unchecked="unit unknown: +15M is twice our MACs, +346M neither once nor twice"),
    Row("Table I, C-10", "rrnet20_gru", "resnet20", "flops", increase="+346M", kwargs=FULL,
        unchecked="unit unknown: +15M is twice our MACs, +346M neither once nor twice"),
    *_table_iv_v_rows(),
    Row("Table VI", "resnet50", total="26.6M", num_classes=1000, input_size=224),
    Row("Table VI", "resnet50", metric="macs", total="4.14G", num_classes=1000, input_size=224),
    Row("Table VI", "rrnet50", "resnet50", total="31.3M", baseline_total="26.6M", num_classes=1000,
        input_size=224, readings=tuple((k, "params") for k in _CELL_READINGS)),
    Row("Table VI", "rrnet50", "resnet50", "macs", total="5.12G", baseline_total="4.14G", num_classes=1000,
        input_size=224, readings=tuple((k, m) for k in _CELL_READINGS for m in ("macs", "flops"))),
)


# ---------------------------------------------------------------------------------------
# Where the paper contradicts itself, from its own numbers

def _find(source: str, model: str, kwargs: tuple = ()) -> Row:
    return next(r for r in PAPER_ROWS if r.source == source and r.model == model and r.kwargs == kwargs
                and r.baseline is not None)


def stage_sums() -> list[tuple[list[Row], list[Row]]]:
    """Table V's single-stage rows of one column and cell, with the all-stage rows they must add up to."""
    groups = []
    for column in ("C-10", "C-100"):
        for cell in ("gru", "lstm"):
            parts = [_find(f"Table V, {column}", f"rrnet20_{cell}_s{s}") for s in (1, 2, 3)]
            wholes = [_find(f"Table IV, {column}", f"rrnet20_{cell}")]
            if (column, cell) == ("C-10", "gru"):
                wholes.append(_find("Table I, C-10", "rrnet20_gru"))
            groups.append((parts, wholes))
    return groups


@lru_cache(maxsize=None)
def contradictions() -> dict[Row, str]:
    """{row: why} for the rows whose paper numbers contradict other numbers of the paper.

    Table V: the single-stage increases, each with its tolerance, summed, against the
    all-stage increase with its own; disjoint intervals are a contradiction.
    """
    out: dict[Row, str] = {}
    for parts, wholes in stage_sums():
        total = sum(p.paper_increase()[0] for p in parts)
        slack = sum(p.paper_increase()[1] for p in parts)
        against = [w for w in wholes if abs(total - w.paper_increase()[0]) > slack + w.paper_increase()[1]]
        if against:
            fmt = Printed(parts[0].total)
            said = " and ".join(_plus_minus(w) + f" ({w.source})" for w in against)
            why = (f"paper inconsistent: RegNet(1..3) add {fmt.like(total)} ± {fmt.like(slack, sign=False)} "
                   f"together, all three stages at once {said}")
            out.update({p: why for p in parts})
    return out


def _plus_minus(row: Row) -> str:
    value, tolerance, text = row.paper_increase()
    return f"{text} ± {Printed(text).like(tolerance, sign=False)}"


# ---------------------------------------------------------------------------------------
# Measuring and judging

@lru_cache(maxsize=None)
def measure(model: str, metric: str, kwargs: tuple = (), num_classes: int = 10, input_size: int = 32) -> int:
    """Our count of `metric` for a registered model (MACs at `input_size`), as `selfreg models` counts."""
    if metric == "flops":
        return 2 * measure(model, "macs", kwargs, num_classes, input_size)
    params, macs = table_measure(model, input_size, num_classes, macs=metric != "params", **dict(kwargs))
    return params if metric == "params" else macs


@dataclass
class Comparison:
    row: Row
    ours_total: int
    ours_increase: int | None       # None for a baseline row
    result: str                     # one of RESULTS
    note: str = ""                  # why a row is not judged


def _increase(row: Row, kwargs: tuple, metric: str) -> int:
    ours = measure(row.model, metric, kwargs, row.num_classes, row.input_size)
    return ours - measure(row.baseline, metric, row.baseline_kwargs, row.num_classes, row.input_size)


def compare(row: Row) -> Comparison:
    ours_total = measure(row.model, row.metric, row.kwargs, row.num_classes, row.input_size)
    if row.baseline is None:
        return Comparison(row, ours_total, None, "baseline")
    ours = _increase(row, row.kwargs, row.metric)
    if row.unchecked:
        return Comparison(row, ours_total, ours, "not checked", row.unchecked)
    if row in contradictions():
        return Comparison(row, ours_total, ours, "paper inconsistent", contradictions()[row])
    if row.readings:
        tried = {(k, m): _increase(row, k, m) for k, m in row.readings}
        if not any(row.within(v) for v in tried.values()):
            return Comparison(row, ours_total, ours, "paper inconsistent", _no_reading(row, tried))
    return Comparison(row, ours_total, ours, "pass" if row.within(ours) else "FAIL")


def _no_reading(row: Row, tried: dict) -> str:
    """'paper inconsistent: ...' with the range each (form, metric) of the readings reaches."""
    text = row.paper_increase()[2]
    fmt = Printed(row.total)
    spans = []
    for form in ("light", "full"):
        for metric in dict.fromkeys(m for _, m in tried):
            values = [v for (k, m), v in tried.items() if m == metric and dict(k).get("form", "light") == form]
            if values:
                unit = {"params": "", "macs": " MACs", "flops": " FLOPs"}[metric]
                spans.append(f"{form} {fmt.like(min(values))} to {fmt.like(max(values))}{unit}")
    return (f"paper inconsistent: Eq. 3 with any cell (RNN, GRU, LSTM) adds {', '.join(spans)}; "
            f"none is {text}")


def summary(rows: list[Comparison]) -> dict[str, int]:
    return {result: sum(r.result == result for r in rows) for result in RESULTS}


def _n(value: int | None, sign: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+,}" if sign else f"{value:,}"


def markdown_table(rows: list[Comparison]) -> str:
    lines = ["| source | model | quantity | ours: total | ours: increase | paper: total | paper: increase "
             "| ours - paper | tolerance | result |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in rows:
        r = c.row
        quantity = r.metric + (f", {r.num_classes} classes" if r.metric == "params" else "")
        if r.baseline is None:
            paper_inc = diff = tol = ""
        else:
            value, tolerance, paper_inc = r.paper_increase()
            if isinstance(r.increase, tuple):
                paper_inc = f"{r.increase[0]} - {r.increase[1].lstrip('+')} = {paper_inc}"
            diff, tol = _n(round(c.ours_increase - value), sign=True), f"±{round(tolerance):,}"
        result = {"not checked": f"not checked ({c.note})", "paper inconsistent": c.note}.get(c.result, c.result)
        lines.append(f"| {r.source} | {r.label} | {quantity} | {_n(c.ours_total)} | {_n(c.ours_increase, True)} "
                     f"| {r.total or ''} | {paper_inc} | {diff} | {tol} | {result} |")
    return "\n".join(lines)


def plain(row: Row) -> Row:
    """The row with the regulator removed from its model: a plain ResNet, which must fail."""
    return replace(row, kwargs=tuple(kv for kv in row.kwargs if kv[0] != "regulator") + (("regulator", None),))
