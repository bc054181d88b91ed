"""train.amp / channels_last / compile = auto: accepted, made concrete, recorded, kept on resume."""
import json
import os
import time

import pytest
import torch
import yaml

from selfreg import create_model
from selfreg.config import load_config
from selfreg.errors import UserError
from selfreg.sweep import expand, job_state
from selfreg.train import autotune, compile_cache
from selfreg.train.engine import fit

TINY = ["data.image_size=8", "train.epochs=1", "data.batch_size=128", "model.name=resnet20",
        "train.threads=1", "train.plot=false", "train.progress=none", "train.tensorboard=false"]
AUTO = {"amp": "auto", "channels_last": "auto", "compile": "auto"}
quiet = dict(log=lambda s: None)


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.out_dir={tmp_path}", "train.run_name=r", *extra])


def test_config_accepts_auto_and_booleans_and_defaults_to_auto():
    cfg = load_config(None, [])
    assert (cfg.train.amp, cfg.train.channels_last, cfg.train.compile) == ("auto", "auto", "auto")
    cfg = load_config(None, ["train.amp=bf16", "train.channels_last=true", "train.compile=false"])
    assert (cfg.train.amp, cfg.train.channels_last, cfg.train.compile) == ("bf16", True, False)
    for bad in ("train.channels_last=fast", "train.compile=1", "train.amp=fp8"):
        with pytest.raises(UserError, match="auto"):
            load_config(None, [bad])


