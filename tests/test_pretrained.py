"""Shipped pretrained weights and the three ways in: create_model(pretrained=), torch.hub, timm.

Nothing is trained: a registry of weights is built in tmp_path from seeded untrained models
exported with `selfreg export`'s own code, and $SELFREG_PRETRAINED_DIR points at it (the
package folder is never written). The real manifest (empty until weights are trained) is
checked for shape, and each of its entries, when there are some, for file, sha256, load and the
logits its run's final checkpoint gave on a fixed input (tests/data/pretrained_logits.json,
written by scripts/publish_runs.py when the file was published).
"""
import hashlib
import importlib.util
import json
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, load_script
from procs import env_with_src, run
from selfreg import import_hooks, pretrained
from selfreg.cli import main as cli_main
from selfreg.data.eval_transform import EvalTransform
from selfreg.entrypoints import TIMM_PREFIX, hub_names
from selfreg.errors import UserError
from selfreg.factory import create_model
from selfreg.use.export import export
from selfreg.use.trained import Trained

TAG = "cifar10-budget"
CLASSES = [f"c{i}" for i in range(10)]


def export_untrained(folder, file, name="resnet20", seed=0, in_chans=3, size=32, data=None, classes=CLASSES):
    """A seeded untrained model, written by `selfreg export --format safetensors`'s code."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_chans=in_chans).eval()
    spec = EvalTransform(size, in_chans, [0.5] * in_chans, [0.25] * in_chans)
    trained = Trained(model, name, list(classes), spec, {}, folder / "run.pt", data or {}, {"commit": "abc123", "dirty": False})
    return model, export(trained, "safetensors", folder / file, check=False).path


def one_line_error(match):
    """pytest.raises for a UserError whose message is one line."""
    return pytest.raises(UserError, match=match)


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Two resnet20 files (seeds 0 and 1); `cifar10-budget` and the default name seed 0's."""
    root = tmp_path / "weights"
    s0, path0 = export_untrained(root, "resnet20-cifar10-budget-s0.safetensors", seed=0)
    s1, path1 = export_untrained(root, "resnet20-cifar10-budget-s1.safetensors", seed=1)
    entries = [pretrained.make_entry(path0, f"{TAG}-s0", 0.5, "selfreg train configs/x.yaml --seeds 0",
                                     aliases=[TAG], default=True),
               pretrained.make_entry(path1, f"{TAG}-s1", 0.25, "selfreg train configs/x.yaml --seeds 1")]
    pretrained.write_manifest(entries, root)
    monkeypatch.setenv(pretrained.ENV_DIR, str(root))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(root=root, s0=s0, s1=s1, path0=path0, path1=path1, entries=entries, x=x)


@pytest.fixture
def empty(tmp_path, monkeypatch):
    pretrained.write_manifest([], tmp_path / "none")
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path / "none"))


def logits(model, x):
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------- create_model(pretrained=)
def test_loads_the_exported_weights_exactly(shipped):
    want = logits(shipped.s0, shipped.x)
    for tag in (TAG, f"{TAG}-s0", True):
        model = create_model("resnet20", pretrained=tag)
        assert not model.training
        assert torch.equal(logits(model, shipped.x), want), tag
    assert torch.equal(logits(create_model("resnet20", pretrained=f"{TAG}-s1"), shipped.x), logits(shipped.s1, shipped.x))
    assert not torch.equal(logits(create_model("resnet20", pretrained=False).eval(), shipped.x), want)


def test_make_entry_reads_the_file(shipped):
    entry = shipped.entries[0]
    assert entry["model"] == "resnet20" and entry["commit"] == "abc123" and entry["file"] == shipped.path0.name
    assert entry["sha256"] == hashlib.sha256(shipped.path0.read_bytes()).hexdigest()


def test_damaged_or_missing_file_is_one_line(shipped):
    data = bytearray(shipped.path0.read_bytes())
    data[-1] ^= 0xFF
    shipped.path0.write_bytes(bytes(data))
    with one_line_error(r"resnet20-cifar10-budget-s0\.safetensors \(resnet20:cifar10-budget-s0\) fails its sha256 "
                        r"check .*reinstall selfreg[^\n]*$"):
        create_model("resnet20", pretrained=TAG)
    shipped.path1.unlink()
    with one_line_error(r"s1\.safetensors \(resnet20:cifar10-budget-s1\) is missing; reinstall"):
        create_model("resnet20", pretrained=f"{TAG}-s1")


