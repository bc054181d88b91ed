"""Provenance (issue #17): provenance.json per run, in every checkpoint and exported weights file;
git state of selfreg's own tree with a patch that rebuilds it; data fingerprints; resumes; reports."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from selfreg import provenance
from selfreg.config import load_config
from selfreg.train.engine import fit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

TINY = ["data.name=digits", "data.image_size=8", "data.subset=100", "data.val_fraction=50", "data.batch_size=50",
        "model.name=resnet20", "model.kwargs.widths=[4,8,8]", "train.epochs=1", "train.threads=1",
        "train.plot=false", "train.progress=none", "train.tensorboard=false"]


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=10).stdout


def make_repo(path: Path) -> Path:
    """A small repository: a package, a binary file, an ignore rule; one commit."""
    (path / "pkg").mkdir(parents=True)
    (path / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (path / "pkg" / "gone.py").write_text("x = 1\n")
    (path / "weights.bin").write_bytes(bytes(range(256)))
    (path / ".gitignore").write_text("*.log\n")
    git("init", "-q", cwd=path)
    git("add", ".", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=path)
    return path


def tree(root: Path) -> dict:
    """Every file under root (without .git) and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


# ---------------------------------------------------------------------------------------- git

@needs_git
def test_clean_tree_records_the_commit_and_no_patch(tmp_path):
    repo = make_repo(tmp_path / "repo")
    state, patch = provenance.git_state(repo / "pkg")
    assert state["source"] == "git checkout" and state["repo"] == str(repo.resolve())
    assert state["commit"] == git("rev-parse", "HEAD", cwd=repo).strip()
    assert state["dirty"] is False and patch == b""


@needs_git
def test_dirty_patch_applies_to_a_fresh_clone_and_rebuilds_the_tree(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "pkg" / "__init__.py").write_text("VALUE = 2\n")           # modified
    (repo / "pkg" / "gone.py").unlink()                                 # deleted
    (repo / "weights.bin").write_bytes(bytes(range(255, -1, -1)))       # binary, modified
    (repo / "pkg" / "new module.py").write_text("NEW = True\n")         # untracked, space in the name
    (repo / "blob.dat").write_bytes(b"\0\1\2 untracked binary")         # untracked, binary
    (repo / "run.log").write_text("ignored\n")                          # ignored: not in the patch
    state, patch = provenance.git_state(repo / "pkg")
    assert state["dirty"] is True and b"run.log" not in patch

    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    git("checkout", "-q", state["commit"], cwd=clone)
    (tmp_path / "source.patch").write_bytes(patch)
    git("apply", str(tmp_path / "source.patch"), cwd=clone)
    expected = {k: v for k, v in tree(repo).items() if k != "run.log"}
    assert tree(clone) == expected


@needs_git
def test_big_untracked_files_and_nested_repos_are_named_not_copied(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setattr(provenance, "MAX_UNTRACKED_BYTES", 100)
    (repo / "small.txt").write_text("small\n")
    (repo / "big.dat").write_bytes(b"x" * 101)
    make_repo(repo / "nested")
    state, patch = provenance.git_state(repo)
    assert state["untracked_skipped"] == ["big.dat", "nested/"] and "2 untracked" in state["note"]
    assert b"b/small.txt" in patch and b"big.dat" not in patch and b"nested" not in patch


def test_installed_copy_is_not_a_git_checkout(tmp_path):
    site = tmp_path / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    state, patch = provenance.git_state(site)
    assert state["source"] == "not a git checkout" and state["commit"] is None and patch == b""


@needs_git
def test_package_in_an_ignored_venv_inside_a_repo_is_not_that_repo(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("*.log\n.venv/\n")
    site = repo / ".venv" / "lib" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    state, _ = provenance.git_state(site)
    assert state["source"] == "not a git checkout" and "not tracked" in state["note"]


def test_git_missing_or_hanging_is_not_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    state, _ = provenance.git_state(tmp_path)
    assert state["source"] == "not a git checkout" and "not installed" in state["note"]

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))
    monkeypatch.setattr(provenance.subprocess, "run", hang)
    state, _ = provenance.git_state(tmp_path)
    assert state["commit"] is None and "took over" in state["note"]


def test_command_line_as_typed():
    assert provenance.command_line(["/venv/bin/selfreg", "train", "a b.yaml"]) == "selfreg train 'a b.yaml'"
    assert provenance.command_line(["/src/selfreg/__main__.py", "train"]) == "python -m selfreg train"


# ---------------------------------------------------------------------------------------- data

