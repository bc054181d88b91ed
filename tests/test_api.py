"""The Python API (selfreg.api, docs/api.md): the page's example runs as written, the functions
give what the commands give, and a mistake is a one-line UserError, never SystemExit."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import selfreg
from plugin_support import isolated
from procs import REPO, env_with_src, run

DOC = REPO / "docs" / "api.md"
TINY = ["data.subset=128", "data.val_fraction=64", "data.image_size=8", "train.epochs=1", "train.plot=false",
        "train.loggers=[csv]", "train.progress=none"]


def doc_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, file name or "", code) of each fenced block, in order. A block whose info
    string names a file (```python mymodels.py) is that file's content; a bare ```python
    block is code to run."""
    return [(m.group(1), m.group(2), m.group(3))
            for m in re.finditer(r"^```(\w*)[ \t]*(\S*)[ \t]*\n(.*?)^```", text, re.M | re.S)]


def test_the_api_page_runs_as_written(tmp_path, monkeypatch, cli):
    """Every python block of docs/api.md, in order, in one namespace (a notebook), in a folder
    holding the repository's configs/demo.yaml and the page's own files (mymodels.py, stripes.yaml)."""
    blocks = doc_blocks(DOC.read_text())
    code = [c for lang, name, c in blocks if lang == "python" and not name]
    files = {name: c for _, name, c in blocks if name}
    assert len(code) >= 5 and set(files) == {"mymodels.py", "stripes.yaml"}
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__api_doc__"}
    out = io.StringIO()
    with isolated("mymodels"), contextlib.redirect_stdout(out):
        for i, block in enumerate(code):
            exec(compile(block, f"docs/api.md python block {i + 1}", "exec"), namespace)
        printed = out.getvalue()
        # What the page says it does, it did.
        run = namespace["run"]
        assert run.best.is_file() and run.last.is_file() and run.run_dir == Path("runs/notebook")
        assert namespace["more"].summary["epochs"] == 2 and namespace["more"].run_dir == run.run_dir
        assert (tmp_path / "eval-val" / "metrics.json").is_file() and (tmp_path / "eval-val" / "confusion.png").is_file()
        assert printed.count("refused: ") == 2
        assert "refused: config key optim.lr must be > 0, got -1.0" in printed
        assert "refused: checkpoint not found: runs/no-such-run/checkpoints/best.pt" in printed
        assert "['mymodels']" in printed and "['tinynet']" in printed
        assert len(re.findall(r"^(digit\.png|<PIL image 1>|<tensor [234]>) \[\('\d', ", printed, re.M)) == 5, printed
        # selfreg.evaluate measures what `selfreg eval` measures
        done = cli("eval", str(run.best), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        metrics = json.loads((run.run_dir / "eval" / "test" / "metrics.json").read_text())
        assert metrics["top1"] == namespace["result"].top1 and metrics["images"] == namespace["result"].count


def test_import_selfreg_and_load_config_need_no_torch():
    code = ("import sys, selfreg\n"
            "selfreg.register_model, selfreg.UserError, selfreg.RunResult\n"
            "cfg = selfreg.load_config('configs/demo.yaml', ['train.epochs=1'])\n"
            "assert cfg.train.epochs == 1\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok')\n")
    done = run([sys.executable, "-c", code], cwd=REPO, env=env_with_src(), timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api-run")
    return selfreg.fit(REPO / "configs" / "demo.yaml", [*TINY, f"train.out_dir={out}", "train.run_name=t"], log=None)


def test_fit_returns_the_run_and_evaluate_predict_take_it(tiny_run, tmp_path):
    run = tiny_run
    assert run.summary["run_dir"] == str(run.run_dir) and run.summary["epochs"] == 1
    assert run.best == run.run_dir / "checkpoints" / "best.pt" and run.last.is_file()
    by_run, by_dir, by_file = (selfreg.evaluate(x, split="val") for x in (run, run.run_dir, run.best))
    assert by_run.top1 == by_dir.top1 == by_file.top1 and by_run.count == 64
    last = selfreg.evaluate(run, split="val", checkpoint="last", out=True)
    assert last.count == 64 and (run.run_dir / "eval" / "val" / "metrics.json").is_file()
    # images: a (N, C, H, W) batch, one tensor, a PIL image, a file; uint8 and float
    from PIL import Image

    Image.fromarray(torch.randint(0, 255, (8, 8), dtype=torch.uint8).numpy()).save(tmp_path / "x.png")
    rows = selfreg.predict(run, torch.rand(3, 1, 8, 8), topk=2)
    assert [r.file for r in rows] == ["<tensor 0>", "<tensor 1>", "<tensor 2>"] and all(len(r.top) == 2 for r in rows)
    rows = selfreg.predict(run.best, [torch.randint(0, 255, (8, 8), dtype=torch.uint8),
                                      Image.open(tmp_path / "x.png"), tmp_path / "x.png", tmp_path / "missing.png",
                                      torch.rand(4, 8, 8)])
    assert [r.error for r in rows][:3] == [None, None, None]
    assert rows[3].error == "not found" and "(C, H, W)" in rows[4].error
    assert rows[1].top == rows[2].top                        # a PIL image and its file: the same input
    trained = selfreg.load_trained(run)
    alone = selfreg.predict(trained, tmp_path / "x.png")[0].top      # a batch of one: rounding may differ
    assert [c for c, _ in alone] == [c for c, _ in rows[2].top]
    assert [p for _, p in alone] == pytest.approx([p for _, p in rows[2].top], abs=1e-5)
    # a resumed run continues in its folder
    more = selfreg.fit(resume=run.run_dir, overrides=["train.epochs=2"], log=None)
    assert more.run_dir == run.run_dir and more.summary["epochs"] == 2


@pytest.mark.parametrize("call, message", [
    (lambda: selfreg.load_config({"optim": {"lrr": 1}}), r"unknown config key 'optim.lrr'"),
    (lambda: selfreg.load_config({"train": {"epochs": 0}}), r"train.epochs must be >= 1"),
    (lambda: selfreg.load_config("no/such/recipe.yaml"), r"config file not found: no/such/recipe.yaml"),
    (lambda: selfreg.fit({}, resume="runs/x"), r"not both"),
    (lambda: selfreg.fit(resume="no/such/run"), r"no/such/run is not a run directory"),
    (lambda: selfreg.evaluate(REPO / "configs"), r"is a folder but not a run folder"),
    (lambda: selfreg.evaluate(42), r"got a int"),
    (lambda: selfreg.predict(REPO / "no.pt", 3.5), r"checkpoint not found|images must be"),
    (lambda: selfreg.evaluate(REPO / "configs", checkpoint="first"), r"checkpoint must be best or last"),
])
def test_mistakes_are_one_line_user_errors(call, message):
    with pytest.raises(selfreg.UserError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_a_run_folder_without_its_checkpoint(tmp_path):
    (tmp_path / "config.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(selfreg.UserError, match=r"has no checkpoints/best.pt.*selfreg.fit\(resume="):
        selfreg.evaluate(tmp_path)


def test_predict_rejects_what_is_not_an_image(tiny_run):
    with pytest.raises(selfreg.UserError, match=r"predict takes image files, folders, PIL images or image tensors"):
        selfreg.predict(tiny_run, [3])
    with pytest.raises(selfreg.UserError, match=r"images must be a path, a PIL image, a tensor or a list"):
        selfreg.predict(tiny_run, 3.5)


def test_no_system_exit_from_the_api():
    """argparse is not involved: nothing in the API exits the interpreter."""
    try:
        selfreg.load_config(None, ["not-an-override"])
    except SystemExit:              # pragma: no cover
        pytest.fail("SystemExit")
    except selfreg.UserError as err:
        assert "section.key=value" in str(err)


def test_the_top_level_lists_the_api_and_the_decorators():
    names = set(dir(selfreg))
    assert {"load_config", "fit", "evaluate", "predict", "load_trained", "RunResult", "UserError", "create_model",
            "list_models", "register_model", "register_dataset", "register_augmentation", "register_optimizer",
            "register_schedule", "register_logger"} <= names
    with pytest.raises(AttributeError):
        selfreg.no_such_thing  # noqa: B018