def test_unknown_tag_names_the_available_weights(shipped):
    with one_line_error(r"^no pretrained weights 'imagenet' for 'resnet20'; available: resnet20:cifar10-budget-s0, "
                        r"resnet20:cifar10-budget, resnet20:cifar10-budget-s1 [^\n]*$"):
        create_model("resnet20", pretrained="imagenet")
    with one_line_error(r"^no pretrained weights 'cifar10-budget' for 'rrnet20_gru'; available: resnet20:cifar10-budget-s0"):
        create_model("rrnet20_gru", pretrained=TAG)
    with one_line_error("no default weights for 'rrnet20_gru'; available: resnet20:"):
        create_model("rrnet20_gru", pretrained=True)
    with one_line_error("unknown model 'resnet21'; did you mean"):
        create_model("resnet21", pretrained=TAG)


def test_a_model_without_a_default_needs_a_tag(shipped):
    entries = [{**e, "default": False} for e in shipped.entries]
    pretrained.write_manifest(entries, shipped.root)
    with one_line_error("'resnet20' has no default weights; name one: resnet20:cifar10-budget-s0, "):
        create_model("resnet20", pretrained=True)


def test_empty_manifest_says_none_ship_yet(empty):
    with one_line_error(r"^no pretrained weights ship with selfreg yet, so there are none for 'rrnet20_gru'[^\n]*$"):
        create_model("rrnet20_gru", pretrained=TAG)


def test_pretrained_with_checkpoint_or_other_input_is_one_line(shipped):
    with one_line_error(r"^pass either pretrained='cifar10-budget' or checkpoint='x\.pt', not both$"):
        create_model("resnet20", pretrained=TAG, checkpoint="x.pt")
    with one_line_error(r"^the resnet20:cifar10-budget-s0 weights have in_chans=3, not 1; leave in_chans out "
                        r"\(in a recipe: data.channels=3\)"):
        create_model("resnet20", pretrained=TAG, in_chans=1)
    assert create_model("resnet20", pretrained=TAG, num_classes=10, in_chans=3) is not None
    # A model without img_size takes any size; one built for its size must get the weights' size.
    assert create_model("resnet20", pretrained=TAG, img_size=64) is not None
    _, path = export_untrained(shipped.root, "lenet.safetensors", name="lenet_bn", in_chans=1, size=28)
    pretrained.write_manifest(shipped.entries + [pretrained.make_entry(path, "mnist", 0.1, "none")], shipped.root)
    assert create_model("lenet_bn", pretrained="mnist", img_size=28).pretrained_cfg["input_size"] == (1, 28, 28)
    with one_line_error(r"^the lenet_bn:mnist weights are for 28x28 images, not 32; leave img_size out "
                        r"\(in a recipe: data.image_size=28\)$"):
        create_model("lenet_bn", pretrained="mnist", img_size=32)


def test_fine_tuning_keeps_the_backbone_and_replaces_the_head(shipped):
    """pretrained=TAG, num_classes=N: every tensor but the head's is the file's; the head is the
    model's own init for N classes (as timm.create_model(..., pretrained=True, num_classes=N))."""
    lines = []
    torch.manual_seed(0)
    model = create_model("resnet20", pretrained=TAG, num_classes=3, log=lines.append)
    assert not model.training and model.num_classes == 3 and logits(model, shipped.x).shape == (4, 3)
    mine, source = model.state_dict(), shipped.s0.state_dict()
    assert [k for k in mine if not torch.equal(mine[k], source[k]) if mine[k].shape == source[k].shape] == []
    assert mine["fc.weight"].shape == (3, 64) and mine["fc.bias"].shape == (3,)
    torch.manual_seed(0)
    fresh = create_model("resnet20", num_classes=3).state_dict()
    assert torch.equal(mine["fc.weight"], fresh["fc.weight"])          # the builder's init, same seed
    assert lines == [f"model resnet20: starting from the pretrained weights resnet20:{TAG}-s0 "
                     f"(resnet20-cifar10-budget-s0.safetensors, sha256 {shipped.entries[0]['sha256'][:12]}, "
                     "50.00% val top-1 on 10 classes); new 3-class head (fc.weight, fc.bias), backbone loaded"]
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 3 and "label_names" not in cfg and cfg["tag"] == f"{TAG}-s0"
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.25, 0.25, 0.25) and cfg["input_size"] == (3, 32, 32)
    same = create_model("resnet20", pretrained=TAG, num_classes=10, log=lines.append)
    assert same.pretrained_cfg["label_names"] == tuple(CLASSES) and not lines[-1].endswith("backbone loaded")
    # torch.hub's entry points pass num_classes on the same way
    hub = torch.hub.load(str(REPO), "resnet20", source="local", pretrained=TAG, num_classes=5, verbose=False)
    assert logits(hub, shipped.x).shape == (4, 5)


