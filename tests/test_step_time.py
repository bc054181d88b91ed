"""benchmarks/step_time.py at toy size: its rows, and the blocks-only row that splits a cell's cost off."""
import re
import subprocess
import sys

import torch

from conftest import REPO


def test_blocks_only_row_splits_the_regulator_off(tmp_path):
    out = tmp_path / "perf.md"
    run = subprocess.run([sys.executable, "benchmarks/step_time.py", "--batch", "2", "--size", "16", "--steps", "1",
                          "--rounds", "1", "--warmup", "0", "--threads", "1", "--only", "light", "--no-reference",
                          "--markdown", str(out)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1].strip() for line in run.stdout.splitlines() if line.startswith("| ")][1:]
    assert rows == ["resnet20", "rrnet20 blocks only (cell returns its input)", "rrnet20_gru light",
                    "rrnet20_lstm light"]
    for cell in ("gru", "lstm"):
        line = next(line for line in run.stdout.splitlines() if line.startswith(f"- rrnet20_{cell} light: time ratio"))
        total, blocks, cost = map(float, re.search(
            r"time ratio ([\d.]+),.*blocks without the cell ([\d.]+), the cell (-?[\d.]+)", line).groups())
        assert abs(blocks + cost - total) < 0.011
    assert "blocks only" in out.read_text()


def test_pass_through_cells_leave_the_blocks_and_no_gate(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from step_time import PassThrough, drop_cells
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from selfreg import create_model
    from selfreg.layers.convrnn import ConvCell

    model = drop_cells(create_model("rrnet20_gru", num_classes=10))
    cells = [m for m in model.modules() if isinstance(m, ConvCell)]
    assert len(cells) == 3 and all(type(c) is PassThrough for c in cells)
    assert not any("gates" in name for name, _ in model.named_parameters())
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
