"""scripts/publish_runs.py: a finished sweep's results into a results folder, its final weights into a
weights folder with a manifest, checked against `selfreg eval`, with reference logits for the tests.

A tiny digits sweep (bundled data: offline) is published into tmp_path; the package's own weights
folder and tests/data are never written here.
"""
import json
import re
import shutil

import pytest
import torch
import yaml

from conftest import load_script
from selfreg import pretrained
from selfreg.analysis.report import build_report
from selfreg.errors import UserError
from selfreg.factory import create_model
from selfreg.sweep import expand, run_sweep

RECIPE = {
    "model": {"name": "resnet20"},
    "data": {"name": "digits", "image_size": 8, "batch_size": 32, "subset": 64, "val_fraction": 32},
    "optim": {"lr": 0.05},
    "train": {"epochs": 1, "tensorboard": False, "progress": "none"},
    "sweep": {"name": "tiny", "seeds": [0, 1], "grid": {"model.name": ["resnet20"]}},
}


@pytest.fixture(scope="module")
def publish_runs():
    return load_script("scripts/publish_runs.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pub")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    plan = expand(tmp / "tiny.yaml", out=tmp / "sw")
    run_sweep(plan, command="selfreg sweep tiny.yaml", log=lambda line: None)
    return tmp / "sw"


def test_publishes_results_weights_manifest_and_logits(publish_runs, sweep, tmp_path, monkeypatch):
    weights, results, logits_file = tmp_path / "weights", tmp_path / "results", tmp_path / "logits.json"
    args = (sweep, "unused", results, "digits-tiny", 0, weights, logits_file)
    entries = publish_runs.publish(*args, log=lambda line: None)
    assert [(e["model"], e["tag"], e["aliases"], e["default"]) for e in entries] == [
        ("resnet20", "digits-tiny-s0", ["digits-tiny"], True), ("resnet20", "digits-tiny-s1", [], False)]
    assert entries[0]["command"] == (f"selfreg sweep {sweep.parent / 'tiny.yaml'} --only resnet20 --seeds 0 "
                                     "train.amp=none train.channels_last=false data.root=DATA")
    assert sorted(p.name for p in weights.iterdir()) == [
        "manifest.json", "resnet20-digits-tiny-s0.safetensors", "resnet20-digits-tiny-s1.safetensors"]

    # The file's accuracy is the run's final validation accuracy; its logits are the final checkpoint's.
    reference = json.loads(logits_file.read_text())
    monkeypatch.setenv(pretrained.ENV_DIR, str(weights))
    for e, seed in zip(entries, (0, 1)):
        summary = json.loads((sweep / "resnet20" / f"s{seed}" / "summary.json").read_text())
        assert e["val_accuracy"] == pytest.approx(summary["final_val_acc"], abs=1e-9)
        model = create_model("resnet20", pretrained=e["tag"]).eval()
        with torch.no_grad():
            out = model(publish_runs.reference_input(1, (8, 8)))
        torch.testing.assert_close(out, torch.tensor(reference[f"resnet20:{e['tag']}"]), rtol=1e-5, atol=1e-5)

    # Results: what a report needs, no checkpoints; the report works on the copy.
    run0 = results / "resnet20" / "s0"
    assert {"config.yaml", "summary.json", "metrics.csv", "provenance.json"} <= {p.name for p in run0.iterdir()}
    assert not list(results.rglob("*.pt"))
    assert "| resnet20 |" in build_report(results, tmp_path / "rep" / "report.md").read_text()
    table = (results / "weights.md").read_text()
    assert entries[0]["sha256"] in table and "digits-tiny-s0, digits-tiny (default)" in table
    shipped = {e["tag"] for e in entries} | {a for e in entries for a in e["aliases"]}
    assert set(re.findall(r'pretrained="([^"]+)"', table)) <= shipped          # examples that load

    # Again: entries replaced, not duplicated.
    assert len(publish_runs.publish(*args, log=lambda line: None)) == 2
    assert len(pretrained.load_manifest(weights)) == 2