def test_weights_say_their_transform_and_classes(shipped):
    weights = pretrained.resolve("resnet20", TAG)
    assert weights.classes == CLASSES
    assert weights.eval_transform.to_dict() == EvalTransform(32, 3, [0.5] * 3, [0.25] * 3).to_dict()
    cfg = weights.pretrained_cfg()
    assert cfg == create_model("resnet20", pretrained=TAG).pretrained_cfg
    assert cfg["label_names"] == tuple(CLASSES) and cfg["file"] == str(shipped.path0)
    assert weights.header()["model_name"] == "resnet20"
    shipped.path1.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with one_line_error(r"s1\.safetensors \(resnet20:cifar10-budget-s1\) has no readable selfreg header "
                        r"\(JSONDecodeError[^\n]*reinstall selfreg[^\n]*$"):
        pretrained.resolve("resnet20", f"{TAG}-s1").classes
    shipped.path1.unlink()
    with one_line_error(r"s1\.safetensors \(resnet20:cifar10-budget-s1\) is missing; reinstall"):
        pretrained.resolve("resnet20", f"{TAG}-s1").eval_transform


def test_recipe_model_pretrained_is_checked_at_load():
    from selfreg.config import load_config

    assert load_config(None, []).model.pretrained is None
    assert load_config(None, ["model.pretrained=cifar10-budget"]).model.pretrained == TAG
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True
    with one_line_error(r"^config key model.pretrained must be a weights tag, true .* or null, got \[1\]$"):
        load_config(None, ["model.pretrained=[1]"])
    # The undocumented way that used to work silently is now a pointer to the documented one.
    with one_line_error(r"^model.kwargs.pretrained is not a builder argument: set model.pretrained: TAG \(or true\) "
                        r"instead$"):
        load_config(None, ["model.kwargs.pretrained=cifar10-budget"])
    for key in ("checkpoint", "num_classes", "in_chans"):
        with one_line_error(f"^model.kwargs.{key} is not a builder argument: "):
            load_config(None, [f"model.kwargs.{key}=1"])


def test_a_recipe_fine_tunes_from_model_pretrained(shipped, tmp_path):
    """model.pretrained: TAG in a recipe: the run starts from the weights (backbone; a new head for
    the data's 3 classes), says so in one log line, and records the tag in config.yaml."""
    from selfreg.config import load_config
    from selfreg.train.checkpoint import load_checkpoint
    from selfreg.train.engine import fit

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "train" / label / f"{i}.png")
    # A learning rate too small to move a weight: the checkpoint after one epoch shows where it started.
    cfg = load_config(None, ["model.name=resnet20", f"model.pretrained={TAG}", "data.name=folder",
                             f"data.root={tmp_path / 'data'}", "data.batch_size=8", "train.epochs=1",
                             "optim.lr=1e-12", "optim.momentum=0", "optim.weight_decay=0", "train.threads=1",
                             f"train.out_dir={tmp_path / 'runs'}", "train.run_name=ft", "train.tensorboard=false"])
    lines = []
    fit(cfg, log=lines.append)
    started = [line for line in lines if "starting from the pretrained weights" in line]
    assert started == [f"model resnet20: starting from the pretrained weights resnet20:{TAG}-s0 "
                       f"(resnet20-cifar10-budget-s0.safetensors, sha256 {shipped.entries[0]['sha256'][:12]}, "
                       "50.00% val top-1 on 10 classes); new 3-class head (fc.weight, fc.bias), backbone loaded"]
    run = tmp_path / "runs" / "ft"
    assert load_config(run / "config.yaml").model.pretrained == TAG
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    source = shipped.s0.state_dict()
    convs = [k for k, v in source.items() if v.dim() == 4]
    assert convs and all(torch.allclose(state[k], source[k], atol=1e-6) for k in convs)
    assert state["fc.weight"].shape == (3, 64)


