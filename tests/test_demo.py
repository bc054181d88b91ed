"""The README's demo recipe, end to end (slow: about a minute on one core).

The recipe runs as `make demo` has it, with its step schedule compressed from 15 epochs
to 4 (one lr drop, after epoch 3, instead of two after 10 and 14) to keep the suite short;
the full run's numbers are the README's, from `selfreg train configs/demo.yaml`.
"""
import json

import pytest

from selfreg.config import load_config
from selfreg.train.engine import fit
from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_demo_recipe_reaches_90_percent(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"train.out_dir={tmp_path}", "train.epochs=4", "sched.milestones=[3]", "train.plot=false",
                       "train.tensorboard=false", "train.progress=none"])
    summary = fit(cfg, log=lambda s: None)
    # 96.5% measured with one thread (34 s); the floor is the demo's promise, 90%.
    assert summary["final_val_acc"] >= 0.90
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["final_val_acc"] >= 0.90