def test_data_fingerprint_is_the_same_elsewhere_and_changes_with_a_file(tmp_path):
    a = tmp_path / "a" / "images"
    for split, cls, name in [("train", "cat", "1.png"), ("train", "dog", "2.png"), ("val", "cat", "3.png")]:
        (a / split / cls).mkdir(parents=True, exist_ok=True)
        (a / split / cls / name).write_bytes(name.encode() * 10)
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    (b / ".DS_Store").write_bytes(b"finder")              # hidden files are not data
    os.utime(b / "train" / "cat" / "1.png", (0, 0))       # nor are times
    fa, fb = provenance.data_fingerprint("folder", a), provenance.data_fingerprint("folder", b)
    assert fa == fb and fa["files"] == 3 and len(fa["sha256"]) == 64
    (b / "train" / "dog" / "2.png").write_bytes(b"other size")
    assert provenance.data_fingerprint("folder", b)["sha256"] != fa["sha256"]
    assert provenance.data_fingerprint("folder", tmp_path / "missing")["sha256"] is None


def test_array_datasets_fingerprint_only_the_files_they_read(tmp_path):
    from selfreg.data.datasets import data_source

    cfg = load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]).data
    base, files = data_source(cfg)
    assert base == tmp_path / "cifar-10-batches-py" and {f.name for f in files} >= {"data_batch_1", "test_batch"}


def test_every_dataset_says_which_files_it_reads(tmp_path):
    from selfreg.data import DATASETS
    from selfreg.data.datasets import data_source

    for name in DATASETS.names():
        assert "files" in DATASETS.entry(name).meta, name
        base, files = data_source(load_config(None, [f"data.name={name}", f"data.root={tmp_path}"]).data)
        assert isinstance(base, Path) and (files is None or all(Path(f).parent == base for f in files))
    digits = provenance.data_fingerprint("digits", *data_source(load_config(None, []).data))
    assert digits["files"] == 1 and digits["bytes"] > 0


# ---------------------------------------------------------------------------------------- runs

FAKE_A = {"source": "git checkout", "repo": "/src", "commit": "a" * 40, "dirty": False}
FAKE_B = {"source": "git checkout", "repo": "/src", "commit": "b" * 40, "dirty": True}


def fake_git(state, patch=b""):
    return lambda where=None: (dict(state), patch)