def valid_entry(**change):
    entry = {"model": "resnet20", "tag": "t", "file": "a.safetensors", "sha256": "0" * 64, "val_accuracy": 0.9,
             "command": "selfreg train x.yaml", "commit": "abc"}
    return {**entry, **change}


@pytest.mark.parametrize("weights, message", [
    ([valid_entry(sha256="xyz")], "sha256 must be 64 lowercase hex digits"),
    ([{k: v for k, v in valid_entry().items() if k != "commit"}], r"weights\[0\] lacks commit"),
    ([valid_entry(acc=1)], "unknown key"),
    ([valid_entry(file="../a.safetensors")], "must be a plain"),
    ([valid_entry(tag="a:b")], "no ':'"),
    ([valid_entry(val_accuracy=93.1)], "fraction in"),
    ([valid_entry(channels_last="yes")], "channels_last must be true or false"),
    ([valid_entry(), valid_entry(tag="u", aliases=["t"])], "resnet20:t names two entries"),
    ([valid_entry(default=True), valid_entry(tag="u", default=True)], "resnet20 has two defaults"),
])
def test_malformed_manifest_is_one_line(tmp_path, weights, message):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": pretrained.FORMAT, "weights": weights}))
    with one_line_error(f"manifest.json: .*{message}"):
        pretrained.load_manifest(tmp_path)


def test_unreadable_or_absent_manifest(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{not json")
    with one_line_error("manifest.json is not readable JSON"):
        pretrained.load_manifest(tmp_path)
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path / "typo"))
    with one_line_error("no manifest.json in .*typo"):
        create_model("resnet20", pretrained=TAG)


# ---------------------------------------------------------------------------- the real manifest
def real_entries():
    return pretrained.load_manifest(pretrained.PACKAGE_DIR)


REFERENCE_LOGITS = REPO / "tests" / "data" / "pretrained_logits.json"


def test_shipped_manifest_is_well_formed():
    raw = json.loads((pretrained.PACKAGE_DIR / pretrained.MANIFEST).read_text())
    assert raw["format"] == pretrained.FORMAT and isinstance(raw["weights"], list)
    entries = real_entries()
    names = set(hub_names())
    assert all(w.model in names for w in entries)
    files = {p.name for p in pretrained.PACKAGE_DIR.glob("*.safetensors")}
    assert files == {w.file for w in entries}, "every shipped file has one manifest entry and vice versa"
    if entries:
        checked = set(json.loads(REFERENCE_LOGITS.read_text()))
        assert {w.label for w in entries} <= checked, "every shipped file has reference logits (publish_runs.py)"


@pytest.mark.parametrize("weights", real_entries(), ids=lambda w: w.label)
def test_every_shipped_weight_verifies_and_loads(weights, monkeypatch):
    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)
    assert pretrained.sha256_of(pretrained.verified_path(weights)) == weights.sha256
    header = json.loads(__import__("safetensors").safe_open(str(weights.path), "pt").metadata()["selfreg"])
    model = create_model(weights.model, pretrained=weights.tag)
    h, w = header["transform"]["image_size"]
    out = logits(model, torch.zeros(2, header["in_chans"], h, w))
    assert out.shape == (2, len(header["classes"])) and torch.isfinite(out).all()
    # The same logits as its run's final checkpoint gave on the fixed input when it was published
    # (scripts/publish_runs.py): the file is that checkpoint, without the checkpoint at hand.
    reference = json.loads(REFERENCE_LOGITS.read_text())[weights.label]
    x = load_script("scripts/publish_runs.py").reference_input(header["in_chans"], (h, w))
    torch.testing.assert_close(logits(model, x), torch.tensor(reference), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- selfreg models --pretrained
def test_cli_lists_the_shipped_weights(shipped, capsys):
    assert cli_main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("resnet20") and "s0" in line)
    for part in ("cifar10-budget-s0* (cifar10-budget)", "50.00% val", shipped.entries[0]["sha256"][:12],
                 shipped.path0.name):
        assert part in row
    assert "2 weight file(s)" in out
    assert cli_main(["models", "rrnet*", "--pretrained"]) == 2
    assert "no shipped weights for a model matching 'rrnet*'" in capsys.readouterr().err


