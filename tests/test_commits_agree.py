"""scripts/commits_agree.py: whether two commits train the same run, bit for bit.

A throwaway git repository holds a copy of selfreg's src/ and configs/ and the script, in three
commits: the first, one that changes a comment in the code (must agree), and one that changes
the recipe's learning rate (must not). The script trains digits (bundled, offline) at each.
"""
import shutil
import subprocess

import pytest

from conftest import load_script
from procs import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
TINY = ["data.image_size=8", "data.subset=64", "data.val_fraction=32", "data.batch_size=32", "train.epochs=1",
        "train.threads=1", "train.plot=false"]


def git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """(repository, script module, [first, comment-only, new lr] commits)."""
    root = tmp_path_factory.mktemp("agree")
    shutil.copytree(REPO / "src" / "selfreg", root / "src" / "selfreg",
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "commits_agree.py", root / "scripts")
    git("init", "-q", cwd=root)
    git("add", ".", cwd=root)
    git("commit", "-qm", "first", cwd=root)
    commits = [git("rev-parse", "HEAD", cwd=root)]
    version = root / "src" / "selfreg" / "version.py"
    version.write_text(version.read_text() + "\n# a comment changes nothing\n")
    git("commit", "-qam", "comment", cwd=root)
    commits.append(git("rev-parse", "HEAD", cwd=root))
    demo = root / "configs" / "demo.yaml"
    demo.write_text(demo.read_text().replace("lr: 0.1", "lr: 0.05"))
    git("commit", "-qam", "lr", cwd=root)
    commits.append(git("rev-parse", "HEAD", cwd=root))
    return root, load_script(str(root / "scripts" / "commits_agree.py")), commits


def test_same_code_agrees_and_a_changed_recipe_does_not(repo, capsys):
    root, script, (first, comment, lr) = repo
    assert script.main(["configs/demo.yaml", first, comment, lr[:10], "--models", "resnet20", *TINY]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resnet20: {comment[:12]} against {first[:12]}: bit-identical"
    assert lines[1].startswith(f"resnet20: {lr[:12]} against {first[:12]}: ")
    assert "tensors differ, e.g. model." in lines[1]


def test_a_name_that_is_no_commit_is_one_line(repo):
    root, script, (first, _, _) = repo
    with pytest.raises(SystemExit, match=r"'nope' is not a commit of "):
        script.main(["configs/demo.yaml", first, "nope", "--models", "resnet20", *TINY])
