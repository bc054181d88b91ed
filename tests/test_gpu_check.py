"""The GPU check's CPU side: its dry run and --carry, the tensor files it makes, the dataset that reads them."""
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from selfreg.config import load_config
from selfreg.data import build_dataset
from selfreg.errors import UserError

PARTS = ["data", "cuda-tests", "time-to-94", "step-time", "precision", "data-wait", "framework-tax", "compile-cache"]
REQUIRED = PARTS[:4]


def script(*args, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_names_every_part_and_runs_nothing(tmp_path):
    proc = script("benchmarks/gpu_check.py", "--dry-run", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name in PARTS:
        assert f"[{name}]" in proc.stdout
    for words in ("pytest -v -m cuda", "airbench", "bf16", "1.25", "1.5x", "< 5%", "0.95x", "--step-table",
                  "compiled"):
        assert words in proc.stdout, words
    assert not (tmp_path / "out").exists()
    budgets = {line[1:].split("]")[0]: (int(line.split("(")[1].split(" s")[0]), "required" in line)
               for line in proc.stdout.splitlines() if line.startswith("[") and "] (" in line}
    assert [name for name, (_, required) in budgets.items() if required] == REQUIRED
    assert sum(s for s, required in budgets.values() if required) <= 480   # the required parts fit 8 minutes


def test_dry_run_lists_every_cuda_test():
    # What the cuda-tests part runs, by name: every test function of tests/test_cuda.py.
    import ast

    proc = script("benchmarks/gpu_check.py", "--dry-run")
    tree = ast.parse((REPO / "tests" / "test_cuda.py").read_text())
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert len(names) >= 8
    for name in names:
        assert name in proc.stdout, name
    for topic in ("ddp", "resume", "regnet", "sam", "fp16", "export", "compiled", "sync_batchnorm"):
        assert any(topic in n for n in names), topic
    assert "x ['bf16', 'fp16'] x ['rrnet20_gru', 'rrnet20_lstm']" in proc.stdout


def test_cuda_tests_are_marked_and_skip_here():
    proc = script("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    if not torch.cuda.is_available():
        assert "skipped" in proc.stdout and "passed" not in proc.stdout and "deselected" not in proc.stdout


def test_step_table_runs_on_the_cpu_and_writes_its_section(tmp_path):
    md = tmp_path / "perf.md"
    proc = script("benchmarks/gpu_check.py", "--step-table", "--device", "cpu", "--batch", "2", "--size", "8",
                  "--steps", "1", "--rounds", "1", "--no-compile", "--markdown", md, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    for row in ("resnet20", "rrnet20_gru light", "rrnet20_lstm light"):
        assert f"| {row} " in text
    assert "fp32 NCHW ms" in text and "bf16 channels_last compiled ms" in text
    assert "not measured in this run: resnet20 bf16 channels_last compiled" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="without CUDA the plain command is a dry run")
def test_without_cuda_it_is_a_dry_run():
    proc = script("benchmarks/gpu_check.py", "--only", "step-time,time-to-94")
    assert proc.returncode == 0 and "no CUDA device: dry run" in proc.stdout
    assert "[step-time]" in proc.stdout and "[data]" not in proc.stdout
    bad = script("benchmarks/gpu_check.py", "--only", "nope")
    assert bad.returncode == 2 and "step-time" in bad.stderr


def test_carry_lists_what_travels():
    proc = script("benchmarks/gpu_check.py", "--carry")
    assert proc.returncode == 0
    assert ".data/cifar10-jpeg-train.tar.xz" in proc.stdout and ".whl" in proc.stdout
    assert ".venv" in proc.stdout and "pip install -e .[dev]" in proc.stdout


def write_jpegs(root, per_class=6, classes=("cat", "dog", "ship")):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "train" / name / f"{i}.jpg")


def test_make_cifar_tensor_writes_airbench_files_that_tensors_reads(tmp_path):
    write_jpegs(tmp_path / "jpeg")
    with tarfile.open(tmp_path / "jpeg.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "jpeg" / "train", arcname="cifar/train")
    proc = script("benchmarks/make_cifar_tensor.py", tmp_path / "jpeg.tar.xz", tmp_path / "t", "--holdout", "4",
                  "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    train, test = (torch.load(tmp_path / "t" / f"{s}.pt", weights_only=True) for s in ("train", "test"))
    assert train["images"].shape == (14, 32, 32, 3) and train["images"].dtype == torch.uint8   # airbench: NHWC
    assert test["images"].shape == (4, 32, 32, 3) and train["classes"] == ["cat", "dog", "ship"]
    # The same tree unpacked gives the same files (fixed-seed holdout).
    proc = script("benchmarks/make_cifar_tensor.py", tmp_path / "jpeg", tmp_path / "t2", "--holdout", "4",
                  "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "t2" / "test.pt", weights_only=True)["images"], test["images"])

    cfg = load_config(None, ["data.name=tensors", f"data.root={tmp_path / 't'}", "data.val_fraction=2",
                             "data.eval_test=true"]).data
    splits = build_dataset(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 2, 4)
    assert splits.in_chans == 3 and splits.image_size == 32 and splits.in_memory
    assert torch.equal(splits.test.base.images, test["images"].permute(0, 3, 1, 2))


def test_tensors_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="train.pt"):
        build_dataset(load_config(None, ["data.name=tensors", f"data.root={tmp_path}"]).data)
    torch.save({"images": torch.zeros(3, 4), "labels": torch.zeros(3)}, tmp_path / "train.pt")
    with pytest.raises(UserError, match="uint8"):
        build_dataset(load_config(None, ["data.name=tensors", f"data.root={tmp_path}"]).data)


def test_run_keeps_budgets_and_writes_a_summary(tmp_path, monkeypatch):
    # The orchestration on any machine, with stand-in parts: one passes, one outlives its budget, and
    # the last finds the deadline too close to start.
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "MIN_START_S", 2.5)
    plan = [gpu_check.Part("quick", "prints", "-", 20, ["-c", "print('- target met')"]),
            gpu_check.Part("slow", "sleeps", "-", 2, ["-c", "import time; print('- started', flush=True); "
                                                            "time.sleep(30)"]),
            gpu_check.Part("late", "never starts", "-", 20, ["-c", "print('late')"])]
    args = gpu_check.build_parser().parse_args(["--budget", "4.5", "--out", str(tmp_path / "o"),
                                                "--markdown", str(tmp_path / "perf.md"), "--data", str(tmp_path)])
    assert gpu_check.run(plan, args) == 1
    summary = __import__("json").loads((tmp_path / "o" / "summary.json").read_text())
    assert gpu_check.summary_lines("x PASSED [ 50%]\nnoise\n- note\n3 passed, 1 skipped") == [
        "x PASSED [ 50%]", "- note", "3 passed, 1 skipped"]
    status = {p["part"]: p["status"] for p in summary["parts"]}
    assert status["quick"] == "ok" and status["slow"].startswith("stopped at its 2 s budget")
    assert status["late"].startswith("skipped")
    assert summary["parts"][0]["lines"] == ["- target met"]
    assert (tmp_path / "o" / "quick.log").read_text().strip() == "- target met"
    assert (tmp_path / "perf.md").read_text().startswith("# Performance")   # a copy of docs/performance.md
    assert summary["seconds"] < 10
    # Extra parts run with the time left, and their failure does not fail the check.
    extra = [gpu_check.Part("ok", "-", "-", 5, ["-c", "print('- fine')"]),
             gpu_check.Part("broken", "-", "-", 5, ["-c", "raise SystemExit(3)"], extra=True)]
    args = gpu_check.build_parser().parse_args(["--budget", "60", "--out", str(tmp_path / "e"),
                                                "--markdown", str(tmp_path / "perf.md"), "--data", str(tmp_path)])
    assert gpu_check.run(extra, args) == 0
    assert "broken (extra) | failed (exit 3)" in (tmp_path / "e" / "summary.md").read_text()
