"""What a careless user or a damaged disk does to selfreg: every case is one line on stderr,
exit code 2 (or a warning where the command can go on), no traceback, and nothing on disk
changed or half-made. Each test builds its own bad files and configs."""
import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dataset_writers as w
from selfreg import create_model
from selfreg.cli import main
from selfreg.config import load_config
from selfreg.data import build_dataset
from selfreg.errors import UserError
from selfreg.train import checkpoint as ckpt_module
from selfreg.train import engine
from selfreg.train.checkpoint import load_checkpoint, save_checkpoint
from selfreg.train.engine import fit

TINY = ["data.image_size=8", "train.epochs=1", "data.batch_size=64", "data.subset=128", "data.val_fraction=64",
        "model.name=resnet20", "train.threads=1", "train.plot=false", "train.progress=none",
        "train.tensorboard=false"]
quiet = dict(log=lambda s: None)


def tiny(out, *extra):
    return load_config(None, [*TINY, f"train.out_dir={out}", "train.run_name=r", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch run; tests copy it before they change anything."""
    out = tmp_path_factory.mktemp("trained")
    fit(tiny(out), **quiet)
    return out / "r"


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "r")
    return tmp_path / "r"


def one_line_error(code, capsys, *needles):
    """Exit 2 with one stderr line holding every needle, and no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def snapshot(folder):
    """Every file under `folder` with its bytes: equal snapshots mean nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------
# 1. --resume checks first and writes last

@pytest.mark.parametrize("override, key", [("model.name=resnet32", "model.name"), ("optim.name=adam", "optim.name"),
                                           ("data.batch_size=32", "data.batch_size"), ("train.seed=3", "train.seed")])
def test_resume_refuses_keys_that_make_another_run(run, capsys, override, key):
    before = snapshot(run)
    err = one_line_error(main(["train", "--resume", str(run), override]), capsys, key, "train.epochs")
    assert "start a new run" in err
    assert snapshot(run) == before


def test_resume_with_a_bad_value_changes_nothing(run, capsys):
    before = snapshot(run)
    one_line_error(main(["train", "--resume", str(run), "train.epochs=0"]), capsys, "train.epochs")
    assert snapshot(run) == before


def test_resume_extends_a_run_and_records_the_new_epochs(run, capsys):
    assert main(["train", "--resume", str(run), "train.epochs=2", "train.threads=1"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


def test_resume_with_a_damaged_config(run, capsys):
    (run / "config.yaml").write_text("train: [epochs: 1\n")
    one_line_error(main(["train", "--resume", str(run)]), capsys, "config.yaml", "not valid YAML")


# ---------------------------------------------------------------------------------------
# 2. A sweep checks every grid point before any run starts

def write_sweep(tmp_path, grid):
    recipe = {"model": {"name": "resnet20"}, "data": {"name": "digits", "image_size": 8, "subset": 64},
              "train": {"epochs": 1, "progress": "none", "plot": False, "tensorboard": False},
              "sweep": {"name": "bad", "seeds": [0], "grid": grid}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("grid, needles", [
    ({"model.name": ["resnet20", "resnet_nope"]}, ["resnet_nope", "model.name"]),
    ({"optim.name": ["sgd", "adamm"]}, ["adamm", "optim.name"]),
    ({"sched.name": ["cosine", "cosin"]}, ["cosin", "sched.name"]),
    ({"data.augment": [["cifar"], ["cifarr"]]}, ["cifarr", "data.augment"]),
    ({"data.name": ["digits", "cifar11"]}, ["cifar11", "data.name"]),
    ({"optim.lr": [0.1, -1]}, ["optim.lr", "> 0"]),
])
@pytest.mark.parametrize("listing", [True, False], ids=["list", "run"])
def test_sweep_with_a_bad_grid_point_starts_nothing(tmp_path, capsys, grid, needles, listing):
    args = ["sweep", str(write_sweep(tmp_path, grid)), "-o", str(tmp_path / "sw")] + (["--list"] if listing else [])
    one_line_error(main(args), capsys, *needles)
    assert not (tmp_path / "sw").exists()


def test_a_run_failing_before_its_folder_exists_does_not_stop_the_sweep(tmp_path, capsys):
    grid = {"data": {"bad": {"data.name": "folder", "data.root": str(tmp_path / "missing")}, "ok": {}}}
    code = main(["sweep", str(write_sweep(tmp_path, grid)), "-o", str(tmp_path / "sw"), "train.threads=1"])
    assert code == 1                                   # a failed run: exit 1, the others ran
    assert "missing" in (tmp_path / "sw" / "bad" / "s0" / "failed.txt").read_text()
    assert (tmp_path / "sw" / "ok" / "s0" / "summary.json").is_file()


# ---------------------------------------------------------------------------------------
# 3. Ranges are checked when the config is loaded

@pytest.mark.parametrize("override, key", [
    ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"), ("optim.lr=-1", "optim.lr"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-5", "data.batch_size"), ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.val_fraction=-0.1", "data.val_fraction"), ("optim.momentum=1.5", "optim.momentum"),
    ("train.label_smoothing=1", "train.label_smoothing"), ("data.loader=fastest", "data.loader"),
    ("data.channels=2", "data.channels"), ("sched.warmup=linar", "sched.warmup"),
    ("train.run_name=../escaped", "train.run_name"), ("train.run_name=a/../../escaped", "train.run_name"),
    ("train.run_name=/tmp/escaped", "train.run_name"),
])
def test_out_of_range_values_are_one_line_and_make_no_folder(tmp_path, capsys, override, key):
    code = main(["train", "configs/demo.yaml", f"train.out_dir={tmp_path / 'out'}", override])
    one_line_error(code, capsys, key)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# 4. A damaged metrics.csv: the run is left out of the report, with its file named

DAMAGE = {
    "random_bytes": lambda text: bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
    "non_numeric": lambda text: text.replace(text.splitlines()[1].split(",")[3], "oops", 1).encode(),
    "empty": lambda text: b"",
    "cut_mid_row": lambda text: text[: len(text) - 15].encode(),
    "rows_lost": lambda text: text.splitlines()[0].encode() + b"\n",
}


def test_report_leaves_out_runs_with_damaged_metrics(trained, tmp_path, capsys):
    shutil.copytree(trained, tmp_path / "runs" / "good")
    text = (trained / "metrics.csv").read_text()
    for name, damage in DAMAGE.items():
        shutil.copytree(trained, tmp_path / "runs" / name)
        (tmp_path / "runs" / name / "metrics.csv").write_bytes(damage(text))
    assert main(["report", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "Left out" in report and "Traceback" not in err
    for name in DAMAGE:
        path = str(tmp_path / "runs" / name / "metrics.csv")
        assert path in report, name
        assert any(path in line and "warning" in line for line in err.splitlines()), name
    assert "| good |" in report


def test_report_on_a_damaged_summary(trained, tmp_path, capsys):
    shutil.copytree(trained, tmp_path / "runs" / "a")
    (tmp_path / "runs" / "a" / "summary.json").write_text('{"final_val_acc": 0.5,')
    shutil.copytree(trained, tmp_path / "runs" / "b")
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert "summary.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# 5. An output folder that cannot be written; a full disk while checkpointing

def test_unwritable_output_folder_fails_before_the_data_is_read(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    # The data root does not exist either: the output folder must be what the error names.
    code = main(["train", "configs/demo.yaml", f"train.out_dir={tmp_path / 'a_file' / 'runs'}",
                 "data.name=folder", f"data.root={tmp_path / 'missing'}"])
    one_line_error(code, capsys, "a_file", "train.out_dir")


@pytest.mark.parametrize("command, option", [
    (["report", "{run}/..", "-o", "{blocked}/report.md"], "-o"),
    (["probe", "{run}/checkpoints/last.pt", "--plot", "{blocked}/probe.png"], "--plot"),
    (["probe", "{run}/checkpoints/last.pt", "-o", "{blocked}/probe.json"], "-o"),
    (["features", "{run}/checkpoints/last.pt", "{image}", "-o", "{blocked}/f.png"], "-o"),
])
def test_an_output_path_under_a_file_is_one_line_before_any_work(trained, tmp_path, capsys, command, option):
    (tmp_path / "a_file").write_text("x")
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    names = {"run": trained, "blocked": tmp_path / "a_file" / "out", "image": image}
    one_line_error(main([part.format(**names) for part in command]), capsys, "a_file", option)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code = main(["train", "configs/demo.yaml", f"train.out_dir={tmp_path / 'ro' / 'runs'}"])
        one_line_error(code, capsys, "permission denied", "train.out_dir")
    finally:
        (tmp_path / "ro").chmod(stat.S_IRWXU)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_module.torch, "save", full_disk)
    with pytest.raises(UserError, match=f"no space left on {tmp_path} while writing last.pt; the previous"):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_while_copying_best_keeps_the_previous_one(tmp_path, monkeypatch):
    """best.pt is a hard link to last.pt; where the file system has none it is copied, and a full
    disk during that copy is the same one line, with the previous best.pt intact and no temp file."""
    from selfreg import weightfiles

    save_checkpoint({"model": {"w": torch.ones(3)}}, tmp_path / "last.pt")
    weightfiles.link_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    save_checkpoint({"model": {"w": torch.zeros(3)}}, tmp_path / "last.pt")
    good = (tmp_path / "best.pt").read_bytes()

    def no_hard_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    def full_disk(src, dst):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(weightfiles.os, "link", no_hard_links)
    monkeypatch.setattr(weightfiles.shutil, "copyfile", full_disk)
    with pytest.raises(UserError, match=f"no space left on {tmp_path} while writing best.pt; the previous"):
        weightfiles.link_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_disk_full_in_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_module.torch, "save", full_disk)
    code = main(["train", "configs/demo.yaml", *TINY, f"train.out_dir={tmp_path}", "train.run_name=r"])
    one_line_error(code, capsys, "no space left on", "checkpoints")


# ---------------------------------------------------------------------------------------
# 6. Killed during a checkpoint: metrics and checkpoint stay consistent, temp files go

def test_a_row_is_written_only_after_its_checkpoint(tmp_path, monkeypatch):
    def killed(state, path):
        raise KeyboardInterrupt  # stands for SIGKILL in the middle of the first checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path), **quiet)
    metrics = tmp_path / "r" / "metrics.csv"
    assert not metrics.exists() or len(metrics.read_text().splitlines()) <= 1


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(run, capsys):
    shutil.rmtree(run / "checkpoints")     # what a kill during the first checkpoint left (old order)
    assert main(["train", "--resume", str(run)]) == 0
    assert "starting it from the beginning" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1"]


def test_resume_restores_the_row_a_kill_after_the_checkpoint_lost(run):
    full = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text(full[0] + "\n")    # killed between the checkpoint and its row
    (run / "checkpoints" / "last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    fit(load_config(run / "config.yaml"), resume=run, **quiet)
    assert (run / "metrics.csv").read_text().splitlines() == full
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_stale_temp_files_are_removed_by_the_next_save(tmp_path):
    (tmp_path / "last.pt.x1y2.tmp").write_bytes(b"left by a kill")
    save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------------------------
# 7. Folder datasets: every problem in one message; eval reads only the split it needs

def folder_cfg(root, *extra):
    return load_config(None, ["data.name=folder", f"data.root={root}", "data.image_size=8",
                              "data.augment=[none]", *extra]).data


def test_every_problem_of_a_folder_in_one_message(tmp_path):
    root = tmp_path / "imgs"
    w.write_image_folder(root, classes=("a", "b"), per_class=3)
    (root / "train" / "empty_class").mkdir()
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    w.write_image_folder(root, classes=("a", "zebra"), per_class=1, split="val")
    with pytest.raises(UserError) as err:
        build_dataset(folder_cfg(root))
    message = str(err.value)
    assert "\n" not in message and message.startswith("3 problem(s)")
    for needle in ("empty_class", "broken.jpg", "zebra"):
        assert needle in message


def test_eval_of_val_ignores_bad_files_that_sit_only_in_train(tmp_path, capsys):
    root = tmp_path / "imgs"
    w.write_image_folder(root, classes=("a", "b"), per_class=8, size=8)
    w.write_image_folder(root, classes=("a", "b"), per_class=2, size=8, split="val", seed=1)
    fit(load_config(None, [*TINY[:1], "train.epochs=1", "data.batch_size=8", "model.name=resnet20",
                           "train.threads=1", "train.plot=false", "train.progress=none", "train.tensorboard=false",
                           "data.name=folder", f"data.root={root}", "data.augment=[none]",
                           f"train.out_dir={tmp_path}", "train.run_name=f"]), **quiet)
    (root / "train" / "a" / "000.png").write_bytes(b"damaged after training")
    ckpt = tmp_path / "f" / "checkpoints" / "last.pt"
    assert main(["eval", str(ckpt), "--split", "val", "--device", "cpu", "-o", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 4
    # Training still refuses the damaged train/ folder, naming the file.
    with pytest.raises(UserError, match="000.png"):
        build_dataset(folder_cfg(root))


# ---------------------------------------------------------------------------------------
# 8. A garbage or foreign checkpoint, in our words

@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04 truncated zip"])
def test_garbage_checkpoint_message(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "not a readable selfreg checkpoint" in message
    assert "weights_only" not in message and "\n" not in message


def test_foreign_checkpoint_message(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not a selfreg checkpoint .*pass a file that selfreg train wrote"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_checkpoint_from_another_program_with_pickled_objects_is_refused(tmp_path):
    torch.save({"model": {}, "format_version": 1, "obj": np.dtype("float32").type}, tmp_path / "pickle.pt")
    with pytest.raises(UserError, match="not a readable selfreg checkpoint"):
        load_checkpoint(tmp_path / "pickle.pt")


# ---------------------------------------------------------------------------------------
# 9. Checkpoints follow the umask like every other run file

def test_checkpoint_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fit(tiny(tmp_path), **quiet)
    finally:
        os.umask(old)
    run = tmp_path / "r"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
             [run / "config.yaml", run / "metrics.csv", run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"]}
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------------------------------
# 10. norm_layer: honoured by the families that declare it, refused in one line by the rest

@pytest.mark.parametrize("name", ["resnet20", "rrnet20_gru", "rrnet20_lstm", "se_rrnet20_gru", "rrnet20_gru_s2"])
def test_norm_layer_group_is_honoured(name):
    model = create_model(name, norm_layer="group")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    model(torch.randn(2, 3, 8, 8)).sum().backward()


@pytest.mark.parametrize("name", ["vgg11", "mobilenet_v2", "densenet40", "vit_tiny_patch4_32"])
def test_norm_layer_is_refused_by_fixed_families(name):
    with pytest.raises(UserError, match=f"model '{name}' has a fixed normalisation and takes no norm_layer"):
        create_model(name, norm_layer="group")


def test_unknown_norm_layer_name(capsys, tmp_path):
    code = main(["train", "configs/demo.yaml", f"train.out_dir={tmp_path}", "model.name=rrnet20_gru",
                 "model.kwargs.norm_layer=layer"])
    one_line_error(code, capsys, "unknown norm_layer 'layer'", "batch, group")


# ---------------------------------------------------------------------------------------
# More that a careless user or a damaged disk produces

def test_resume_of_a_file_instead_of_a_folder(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"")
    one_line_error(main(["train", "--resume", str(tmp_path / "x.pt")]), capsys, "not a run directory")


def test_resume_with_a_checkpoint_of_another_architecture(run, tmp_path, capsys):
    fit(tiny(tmp_path / "other", "model.name=resnet32"), **quiet)
    shutil.copy(tmp_path / "other" / "r" / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = snapshot(run)
    one_line_error(main(["train", "--resume", str(run), "train.epochs=2"]), capsys, "different architecture")
    assert snapshot(run) == before


def test_data_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "data.zip").write_bytes(b"PK")
    code = main(["train", "configs/demo.yaml", f"train.out_dir={tmp_path / 'out'}", "data.name=folder",
                 f"data.root={tmp_path / 'data.zip'}"])
    one_line_error(code, capsys, "data.zip")
    assert not (tmp_path / "out").exists()


def test_eval_names_saved_data_keys_it_does_not_know(run, capsys):
    from selfreg.use.evaluate import eval_data_config
    from selfreg.use.trained import load_trained

    trained = load_trained(run / "checkpoints" / "last.pt")
    trained.data["future_option"] = 3                  # written by a newer selfreg
    cfg = eval_data_config(trained)
    assert cfg.name == "digits"
    assert "data.future_option" in capsys.readouterr().err


def test_model_kwargs_img_size_agrees_with_the_data_or_says_so(tmp_path):
    """The zoo recipes' "CIFAR form" (model.kwargs.img_size = the data's size) trains; a size the
    data does not have is one line naming both fixes, before anything is trained."""
    fit(tiny(tmp_path / "same", "model.kwargs.img_size=8"), **quiet)
    assert (tmp_path / "same" / "r" / "summary.json").is_file()
    with pytest.raises(UserError, match=r"model.kwargs.img_size=32 but the data's images are 8 px; set "
                                        r"data.image_size=32"):
        fit(tiny(tmp_path / "other", "model.kwargs.img_size=32"), **quiet)
    assert not (tmp_path / "other" / "r").exists()


def test_more_epochs_on_a_finished_one_cycle_run_says_the_schedule_is_replanned(tmp_path, cli):
    """Extending a run re-plans a schedule whose shape depends on its length: the lr jump is said once."""
    fit(tiny(tmp_path, "sched.name=onecycle"), **quiet)
    done = cli("train", "--resume", tmp_path / "r", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if "re-plans the onecycle schedule" in line]
    assert len(notes) == 1, done.stdout
    assert "train.epochs 1 -> 2" in notes[0]
    # Same length, nothing to say (multistep with milestones in epochs keeps its plan too).
    fit(tiny(tmp_path / "m"), **quiet)
    done = cli("train", "--resume", tmp_path / "m" / "r", "train.epochs=2")
    assert done.returncode == 0 and "re-plans" not in done.stdout, done.stdout


def test_val_fraction_unused_by_a_folder_with_its_own_val_split_is_said_and_recorded(tmp_path, cli):
    """A folder with val/ is validated on val/: data.val_fraction is said to be unused, once, and
    config.yaml records null, so that rerunning it from config.yaml is the same run."""
    w.write_image_folder(tmp_path / "img", per_class=4, size=8)
    w.write_image_folder(tmp_path / "img", per_class=2, size=8, seed=1, split="val")
    done = cli("train", "configs/demo.yaml", "data.name=folder", f"data.root={tmp_path / 'img'}",
               "data.val_fraction=0.5", "train.epochs=1", "data.image_size=8", "train.plot=false",
               "train.progress=none", "train.tensorboard=false", f"train.out_dir={tmp_path}", "train.run_name=r",
               f"data.cache_dir={tmp_path / 'cache'}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("data.val_fraction=0.5 not used") == 1, done.stdout
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["data"]["val_fraction"] is None


def test_weights_files_carry_no_machine_paths(tmp_path, cli):
    """A weights file travels: its header keeps what the data is, not where it lay, and eval of a
    folder-trained file asks for --root in one line instead of defaulting to the writer's path."""
    w.write_image_folder(tmp_path / "img", per_class=4, size=8)
    fit(tiny(tmp_path, "data.name=folder", f"data.root={tmp_path / 'img'}", "data.subset=0", "data.val_fraction=3",
             f"data.cache_dir={tmp_path / 'cache'}"), **quiet)
    out = tmp_path / "w.safetensors"
    done = cli("export", tmp_path / "r" / "checkpoints" / "best.pt", "--format", "safetensors", "-o", out)
    assert done.returncode == 0, done.stderr
    from safetensors import safe_open
    with safe_open(str(out), framework="pt") as f:
        data = json.loads(f.metadata()["selfreg"])["data"]
    assert data["name"] == "folder" and "root" not in data and "cache_dir" not in data
    done = cli("eval", out, "--split", "val")
    assert done.returncode == 2 and "pass --root DIR" in done.stderr and "Traceback" not in done.stderr
    assert cli("eval", out, "--split", "val", "--root", tmp_path / "img", "-o", tmp_path / "e").returncode == 0
    from procs import REPO
    for path in sorted(REPO.glob("src/selfreg/weights/*.safetensors"))[:1]:   # written before the rule
        done = cli("eval", path, "--split", "val")
        assert done.returncode == 2 and "pass --root DIR" in done.stderr, done.stderr


# --- issue 29: hostile inputs and discovery ---

def count(splits) -> int:
    """Images in a build's splits, all together."""
    return sum(len(d) for d in (splits.train, splits.val, splits.test) if d is not None)


@pytest.mark.parametrize("cache", [False, True], ids=["files", "cache"])
def test_an_image_name_that_is_not_utf8_is_used(tmp_path, cache):
    """A file name the file system holds as bytes that are not UTF-8 is listed, hashed and used."""
    root = tmp_path / "imgs"
    w.write_image_folder(root, classes=("a", "b"), per_class=3, size=8)
    bad = os.fsencode(root / "train" / "a") + b"/bad\xff.png"
    w.save_image(root / "train" / "a" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    os.rename(os.fsencode(root / "train" / "a" / "ok.png"), bad)
    splits = build_dataset(folder_cfg(root, f"data.cache_dir={tmp_path / 'cache'}", f"data.cache={str(cache).lower()}"))
    assert count(splits) == 7


def test_a_symlink_loop_is_a_folder_problem_or_skipped(tmp_path, capsys):
    root, outside = tmp_path / "imgs", tmp_path / "outside"
    w.write_image_folder(root, classes=("a", "b"), per_class=3, size=8)
    (root / "train" / "a" / "loop").symlink_to("..")                      # -> train/
    (root / "train" / "b" / "up").symlink_to(root)                        # -> the dataset root
    outside.mkdir()
    (outside / "back").symlink_to(root / "train" / "a")                   # a loop through two links
    (root / "train" / "a" / "out").symlink_to(outside)
    code = main(["train", "configs/demo.yaml", *TINY, "data.name=folder", f"data.root={root}", "data.augment=[none]",
                 f"data.cache_dir={tmp_path / 'cache'}", f"train.out_dir={tmp_path / 'runs'}"])
    err = one_line_error(code, capsys, "1 problem(s) in the image folders", "3 symbolic link loop(s)",
                         "data.skip_bad=true", str(root / "train" / "a" / "loop"), str(root / "train" / "b" / "up"),
                         str(root / "train" / "a" / "out" / "back"))
    assert not (tmp_path / "runs").exists(), err
    splits = build_dataset(folder_cfg(root, "data.skip_bad=true", f"data.cache_dir={tmp_path / 'cache'}"))
    assert count(splits) == 6                                           # each class its own images, once
    assert any(note.startswith("skipped 3 symbolic link loop(s) (data.skip_bad=true)") for note in splits.notes)


def test_links_to_images_and_class_folders_outside_the_tree_work(tmp_path):
    root, ext = tmp_path / "imgs", tmp_path / "elsewhere"
    w.write_image_folder(root, classes=("a", "b"), per_class=3, size=8)
    w.write_image_folder(ext, classes=("c",), per_class=2, size=8, seed=1)
    (root / "train" / "c").symlink_to(ext / "train" / "c")               # a class folder elsewhere
    (root / "train" / "a" / "more").symlink_to(ext / "train" / "c")      # a folder of images elsewhere
    (root / "train" / "b" / "one.png").symlink_to(ext / "train" / "c" / "000.png")   # one image
    splits = build_dataset(folder_cfg(root, f"data.cache_dir={tmp_path / 'cache'}"))
    assert splits.classes == ["a", "b", "c"] and count(splits) == 3 + 2 + 3 + 1 + 2
    assert not any("loop" in note for note in splits.notes)


@pytest.mark.parametrize("text, key, lines", [
    ("optim:\n  lr: 0.1\ntrain:\n  epochs: 1\noptim:\n  momentum: 0.5\n", "sets optim twice", "lines 1 and 5"),
    ("optim:\n  lr: 0.1\n  momentum: 0.5\n  lr: 0.2\n", "sets optim.lr twice", "lines 2 and 4"),
    ("data: {name: digits, name: folder}\n", "sets data.name twice", "both on line 1"),
])
def test_a_key_given_twice_in_a_recipe_is_one_line(tmp_path, capsys, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    one_line_error(main(["train", str(path), f"train.out_dir={tmp_path / 'runs'}"]), capsys, str(path), key, lines)
    assert not (tmp_path / "runs").exists()


def test_a_key_given_twice_in_a_sweep_recipe_is_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path, {"optim.lr": [0.1, 0.2]})
    path.write_text(path.read_text() + "sweep:\n  seeds: [1]\n")
    one_line_error(main(["sweep", str(path), "--list", "-o", str(tmp_path / "sw")]), capsys, str(path),
                   "sets sweep twice")


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("optim:\n  <<: {lr: 0.1, momentum: 0.5}\n  lr: 0.2\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.2, 0.5)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n   \n# and another\n", "---\n"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_empty_recipe_is_one_line(tmp_path, capsys, text, command):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    one_line_error(main([command, str(path), f"train.out_dir={tmp_path / 'runs'}"]), capsys, str(path), "is empty",
                   "configs/demo.yaml")
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def refused_url(monkeypatch):
    """A local address that refuses connections (a bound socket that does not listen): a download
    fails at once and in the same way whether or not this machine has a network."""
    import socket

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def test_a_download_that_cannot_connect_is_one_line(tmp_path, capsys, monkeypatch, refused_url):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", refused_url + "cifar-10-python.tar.gz")
    code = main(["train", "configs/demo.yaml", "data.name=cifar10", "data.download=true", f"data.root={tmp_path}",
                 f"train.out_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys, "could not download cifar10", refused_url + "cifar-10-python.tar.gz",
                   "Connection refused", f"put it in {tmp_path} ", "cifar-10-batches-py/")


def test_a_download_from_mirrors_that_cannot_connect_is_one_line(tmp_path, capsys, monkeypatch, refused_url):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [refused_url + "a/", refused_url + "b/"])
    code = main(["train", "configs/demo.yaml", "data.name=mnist", "data.download=true", f"data.root={tmp_path}",
                 f"train.out_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys, "could not download mnist", "train-images-idx3-ubyte.gz",
                   f"from {refused_url}a/ or {refused_url}b/", f"put them in {tmp_path / 'MNIST' / 'raw'} ",
                   "MNIST/raw/")


@pytest.mark.parametrize("pattern, expected", [("regnet*", "rrnet20_gru"), ("RegNet-56", "rrnet56_gru"),
                                               ("se_regnet*", "se_rrnet20_gru")])
def test_models_listing_points_paper_names_to_ours(cli, pattern, expected):
    result = cli("models", pattern, "--no-macs")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "named rrnet* here" in result.stderr and expected in result.stderr


def test_an_unknown_model_name_points_paper_names_to_ours(tmp_path, capsys):
    code = main(["train", "configs/demo.yaml", "model.name=regnet20", f"train.out_dir={tmp_path}"])
    one_line_error(code, capsys, "model.name", "unknown model 'regnet20'", "rrnet* here", "rrnet20_gru")
    with pytest.raises(UserError, match="did you mean rrnet50\\?"):
        create_model("regnet50")


def test_top_level_help_is_for_users(cli):
    result = cli("--help")
    assert result.returncode == 0
    assert "Train, compare and inspect image classifiers" in result.stdout
    assert "selfreg train configs/demo.yaml" in result.stdout
    assert "one parser per subcommand" not in result.stdout and "short main" not in result.stdout


@pytest.mark.timeout(60)       # opening the FIFO (to hash or decode it) would wait forever
@pytest.mark.parametrize("cache", [False, True], ids=["files", "cache"])
def test_a_broken_link_and_a_fifo_in_a_class_folder_are_bad_files(tmp_path, cache):
    root = tmp_path / "imgs"
    w.write_image_folder(root, classes=("a", "b"), per_class=3, size=8)
    (root / "train" / "a" / "gone.png").symlink_to(tmp_path / "deleted.png")
    os.mkfifo(root / "train" / "b" / "pipe.png")
    extra = [f"data.cache_dir={tmp_path / 'cache'}", f"data.cache={str(cache).lower()}"]
    with pytest.raises(UserError) as err:
        build_dataset(folder_cfg(root, *extra))
    assert "gone.png (a symbolic link to a missing file" in str(err.value)
    assert "pipe.png (not a regular file" in str(err.value)
    assert count(build_dataset(folder_cfg(root, *extra, "data.skip_bad=true"))) == 6


@pytest.mark.parametrize("override", ["=5", ".name=x", "model..name=x", "model.=x"])
def test_an_override_with_an_empty_key_part(capsys, override):
    one_line_error(main(["train", "configs/demo.yaml", override]), capsys, repr(override), "empty part in its key")


def test_an_empty_output_folder_is_refused(capsys):
    code = main(["train", "configs/demo.yaml", "train.out_dir="])
    one_line_error(code, capsys, "train.out_dir is empty")


def test_a_recipe_that_is_a_folder(tmp_path, capsys):
    one_line_error(main(["train", str(tmp_path)]), capsys, f"{tmp_path} is a folder")


@pytest.mark.parametrize("seeds", ["[a]", "3", "[]", "[0, true]"])
def test_sweep_seeds_that_are_not_a_list_of_integers(tmp_path, capsys, seeds):
    path = write_sweep(tmp_path, {"optim.lr": [0.1, 0.2]})
    path.write_text(path.read_text().replace("seeds:\n  - 0\n", f"seeds: {seeds}\n"))
    assert f"seeds: {seeds}" in path.read_text()
    one_line_error(main(["sweep", str(path), "--list", "-o", str(tmp_path / "sw")]), capsys,
                   "sweep.seeds must be a non-empty list of integers")


@pytest.mark.parametrize("args, needle", [
    (["models", "resnet20", "--num-classes", "-1"], "--num-classes must be at least 1, got -1"),
    (["models", "resnet20", "--num-classes", "0"], "--num-classes must be at least 1, got 0"),
])
def test_numeric_options_below_their_floor(capsys, args, needle):
    one_line_error(main(args), capsys, needle)


def test_export_into_a_folder_writes_the_file_there(run, tmp_path, capsys):
    out = tmp_path / "exports"
    out.mkdir()
    assert main(["export", str(run / "checkpoints" / "best.pt"), "--format", "torchscript", "-o", str(out),
                 "--no-check"]) == 0
    assert [p.name for p in out.iterdir()] == ["best.torchscript.pt"]