def test_cli_says_when_none_ship(empty, capsys):
    assert cli_main(["models", "--pretrained"]) == 0
    assert capsys.readouterr().out.startswith("No pretrained weights ship with selfreg yet")


# ---------------------------------------------------------------------------- torch.hub
def test_torch_hub_local(shipped):
    model = torch.hub.load(str(REPO), "resnet20", source="local", verbose=False)
    assert model.training and logits(model.eval(), shipped.x).shape == (4, 10)
    model = torch.hub.load(str(REPO), "resnet20", source="local", pretrained=TAG, verbose=False)
    assert torch.equal(logits(model, shipped.x), logits(shipped.s0, shipped.x))
    rr = torch.hub.load(str(REPO), "rrnet20_gru", source="local", num_classes=5, verbose=False)
    assert logits(rr.eval(), shipped.x).shape == (4, 5)


def test_hubconf_has_every_model():
    hubconf = load_script("hubconf.py", "selfreg_hubconf_test")
    public = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert public == set(hub_names()) and {"resnet20", "rrnet20_gru", "rrnet56_lstm"} <= public
    assert "torch" in hubconf.dependencies


# ---------------------------------------------------------------------------- timm
def test_timm_creates_selfreg_models_and_keeps_its_own(shipped):
    import timm

    assert set(timm.list_models(TIMM_PREFIX + "*")) == {TIMM_PREFIX + n for n in hub_names()}
    model = timm.create_model("selfreg_rrnet20_gru", num_classes=10)
    assert logits(model.eval(), torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for name in timm.list_models("regnet*"):
        assert timm.models.model_entrypoint(name).__module__.startswith("timm.models."), name
    assert type(timm.create_model("regnetx_002")).__module__ == "timm.models.regnet"
    # pretrained=True: the default tag; "arch.tag" picks a file as in timm; a tag alone loads nothing.
    assert torch.equal(logits(timm.create_model("selfreg_resnet20", pretrained=True), shipped.x),
                       logits(shipped.s0, shipped.x))
    seed1 = timm.create_model("selfreg_resnet20.cifar10-budget-s1", pretrained=True)
    assert torch.equal(logits(seed1, shipped.x), logits(shipped.s1, shipped.x))
    assert timm.create_model("selfreg_resnet20.cifar10-budget-s1").training
    # timm's scripts pass the registry's cfg back as a dict (resolve_model_input_args). The registry
    # was filled from the package's weights; the model still loads this manifest's default and
    # carries its file's cfg (mean 0.5 here), not the registry's copy.
    from timm.models import resolve_model_input_args

    model = timm.create_model(**resolve_model_input_args("selfreg_resnet20", {}, pretrained=True))
    assert torch.equal(logits(model, shipped.x), logits(shipped.s0, shipped.x))
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["file"] == str(shipped.path0)


def test_import_selfreg_then_timm_in_a_fresh_process():
    """The issue's words, literally: after `import selfreg` (which imports neither torch nor timm),
    timm.create_model builds selfreg models, and timm's own regnet* stay timm's."""
    code = ("import sys, selfreg\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
            "import timm, torch\n"
            "m = timm.create_model('selfreg_rrnet20_gru', num_classes=10).eval()\n"
            "assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)\n"
            "assert type(timm.create_model('regnety_002')).__module__ == 'timm.models.regnet'\n"
            "print('ok', len(timm.list_models('selfreg_*')))\n")
    proc = run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], timeout=120,
               env=env_with_src(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stderr[-2000:]
    assert int(proc.stdout.split()[1]) == len(hub_names())


def test_post_import_hook_runs_once_the_module_has_loaded(tmp_path, monkeypatch, request):
    names = ("hooked_for_selfreg", "hook_fails_for_selfreg")
    request.addfinalizer(lambda: [sys.modules.pop(n, None) for n in names])
    (tmp_path / "hooked_for_selfreg.py").write_text("VALUE = 1\n")
    (tmp_path / "hook_fails_for_selfreg.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    import_hooks.when_imported("hooked_for_selfreg",
                               lambda m: seen.append((m.VALUE, import_hooks.imported(m.__name__))))
    import_hooks.when_imported("hook_fails_for_selfreg", lambda m: 1 / 0)
    assert seen == [] and import_hooks._FINDER in sys.meta_path
    import hooked_for_selfreg
    with pytest.warns(RuntimeWarning, match="after importing hook_fails_for_selfreg failed: ZeroDivisionError"):
        assert importlib.import_module("hook_fails_for_selfreg").VALUE == 2     # the import itself succeeds
    assert seen == [(1, True)] and not isinstance(hooked_for_selfreg.__loader__, import_hooks._Loader)
    import_hooks.when_imported("hooked_for_selfreg", lambda m: seen.append("now"))
    assert seen[-1] == "now"
    assert (import_hooks._FINDER in sys.meta_path) == bool(import_hooks._waiting)


# ---------------------------------------------------------------------------- benchmarks/reeval_pretrained.py
def test_reeval_script_help_and_empty_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import reeval_pretrained

    with pytest.raises(SystemExit) as done:
        reeval_pretrained.main(["--help"])
    assert done.value.code == 0 and "--data DIR" in capsys.readouterr().out
    pretrained.write_manifest([], tmp_path)
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path))
    assert reeval_pretrained.main(["--data", str(tmp_path)]) == 0
    assert "No pretrained weights ship with selfreg yet" in capsys.readouterr().out