def test_results_sweep_record_keeps_runs_published_from_another_machine(publish_runs, sweep, tmp_path):
    """A sweep folder on a new machine holds only its own runs: publishing merges its record into
    the results' sweep.yaml, so earlier runs and commands stay listed."""
    results = tmp_path / "results"
    results.mkdir()
    earlier = {"name": "tiny", "seeds": [7], "command": "selfreg sweep old",          # no labels: hand-edited
               "runs": [{"label": "vgg11", "seed": 7, "dir": "vgg11/s7", "overrides": {}}]}
    (results / "sweep.yaml").write_text(yaml.safe_dump(earlier))
    publish_runs.publish(sweep, "unused", results, "digits-tiny", 0, tmp_path / "w", tmp_path / "l.json",
                         log=lambda line: None)
    record = yaml.safe_load((results / "sweep.yaml").read_text())
    assert [r["dir"] for r in record["runs"]] == ["resnet20/s0", "resnet20/s1", "vgg11/s7"]
    assert record["labels"] == ["resnet20", "vgg11"]
    assert record["seeds"] == [0, 1, 7]
    assert record["commands"] == ["selfreg sweep old", "selfreg sweep tiny.yaml"]


def test_a_run_measured_in_channels_last_is_checked_and_listed_in_it(publish_runs, sweep, tmp_path, monkeypatch):
    """NHWC and NCHW round differently (a near-tie image can flip), so a run that measured its
    accuracy in channels_last has its file measured, and its manifest entry marked, in it."""
    sweep = shutil.copytree(sweep, tmp_path / "sw")        # the module's sweep stays as it is
    layouts = []
    real = publish_runs.measured_accuracy
    monkeypatch.setattr(publish_runs, "measured_accuracy",
                        lambda path, root, channels_last: layouts.append(channels_last) or real(path, root, channels_last))
    for seed in (0, 1):
        summary_file = sweep / "resnet20" / f"s{seed}" / "summary.json"
        summary = json.loads(summary_file.read_text())
        summary.setdefault("speed", {})["channels_last"] = seed == 1
        summary_file.write_text(json.dumps(summary))
    entries = publish_runs.publish(sweep, "unused", tmp_path / "r", "digits-tiny", 0, tmp_path / "w",
                                   tmp_path / "l.json", log=lambda line: None)
    assert layouts == [False, True]
    assert [w.channels_last for w in pretrained.load_manifest(tmp_path / "w")] == [False, True]
    assert [e["channels_last"] for e in entries] == [False, True]


def test_the_command_keeps_typed_overrides_and_pins_what_auto_chose(publish_runs, tmp_path):
    """Threads and layout change a CPU run's bits: the command that trains the run again keeps the
    overrides typed on the sweep's commands (not the grid's, not data.root) and what `auto` chose."""
    record = {"recipe": "configs/r.yaml", "commands": [
        "selfreg sweep configs/r.yaml data.root=/d --seeds 0 --parallel 2 train.threads=1 -o out",
        "selfreg sweep configs/r.yaml data.root=/d --seeds 1 'sched.milestones=[80, 120]' -o out"]}
    run = {"label": "rrnet20_gru", "seed": 1, "dir": "rrnet20_gru/s1", "overrides": {
        "model.name": "rrnet20_gru", "data.root": "/d", "train.threads": 1, "sched.milestones": [80, 120]}}
    (tmp_path / "summary.json").write_text(json.dumps({"speed": {
        "amp": "none", "channels_last": True, "compile": False,
        "asked": {"amp": "auto", "channels_last": "auto", "compile": False}}}))
    assert publish_runs.rerun_command(record, run, tmp_path) == (
        "selfreg sweep configs/r.yaml --only rrnet20_gru --seeds 1 train.threads=1 'sched.milestones=[80, 120]' "
        "train.amp=none train.channels_last=true data.root=DATA")


def test_records_only_rewrites_commands_and_layouts_from_the_results_folder(publish_runs, sweep, tmp_path):
    """Files published before the command kept the typed overrides get it without their checkpoints:
    the results folder (sweep.yaml and summaries) is enough, and nothing else changes."""
    weights, results = tmp_path / "weights", tmp_path / "results"
    publish_runs.publish(sweep, "unused", results, "digits-tiny", 0, weights, tmp_path / "l.json", log=lambda line: None)
    manifest = json.loads((weights / "manifest.json").read_text())
    for e in manifest["weights"]:
        e["command"], e["channels_last"] = "an old command", True
    (weights / "manifest.json").write_text(json.dumps(manifest))
    files = {p.name: p.read_bytes() for p in weights.glob("*.safetensors")}
    entries = publish_runs.refresh_records(results, results, "digits-tiny", weights)
    assert [e["command"].split(" --only ")[1] for e in entries] == [
        "resnet20 --seeds 0 train.amp=none train.channels_last=false data.root=DATA",
        "resnet20 --seeds 1 train.amp=none train.channels_last=false data.root=DATA"]
    assert [e["channels_last"] for e in entries] == [False, False]      # as the runs measured
    assert {p.name: p.read_bytes() for p in weights.glob("*.safetensors")} == files
    assert "an old command" not in (results / "weights.md").read_text()
    with pytest.raises(UserError, match="resnet20:other-s0 is not published; publish it first"):
        publish_runs.refresh_records(results, results, "other", weights)


