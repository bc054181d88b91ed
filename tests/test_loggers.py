"""Loggers as a table (`train.loggers`, selfreg.train.loggers): names checked before anything is
built, metrics.csv always written, the MLflow run read back through MlflowClient, the W&B run
written offline and read back from its .wandb file, failures at start (one line) and mid-run
(one warning, training goes on), resumes that add loggers and stay exact. No network:
MLflow on a local sqlite store, W&B in offline mode under tmp_path."""
import glob
import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from selfreg.config import LOGGER_KEYS, RESUMABLE_KEYS, flatten, load_config, refused_change, resume_config
from selfreg.errors import UserError
from selfreg.train.checkpoint import load_checkpoint
from selfreg.train.checks import check_config
from selfreg.train.engine import fit
from selfreg.train.loggers import ARTIFACTS, LOGGERS, Loggers, RunInfo, RunLogger, logger_names
from selfreg.train.loggers.csv_log import CSVLogger
from selfreg.train.loggers.mlflow_log import MLflowLogger
from selfreg.train.loggers.tensorboard_log import TensorBoardLogger
from selfreg.train.logging import read_metrics
from trackers import mlflow_client, mlflow_runs, offline_wandb

# MLflow's sqlite store warns of SQLAlchemy deprecations of its own.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")

TINY = ["data.name=digits", "data.subset=128", "data.val_fraction=64", "data.image_size=8", "train.epochs=2",
        "model.name=resnet20", "train.plot=false", "train.progress=none", "train.threads=1"]
quiet = {"log": lambda s: None}


def tiny(out, *extra, name="r"):
    return load_config(None, [*TINY, f"train.out_dir={out}", f"train.run_name={name}", *extra])


