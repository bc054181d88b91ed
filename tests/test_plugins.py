"""Your own models, datasets, augmentations, optimizers and schedules (selfreg.plugins): a recipe's
`imports:`, `--import MODULE`, and the `selfreg.plugins` entry-point group of installed packages.

A plugin package is written into tmp_path and put on sys.path (and on PYTHONPATH for the one
real subprocess). Between the steps of a run's life (train, models, eval, predict, export,
resume, sweep) its modules and registrations are forgotten, as in a fresh process, so each
step shows that it imports them by itself from what the run recorded.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

import selfreg
from plugin_support import isolated, write
from procs import REPO, env_with_src, selfreg as selfreg_process

from selfreg.config import load_config
from selfreg.errors import UserError

PLUGIN = {
    "selfreg_testplug/__init__.py": "",
    "selfreg_testplug/models.py": '''
        from torch import nn

        import selfreg


        @selfreg.register_model("plug_tiny", input_size=8, source="selfreg_testplug")
        def plug_tiny(num_classes=10, in_chans=3, width=4):
            return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, num_classes))
        ''',
    "selfreg_testplug/data.py": '''
        import torch

        import selfreg
        from selfreg.data.datasets import Raw, TensorImages


        @selfreg.register_dataset("plug_blobs", augment=["none"], reads_root=False)
        def plug_blobs(cfg, *, with_test, presets):
            g = torch.Generator().manual_seed(1)
            labels = torch.arange(120) % 3
            images = (labels.view(-1, 1, 1, 1) * 80 + torch.randint(0, 40, (120, 1, 8, 8), generator=g))
            images = images.to(torch.uint8)
            test = TensorImages(images[90:], labels[90:]) if with_test else None
            return Raw(TensorImages(images[:90], labels[:90]), None, test, classes=["a", "b", "c"], channels=1,
                       size=(8, 8), val_default=0.25)
        ''',
    "selfreg_testplug/extras.py": '''
        import torch

        import selfreg
        from selfreg.data.transforms import PresetStages


        @selfreg.register_augmentation("plug_jitter", doc="nothing, from a plugin")
        def plug_jitter(ctx):
            return PresetStages()


        @selfreg.register_optimizer("plug_sgd")
        def plug_sgd(params, c):
            return torch.optim.SGD(params, lr=c.lr, momentum=0.0)


        @selfreg.register_schedule("plug_flat")
        def plug_flat(c, steps_per_epoch, total, lr):
            return lambda step: 1.0
        ''',
}

RECIPE = {
    "imports": ["selfreg_testplug.models", "selfreg_testplug.data"],
    "model": {"name": "plug_tiny", "kwargs": {"width": 4}},
    "data": {"name": "plug_blobs", "batch_size": 16, "augment": ["plug_jitter"]},
    "optim": {"name": "plug_sgd", "lr": 0.05},
    "sched": {"name": "plug_flat"},
    "train": {"epochs": 1, "out_dir": "runs", "run_name": "plug", "plot": False, "loggers": ["csv"],
              "progress": "none", "compile": False},
    "sweep": {"name": "plugsweep", "seeds": [0], "grid": {"model.kwargs.width": [2, 3]}},
}
ALL = ["selfreg_testplug.models", "selfreg_testplug.data", "selfreg_testplug.extras"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """(plugin folder on sys.path, recipe path, isolation); the working directory is tmp_path/work."""
    site = write(tmp_path / "site", PLUGIN)
    work = tmp_path / "work"
    work.mkdir()
    (work / "plug.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    with isolated("selfreg_testplug") as state:
        sys_path_prepend(site)
        yield site, work, state


def sys_path_prepend(folder) -> None:
    import importlib
    import sys

    sys.path.insert(0, str(folder))          # isolated() puts sys.path back
    importlib.invalidate_caches()


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------------------
# A missing module is one line naming it and where it was named

def test_a_missing_module_is_one_line_naming_it_and_its_origin(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    with isolated("selfreg_needs_dep"):
        with pytest.raises(UserError) as err:
            load_config({"imports": ["selfreg_no_such_pkg.models"]})
        text = one_line(str(err.value))
        assert "selfreg_no_such_pkg.models (config key imports)" in text
        assert "no module named 'selfreg_no_such_pkg'" in text and "PYTHONPATH" in text

        with pytest.raises(UserError, match=r"cannot import selfreg_no_such_pkg \(--import\)"):
            load_config(None, imports=["selfreg_no_such_pkg"])

        with pytest.raises(UserError, match=r"'mypkg/models.py' is not a Python module name.*'mypkg.models'"):
            load_config({"imports": ["mypkg/models.py"]})

        # the module is there, but imports something that is not installed
        (tmp_path / "selfreg_needs_dep.py").write_text("import selfreg_missing_dep_xyz\n")
        with pytest.raises(UserError, match=r"cannot import selfreg_needs_dep \(config key imports\): it imports "
                                            r"'selfreg_missing_dep_xyz', which is not installed"):
            load_config({"imports": ["selfreg_needs_dep"]})      # found in the working directory

        for args in (["train", REPO / "configs/demo.yaml", "--import", "selfreg_no_such_pkg"],
                     ["eval", "runs/x/checkpoints/best.pt", "--import", "selfreg_no_such_pkg"],
                     ["models", "--import", "selfreg_no_such_pkg"]):
            done = cli(*args, cwd=tmp_path)
            assert done.returncode == 2, done
            line = one_line(done.stderr)
            assert line.startswith("selfreg: error: cannot import selfreg_no_such_pkg (--import)"), line


def test_imports_is_a_list_of_module_names_recorded_with_the_config(plugin):
    site, work, _ = plugin
    cfg = load_config(work / "plug.yaml", ["train.epochs=2"], imports=["selfreg_testplug.extras", "selfreg_testplug.data"])
    assert cfg.imports == ALL                                     # the flag's join the recipe's, once each
    assert load_config({"imports": "selfreg_testplug.models"}).imports == ["selfreg_testplug.models"]
    assert load_config(None).imports == []


# ---------------------------------------------------------------------------------------
# A run's life with a model, a dataset, an augmentation, an optimizer and a schedule of one's own

def test_own_model_and_dataset_train_resume_eval_predict_sweep_and_list(plugin, cli):
    site, work, state = plugin
    done = cli("train", "plug.yaml", "--import", "selfreg_testplug.extras", cwd=work)
    assert done.returncode == 0, done.stderr
    run = work / "runs" / "plug"
    assert yaml.safe_load((run / "config.yaml").read_text())["imports"] == ALL
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]["imports"] == ALL

    # `selfreg models`: with --import the plugin's model is listed; a fresh process without it knows nothing
    state.forget()
    done = cli("models", "plug_*", "--no-macs", "--import", "selfreg_testplug.models", cwd=work)
    assert done.returncode == 0 and "plug_tiny" in done.stdout and "selfreg_testplug" in done.stdout, done
    state.forget()
    done = cli("models", "plug_*", "--no-macs", cwd=work)
    assert done.returncode == 2 and "no model matches 'plug_*'" in done.stderr, done

    # eval and predict import what the checkpoint's run imported (the dataset's augmentation too)
    state.forget()
    done = cli("eval", "runs/plug/checkpoints/best.pt", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "plug_tiny on plug_blobs test (30 images)" in done.stdout
    state.forget()
    rows = selfreg.predict(run, torch.rand(2, 1, 8, 8))
    assert [r.file for r in rows] == ["<tensor 0>", "<tensor 1>"] and all(r.top[0][0] in "abc" for r in rows)
    state.forget()                           # the model API as well: create_model(checkpoint=...)
    model = selfreg.create_model("plug_tiny", checkpoint=run / "checkpoints" / "best.pt")
    assert list(model.pretrained_cfg["label_names"]) == ["a", "b", "c"]

    # a weights file carries the imports too
    state.forget()
    done = cli("export", "runs/plug/checkpoints/best.pt", "--format", "safetensors", cwd=work)
    assert done.returncode == 0, done.stderr
    weights = run / "checkpoints" / "best.safetensors"
    assert json.loads(weights.with_suffix(".json").read_text())["imports"] == ALL
    state.forget()
    assert len(selfreg.predict(weights, torch.rand(1, 8, 8))) == 1

    # resume in a real process: nothing imported but what config.yaml names (PYTHONPATH finds it)
    env = env_with_src()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
    done = selfreg_process("train", "--resume", "runs/plug", "train.epochs=2", cwd=work, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2

    # a sweep: every grid point checked and trained with the plugin's names; --import recorded per run
    state.forget()
    done = cli("sweep", "plug.yaml", "--import", "selfreg_testplug.extras", cwd=work)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    runs = sorted((work / "runs" / "plugsweep").glob("*/s0"))
    assert len(runs) == 2
    for folder in runs:
        assert json.loads((folder / "summary.json").read_text())["epochs"] == 1
        assert yaml.safe_load((folder / "config.yaml").read_text())["imports"] == ALL


def test_resume_may_add_an_import(plugin, cli):
    """`imports` only says where names come from: a resume may add one (RESUMABLE_KEYS)."""
    from selfreg.config import resume_config

    site, work, state = plugin
    run = work / "runs" / "plug"
    run.mkdir(parents=True)
    cfg = load_config(work / "plug.yaml", imports=["selfreg_testplug.extras"])
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "imports": cfg.imports[:2]}))
    assert resume_config(run, imports=["selfreg_testplug.extras"]).imports == ALL


# ---------------------------------------------------------------------------------------
# Installed packages: the selfreg.plugins entry-point group

def test_entry_point_group_loads_installed_plugins_once(tmp_path, cli, capsys):
    from selfreg import plugins

    site = write(tmp_path / "site", {
        "selfreg_epdemo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: selfreg-epdemo\nVersion: 0.1\n",
        "selfreg_epdemo-0.1.dist-info/entry_points.txt": """
            [selfreg.plugins]
            models = selfreg_epdemo_models
            late = selfreg_epdemo_func:register
            broken = selfreg_epdemo_broken
            """,
        "selfreg_epdemo_models.py": """
            import selfreg
            from torch import nn

            @selfreg.register_model("ep_model_a", input_size=8, source="selfreg-epdemo")
            def ep_model_a(num_classes=10, in_chans=3):
                return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes))
            """,
        "selfreg_epdemo_func.py": """
            import selfreg
            from torch import nn

            def register():          # called by selfreg: the entry point names a function
                selfreg.register_model("ep_model_b", input_size=8)(
                    lambda num_classes=10, in_chans=3: nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes)))
            """,
        "selfreg_epdemo_broken.py": "import selfreg_epdemo_missing_dep\n",
    })
    with isolated("selfreg_epdemo", "selfreg_epdemo_models", "selfreg_epdemo_func", "selfreg_epdemo_broken") as state:
        sys_path_prepend(site)
        plugins.reset_installed()
        assert sorted(plugins.load_installed()) == ["late", "models"]
        err = capsys.readouterr().err
        assert "installed plugin broken = selfreg_epdemo_broken (package selfreg-epdemo" in err
        assert "selfreg_epdemo_missing_dep" in err
        assert selfreg.list_models("ep_model_*") == ["ep_model_a", "ep_model_b"]
        assert sorted(plugins.load_installed()) == ["late", "models"]        # once a process
        assert capsys.readouterr().err == ""

        # every way in loads them: the models command, the top-level model API, a config
        for way in ("cli", "api", "config"):
            state.forget()
            plugins.reset_installed()
            if way == "cli":
                done = cli("models", "ep_model_*", "--no-macs", cwd=tmp_path)
                assert done.returncode == 0 and "ep_model_a" in done.stdout and "ep_model_b" in done.stdout, done
                assert "selfreg_epdemo_broken" in done.stderr
            elif way == "api":
                assert selfreg.list_models("ep_model_*") == ["ep_model_a", "ep_model_b"]
            else:
                load_config(None)
                from selfreg.registry import MODELS

                assert "ep_model_a" in MODELS and "ep_model_b" in MODELS
