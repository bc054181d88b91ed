import csv
import json

import pytest
import torch

from selfreg.config import load_config
from selfreg.errors import UserError
from selfreg.train.checkpoint import load_checkpoint, save_checkpoint
from selfreg.train.engine import fit

# 256 training images of 8x8, two epochs: every mechanism runs, in seconds.
TINY = ["data.image_size=8", "data.subset=256", "train.epochs=2", "sched.milestones=[1]", "data.batch_size=128",
        "model.name=resnet20", "train.threads=1"]


def tiny_config(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", *extra])


def test_fit_leaves_a_complete_run_directory(tmp_path):
    summary = fit(tiny_config(tmp_path, "train.run_name=r"), log=lambda s: None)
    run = tmp_path / "r"
    assert summary["run_dir"] == str(run)
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt", "plots/curves.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # digits has 10 classes: top-5 (val_acc5) beside top-1
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "val_acc5"}
    assert float(rows[0]["lr"]) == pytest.approx(0.1) and float(rows[1]["lr"]) == pytest.approx(0.01)
    # The saved config reproduces the run: the recipe, with train.amp/channels_last/compile=auto
    # made concrete (a short CPU run: fp32, NCHW, eager).
    again = load_config(run / "config.yaml")
    wanted = tiny_config(tmp_path, "train.run_name=r").to_dict()
    wanted["train"].update(amp="none", channels_last=False, compile=False)
    assert again.to_dict() == wanted
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["classes"] == [str(i) for i in range(10)]


def test_same_seed_same_numbers(tmp_path):
    a = fit(tiny_config(tmp_path / "a"), log=lambda s: None)
    b = fit(tiny_config(tmp_path / "b"), log=lambda s: None)
    assert a["final_val_acc"] == b["final_val_acc"]
    ma = (tmp_path / "a").glob("*/metrics.csv").__next__().read_text().splitlines()
    mb = (tmp_path / "b").glob("*/metrics.csv").__next__().read_text().splitlines()
    strip = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # noqa: E731 (drop seconds)
    assert strip(ma) == strip(mb)
    wa = load_checkpoint(next((tmp_path / "a").glob("*/checkpoints/last.pt")))["model"]
    wb = load_checkpoint(next((tmp_path / "b").glob("*/checkpoints/last.pt")))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_run_dir_gets_a_suffix(tmp_path):
    cfg = tiny_config(tmp_path, "train.run_name=x", "train.epochs=1")
    fit(cfg, log=lambda s: None)
    second = fit(cfg, log=lambda s: None)
    assert second["run_dir"] == str(tmp_path / "x-1")


def test_checkpoint_bad_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, good)
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.ones(3))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable selfreg checkpoint"):
        load_checkpoint(truncated)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a readable selfreg checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(UserError, match="not a selfreg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