def test_nothing_finished_is_a_one_line_error(publish_runs, tmp_path):
    with pytest.raises(UserError, match="is not a sweep folder \\(no sweep.yaml\\)"):
        publish_runs.publish(tmp_path, "unused", tmp_path / "r", "t", 0, tmp_path / "w", tmp_path / "l.json")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"runs": [{"label": "a", "seed": 0, "dir": "a/s0"}]}))
    with pytest.raises(UserError, match="no finished run"):
        publish_runs.publish(tmp_path, "unused", tmp_path / "r", "t", 0, tmp_path / "w", tmp_path / "l.json")


def test_results_under_a_file_fail_before_anything_is_evaluated(publish_runs, sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(publish_runs, "measured_accuracy", lambda *a: pytest.fail("evaluated before the check"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file is a file, not a folder; choose another --results"):
        publish_runs.publish(sweep, "unused", tmp_path / "a_file" / "r", "t", 0, tmp_path / "w", tmp_path / "l.json")
    assert not (tmp_path / "w").exists()


def test_a_file_that_disagrees_with_its_run_is_not_published(publish_runs, sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(publish_runs, "measured_accuracy", lambda path, root, channels_last: (0.0, 32))
    with pytest.raises(UserError, match="selfreg eval measures 0.00% on val.*not published"):
        publish_runs.publish(sweep, "unused", tmp_path / "r", "t", 0, tmp_path / "w", tmp_path / "l.json")
    assert not list((tmp_path / "w").glob("*.safetensors")) and not (tmp_path / "w" / "manifest.json").exists()


def test_a_second_tag_takes_the_default_only_when_asked(publish_runs, sweep, tmp_path):
    """Issue #26: the paper-recipe weights (a second tag of the same model) become what
    `pretrained=True` loads, and the budget weights keep their tags and alias. Publishing a tag
    again without --take-default leaves the default where it is. The tags share a prefix, as
    cifar10 and cifar10-paper would: a tag's files are TAG-s<seed>, not every tag starting TAG-."""
    weights, logits = tmp_path / "w", tmp_path / "l.json"

    def publish(tag, take_default=False):
        publish_runs.publish(sweep, "unused", tmp_path / tag, tag, 0, weights, logits, log=lambda line: None,
                             take_default=take_default)
        return {w.tag: (w.default, list(w.aliases)) for w in pretrained.load_manifest(weights)}

    # The first tag of a model takes the default, asked or not (it has none yet).
    assert publish("c10") == {"c10-s0": (True, ["c10"]), "c10-s1": (False, [])}
    # A second tag: beside it, the default stays; asked, it moves.
    assert publish("c10-paper")["c10-s0"] == (True, ["c10"])
    assert publish("c10-paper", take_default=True) == {
        "c10-s0": (False, ["c10"]), "c10-s1": (False, []),
        "c10-paper-s0": (True, ["c10-paper"]), "c10-paper-s1": (False, [])}
    # Publishing the budget sweep again (new runs, a fixed report) does not take it back.
    assert publish("c10")["c10-paper-s0"] == (True, ["c10-paper"])
    assert pretrained.resolve("resnet20", True, weights).tag == "c10-paper-s0"


def test_the_load_example_names_only_files_that_ship(publish_runs, tmp_path):
    def example(*entries):
        pretrained.write_manifest(list(entries), tmp_path)
        return publish_runs.load_example(list(entries), "c10", tmp_path)

    seed0 = {"model": "resnet20", "tag": "c10-s0", "aliases": ["c10"], "default": True, "file": "a.safetensors",
             "sha256": "0" * 64, "val_accuracy": 0.9, "command": "selfreg sweep ...", "commit": "abc"}
    alone = example(seed0)
    assert 'pretrained="c10")` (`c10-s0`, its `pretrained=True`);' in alone and "c10-s1" not in alone
    seed1 = {**seed0, "tag": "c10-s1", "aliases": [], "default": False, "file": "b.safetensors"}
    assert 'pretrained="c10")` (`c10-s0`) or `pretrained="c10-s1"`' in example(seed1, {**seed0, "default": False})
    assert 'Load one: `selfreg.create_model("resnet20", pretrained="c10-s1")`;' in example(seed1)  # no alias yet
