"""scripts/commits_agree.py: whether two commits train the same run, bit for bit.

A throwaway git repository holds a copy of selfreg's src/ and configs/ and the script, in three
commits: the first, one that changes a comment in the code (must agree), and one that changes
the recipe's learning rate (must not). The script trains digits (bundled, offline) at each.
"""
import json
import shutil
import subprocess

import pytest

from conftest import load_script
from procs import REPO
from selfreg import provenance
from selfreg.analysis.report import build_report
from selfreg.config import load_config
from selfreg.train.engine import fit_seeds

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


def test_a_name_that_is_no_commit_is_one_line(repo):
    root, script, (first, _, _) = repo
    with pytest.raises(SystemExit, match=r"'nope' is not a commit of "):
        script.main(["configs/demo.yaml", first, "nope", "--models", "resnet20", *TINY])


def test_same_code_agrees_a_changed_recipe_does_not_and_the_report_cites_the_record(repo, tmp_path, capsys):
    """The comment-only commit trains the same run bit for bit, the new learning rate another (exit 1).
    --record keeps the verdicts in commits_agree.json; `selfreg report` on that folder says which of its
    runs' source trees were measured to train the same run, which another, which were never checked.
    (One test: each check trains at three commits.)"""
    root, script, (first, comment, lr) = repo
    results = tmp_path / "results"
    results.mkdir()
    assert script.main(["configs/demo.yaml", first, comment, lr[:10], "--models", "resnet20", *TINY,
                        "--record", str(results)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resnet20: {comment[:12]} against {first[:12]}: bit-identical"
    assert lines[1].startswith(f"resnet20: {lr[:12]} against {first[:12]}: ")
    assert "tensors differ, e.g. model." in lines[1]
    assert lines[-1] == f"recorded in {results / provenance.AGREEMENT_FILE}"
    checks = provenance.read_agreement(results)
    assert [(c["commit"], c["identical"]) for c in checks] == [(comment, True), (lr, False)]
    assert all(c["reference"] == first and c["model"] == "resnet20" and "1 threads" in c["device"] for c in checks)
    provenance.record_agreement(results, checks[:1])            # the same check again replaces, never doubles
    assert provenance.read_agreement(results) == checks

    # A real run in the folder, its provenance edited as if it had been resumed from each commit, and once
    # from a tree with uncommitted changes (never checkable: its commit is not what ran).
    fit_seeds(load_config(None, ["data.name=digits", *TINY, "model.name=resnet20", "train.progress=none",
                                 f"train.out_dir={results}", "train.run_name=resnet20"]), [0], log=lambda line: None)
    record = json.loads((results / "resnet20" / "s0" / provenance.FILE).read_text())
    record.update(commit=first, dirty=False)
    record["resumes"] = [{**record, "resumes": None, "commit": c, "dirty": False} for c in (comment, lr)]
    record["resumes"].append({**record["resumes"][0], "dirty": True, "patch_sha256": "ab" * 32})
    (results / "resnet20" / "s0" / provenance.FILE).write_text(json.dumps(record))
    text = build_report(results, tmp_path / "report.md").read_text()
    assert "these runs come from 4 different source trees" in text
    assert (f"2 of these 4 source trees train the same run as {first[:7]}, bit for bit ({first[:7]}, {comment[:7]}); "
            f"1 train another ({lr[:7]}); not checked: {comment[:7]}+dirty:ababab.") in text
    record["resumes"] = record["resumes"][:1]                  # resumed from the comment-only commit alone
    (results / "resnet20" / "s0" / provenance.FILE).write_text(json.dumps(record))
    text = build_report(results, tmp_path / "report.md").read_text()
    assert f"all 2 source trees train the same run as {first[:7]}, bit for bit." in text


def test_a_record_that_is_not_one_is_refused_before_any_training(repo, tmp_path):
    root, script, (first, comment, _) = repo
    (tmp_path / provenance.AGREEMENT_FILE).write_text("my notes")
    with pytest.raises(SystemExit, match=r"--record: .*commits_agree.json exists and is not a commits_agree record"):
        script.main(["configs/demo.yaml", first, comment, "--models", "resnet20", *TINY, "--record", str(tmp_path)])
    assert (tmp_path / provenance.AGREEMENT_FILE).read_text() == "my notes"
    with pytest.raises(SystemExit, match=r"--record: .*nowhere: no such folder"):
        script.main(["configs/demo.yaml", first, comment, "--models", "resnet20", *TINY,
                     "--record", str(tmp_path / "nowhere")])
