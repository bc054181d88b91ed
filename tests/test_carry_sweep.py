"""scripts/carry_sweep.py: a sweep killed on one machine, carried as an archive, resumed on the next."""
import shutil

import pytest
import torch
import yaml

from conftest import load_script, selfreg_in_process
from procs import selfreg_killed_before_checkpoint
from selfreg.errors import UserError
from selfreg.sweep import expand, run_sweep
from test_sweep import TINY, metrics_without_time, quiet, write_recipe

carry = load_script("scripts/carry_sweep.py")
ONE_RUN = {**TINY, "train": {**TINY["train"], "epochs": 2, "threads": 1},
           "sweep": {**TINY["sweep"], "seeds": [0], "grid": {"model.name": ["resnet20"]}}}


def lines() -> tuple[list[str], callable]:
    said: list[str] = []
    return said, said.append


@pytest.mark.slow
def test_a_carried_sweep_resumes_into_the_uninterrupted_run(tmp_path):
    path = write_recipe(tmp_path, ONE_RUN)
    ref = selfreg_in_process("sweep", path, "-o", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    sweep, archive = tmp_path / "sw", tmp_path / "repo" / "carry" / "sw.tar.xz"
    selfreg_killed_before_checkpoint(2, "sweep", path, "-o", sweep)     # killed in epoch 2
    said, log = lines()
    packed = carry.save(sweep, archive, log=log)
    assert [(r["dir"], r["epoch"], r["epochs"]) for r in packed] == [("resnet20/s0", 1, 2)]
    assert said[0] == "resnet20/s0: carried at epoch 1 of 2"

    shutil.rmtree(sweep)                                   # a new machine: the sweep folder is gone
    said, log = lines()
    assert [r["dir"] for r in carry.restore(archive, sweep, log=log)] == ["resnet20/s0"]
    assert said[0].startswith("resnet20/s0: restored at epoch 1 of 2 (saved ")
    assert yaml.safe_load((sweep / "sweep.yaml").read_text())["name"] == "tiny"
    said, log = lines()
    assert carry.restore(archive, sweep, log=log) == []         # restored twice: the same state
    assert said == ["resnet20/s0: as far or further on here (epoch 1 of 2) than the archive (epoch 1 of 2): kept"]

    resumed = selfreg_in_process("sweep", path, "-o", sweep)     # the same command, in this process
    assert resumed.returncode == 0, resumed.stderr
    assert "1 to resume" in resumed.stdout
    ours, theirs = sweep / "resnet20" / "s0", tmp_path / "ref" / "resnet20" / "s0"
    assert metrics_without_time(ours) == metrics_without_time(theirs)
    a = torch.load(ours / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(theirs / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Restoring the older state again never goes back in time; a finished run is not packed.
    said, log = lines()
    assert carry.restore(archive, sweep, log=log) == []
    assert said == ["resnet20/s0: finished here, kept"]
    with pytest.raises(UserError, match="no unfinished run with a checkpoint; nothing to carry"):
        carry.save(sweep, archive, log=quiet)
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.yaml").write_text("name: another\n")
    with pytest.raises(UserError, match="holds the sweep 'another', the archive 'tiny'"):
        carry.restore(archive, other, log=quiet)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("carry")
    plan = expand(write_recipe(tmp, {**ONE_RUN, "train": {**ONE_RUN["train"], "epochs": 1}}), out=tmp / "sw")
    run_sweep(plan, log=quiet)
    return plan.root


def test_finished_runs_stay_and_are_named(finished_sweep, tmp_path):
    said, log = lines()
    with pytest.raises(UserError, match="nothing to carry"):
        carry.save(finished_sweep, tmp_path / "a.tar.xz", log=log)
    assert said == ["resnet20/s0: finished, not carried (publish it)"]
    assert not (tmp_path / "a.tar.xz").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not an archive", None])
def test_bad_archives_and_folders_are_one_line_errors(finished_sweep, tmp_path, capsys, content):
    archive = tmp_path / "a.tar.xz"
    if content is not None:
        archive.write_bytes(content)
    assert carry.main(["restore", str(archive), str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("carry_sweep: error: ")
    assert ("not a readable carry archive" if content is not None else "no archive at") in err
    assert carry.main(["save", str(tmp_path), str(archive)]) == 2
    assert "is not a sweep folder (no sweep.yaml)" in capsys.readouterr().err
