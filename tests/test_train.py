"""The engine's options: NaN policy, BN momentum, seeds, EMA, mixup, SAM, bf16, TensorBoard, bad checkpoints,
top-5 accuracy."""
import contextlib
import csv
import dataclasses
import json

import pytest
import torch

from selfreg import create_model
from selfreg.config import load_config
from selfreg.errors import UserError
from selfreg.train.bn import BNMomentum
from selfreg.train.checkpoint import load_checkpoint, load_model_state
from selfreg.train.engine import StepOptions, TrainingDiverged, evaluate, fit, fit_seeds, topk_correct

TINY = ["data.image_size=8", "data.subset=256", "train.epochs=1", "data.batch_size=128", "model.name=resnet20",
        "train.threads=1", "train.plot=false", "train.progress=none"]
quiet = dict(log=lambda s: None)


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", "train.run_name=r", *extra])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally; the schedule then multiplies lr by 1e30 and the loss blows up.
    cfg = tiny(tmp_path, "sched.milestones=[1]", "sched.gamma=1e30", "train.epochs=2")
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step \d+"):
        fit(cfg, **quiet)
    good = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")["model"]
    after = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(good[k], after["model"][k]) for k in good)


def test_best_pt_is_last_pt_of_its_epoch_written_once(tmp_path, monkeypatch):
    """best.pt is a hard link to the last.pt of the best epoch (one serialisation, one fsync); the
    next save replaces last.pt by rename and leaves best.pt as it was."""
    import os

    from selfreg.weightfiles import link_checkpoint, save_checkpoint

    fit(tiny(tmp_path), **quiet)
    ckpts = tmp_path / "r" / "checkpoints"
    assert os.path.samefile(ckpts / "best.pt", ckpts / "last.pt")
    best = load_checkpoint(ckpts / "best.pt")
    save_checkpoint({**best, "epoch": 99}, ckpts / "last.pt")
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == best["epoch"] == 1
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 99
    # A file system without hard links: a copy, with the same content and nothing left behind.
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    link_checkpoint(ckpts / "last.pt", ckpts / "best.pt")
    assert not os.path.samefile(ckpts / "best.pt", ckpts / "last.pt")
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 99
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]


def test_nan_policy_skip_counts_skipped_steps(tmp_path):
    summary = fit(tiny(tmp_path, "optim.lr=1e30", "train.nan_policy=skip"), **quiet)
    text = (tmp_path / "r" / "metrics.csv").read_text()
    assert "skipped_steps" in text.splitlines()[0]
    assert summary["epochs"] == 1


def test_dynamic_bn_momentum_averages_the_epoch():
    model = create_model("resnet20")
    bn = BNMomentum(model, "dynamic")
    layer = bn.layers[0]
    layer.reset_running_stats()
    batches = [torch.randn(4, 16, 2, 2) * (i + 1) + i for i in range(5)]
    for i, b in enumerate(batches):
        bn.before_step(i)
        layer.train()(b)
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected)


def test_fixed_bn_momentum_applies_to_every_layer():
    model = create_model("se_resnet20")
    BNMomentum(model, 0.01)
    assert {m.momentum for m in BNMomentum(model, None).layers} == {0.01}


def test_bn_momentum_validation():
    with pytest.raises(UserError, match="bn_momentum"):
        load_config(None, ["train.bn_momentum=2"])
    assert load_config(None, ["train.bn_momentum=dynamic"]).train.bn_momentum == "dynamic"


def test_seeds_summary_mean_and_std(tmp_path):
    cfg = load_config(None, [*TINY, f"train.out_dir={tmp_path}", "train.run_name=g"])
    summary = fit_seeds(cfg, [0, 1], **quiet)
    saved = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert saved == summary
    vals = saved["final_val_acc"]["values"]
    assert len(vals) == 2 and saved["final_val_acc"]["mean"] == pytest.approx(sum(vals) / 2)
    assert (tmp_path / "g" / "s0" / "metrics.csv").is_file() and (tmp_path / "g" / "s1" / "metrics.csv").is_file()


@pytest.mark.parametrize("extra", [
    ["train.ema_decay=0.9"],
    ["train.mixup=0.2", "train.cutmix=1.0", "train.label_smoothing=0.1"],
    ["optim.sam=true", "optim.grad_clip=1.0"],
    ["train.amp=bf16", "train.channels_last=true"],
    ["optim.name=adamw", "optim.lr=0.001", "optim.no_decay_norm_bias=true", "sched.name=cosine",
     "sched.warmup=linear", "sched.warmup_steps=3"],
])
def test_options_train_and_stay_finite(tmp_path, extra):
    summary = fit(tiny(tmp_path, *extra), **quiet)
    assert 0.0 <= summary["final_val_acc"] <= 1.0
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]
    if "train.ema_decay=0.9" in extra:
        assert "ema_val_acc" in header
        assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["ema"] is not None


def test_fp16_on_cpu_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="bf16"):
        fit(tiny(tmp_path, "train.amp=fp16", "train.device=cpu"), **quiet)


