"""`selfreg report` cannot mislead: visible one-epoch curves, seeds grouped as seeds, runs of
different lengths or datasets flagged, plain comparative wording, a paper note only where it
applies, top-5 beside top-1 when the runs carry it.

The runs are two real one-epoch trainings (`fit_seeds`, as `selfreg train --seeds 0,1` makes
them); the other configurations are copies of them with config.yaml / summary.json /
metrics.csv edited by hand, as a longer run or another dataset would have written them.
"""
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from selfreg.analysis import report
from selfreg.analysis.report import build_report, collect
from selfreg.config import load_config
from selfreg.train.engine import fit_seeds

TINY = ["data.name=digits", "data.subset=128", "data.val_fraction=64", "data.image_size=8", "train.epochs=1",
        "model.name=resnet20", "train.plot=false", "train.progress=none", "train.tensorboard=false",
        "train.threads=1"]


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory) -> Path:
    """out_dir/resnet20-digits/{s0,s1} and its summary.json of mean and std."""
    out = tmp_path_factory.mktemp("runs")
    fit_seeds(load_config(None, TINY + [f"train.out_dir={out}"]), [0, 1], log=lambda line: None)
    return out / "resnet20-digits"


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def clone(src: Path, dst: Path, config: dict | None = None, summary: dict | None = None,
          epochs: int | None = None, columns: dict | None = None) -> Path:
    """A copy of run `src` at `dst` (no checkpoints), with config keys (dotted), summary keys,
    the epoch count (metrics.csv repeats its row) and metrics.csv columns changed; a summary
    key or column set to None is removed."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    summ = json.loads((dst / "summary.json").read_text())
    with (dst / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    if epochs is not None:
        rows = [{**rows[0], "epoch": str(e)} for e in range(1, epochs + 1)]
        set_dotted(cfg, "train.epochs", epochs)
        summ["epochs"] = epochs
    for key, value in (config or {}).items():
        set_dotted(cfg, key, value)
    summ.update(summary or {})
    summ = {k: v for k, v in summ.items() if v is not None}
    rows = [{k: v for k, v in {**r, **(columns or {})}.items() if v is not None} for r in rows]
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (dst / "summary.json").write_text(json.dumps(summ, indent=2))
    with (dst / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def acc(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["final_val_acc"]


def against_lines(text: str) -> list[str]:
    section = text.split("## Against ", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


# ---------------------------------------------------------------------------------------
# 1. Curves of one epoch are visible

def test_one_epoch_curves_are_drawn_with_markers(seeds_dir):
    group = report.Group("resnet20", [report.read_run(seeds_dir / f"s{seed}") for seed in (0, 1)])
    plt = report._plt()
    fig, ax = plt.subplots()
    try:
        report._band(ax, group.runs, "val_acc", lambda a: 100 * (1 - a), group.label, "C0")
        (line,) = [ln for ln in ax.lines if ln.get_label() == "resnet20"]
        assert len(line.get_xdata()) == 1
        assert line.get_marker() not in (None, "None", "", " ") and line.get_markersize() >= 3
        assert ax.containers, "two seeds of one epoch: their std is an error bar"
    finally:
        plt.close(fig)
    fig = report.curves_figure([group])                   # the report's figure draws it so
    try:
        assert all([ln.get_marker() for ln in ax.lines if ln.get_label() == "resnet20"] == ["o"]
                   for ax in fig.axes[:2])
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------
# 3. The folder `selfreg train --seeds 0,1` writes is one configuration

def test_train_seeds_folder_is_one_configuration(seeds_dir, tmp_path):
    groups, _ = collect(seeds_dir)
    assert [(g.label, sorted(r.seed for r in g.runs)) for g in groups] == [("resnet20-digits", [0, 1])]
    groups, _ = collect(seeds_dir.parent)                 # the out_dir above it: the same
    assert [(g.label, len(g.runs)) for g in groups] == [("resnet20-digits", 2)]
    text = build_report(seeds_dir, tmp_path / "rep" / "report.md").read_text()
    assert "## Against" not in text and "| resnet20-digits | resnet | 2/2 | 1 |" in text


def test_runs_identical_but_for_the_seed_are_seeds_and_differing_ones_are_not(seeds_dir, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(seeds_dir / "s0", root / "first", ignore=shutil.ignore_patterns("checkpoints"))
    clone(seeds_dir / "s1", root / "second", config={"train.run_name": "second", "train.threads": 2})
    clone(seeds_dir / "s0", root / "lr" / "s0", config={"optim.lr": 0.05})
    clone(seeds_dir / "s1", root / "lr" / "s1", config={"optim.lr": 0.2})
    groups, _ = collect(root)
    assert [(g.label, sorted(r.seed for r in g.runs)) for g in groups] == [
        ("first, second", [0, 1]), ("lr/s0", [0]), ("lr/s1", [1])]
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert ("**Not seeds of one configuration**: the runs under `lr` differ in optim.lr (0.05 / 0.2), "
            "so the report keeps them apart: lr/s0, lr/s1.") in text


def test_seeds_of_a_sweep_that_differ_are_flagged(seeds_dir, tmp_path):
    root = tmp_path / "sw"
    shutil.copytree(seeds_dir / "s0", root / "a" / "s0", ignore=shutil.ignore_patterns("checkpoints"))
    clone(seeds_dir / "s1", root / "a" / "s1", epochs=2)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "sw", "labels": ["a"], "runs": [{"label": "a", "seed": s, "dir": f"a/s{s}"} for s in (0, 1)]}))
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert "**Warning**: the seeds of a differ in train.epochs (1 / 2): its mean ± std mixes them." in text
    assert "| a | resnet | 2/2 | 1 or 2 |" in text


# ---------------------------------------------------------------------------------------
# 2. Runs of different lengths

def test_configurations_of_different_lengths_are_flagged(seeds_dir, tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        shutil.copytree(seeds_dir / f"s{seed}", root / "resnet20" / f"s{seed}",
                        ignore=shutil.ignore_patterns("checkpoints"))
        clone(seeds_dir / f"s{seed}", root / "resnet32" / f"s{seed}", config={"model.name": "resnet32"},
              epochs=3)
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    (line,) = against_lines(text)
    assert line.startswith("- resnet32: final validation error")
    assert line.endswith("**Not comparable as a measure of the model**: resnet20 ran 1 epoch, resnet32 3.")
    assert ("**Not comparable as a measure of the model**: the configurations ran different numbers of epochs "
            "(1 epoch: resnet20; 3 epochs: resnet32)") in text
    assert "| resnet20 | resnet | 2/2 | 1 |" in text and "| resnet32 | resnet | 2/2 | 3 |" in text
    # Runs of one length are not flagged.
    shutil.rmtree(root / "resnet32")
    for seed in (0, 1):
        clone(seeds_dir / f"s{seed}", root / "resnet32" / f"s{seed}", config={"model.name": "resnet32"})
    assert "Not comparable" not in build_report(root, tmp_path / "rep" / "report.md").read_text()


# ---------------------------------------------------------------------------------------
# 4. Runs on different datasets

def test_configurations_on_different_datasets_are_flagged_and_not_compared(seeds_dir, tmp_path):
    root = tmp_path / "runs"
    folder = {"data.name": "folder", "data.root": "/data/cifar10-jpeg"}
    shutil.copytree(seeds_dir / "s0", root / "digits-resnet20", ignore=shutil.ignore_patterns("checkpoints"))
    clone(seeds_dir / "s0", root / "digits-resnet32", config={"model.name": "resnet32"})
    clone(seeds_dir / "s0", root / "cifar-resnet20", config=folder, summary={"final_val_acc": 0.75})
    clone(seeds_dir / "s0", root / "cifar-resnet32", config={**folder, "model.name": "resnet32"},
          summary={"final_val_acc": 0.5})
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert ("**Different datasets**: folder (/data/cifar10-jpeg): cifar-resnet20, cifar-resnet32; "
            "digits: digits-resnet20, digits-resnet32. Errors on different datasets are not comparable") in text
    lines = against_lines(build_report(root, tmp_path / "rep" / "report.md", baseline="digits-resnet20").read_text())
    spread = " (1 / 1 seeds: the seed-to-seed spread is not known yet"
    assert [line.split(spread)[0] for line in lines] == [
        "- cifar-resnet20: on folder (/data/cifar10-jpeg), digits-resnet20 on digits: different datasets, "
        "not comparable; the reference for cifar-resnet32.",
        "- cifar-resnet32: on folder (/data/cifar10-jpeg), digits-resnet20 on digits: different datasets, "
        "not comparable; against cifar-resnet20 (the first on folder (/data/cifar10-jpeg)): final validation "
        "error 25.00 percentage points higher than cifar-resnet20's",
        "- digits-resnet32: final validation error the same as digits-resnet20's",
    ]


# ---------------------------------------------------------------------------------------
# 5. Wording of zero and small gaps

@pytest.mark.parametrize("shift, words", [
    (0.0, "final validation error the same as resnet20's ("),
    (1e-6, "final validation error the same as resnet20's ("),
    (-0.0012, "final validation error 0.12 percentage points higher than resnet20's ("),
    (0.0012, "final validation error 0.12 percentage points lower than resnet20's ("),
])
def test_comparative_wording(seeds_dir, tmp_path, shift, words):
    root = tmp_path / "runs"
    shutil.copytree(seeds_dir / "s0", root / "resnet20", ignore=shutil.ignore_patterns("checkpoints"))
    clone(seeds_dir / "s0", root / "resnet32", config={"model.name": "resnet32"},
          summary={"final_val_acc": acc(seeds_dir / "s0") + shift})
    groups, _ = collect(root)
    doc = report.Doc()
    report.against_baseline(doc, groups, "final_val_acc", groups[0])
    (line,) = doc.blocks[-1][1]
    assert line.startswith(f"resnet32: {words}")
    assert "equal" not in line and "0.00" not in line


# ---------------------------------------------------------------------------------------
# 6. A paper note only where the paper comparison applies

NOTE = "Xu et al. (150 epochs); ours are 20-epoch validation errors, so the column measures the budget"


def paper_sweep(seeds_dir: Path, tmp_path: Path, recipe_epochs: int, smoke: bool) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"epochs": recipe_epochs}, "sweep": {"grid": {}}}))
    root = tmp_path / "sw"
    for seed in (0, 1):
        shutil.copytree(seeds_dir / f"s{seed}", root / "resnet20" / f"s{seed}",
                        ignore=shutil.ignore_patterns("checkpoints"))
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "sw", "recipe": str(recipe), "smoke": smoke, "labels": ["resnet20"],
        "runs": [{"label": "resnet20", "seed": s, "dir": f"resnet20/s{s}"} for s in (0, 1)],
        "paper": {"metric": "test error (%)", "source": NOTE, "values": {"resnet20": 8.38}}}))
    return root


@pytest.mark.parametrize("recipe_epochs, smoke, why", [
    (20, True, "these are smoke runs (`smoke: true` in sweep.yaml)"),
    (20, False, "these runs trained 1 epoch where the recipe"),
])
def test_paper_note_is_not_printed_where_it_does_not_apply(seeds_dir, tmp_path, recipe_epochs, smoke, why):
    text = build_report(paper_sweep(seeds_dir, tmp_path, recipe_epochs, smoke),
                        tmp_path / "rep" / "report.md").read_text()
    assert NOTE not in text and "ours − paper" not in text
    assert f"the paper comparison does not apply, as {why}" in text
    assert "| paper: test error (%) |" in text and "| 8.38 |" in text     # kept, for orientation


def test_paper_note_is_printed_where_it_applies(seeds_dir, tmp_path):
    root = paper_sweep(seeds_dir, tmp_path, 1, False)
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert f"Paper numbers: {NOTE}." in text and "ours − paper (final validation error)" in text
    assert "does not apply" not in text and "not checked" not in text
    (tmp_path / "recipe.yaml").unlink()                  # the recipe moved: printed, but said unchecked
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert f"Paper numbers: {NOTE}." in text and "epoch count was not checked" in text


# ---------------------------------------------------------------------------------------
# 7. Top-5 beside top-1, when the runs have it

NO_TOP5 = {"summary": {"final_val_acc5": None, "best_val_acc5": None, "test_acc5": None},
           "columns": {"val_acc5": None}}       # a run of 5 classes or fewer, or one made before top-5


def test_top5_errors_beside_top1_only_when_recorded(seeds_dir, tmp_path):
    root = tmp_path / "runs"
    clone(seeds_dir / "s0", root / "resnet20", **NO_TOP5)
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert "top-5" not in text
    clone(seeds_dir / "s0", root / "resnet32", config={"model.name": "resnet32"},
          summary={"final_val_acc5": 0.4, "best_val_acc5": 0.45, "test_acc": 0.2, "test_acc5": 0.7},
          columns={"val_acc5": 0.4})
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| configuration | family |"))
    assert ("| final val err (%) | final val top-5 err (%) | best val err (%) | best val top-5 err (%) | "
            "test err (%) | test top-5 err (%) | minutes / run |") in header
    resnet20, resnet32 = (next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
                          for label in ("resnet20", "resnet32"))
    best = json.loads((root / "resnet32" / "summary.json").read_text())["best_val_acc"]
    assert resnet32.split(" | ")[7:12] == ["60.00", f"{100 * (1 - best):.2f}", "55.00", "80.00", "30.00"]
    assert [resnet20.split(" | ")[i] for i in (7, 9, 10, 11)] == ["-", "-", "-", "-"]


# ---------------------------------------------------------------------------------------
# 6. One seed a side: the sampling error of the validation images is the spread that is known

def one_seed_pair(seeds_dir, root, shift, **base_summary):
    clone(seeds_dir / "s0", root / "resnet20", summary=base_summary or None)
    clone(seeds_dir / "s0", root / "resnet32", config={"model.name": "resnet32"},
          summary={**base_summary, "final_val_acc": acc(seeds_dir / "s0") + shift})


@pytest.mark.parametrize("shift, verdict", [(0.0, "within"), (0.3, "beyond")])
def test_one_seed_a_side_gives_the_sampling_error_of_the_difference(seeds_dir, tmp_path, shift, verdict):
    root = tmp_path / "runs"
    one_seed_pair(seeds_dir, root, shift)
    n = json.loads((seeds_dir / "s0" / "summary.json").read_text())["val_images"]
    p_a, p_b = acc(seeds_dir / "s0"), acc(seeds_dir / "s0") + shift
    sigma = 100 * ((p_a * (1 - p_a) + p_b * (1 - p_b)) / n) ** 0.5
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    (line,) = against_lines(text)
    assert (f"(1 / 1 seeds: the seed-to-seed spread is not known yet; the sampling error of the difference on "
            f"{n:,} images is {sigma:.2f} points (1 sigma), so this gap is {verdict} 2 sigma of it)") in line
    # Beside the table, each one-seed configuration's own sampling error and the gap a single run must pass.
    one = 100 * (p_a * (1 - p_a) / n) ** 0.5
    assert (f"resnet20 has one seed: the sampling error of its final validation error on {n:,} images is "
            f"{one:.2f} points (1 sigma), so a single run of another configuration at a similar error differs "
            f"from it beyond sampling error only by more than {2 * 2 ** 0.5 * one:.2f} points") in text


def test_runs_without_an_image_count_take_it_from_a_counted_val_fraction(seeds_dir, tmp_path):
    """Runs made before summary.json recorded val_images: data.val_fraction, when it is a count."""
    root = tmp_path / "runs"
    one_seed_pair(seeds_dir, root, 0.01, val_images=None)
    for run in (root / "resnet20", root / "resnet32"):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["val_fraction"] = 5000
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "the sampling error of the difference on 5,000 images" in build_report(root, tmp_path / "r.md").read_text()
    for run in (root / "resnet20", root / "resnet32"):      # a fraction: the count is not known
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["val_fraction"] = 0.1
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "sampling error" not in build_report(root, tmp_path / "r.md").read_text()


# ---------------------------------------------------------------------------------------
# 7. Minutes are a record, not a speed: the report says so and counts each run's sessions

def test_minutes_are_labelled_a_record_and_resumed_runs_count_their_sessions(seeds_dir, tmp_path):
    root = tmp_path / "runs"
    clone(seeds_dir / "s0", root / "resnet20")
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert "`minutes / run` sums the seconds of each run's epochs" in text and "not a speed measure" in text
    assert "resumed in later sessions" not in text
    row = next(line for line in text.splitlines() if line.startswith("| resnet20 | 0 | finished |"))
    assert row.split(" | ")[8] == "1"       # one session: the run was never resumed

    # The same run as a resume in a later session would have recorded it (provenance.json's resumes).
    record = json.loads((root / "resnet20" / "provenance.json").read_text())
    record["resumes"] = [{**{k: record[k] for k in ("command", "commit", "dirty", "device")},
                          "time": "2026-12-04T00:00:00Z"}]
    (root / "resnet20" / "provenance.json").write_text(json.dumps(record))
    text = build_report(root, tmp_path / "rep" / "report.md").read_text()
    assert "1 of the 1 finished run(s) resumed in later sessions" in text
    row = next(line for line in text.splitlines() if line.startswith("| resnet20 | 0 | finished |"))
    assert row.split(" | ")[8] == "2"
