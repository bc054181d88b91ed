"""The engine's options: NaN policy, BN momentum, seeds, EMA, mixup, SAM, bf16, TensorBoard, bad checkpoints."""
import json

import pytest
import torch

from selfreg import create_model
from selfreg.config import load_config
from selfreg.errors import UserError
from selfreg.train.bn import BNMomentum
from selfreg.train.checkpoint import load_checkpoint, load_model_state
from selfreg.train.engine import TrainingDiverged, fit, fit_seeds

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
