"""Runs that survive: SIGKILL after an epoch, SIGINT mid-epoch, then --resume ends exactly
where an uninterrupted run ends (same weights, same metrics) on the CPU."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from procs import selfreg_in_process, spawn
from selfreg.train.checkpoint import load_checkpoint

ARGS = ["data.image_size=16", "data.subset=640", "train.epochs=3", "data.batch_size=32", "model.name=resnet20",
        "train.threads=1", "train.plot=false", "sched.milestones=[2]", "data.augment=shift",
        "train.progress=none", "train.tensorboard=false"]


def start(out, name, *extra):
    """A training process (a context manager: its process group dies with a failing test)."""
    cmd = [sys.executable, "-m", "selfreg", "train", "configs/demo.yaml", *ARGS, f"train.out_dir={out}",
           f"train.run_name={name}", *extra]
    return spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(run_dir):
    """`selfreg train --resume` in this process: what is tested is that the killed process left a
    run that continues exactly, not another interpreter start."""
    return selfreg_in_process("train", "--resume", run_dir)


def wait_for_checkpoint(run_dir, proc, timeout=120):
    path = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            try:
                return load_checkpoint(path)
            except Exception:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError


def final_state(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def metrics_without_seconds(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("seconds")
    return [[v for i, v in enumerate(line.split(",")) if i != col] for line in lines]


def assert_same_run(a, b):
    sa, sb = final_state(a), final_state(b)
    assert sa["epoch"] == sb["epoch"] == 3
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert metrics_without_seconds(a) == metrics_without_seconds(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, trained in this process (one thread, as the children): the
    same numbers as a child's, without another interpreter importing torch."""
    out = tmp_path_factory.mktemp("ref")
    done = selfreg_in_process("train", "configs/demo.yaml", *ARGS, f"train.out_dir={out}", "train.run_name=ref")
    assert done.returncode == 0, done.stderr
    return out / "ref"


@pytest.mark.slow
def test_sigkill_after_an_epoch_then_resume_is_exact(tmp_path, reference):
    with start(tmp_path, "k") as proc:
        state = wait_for_checkpoint(tmp_path / "k", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert state["epoch"] < 3
    done = resume(tmp_path / "k")
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "k", reference)


@pytest.mark.slow
def test_sigint_mid_epoch_saves_then_resume_is_exact(tmp_path, reference):
    with start(tmp_path, "i") as proc:
        wait_for_checkpoint(tmp_path / "i", proc)
        time.sleep(0.3)  # into epoch 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err
    state = final_state(tmp_path / "i")
    assert state["epoch"] < 3
    stopped = state.get("progress")          # stopped mid-epoch: the time spent on it so far is kept
    done = resume(tmp_path / "i")
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "i", reference)
    if stopped:
        rows = (tmp_path / "i" / "metrics.csv").read_text().splitlines()
        col = rows[0].split(",").index("seconds")
        assert float(rows[state["epoch"] + 1].split(",")[col]) >= stopped["seconds"] > 0


@pytest.mark.slow
def test_more_sigints_while_it_stops_save_once_and_print_no_traceback(tmp_path):
    """As a `sweep --parallel` run gets them (the terminal's Ctrl-C, then the sweep's own): SIGINT
    after SIGINT until the process is gone. One checkpoint message, exit 130, no traceback."""
    with start(tmp_path, "twice") as proc:
        wait_for_checkpoint(tmp_path / "twice", proc)
        while proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("saved a checkpoint") == 1, err
    assert final_state(tmp_path / "twice")["epoch"] < 3


def test_resume_of_a_folder_that_is_not_a_run(cli, tmp_path):
    proc = cli("train", "--resume", tmp_path)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_resume_with_a_damaged_checkpoint(cli, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    proc = cli("train", "--resume", tmp_path)
    assert proc.returncode == 2 and "not a readable selfreg checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