def test_auto_run_writes_concrete_values_and_resume_keeps_them(tmp_path):
    summary = fit(tiny(tmp_path), **quiet)
    run = tmp_path / "r"
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    # A 1-epoch run on the CPU is too short to probe or compile: fp32, NCHW, eager.
    assert (saved["amp"], saved["channels_last"], saved["compile"]) == ("none", False, False)
    speed = json.loads((run / "summary.json").read_text())["speed"]
    assert speed == summary["speed"] == json.loads((run / "speed.json").read_text())
    assert speed["asked"] == AUTO and (speed["amp"], speed["channels_last"], speed["compile"]) == ("none", False, False)
    assert "too few" in speed["how"]["compile"]

    # As if the run had chosen channels_last at its start, and a sweep wrote `auto` back into its
    # config.yaml: the resumed run keeps channels_last, and says so.
    speed["channels_last"] = True
    (run / "speed.json").write_text(json.dumps(speed))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"].update(channels_last="auto", epochs=2)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = fit(load_config(run / "config.yaml"), resume=run, **quiet)
    assert summary["epochs"] == 2
    assert summary["speed"]["channels_last"] is True and "kept" in summary["speed"]["how"]["channels_last"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["channels_last"] is True
    # Resumed again from that config.yaml (concrete values now): the record's reasons stay.
    summary = fit(load_config(run / "config.yaml", ["train.epochs=3"]), resume=run, **quiet)
    assert summary["speed"]["channels_last"] is True
    how = summary["speed"]["how"]
    assert how["channels_last"].count("kept") == 1 and "too few" in how["compile"]


def test_explicit_values_are_left_alone(tmp_path):
    summary = fit(tiny(tmp_path, "train.amp=bf16", "train.channels_last=true", "train.compile=false"), **quiet)
    assert (summary["speed"]["amp"], summary["speed"]["channels_last"], summary["speed"]["compile"]) == \
        ("bf16", True, False)
    assert set(summary["speed"]["how"].values()) == {"set in the config"}


def test_probe_times_both_layouts_and_touches_nothing():
    torch.set_num_threads(1)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    # A run long enough to probe, and (from the probe's step time) to pay for a compile.
    choice = autotune.decide(AUTO, model, torch.device("cpu"), (1, 8, 8), 10, batch=4, steps=10**7)
    assert set(choice.probe["ms_per_step"]) == {"NCHW", "channels_last"}
    assert choice.probe["seconds"] < 30
    assert choice.amp == "none" and choice.compile is True
    assert isinstance(choice.channels_last, bool) and "probe: channels_last" in choice.how["channels_last"]
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # A run too short for compile to pay, but long enough to probe.
    choice = autotune.decide(AUTO, model, torch.device("cpu"), (1, 8, 8), 10, 4, steps=1000)
    assert choice.compile is False and "does not pay" in choice.how["compile"]


def test_slow_steps_still_compare_layouts(monkeypatch):
    # rrnet20_gru on the 2-core CPU: 1.2 s a step in NCHW, 0.8 s in channels_last. A 20-epoch run
    # once kept NCHW because the probe had a cap in seconds; the run's length is the only bound.
    def fake_stepper(model, opt, x, y, autocast, device):
        seconds = 0.8 if x.is_contiguous(memory_format=torch.channels_last) else 1.2
        return lambda: seconds
    monkeypatch.setattr(autotune, "_stepper", fake_stepper)
    model = create_model("resnet20", num_classes=10)
    choice = autotune.decide(AUTO, model, torch.device("cpu"), (3, 8, 8), 10, batch=4, steps=20 * 352)
    assert choice.probe["ms_per_step"] == {"NCHW": 1200.0, "channels_last": 800.0}
    assert choice.channels_last is True and "probe: channels_last 800.0 ms vs NCHW 1200.0 ms" in \
        choice.how["channels_last"]


def test_short_runs_neither_probe_nor_compile():
    model = create_model("resnet20", num_classes=10, in_chans=1)
    choice = autotune.decide(AUTO, model, torch.device("cpu"), (1, 8, 8), 10, batch=4, steps=100)
    assert choice.probe is None and choice.compile is False and choice.channels_last is False


def test_compile_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("SELFREG_CACHE_DIR", str(tmp_path / "sc"))
    assert compile_cache.cache_dir() == tmp_path / "sc" / "inductor"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch modules may write
    assert compile_cache.cache_dir() == tmp_path / "sc" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.configure() == tmp_path / "mine"            # an existing setting is kept
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    (tmp_path / "mine" / "a").mkdir(parents=True)
    (tmp_path / "mine" / "a" / "f").write_bytes(b"x" * 10)
    assert compile_cache.size_bytes(tmp_path / "mine") == 10


def test_sweep_folder_with_chosen_values_matches_an_auto_recipe(tmp_path):
    recipe = {"model": {"name": "resnet20"}, "data": {"name": "digits", "image_size": 8, "subset": 64},
              "train": {"epochs": 1}, "sweep": {"name": "t", "seeds": [0]}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(recipe))
    job = expand(path, out=tmp_path / "sw").jobs[0]
    job.dir.mkdir(parents=True)
    saved = job.config.to_dict()
    saved["train"].update(amp="none", channels_last=True, compile=False)
    (job.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert job_state(job) == "new"                           # no error: same run, concrete choices
    saved["model"]["name"] = "resnet32"
    (job.dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="model.name"):
        job_state(job)


class Sleepy(torch.nn.Module):
    """A model whose eager forward sleeps; the stand-in 'compiled' one sleeps `compiled_s`."""

    def __init__(self, eager_s):
        super().__init__()
        self.lin, self.eager_s = torch.nn.Linear(2, 2), eager_s

    def forward(self, x):
        time.sleep(self.eager_s)
        return self.lin(x)


def fake_compiler(compiled_s):
    def compile_(model):
        def compiled(x):
            time.sleep(compiled_s)
            return model.lin(x)
        return compiled
    return compile_


@pytest.mark.parametrize("compiled_s, kept", [(0.0, "compiled"), (0.03, "eager")])
def test_compile_trial_keeps_the_faster(monkeypatch, compiled_s, kept):
    monkeypatch.setattr(autotune, "COMPILER", fake_compiler(compiled_s))
    results = []
    trial = autotune.CompileTrial(Sleepy(0.015), results.append).train()
    x = torch.zeros(1, 2)
    for _ in range(2 * (autotune.TRIAL_WARMUP + autotune.TRIAL_STEPS) + 4):
        trial(x)
    (result,) = results
    assert result["kept"] == kept and trial.phase == f"done-{kept}"
    assert result["eager_ms"] == pytest.approx(15, abs=10)
    from selfreg.train.engine import unwrap

    assert isinstance(unwrap(trial), Sleepy)                           # EMA and checkpoints see the plain model


def test_auto_compile_reverted_by_its_trial_is_recorded(tmp_path, monkeypatch):
    # As if the pay-back rule had chosen compile, with a 'compiled' model slower than eager.
    monkeypatch.setattr(autotune, "_MEMO", {})
    monkeypatch.setattr(autotune, "decide", lambda *a, **k: autotune.SpeedChoice(
        "none", False, True, asked=dict(AUTO), how={"amp": "-", "channels_last": "-", "compile": "rule"}))
    monkeypatch.setattr(autotune, "COMPILER", lambda model: (lambda x: (time.sleep(0.05), model(x))[1]))
    summary = fit(tiny(tmp_path, "data.batch_size=32"), **quiet)          # 36 steps: the trial needs 22
    run = tmp_path / "r"
    assert summary["speed"]["trial"]["kept"] == "eager" and summary["speed"]["compile"] is False
    assert "eager kept" in summary["speed"]["how"]["compile"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["compile"] is False
    assert json.loads((run / "speed.json").read_text())["trial"]["kept"] == "eager"
