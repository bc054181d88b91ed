"""`selfreg sweep` and `selfreg report`: grid expansion, skipping and resuming, reports, recipes."""
import json
from pathlib import Path

import pytest
import torch
import yaml

import dataset_writers as w
from conftest import REPO, selfreg_in_process
from procs import selfreg_killed_before_checkpoint, torchrun
from selfreg.analysis.report import build_report, collect
from selfreg.errors import UserError
from selfreg.factory import create_model, list_models
from selfreg.launch import status_line
from selfreg.sweep import expand, job_state, run_sweep

RECIPES = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweep" in (yaml.safe_load(p.read_text()) or {}))

TINY = {
    "model": {"name": "resnet20"},
    "data": {"name": "digits", "image_size": 8, "batch_size": 32, "subset": 64, "val_fraction": 32},
    "optim": {"lr": 0.05},
    "sched": {"milestones": [5]},
    "train": {"epochs": 1, "tensorboard": False, "plot": False, "progress": "none"},
    "sweep": {"name": "tiny", "seeds": [0, 1],
              "grid": {"model.name": ["resnet20", "rrnet20_gru"]},
              "smoke": {"data.subset": 40},
              "paper": {"metric": "test error (%)", "source": "a test", "values": {"resnet20": 8.38}}},
}


def write_recipe(tmp_path: Path, recipe: dict = TINY, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------------------------------
# Expansion

def test_grid_is_the_product_of_axes_times_seeds(tmp_path):
    recipe = {**TINY, "sweep": {"grid": {
        "data": {"small": {"data.subset": 40}, "big": {"data.subset": 64, "optim.lr": 0.1}},
        "model.name": ["resnet20", "resnet32"]}, "seeds": [3]}}
    plan = expand(write_recipe(tmp_path, recipe), out=tmp_path / "sw")
    assert plan.labels == ["small-resnet20", "small-resnet32", "big-resnet20", "big-resnet32"]
    job = plan.jobs[3]
    assert (job.config.model.name, job.config.data.subset, job.config.optim.lr) == ("resnet32", 64, 0.1)
    assert (job.seed, job.config.train.seed) == (3, 3)
    assert job.dir == tmp_path / "sw" / "big-resnet32" / "s3"
    assert plan.name == "tiny"      # the file's stem when sweep.name is absent


def test_precedence_recipe_grid_smoke_command_line(tmp_path):
    recipe = {**TINY, "sweep": {**TINY["sweep"], "grid": {"data.subset": [50]}, "smoke": {"data.subset": 40,
                                                                                           "optim.lr": 0.2}}}
    path = write_recipe(tmp_path, recipe)
    assert expand(path).jobs[0].config.data.subset == 50
    smoke = expand(path, smoke=True, overrides=["optim.lr=0.3"])
    assert (smoke.jobs[0].config.data.subset, smoke.jobs[0].config.optim.lr) == (40, 0.3)
    assert smoke.name == "tiny-smoke"


def test_seeds_only_and_errors(tmp_path):
    path = write_recipe(tmp_path)
    plan = expand(path, seeds=[5, 6, 7], only=["rrnet*"])
    assert [(j.label, j.seed) for j in plan.jobs] == [("rrnet20_gru", 5), ("rrnet20_gru", 6), ("rrnet20_gru", 7)]
    with pytest.raises(UserError, match="matches no run.*resnet20, rrnet20_gru"):
        expand(path, only=["vgg*"])
    with pytest.raises(UserError, match="sweep run resnet20 s0: unknown config key 'optim.lrr'"):
        expand(path, overrides=["optim.lrr=1"])
    bad = {**TINY, "sweep": {"grid": {"a": {"x": {"optim.lr": 0.1}}, "b": {"x": {"optim.lr": 0.2}}}}}
    with pytest.raises(UserError, match="name the variants"):
        expand(write_recipe(tmp_path, {**TINY, "sweep": {"grid": {"model.name": ["resnet20", "resnet20"]}}}))
    expand(write_recipe(tmp_path, bad))  # labels x-x are unique: one point
    with pytest.raises(UserError, match="unknown key sweep.gird"):
        expand(write_recipe(tmp_path, {**TINY, "sweep": {"gird": {}}}))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_expands_with_known_models_and_paper_labels(recipe):
    plan = expand(recipe)
    smoke = expand(recipe, smoke=True)
    assert len(smoke.jobs) == len(plan.jobs) and plan.jobs
    for job in smoke.jobs:
        assert job.config.train.epochs <= 2
    assert set(plan.labels) >= set((plan.paper.get("values") or {})), "a paper value names no grid point"
    names = {job.config.model.name for job in plan.jobs}
    assert names <= set(list_models())
    header = recipe.read_text().splitlines()[:12]
    assert any(line.startswith("# Command:") for line in header) and any("Cost" in line for line in header)


def test_imagenet_recipe_defaults_to_scale_augmentation_and_keeps_random_resized_crop():
    recipe = REPO / "configs" / "regnet" / "imagenet.yaml"
    plan = expand(recipe)
    assert plan.labels == ["resnet50", "rrnet50"] == sorted(plan.paper["values"])
    assert all(job.config.data.augment == ["scale"] for job in plan.jobs)
    smoke = expand(recipe, smoke=True)
    assert all((j.config.data.augment, j.config.data.image_size) == (["scale"], 64) for j in smoke.jobs)
    # The header's RandomResizedCrop variant: a command-line override, into a folder of its own.
    rrc = expand(recipe, smoke=True, overrides=["data.augment=[imagenet]"], out="runs/regnet-imagenet-rrc")
    assert all(j.config.data.augment == ["imagenet"] for j in rrc.jobs)
    assert "'data.augment=[imagenet]' -o runs/regnet-imagenet-rrc" in recipe.read_text()


def test_table3_models_build_with_paper_sized_parameter_counts():
    plan = expand(REPO / "configs/regnet/table3.yaml", only=["c10-*"])
    counts = {}
    for label in plan.labels:
        with torch.device("meta"):
            model = create_model(label.split("-", 1)[1], num_classes=10)
        counts[label] = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < counts["c10-resnet20"] < 0.28e6            # paper: 0.27M
    assert 0.30e6 < counts["c10-rrnet20_lstm"] < 0.33e6        # paper: 0.32M


# ---------------------------------------------------------------------------------------
# Running, skipping, resuming, reporting

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_recipe(tmp)
    plan = expand(path, out=tmp / "sw")
    result = run_sweep(plan, command="selfreg sweep tiny.yaml", log=quiet)
    return tmp, path, plan, result


def test_sweep_runs_every_job_then_skips_them(tiny_sweep):
    tmp, path, plan, result = tiny_sweep
    assert (result["ran"], result["failed"]) == (4, [])
    for job in plan.jobs:
        summary = json.loads((job.dir / "summary.json").read_text())
        assert summary["seed"] == job.seed and summary["model"] == job.config.model.name
        assert (job.config_path).is_file()
    again = run_sweep(expand(path, out=tmp / "sw"), log=quiet)
    assert (again["done"], again["ran"]) == (4, 0)
    record = yaml.safe_load((tmp / "sw" / "sweep.yaml").read_text())
    assert record["labels"] == ["resnet20", "rrnet20_gru"] and len(record["runs"]) == 4


def test_changed_recipe_is_refused_and_more_epochs_resume(tiny_sweep):
    tmp, path, plan, _ = tiny_sweep
    with pytest.raises(UserError, match="optim.lr=0.05 but the recipe now says 0.1"):
        job_state(expand(path, out=tmp / "sw", overrides=["optim.lr=0.1"]).jobs[0])
    longer = expand(path, out=tmp / "sw", overrides=["train.epochs=2"], only=["resnet20"], seeds=[0])
    assert job_state(longer.jobs[0]) == "resume"
    assert status_line(longer.jobs[0]) == ("resnet20 s0: started, not finished, epoch 1/2 "
                                           "(running, or resumed by the sweep's command)")
    assert status_line(expand(path, out=tmp / "elsewhere").jobs[0]) == "resnet20 s0: not started"
    result = run_sweep(longer, log=quiet)
    assert result["ran"] == 1
    rows = (longer.jobs[0].dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3                                  # header + epochs 1 and 2


def test_report_has_table_paper_column_figures_and_html(tiny_sweep, tmp_path):
    sweep_dir = tiny_sweep[0] / "sw"
    out = build_report(sweep_dir, tmp_path / "rep" / "report.md", note="tiny runs")
    text = out.read_text()
    assert "| resnet20 | resnet |" in text and "| rrnet20_gru | rrnet_gru |" in text
    assert "±" in text and "paper: test error (%)" in text and "8.38" in text and "**Note**: tiny runs" in text
    assert "![training loss and validation error" in text
    for png in ("curves.png", "efficiency.png"):
        assert (tmp_path / "rep" / "report-figures" / png).read_bytes()[:4] == b"\x89PNG"
    html = out.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html


def test_report_answers_against_the_baseline_first(tiny_sweep, tmp_path):
    sweep_dir = tiny_sweep[0] / "sw"
    text = build_report(sweep_dir, tmp_path / "rep" / "report.md").read_text()
    assert text.index("## Against resnet20") < text.index("## Results")
    assert "- rrnet20_gru: final validation error " in text and "seed-to-seed spread" in text
    params = {label: json.loads(next((sweep_dir / label).glob("s*/summary.json")).read_text())["params"]
              for label in ("resnet20", "rrnet20_gru")}
    extra = 100 * (params["rrnet20_gru"] / params["resnet20"] - 1)
    assert f", at {extra:+.1f}% parameters and +" in text and "% MACs." in text
    text = build_report(sweep_dir, tmp_path / "rep" / "report.md", baseline="rrnet20_gru").read_text()
    assert "## Against rrnet20_gru" in text and "- resnet20: final validation error" in text
    with pytest.raises(UserError, match="--baseline 'nope' is not a configuration.*resnet20, rrnet20_gru"):
        build_report(sweep_dir, tmp_path / "nothing" / "report.md", baseline="nope")
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("base, other, mean, separated, beyond", [
    ([9.0, 9.2, 9.4], [8.0, 8.1, 8.3], -1.0667, True, True),      # clear gain
    ([9.0, 9.2, 9.4], [8.9, 9.1, 9.3], -0.1, False, False),       # overlapping seeds
    ([9.0, 9.1], [8.0, 10.2], 0.05, False, False),                 # one seed each side of the baseline
    ([9.0, 9.3], [9.4, 9.5], 0.3, True, True),                     # worse, and beyond the spread
])
def test_difference_against_a_baseline(base, other, mean, separated, beyond):
    from selfreg.stats import difference

    d = difference(base, other)
    assert d.mean == pytest.approx(mean, abs=1e-3)
    assert (d.separated, d.beyond_spread) == (separated, beyond)
    assert 0 < d.p_value <= 1


@pytest.mark.filterwarnings("error")
def test_difference_of_seeds_that_agree_exactly():
    from selfreg.stats import difference

    assert difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).p_value is None    # no spread: no test
    one_side = difference([0.1, 0.1, 0.1], [0.1, 0.2, 0.3])                  # and no warning
    assert one_side.p_value == pytest.approx(0.2254, abs=1e-4)


def test_difference_with_one_seed_has_no_p_value():
    from selfreg.stats import difference

    d = difference([9.0], [8.0, 8.5])
    assert d.p_value is None and d.base_std == 0 and d.mean == pytest.approx(-0.75)
    assert difference([], [8.0]) is None


def test_report_groups_any_folder_of_seeded_runs(tiny_sweep, tmp_path):
    sweep_dir = tiny_sweep[0] / "sw"
    (sweep_dir / "sweep.yaml").rename(tmp_path / "sweep.yaml")
    try:
        groups, record = collect(sweep_dir)
    finally:
        (tmp_path / "sweep.yaml").rename(sweep_dir / "sweep.yaml")
    assert record == {}
    sizes = {g.label: len(g.runs) for g in groups}
    # Seeds of one configuration: identical configs but for the seed. resnet20 s0 ran 2 epochs when
    # test_changed_recipe_is_refused_and_more_epochs_resume ran before this test: then its two
    # runs are two configurations, named by their paths.
    assert sizes in ({"resnet20": 2, "rrnet20_gru": 2}, {"resnet20/s0": 1, "resnet20/s1": 1, "rrnet20_gru": 2})


def test_cli_errors_are_one_line(cli, tmp_path):
    for args in (["report", tmp_path / "nothing"], ["sweep", tmp_path / "missing.yaml"],
                 ["sweep", REPO / "configs/demo.yaml", "--smoke"]):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_cli_list_prints_runs_and_trains_nothing(cli, tmp_path):
    proc = cli("sweep", REPO / "configs/regnet/table3.yaml", "--list", "--only", "c10-rrnet*",
                   "--seeds", "0,1", "-o", tmp_path / "sw")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 6 and not (tmp_path / "sw").exists()


# ---------------------------------------------------------------------------------------
# Stopped anywhere, started again: the same results (subprocesses, as a user would)

def metrics_without_time(run_dir: Path) -> list[dict]:
    import csv

    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_sweep_killed_and_restarted_matches_an_uninterrupted_one(tmp_path):
    recipe = {**TINY, "train": {**TINY["train"], "epochs": 2, "threads": 1},
              "sweep": {**TINY["sweep"], "seeds": [0]}}
    path = write_recipe(tmp_path, recipe)
    # The uninterrupted sweep in this process (one thread, as the children's runs).
    ref = selfreg_in_process("sweep", path, "-o", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    # Killed in the first run's epoch 2, after epoch 1's checkpoint.
    selfreg_killed_before_checkpoint(2, "sweep", path, "-o", tmp_path / "cut")
    # The same command again, in this process: what is tested is what the killed one left.
    restarted = selfreg_in_process("sweep", path, "-o", tmp_path / "cut")
    assert restarted.returncode == 0, restarted.stderr
    assert "to resume" in restarted.stdout
    for label in ("resnet20", "rrnet20_gru"):
        ref, cut = tmp_path / "ref" / label / "s0", tmp_path / "cut" / label / "s0"
        assert metrics_without_time(cut) == metrics_without_time(ref)
        a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
        b = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_parallel_sweep_runs_processes_and_logs(cli, tmp_path):
    # The sweep itself in this process: what is tested is its child processes, a run each.
    path = write_recipe(tmp_path)
    proc = cli("sweep", path, "--parallel", "2", "--seeds", "0", "-o", tmp_path / "sw")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in ("resnet20", "rrnet20_gru"):
        for seed in (0,):
            assert (tmp_path / "sw" / label / f"s{seed}" / "summary.json").is_file()
            assert (tmp_path / "sw" / "logs" / f"{label}-s{seed}.log").is_file()
    report = cli("report", tmp_path / "sw")
    assert report.returncode == 0 and (tmp_path / "sw" / "report.html").is_file()
    # More epochs on the same folder: each --parallel run resumes with its changed keys passed as
    # overrides (the engine alone writes the run's config.yaml) and trains the extra epoch.
    epochs = json.loads((tmp_path / "sw" / "resnet20" / "s0" / "summary.json").read_text())["epochs"]
    proc = cli("sweep", path, "--parallel", "2", "--seeds", "0", "-o", tmp_path / "sw", f"train.epochs={epochs + 1}")
    assert proc.returncode == 0 and "2 to resume" in proc.stdout, proc.stdout + proc.stderr
    for label in ("resnet20", "rrnet20_gru"):
        run_dir = tmp_path / "sw" / label / "s0"
        assert json.loads((run_dir / "summary.json").read_text())["epochs"] == epochs + 1
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == epochs + 1


# ---------------------------------------------------------------------------------------
# `selfreg sweep --smoke` trains, on data written here in the real on-disk formats: one sweep
# recipe for each dataset the recipes train on, with the smoke variant's own image counts.
# (Every grid point of every recipe, smoke overrides included, trains in tests/test_documented.py.)

def one_recipe_per_dataset() -> list[Path]:
    """The first sweep recipe whose smoke run (its last grid point) trains on each dataset."""
    first = {}
    for recipe in RECIPES:
        first.setdefault(expand(recipe, smoke=True, seeds=[0]).jobs[-1].config.data.name, recipe)
    return list(first.values())


def write_data(kind: str, root: Path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    if kind == "cifar10":
        w.write_cifar10(root, per_batch=82)
        w.register_cifar_md5s(monkeypatch, CIFAR10, root)
    elif kind == "cifar100":
        w.write_cifar100(root, train=410, test=20)
        w.register_cifar_md5s(monkeypatch, CIFAR100, root)
    elif kind == "stl10":
        w.write_stl10(root, train=50)
        w.register_stl10_md5s(monkeypatch, root)
    elif kind == "folder":      # an image folder carved into train / val (the JPEG copy's layout)
        w.write_image_folder(root, per_class=60, size=32)
    elif kind == "imagenet":
        w.write_image_folder(root, per_class=24, size=40)
        w.write_image_folder(root, per_class=4, size=40, split="val", seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", one_recipe_per_dataset(), ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_smoke_variant_trains(recipe, tmp_path, monkeypatch):
    plan = expand(recipe, smoke=True, seeds=[0])
    last = plan.labels[-1]                    # the last grid point: c100 / deepest / regulated models
    overrides = [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}"]
    if plan.jobs[0].config.data.subset > 64:      # keep the suite quick: 64 of the smoke's images
        overrides.append("data.subset=64")
    plan = expand(recipe, smoke=True, seeds=[0], only=[last], overrides=overrides, out=tmp_path / "sw")
    write_data(plan.jobs[0].config.data.name, tmp_path / "data", monkeypatch)
    result = run_sweep(plan, log=quiet)
    assert result["failed"] == [] and result["ran"] == 1
    assert json.loads((plan.jobs[0].dir / "summary.json").read_text())["epochs"] == plan.jobs[0].config.train.epochs


@pytest.mark.slow
def test_sweep_under_torchrun_runs_each_job_on_every_rank(tmp_path):
    # Three runs in one torchrun: every run reuses the process group joined for the first
    # (joining again after destroying it could hang both ranks in init_process_group).
    recipe = {**TINY, "sweep": {**TINY["sweep"], "grid": {"model.name": ["resnet20", "resnet32", "rrnet20_gru"]}}}
    path = write_recipe(tmp_path, recipe)
    proc = torchrun(2, "sweep", path, "--seeds", "0", "-o", tmp_path / "sw", timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for label in ("resnet20", "resnet32", "rrnet20_gru"):
        summary = json.loads((tmp_path / "sw" / label / "s0" / "summary.json").read_text())
        assert summary["world_size"] == 2
    assert proc.stdout.count("3 of 3 runs finished") == 1        # rank 0 alone speaks