def test_reeval_script_measures_with_selfreg_eval(tmp_path, monkeypatch, capsys):
    """A digits weight (bundled data: offline): the script's number is `selfreg eval`'s; a manifest
    number that differs by one image is a mismatch, exit 1."""
    from selfreg.config import load_config

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import reeval_pretrained

    data = load_config(None, ["data.name=digits", "data.image_size=16"]).to_dict()["data"]
    root = tmp_path / "weights"
    _, path = export_untrained(root, "resnet20-digits.safetensors", in_chans=1, size=16, data=data,
                               classes=[str(i) for i in range(10)])
    assert cli_main(["eval", str(path), "--split", "val", "-o", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    monkeypatch.setenv(pretrained.ENV_DIR, str(root))
    for stated, code in ((metrics["top1"], 0), (metrics["top1"] + 1 / metrics["images"], 1)):
        pretrained.write_manifest([pretrained.make_entry(path, "digits", stated, "none")], root)
        capsys.readouterr()
        assert reeval_pretrained.main(["--data", "unused", "--device", "cpu"]) == code
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet20"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == str(metrics["images"]) and cells[5] == f"{100 * metrics['top1']:.2f}%"
        assert cells[6] == ("yes" if code == 0 else "NO")


def test_measure_file_in_channels_last_feeds_nhwc_and_counts_the_same_images(tmp_path):
    """The layout a run measured in (NHWC) is the one its shipped file is checked in."""
    from selfreg.config import load_config
    from selfreg.use import evaluate

    data = load_config(None, ["data.name=digits", "data.image_size=16"]).to_dict()["data"]
    _, path = export_untrained(tmp_path, "r.safetensors", in_chans=1, size=16, data=data,
                               classes=[str(i) for i in range(10)])
    seen = []
    real = evaluate.evaluate_split

    def spy(model, images, classes, **kw):
        # A weight with more than one input channel tells the layouts apart (the 1-channel input
        # and first conv are both at once); the hook runs after evaluate_split set the layout.
        weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        model.register_forward_pre_hook(lambda m, args: seen.append(not weight.is_contiguous()))
        return real(model, images, classes, **kw)

    evaluate.evaluate_split, nchw = spy, None
    try:
        nchw = evaluate.measure_file(path, None, "val")
        nhwc = evaluate.measure_file(path, None, "val", channels_last=True)
    finally:
        evaluate.evaluate_split = real
    assert seen and not seen[0] and seen[-1]
    assert nhwc[1] == nchw[1] and abs(nhwc[0] - nchw[0]) * nchw[1] <= 1   # at most a near-tie image


def test_no_warning_when_registering_twice():
    from selfreg.entrypoints import register_timm

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert register_timm() == []