def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tiny(tmp_path, "train.epochs=2"), **quiet)
    acc = EventAccumulator(str(tmp_path / "r" / "tb"))
    acc.Reload()
    assert {"val_acc", "train_loss", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val_acc")] == [1, 2]


def test_mismatched_checkpoint_says_which(tmp_path):
    fit(tiny(tmp_path), **quiet)
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["model"]
    with pytest.raises(UserError, match="class count"):
        load_model_state(create_model("resnet20", num_classes=5, in_chans=1), state, "ckpt")
    with pytest.raises(UserError, match="different architecture"):
        load_model_state(create_model("resnet32", in_chans=1), state, "ckpt")
    load_model_state(create_model("resnet20", in_chans=1), state, "ckpt")


# ------------------------------------------------------------------ top-5 beside top-1 (issue 29)
TOP5 = ["data.name=digits", "data.subset=128", "data.val_fraction=64", "data.image_size=8", "train.epochs=1",
        "model.name=resnet20", "train.plot=false", "train.progress=none", "train.tensorboard=false",
        "train.threads=1"]


def top5_cfg(out, *extra):
    return load_config(None, [*TOP5, f"train.out_dir={out}", "train.run_name=r", *extra])


def read_rows(run) -> tuple[list[str], list[dict]]:
    with (run / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_top5_counts_against_a_hand_computed_example():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],     # label 1: top-1
                           [0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],     # label 5: 5th largest, top-5 only
                           [0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],     # label 0: 6th largest, neither
                           [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])     # label 6: 2nd largest, top-5 only
    labels = torch.tensor([1, 5, 0, 6])
    assert topk_correct(logits, labels, 1).item() == 1
    assert topk_correct(logits, labels, 2).item() == 2
    assert topk_correct(logits, labels, 5).item() == 3
    assert topk_correct(logits, labels, 7).item() == 4

    # evaluate() counts it in the same pass as top-1, summed over batches.
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x.long().flatten()]
    batches = [(torch.tensor([[0.0], [1.0]]), labels[:2]), (torch.tensor([[2.0], [3.0]]), labels[2:])]
    opts = StepOptions(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    assert evaluate(Fixed(), batches, opts).acc5 is None                   # not asked: not counted
    stats = evaluate(Fixed(), batches, dataclasses.replace(opts, top5=True))
    assert (stats.acc, stats.acc5, stats.count) == (0.25, 0.75, 4)


def test_top5_beside_top1_in_metrics_csv_and_summary(tmp_path):
    summary = fit(top5_cfg(tmp_path, "train.epochs=2", "train.ema_decay=0.9"), **quiet)
    header, rows = read_rows(tmp_path / "r")
    assert {"val_acc5", "ema_val_acc5"} <= set(header)                      # digits: 10 classes
    for top1 in ("val_acc", "ema_val_acc"):                                 # each beside its top-1
        assert header[header.index(top1) + 1] == top1 + "5"
    for row in rows:
        assert 0 <= float(row["val_acc"]) <= float(row["val_acc5"]) <= 1
        assert 0 <= float(row["ema_val_acc"]) <= float(row["ema_val_acc5"]) <= 1
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved == summary
    assert summary["final_val_acc5"] == float(rows[-1]["val_acc5"]) >= summary["final_val_acc"]
    # best: the top-5 of the epoch of best top-1 (the weights checkpoints/best.pt holds)
    assert summary["best_val_acc5"] == float(rows[summary["best_epoch"] - 1]["val_acc5"])
    assert summary["best_val_acc5"] >= summary["best_val_acc"]
    keys = list(summary)
    assert keys.index("final_val_acc5") == keys.index("best_epoch") + 1   # next to the top-1 keys


def test_top5_column_stays_consistent_across_resume(tmp_path):
    fit(top5_cfg(tmp_path / "a", "train.epochs=2"), **quiet)
    fit(top5_cfg(tmp_path / "b"), **quiet)
    summary = fit(top5_cfg(tmp_path / "b", "train.epochs=2"), resume=tmp_path / "b" / "r", **quiet)
    (header_a, _), (header_b, rows_b) = read_rows(tmp_path / "a" / "r"), read_rows(tmp_path / "b" / "r")
    assert header_b == header_a and "val_acc5" in header_b
    assert [r["epoch"] for r in rows_b] == ["1", "2"] and all(r["val_acc5"] for r in rows_b)
    assert "final_val_acc5" in summary

    # A run begun before the column existed keeps its header when resumed: no val_acc5, no top-5 keys.
    run = tmp_path / "b" / "r"
    old = [{k: v for k, v in r.items() if k != "val_acc5"} for r in rows_b]
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[h for h in header_b if h != "val_acc5"])
        writer.writeheader()
        writer.writerows(old)
    summary = fit(top5_cfg(tmp_path / "b", "train.epochs=3"), resume=run, **quiet)
    header, rows = read_rows(run)
    assert header == [h for h in header_b if h != "val_acc5"] and len(rows) == 3
    assert all(None not in r.values() and None not in r for r in rows)     # every row fits the header
    assert "final_val_acc5" not in summary and "best_val_acc5" not in summary


def test_no_top5_for_five_classes_or_fewer(tmp_path, capsys):
    from dataset_writers import write_image_folder
    from selfreg.cli import main

    root = tmp_path / "imgs"
    write_image_folder(root, classes=("a", "b", "c"), per_class=6, size=8)
    write_image_folder(root, classes=("a", "b", "c"), per_class=2, size=8, split="val", seed=1)
    cfg = load_config(None, [*TOP5[3:], "data.name=folder", f"data.root={root}", "data.augment=[none]",
                             "data.batch_size=8", f"train.out_dir={tmp_path}", "train.run_name=r"])
    summary = fit(cfg, **quiet)
    header, _ = read_rows(tmp_path / "r")
    assert not [h for h in header if h.endswith("acc5")]
    assert not [k for k in summary if k.endswith("acc5")]
    # eval: top-5 of 3 classes would be 100%: neither printed nor written
    assert main(["eval", str(tmp_path / "r" / "checkpoints" / "last.pt"), "--split", "val", "--device", "cpu",
                 "-o", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "top1" in metrics and not {"top3", "top5", "k"} & set(metrics)
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" not in out and "top-3" not in out