def tiny(out, *extra):
    return load_config(None, [*TINY, f"train.out_dir={out}", "train.run_name=r", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run from a fake dirty tree (its patch is checked below)."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(provenance, "git_state", fake_git(FAKE_B, b"diff --git a/x b/x\n"))
        fit(tiny(out), log=lambda s: None)
    return out / "r"


def test_run_folder_has_provenance_and_patch(run):
    record = json.loads((run / "provenance.json").read_text())
    assert record["commit"] == "b" * 40 and record["dirty"] is True and record["seed"] == 0
    assert record["world_size"] == 1 and record["device"] and record["host"]
    assert record["started"].endswith("Z") and record["ended"] >= record["started"]
    assert record["selfreg_version"] and record["versions"]["torch"] == torch.__version__
    assert record["data"]["dataset"] == "digits" and len(record["data"]["sha256"]) == 64
    assert (run / "source.patch").read_bytes() == b"diff --git a/x b/x\n"
    assert record["patch"] == "source.patch" and len(record["patch_sha256"]) == 64
    assert record["resumes"] == []


def test_checkpoint_carries_provenance_and_loads_weights_only(run):
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    record = json.loads((run / "provenance.json").read_text())
    assert state["provenance"] == {**record, "ended": None}     # written before the run ended


def test_exported_weights_carry_the_run_provenance(run, tmp_path):
    from safetensors import safe_open

    from selfreg.use import load_trained
    from selfreg.use.export import export

    result = export(load_trained(run / "checkpoints" / "best.pt"), "safetensors", tmp_path / "w.safetensors",
                    check=False)
    with safe_open(str(result.path), framework="pt") as f:
        header = json.loads(f.metadata()["selfreg"])
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    assert header["provenance"]["commit"] == "b" * 40
    assert header["provenance"]["data"] == sidecar["provenance"]["data"]
    assert load_trained(result.path).provenance == header["provenance"]   # and survives a re-export


def test_resume_from_another_commit_says_so_and_appends(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_state", fake_git(FAKE_A))
    fit(tiny(tmp_path), log=lambda s: None)
    run = tmp_path / "r"
    original = json.loads((run / "provenance.json").read_text())
    assert original["dirty"] is False and not (run / "source.patch").exists()

    monkeypatch.setattr(provenance, "git_state", fake_git(FAKE_B, b"diff --git a/y b/y\n"))
    lines = []
    fit(tiny(tmp_path, "train.epochs=2"), resume=run, log=lines.append)
    said = [line for line in lines if line.startswith("provenance:")]
    assert said == ["provenance: resuming a run made from commit aaaaaaa with commit bbbbbbb (dirty)"]
    record = json.loads((run / "provenance.json").read_text())
    assert {k: v for k, v in record.items() if k != "resumes"} == {k: v for k, v in original.items()
                                                                    if k != "resumes"}
    (resume,) = record["resumes"]
    assert resume["commit"] == "b" * 40 and resume["dirty"] is True and resume["command"] and resume["time"]
    assert resume["patch"] == "source.resume-1.patch" and (run / "source.resume-1.patch").is_file()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["provenance"]["resumes"][0]["commit"] \
        == "b" * 40

    lines.clear()                                   # the same tree again: nothing to say
    fit(tiny(tmp_path, "train.epochs=3"), resume=run, log=lines.append)
    assert not [line for line in lines if line.startswith("provenance:")]
    assert len(json.loads((run / "provenance.json").read_text())["resumes"]) == 2


def test_resume_messages_name_what_changed():
    base = {**FAKE_A, "data": {"dataset": "digits", "sha256": "1" * 64}, "resumes": []}
    dirty = {**FAKE_A, "dirty": True, "patch_sha256": "c" * 64, "data": base["data"]}
    _, said = provenance.append_resume(base, dirty)
    assert said == "provenance: resuming a run made from commit aaaaaaa with commit aaaaaaa (dirty)"
    record, _ = provenance.append_resume(base, dirty)
    _, said = provenance.append_resume(record, {**dirty, "patch_sha256": "d" * 64})
    assert said == ("provenance: resuming a run last continued from commit aaaaaaa (dirty) with other "
                    "uncommitted changes on that commit")
    _, said = provenance.append_resume(base, {**FAKE_A, "data": {"dataset": "digits", "sha256": "2" * 64}})
    assert said == "provenance: its data changed: digits:11111111 -> digits:22222222"
    _, said = provenance.append_resume({"format": provenance.FORMAT, "resumes": []}, dirty)
    assert said.startswith("provenance: this run has no record of its origin")


# ---------------------------------------------------------------------------------------- report

def fake_run(folder: Path, seed: int, record: dict | None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "resnet20"}, "data": {"name": "digits"}, "train": {"seed": seed, "epochs": 1}}))
    (folder / "metrics.csv").write_text("epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n"
                                        "1,0.1,1.0,0.5,1.0,0.5,1.0\n")
    (folder / "summary.json").write_text(json.dumps(
        {"params": 1000, "final_val_acc": 0.5, "best_val_acc": 0.5, "image_size": 8, "num_classes": 10,
         "in_chans": 1, "epochs": 1, "device": "cpu"}))
    if record is not None:
        provenance.write(folder, record)


def record(commit, dirty=False, sha="1" * 64):
    return {"format": provenance.FORMAT, "commit": commit, "dirty": dirty, "selfreg_version": "0.1.0",
            "patch_sha256": "c" * 64 if dirty else None, "data": {"dataset": "digits", "sha256": sha}, "resumes": []}


def test_report_warns_when_runs_differ_in_source_or_data(tmp_path):
    from selfreg.analysis.report import build_report

    fake_run(tmp_path / "runs" / "a" / "s0", 0, record("a" * 40))
    fake_run(tmp_path / "runs" / "a" / "s1", 1, record("b" * 40, dirty=True, sha="2" * 64))
    text = build_report(tmp_path / "runs").read_text()
    top = text.split("## Results")[0]
    assert "2 different source trees: aaaaaaa (1 run), bbbbbbb+dirty:cccccc (1 run)" in top
    assert "scripts/commits_agree.py" in top      # the measurement that answers the warning
    assert "1 run of 2 ran from a source tree with uncommitted changes" in top
    assert "the runs on digits read different data (fingerprints 11111111 (1 run), 22222222 (1 run))" in top
    assert "| aaaaaaa | 11111111 |" in text and "| bbbbbbb dirty | 22222222 |" in text


def test_report_of_agreeing_runs_has_no_warning():
    same = [record("a" * 40), record("a" * 40)]
    assert provenance.consistency_warnings(same) == []
    assert "no provenance.json" in provenance.consistency_warnings([same[0], None])[0]

