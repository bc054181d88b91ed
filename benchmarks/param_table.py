"""Print our parameter and multiply-add increases next to the paper's (Xu et al., TNNLS 2022).

    PYTHONPATH=src python benchmarks/param_table.py

Prints the markdown table that docs/regnet.md shows, then the count of each result. Each
row compares an increase over the baseline (ours: model minus our baseline; the paper's:
its model minus its baseline, same table and column) within a tolerance derived from the
paper's printed precision; totals are printed next to it. The rows, the paper's numbers and
the rules are in selfreg.analysis.regnet_checks. Counting runs on the meta device, so it
takes seconds. It reports and exits 0 whatever the results; tests/test_regnet.py holds the
expected result of every row and fails when one changes.
"""
from __future__ import annotations

import argparse

import torch

from selfreg.analysis.regnet_checks import PAPER_ROWS, compare, markdown_table, summary


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    torch.set_num_threads(1)
    rows = [compare(r) for r in PAPER_ROWS]
    print(markdown_table(rows))
    counts = summary(rows)
    judged = counts["pass"] + counts["FAIL"]
    print(f"\n{len(rows)} rows. Increases judged: {judged}, {counts['pass']} pass, {counts['FAIL']} FAIL; "
          f"not judged: {counts['paper inconsistent']} paper inconsistent, {counts['not checked']} not checked "
          f"(unit unknown), {counts['baseline']} baselines (totals only).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