def wandb_records(wandb_dir: Path) -> list:
    """The records of the one offline run under `wandb_dir`, parsed with W&B's own protobuf schema
    (wandb.proto.wandb_internal_pb2.Record) from its .wandb log: a 7-byte header (":W&B", 0xBEE1,
    version), then 32 KiB blocks of chunks (crc32 of type+data, length, type: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    data = Path(files[0]).read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:              # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc
        pos += 7 + length
        chunks += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def csv_rows(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.csv")


# ---------------------------------------------------------------------------------- config
def test_logger_keys_at_load_and_tensorboard_switch():
    assert load_config(None).train.loggers == ["csv", "tensorboard"]
    assert load_config(None, ["train.tensorboard=false"]).train.loggers == ["csv"]
    cfg = load_config(None, ["train.loggers=[mlflow]", "train.tensorboard=true"])
    assert cfg.train.loggers == ["mlflow", "tensorboard"] and cfg.train.tensorboard is None
    assert logger_names(cfg.train) == ["csv", "mlflow", "tensorboard"]           # csv whether listed or not
    assert load_config(None, ["train.loggers=wandb"]).train.loggers == ["wandb"]  # a scalar is a list of one
    assert load_config(None, ["train.wandb_tags=paper"]).train.wandb_tags == ["paper"]
    with pytest.raises(UserError, match="names mlflow twice"):
        load_config(None, ["train.loggers=[mlflow, mlflow]"])
    with pytest.raises(UserError, match="train.wandb_offline must be true or false"):
        load_config(None, ["train.wandb_offline=maybe"])
    with pytest.raises(UserError, match="train.mlflow_experiment is empty"):
        load_config(None, ["train.mlflow_experiment="])
    # How a run is shown may change on a resume; an old config.yaml's `tensorboard: true` continues.
    assert LOGGER_KEYS <= RESUMABLE_KEYS
    old = load_config(None).to_dict()
    old["train"].pop("loggers")
    old["train"]["tensorboard"] = True
    new = load_config(None, ["train.loggers=[mlflow, wandb]", "train.wandb_project=p", "train.mlflow_uri=x"])
    assert refused_change(old, new.to_dict()) is None
    assert refused_change(old, load_config(None, ["optim.lr=0.2"]).to_dict()) == "optim.lr"


def test_logger_names_are_checked_before_anything_is_built(tmp_path):
    assert {"csv", "tensorboard", "mlflow", "wandb"} <= set(LOGGERS.names())
    with pytest.raises(UserError, match=r"config key train.loggers: unknown logger 'mlfow'; did you mean: mlflow\?"):
        fit(tiny(tmp_path, "train.loggers=[csv, mlfow]"), **quiet)
    assert not any(tmp_path.iterdir())                                           # nothing written


def test_a_logger_without_its_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(MLflowLogger, "package", "selfreg_no_such_package")
    with pytest.raises(UserError) as err:
        check_config(load_config(None, ["train.loggers=[mlflow]"]))
    message = str(err.value)
    assert "\n" not in message and "logger mlflow" in message and "pip install 'selfreg[track]'" in message


# ---------------------------------------------------------------------------------- the interface
class Recorder(RunLogger):
    """A logger that keeps what it is told (and can be told to fail)."""

    name = "recorder"

    def __init__(self, run, fail_at=None, draws=False):
        super().__init__(run)
        self.calls, self.fail_at, self.draws = [], fail_at, draws

    def log_metrics(self, metrics, epoch):
        if self.draws:                         # a tracking library that draws from the global RNGs
            random.random(), np.random.rand(), torch.rand(1)
        if epoch == self.fail_at:
            raise ConnectionError("server gone\nsecond line")
        self.calls.append(("metrics", epoch, metrics))

    def log_artifact(self, path):
        self.calls.append(("artifact", Path(path).relative_to(self.run.run_dir).as_posix()))

    def finish(self, status):
        self.calls.append(("finish", status))


def test_loggers_warn_once_keep_rng_and_hand_over_the_run_files(tmp_path):
    run = RunInfo(tmp_path, load_config(None))
    for rel in ARTIFACTS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    good, flaky, lines = Recorder(run, draws=True), Recorder(run, fail_at=2), []
    flaky.name = "flaky"
    loggers = Loggers([good, flaky], log=lines.append)
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    for epoch in (1, 2, 3):
        loggers.log_metrics({"epoch": epoch, "val_acc": 0.5, "skipped_steps": 0}, epoch)
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
    assert [c[1] for c in good.calls] == [1, 2, 3] and good.calls[0][2] == {"val_acc": 0.5, "skipped_steps": 0}
    assert len(lines) == 1 and lines[0].startswith("warning: logger flaky failed while logging epoch 2")
    assert "ConnectionError: server gone second line" in lines[0] and "training goes on" in lines[0]
    assert flaky.calls == [("metrics", 1, {"val_acc": 0.5, "skipped_steps": 0}), ("finish", "failed")]
    loggers.finish("finished")
    assert good.calls[3:] == [("artifact", rel) for rel in ARTIFACTS] + [("finish", "finished")]
    # A required logger's failure (metrics.csv) stops the run.
    broken = Recorder(run, fail_at=1)
    broken.required = True
    with pytest.raises(ConnectionError):
        Loggers([broken], log=lines.append).log_metrics({"val_acc": 0.5}, 1)


# ---------------------------------------------------------------------------------- real backends
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny run logged to every logger at once (plots on, so the curves go too)."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb(mp, root)
        cfg = tiny(root / "runs", "train.plot=true", "train.loggers=[csv, tensorboard, mlflow, wandb]",
                   f"train.mlflow_uri={root / 'mlruns'}", "train.wandb_project=selfreg-test",
                   "train.wandb_tags=[a, b]")
        fit(cfg, **quiet)
    return root


def test_mlflow_run_read_back_through_its_client(tracked, tmp_path):
    run = tracked / "runs" / "r"
    client, runs = mlflow_runs(tracked / "mlruns")
    assert len(runs) == 1
    info, data = runs[0].info, runs[0].data
    assert info.status == "FINISHED" and info.run_name == "r"
    assert json.loads((run / "loggers.json").read_text())["mlflow"]["run_id"] == info.run_id
    # Parameters: the run's config.yaml, flattened.
    saved = flatten(load_config(run / "config.yaml").to_dict())
    assert set(data.params) == set(saved)
    assert data.params["train.epochs"] == "2" and data.params["model.name"] == "resnet20"
    assert data.params["train.loggers"] == '["csv", "tensorboard", "mlflow", "wandb"]'
    assert data.tags["selfreg.run_dir"] == str(run.resolve())
    # Metrics: one point per epoch, the numbers of metrics.csv.
    rows = csv_rows(run)
    for key in ("val_acc", "train_loss", "lr", "val_acc5"):
        history = sorted(client.get_metric_history(info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in rows], rel=1e-5), key
    # Artifacts: the curves, the summary and the final weights, in the run's own folders.
    listed = {a.path for a in client.list_artifacts(info.run_id)}
    listed |= {a.path for folder in ("plots", "checkpoints") for a in client.list_artifacts(info.run_id, folder)}
    assert {"plots/curves.png", "summary.json", "checkpoints/last.pt"} <= listed
    got = client.download_artifacts(info.run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == json.loads((run / "summary.json").read_text())


def test_wandb_offline_run_read_back_from_its_file(tracked):
    run = tracked / "runs" / "r"
    records = wandb_records(tracked / "wandb_dir")
    by_kind = {}
    for r in records:
        by_kind.setdefault(r.WhichOneof("record_type"), []).append(r)
    meta = by_kind["run"][0].run
    assert meta.project == "selfreg-test" and list(meta.tags) == ["a", "b"] and meta.display_name == "r"
    assert meta.run_id == json.loads((run / "loggers.json").read_text())["wandb"]["id"]
    config = {item.key: json.loads(item.value_json) for item in meta.config.update}
    assert config["train"]["epochs"] == 2 and config["model"]["name"] == "resnet20"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in by_kind["history"]]
    rows = csv_rows(run)
    assert [h["_step"] for h in history] == [h["epoch"] for h in history] == [1, 2]
    for key in ("val_acc", "train_loss", "lr"):
        assert [h[key] for h in history] == pytest.approx([r[key] for r in rows], rel=1e-5), key
    saved = {f.path for r in by_kind["files"] for f in r.files.files}
    assert {"plots/curves.png", "summary.json", "checkpoints/last.pt"} <= saved
    assert by_kind["exit"][0].exit.exit_code == 0


def test_loggers_do_not_change_the_numbers(tracked, tmp_path):
    """The run logged everywhere computes what a run with metrics.csv alone computes."""
    fit(tiny(tmp_path, "train.loggers=[csv]"), **quiet)
    a = load_checkpoint(tracked / "runs" / "r" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["model"]
    for k in b:
        assert torch.equal(a[k], b[k]), k
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in csv_rows(tmp_path / "r")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in csv_rows(tracked / "runs" / "r")] == strip
    assert not (tmp_path / "r" / "tb").exists() and not (tmp_path / "r" / "loggers.json").exists()


# ---------------------------------------------------------------------------------- failures
def test_a_logger_that_cannot_start_is_one_line_before_training(tmp_path):
    with pytest.raises(UserError) as err:
        fit(tiny(tmp_path, "train.loggers=[mlflow]", "train.mlflow_uri=nosuch://tracking"), **quiet)
    message = str(err.value)
    assert "\n" not in message and message.startswith("logger mlflow failed to start (")
    assert "train.mlflow_uri" in message and "drop mlflow from train.loggers" in message
    assert not list(tmp_path.rglob("*.pt")) and not (tmp_path / "r" / "metrics.csv").exists()  # no step taken
    # The folder it made is gone: the corrected command's run is `r`, not `r-1`.
    assert not (tmp_path / "r").exists()
    fit(tiny(tmp_path, "train.loggers=[csv]", "train.epochs=1"), **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_logger_failing_mid_run_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    def broken(self, metrics, epoch):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardLogger, "log_metrics", broken)
    lines = []
    summary = fit(tiny(tmp_path), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("warning: logger tensorboard failed while logging epoch 1 (OSError:")
    assert summary["epochs"] == 2 and [r["epoch"] for r in csv_rows(tmp_path / "r")] == [1, 2]
    # metrics.csv is the run's record: its failure stops the run.
    monkeypatch.setattr(CSVLogger, "log_metrics", broken)
    with pytest.raises(OSError, match="No space left"):
        fit(tiny(tmp_path, name="csv"), **quiet)


# ---------------------------------------------------------------------------------- resume
def test_a_resume_may_change_the_loggers_and_stays_exact(tmp_path, monkeypatch):
    """Epoch 1 logged to metrics.csv and MLflow; the resume to epoch 2 adds TensorBoard (which gets
    epoch 1 from metrics.csv) and continues the same MLflow run; the weights are those of an
    uninterrupted run without loggers."""
    offline_wandb(monkeypatch, tmp_path)
    ml = tmp_path / "mlruns"
    fit(tiny(tmp_path, "train.loggers=[csv]", name="whole"), **quiet)
    fit(tiny(tmp_path, "train.epochs=1", "train.loggers=[csv, mlflow]", f"train.mlflow_uri={ml}", name="split"),
        **quiet)
    run = tmp_path / "split"
    cfg = resume_config(run, ["train.epochs=2", "train.loggers=[csv, mlflow, tensorboard]"])
    fit(cfg, resume=run, **quiet)

    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    client, runs = mlflow_runs(ml)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]
    assert runs[0].data.params["train.epochs"] == "1"                            # parameters cannot change:
    assert "train.epochs=2" in runs[0].data.tags["selfreg.resume_changed"]       # the change is a tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]


# Rank 0 alone logs under DDP: tests/test_distributed.py (its torchrun run logs to all three).
