"""Print our parameter and multiply-add counts next to the paper's (Xu et al., TNNLS 2022).

    PYTHONPATH=src python benchmarks/param_table.py

Prints the markdown table that docs/regnet.md shows; the rows and the paper's numbers are
data in selfreg.analysis.regnet_checks, and tests/test_regnet.py asserts the checked rows.
Counting runs on the meta device, so it takes seconds.
"""
from __future__ import annotations

import argparse

import torch

from selfreg.analysis.regnet_checks import PAPER_VALUES, TOLERANCE, compare, markdown_table


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    torch.set_num_threads(1)
    rows = [compare(v) for v in PAPER_VALUES]
    print(markdown_table(rows))
    far = [r for r in rows if r.value.checked and abs(r.rel) > TOLERANCE]
    print(f"\n{len(rows)} rows; checked rows within {TOLERANCE:.0%} of the paper: "
          f"{sum(r.value.checked for r in rows) - len(far)}/{sum(r.value.checked for r in rows)}")
    return 1 if far else 0


if __name__ == "__main__":
    raise SystemExit(main())
