"""Using trained models: eval, predict, export, features, probe (issue #8).

Two tiny runs (ResNet-20 and RegNet-20/GRU, narrow, 1 epoch on 100 digits at 16 px) are
trained once per module; each command is then run through the CLI's `main` in this process
(`sel`, fast), and a few through a real `python -m selfreg` process (`run_cli`), bad inputs included.
"""
import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfreg import create_model
from selfreg.config import load_config
from selfreg.data import build_dataset
from selfreg.data.eval_transform import EvalTransform
from selfreg.errors import UserError
from selfreg.train.checkpoint import load_checkpoint, save_checkpoint
from selfreg.train.engine import fit
from selfreg.use import load_trained
from selfreg.use.evaluate import class_map
from conftest import run_cli, selfreg_in_process

TINY = ["data.name=digits", "data.image_size=16", "data.subset=100", "data.val_fraction=50",
        "data.batch_size=50", "train.epochs=1", "train.threads=1", "train.tensorboard=false", "train.plot=false",
        "model.kwargs.widths=[8,16,16]"]


def train(out, model):
    cfg = load_config(None, [*TINY, f"model.name={model}", f"train.out_dir={out}", f"train.run_name={model}"])
    fit(cfg, log=lambda s: None)
    return out / model / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {"resnet": train(out, "resnet20"), "regnet": train(out, "rrnet20_gru")}


@pytest.fixture(scope="module")
def digits_test(runs):
    """The digits test split as the run built it: uint8 images (N, 1, 16, 16) and labels."""
    cfg = load_config(None, TINY)
    splits = build_dataset(cfg.data, with_test=True)
    return splits, splits.test.base.images, splits.test.base.labels


@pytest.fixture
def sel():
    """`selfreg ARGS` in this process: exit code, stdout, stderr (no interpreter start per call)."""
    return selfreg_in_process


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfreg: error:"), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ------------------------------------------------------------------------------ the saved transform
def test_checkpoint_carries_the_eval_transform(runs, digits_test):
    state = load_checkpoint(runs["resnet"])
    spec = EvalTransform.from_dict(state["transform"])
    assert spec.image_size == (16, 16) and spec.channels == 1 and spec.resize == "resize"
    splits, images, _ = digits_test
    # The saved transform gives the very inputs the dataset's eval pipeline gives.
    assert torch.equal(spec.pipeline(1).batch(images[:8]), splits.eval_transform.batch(images[:8]))
    # A PIL image of another mode and size goes through the same steps.
    rgb = Image.fromarray(np.repeat(images[0, 0].numpy()[:, :, None], 3, 2)).resize((16, 16))
    assert spec.image(rgb).shape == (1, 16, 16)


def test_old_checkpoint_without_transform_still_works(runs, tmp_path):
    state = load_checkpoint(runs["resnet"])
    saved = state.pop("transform")
    state.pop("format_version")
    # What checkpoints held before the transform was saved (they stored these facts instead).
    state.update(in_chans=saved["channels"], image_size=saved["image_size"][0], mean=saved["mean"], std=saved["std"])
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    assert load_trained(old).transform.to_dict() == EvalTransform.from_dict(saved).to_dict()


def test_folder_with_center_crop_matches_dataset_pipeline(tmp_path):
    """A photo folder under the `imagenet` preset: the saved transform equals the eval pipeline."""
    from dataset_writers import write_image_folder

    write_image_folder(tmp_path, per_class=3, size=40)
    cfg = load_config(None, ["data.name=folder", f"data.root={tmp_path}", "data.image_size=24",
                             "data.augment=[imagenet]", "data.val_fraction=2"])
    splits = build_dataset(cfg.data)
    spec = splits.eval_spec
    assert spec.resize == "center_crop"
    x, _ = splits.val.base[0]
    assert torch.allclose(spec.pipeline(3)(x), splits.eval_transform(x))


# ------------------------------------------------------------------------------ eval
def test_eval_writes_numbers_and_confusion_matrix(sel, runs, digits_test):
    proc = sel("eval", runs["resnet"], "--tta", "flip")
    assert proc.returncode == 0, proc.stderr
    out = runs["resnet"].parents[1] / "eval" / "test-flip"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion.png").stat().st_size > 1000
    assert metrics["images"] == len(digits_test[2]) and metrics["tta"] == "flip"
    assert set(metrics) >= {"top1", "top5", "loss", "per_class", "confusion", "classes"}
    cm = np.array(metrics["confusion"])
    assert cm.sum() == metrics["images"] and np.trace(cm) / cm.sum() == pytest.approx(metrics["top1"])
    assert metrics["top5"] >= metrics["top1"] and metrics["k"] == 5
    assert "top-1" in proc.stdout and "top-5" in proc.stdout and "per-class accuracy" in proc.stdout


def test_eval_in_channels_last_counts_the_same_images(sel, runs, tmp_path):
    """--channels-last measures in NHWC (the layout of a channels_last run); the counts agree with
    NCHW up to a near-tie image."""
    numbers = []
    for flags in ([], ["--channels-last"]):
        proc = sel("eval", runs["resnet"], *flags, "-o", tmp_path / str(len(flags)))
        assert proc.returncode == 0, proc.stderr
        numbers.append(json.loads((tmp_path / str(len(flags)) / "metrics.json").read_text()))
    nchw, nhwc = numbers
    assert nhwc["images"] == nchw["images"] and abs(nhwc["top1"] - nchw["top1"]) * nchw["images"] <= 1


def test_eval_matches_the_engine_and_an_image_folder(sel, runs, digits_test, tmp_path):
    """Plain eval equals the engine's evaluate; the same images as a folder give the same numbers."""
    from selfreg.train.engine import StepOptions, evaluate
    from selfreg.use.evaluate import eval_split

    splits, images, labels = digits_test
    trained = load_trained(runs["resnet"])
    loader = eval_split(trained, load_config(None, TINY).data, "test").loader
    engine = evaluate(trained.model, loader, StepOptions(device=torch.device("cpu"), autocast=contextlib.nullcontext,
                                                         top5=True))
    proc = sel("eval", runs["resnet"], "-o", tmp_path / "own")
    assert proc.returncode == 0, proc.stderr
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["loss"] == pytest.approx(engine.loss, rel=1e-5) and own["top1"] == pytest.approx(engine.acc)
    assert own["top5"] == pytest.approx(engine.acc5)

    for split in ("train", "test"):                 # folder needs train/; eval reads test/
        for i, (x, y) in enumerate(zip(images, labels)):
            path = tmp_path / "folder" / split / str(int(y)) / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[0].numpy()).save(path)
    proc = sel("eval", runs["resnet"], "--data", "folder", "--root", tmp_path / "folder", "-o", tmp_path / "f")
    assert proc.returncode == 0, proc.stderr
    folder = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert folder["dataset"] == "folder" and folder["images"] == own["images"]
    assert folder["loss"] == pytest.approx(own["loss"], rel=1e-5) and folder["top1"] == own["top1"]


def test_class_order_is_matched_by_name():
    assert class_map(["b", "c", "a"], ["a", "b", "c"], "x").tolist() == [1, 2, 0]
    with pytest.raises(UserError, match=r"dataset \[a, d\] \(2\), checkpoint \[a, b\] \(2\)"):
        class_map(["a", "d"], ["a", "b"], "x")


def test_eval_class_mismatch_is_one_line(sel, runs, tmp_path):
    from dataset_writers import write_image_folder

    write_image_folder(tmp_path, per_class=2, size=16, split="train")
    write_image_folder(tmp_path, per_class=2, size=16, split="test")
    proc = sel("eval", runs["resnet"], "--data", "folder", "--root", tmp_path)
    one_line_error(proc, "do not match", "cat, dog, frog", "0, 1, 2")


@pytest.mark.parametrize("command", [["eval"], ["predict", "x.png"], ["export", "--format", "onnx"],
                                     ["features", "x.png"], ["probe"]])
def test_bad_checkpoints_are_one_line(sel, runs, tmp_path, command):
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(runs["resnet"].read_bytes()[:5000])
    name, *rest = command
    one_line_error(sel(name, tmp_path / "missing.pt", *rest), "checkpoint not found")
    one_line_error(sel(name, truncated, *rest), "not a readable selfreg checkpoint")


def test_real_process(runs, tmp_path):
    """Through `python -m selfreg`: predict prints a table (bad checkpoints: in process above;
    a one-line error from a real process: tests/test_cli.py)."""
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    proc = run_cli("predict", runs["resnet"], img)
    assert proc.returncode == 0 and "x.png" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------ predict
def test_predict_any_image_and_reports_bad_files(sel, runs, digits_test, tmp_path):
    _, images, labels = digits_test
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(images[0, 0].numpy()).save(folder / "a_grey16.png")
    big = Image.fromarray(images[1, 0].numpy()).resize((50, 70))
    big.convert("RGB").save(folder / "b_rgb.jpg", quality=95)
    big.convert("RGBA").save(folder / "c_rgba.png")
    Image.fromarray(images[2, 0].numpy().astype(np.uint16) * 257).save(folder / "d_16bit.png")
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    proc = sel("predict", runs["resnet"], folder, tmp_path / "missing.jpg", "--topk", "3", "--json")
    assert proc.returncode == 1, proc.stderr            # some files failed, the rest were predicted
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(proc.stdout)}
    assert len(rows) == 6
    assert rows["e_broken.png"]["error"] and rows["missing.jpg"]["error"] == "not found"
    assert "e_broken.png" in proc.stderr and "missing.jpg" in proc.stderr
    for name in ("a_grey16.png", "b_rgb.jpg", "c_rgba.png", "d_16bit.png"):
        preds = rows[name]["predictions"]
        assert rows[name]["error"] is None and len(preds) == 3
        assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    # The 16 px grey PNG is exactly a test image: same probabilities as the model on the dataset.
    trained = load_trained(runs["resnet"])
    with torch.no_grad():
        p = torch.softmax(trained.model(trained.transform.pipeline(1).batch(images[:1])), 1)[0]
    top = rows["a_grey16.png"]["predictions"][0]
    assert top["class"] == trained.classes[int(p.argmax())] and top["probability"] == pytest.approx(
        float(p.max()), abs=1e-6)
    table = sel("predict", runs["resnet"], folder / "a_grey16.png")
    assert table.returncode == 0 and "a_grey16.png" in table.stdout and top["class"] in table.stdout


def test_old_checkpoint_predicts(sel, runs, tmp_path):
    state = load_checkpoint(runs["resnet"])
    saved = state.pop("transform")
    del state["format_version"]
    state.update(in_chans=saved["channels"], image_size=saved["image_size"][0], mean=saved["mean"], std=saved["std"])
    save_checkpoint(state, tmp_path / "old.pt")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert sel("predict", tmp_path / "old.pt", img).returncode == 0


# ------------------------------------------------------------------------------ export
def test_export_onnx_cli_rrnet_dynamic_batch(sel, runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "rr.onnx"
    proc = sel("export", runs["regnet"], "--format", "onnx", "--exporter", "legacy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "max abs difference vs PyTorch" in proc.stdout
    diff = float(proc.stdout.split("max abs difference vs PyTorch: ")[1].split()[0])
    assert diff < 1e-4
    trained = load_trained(runs["regnet"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 16, 16)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - trained.model(x).numpy()).max() < 1e-4


def fresh(name, tmp_path):
    """An untrained model as a `Trained` (export works the same on any weights)."""
    from selfreg.factory import accepts
    from selfreg.use.trained import Trained

    kwargs = {"img_size": 32} if accepts(name, "img_size") else {}
    model = create_model(name, num_classes=10, in_chans=3, **kwargs).eval()
    spec = EvalTransform(32, 3, [0.5] * 3, [0.25] * 3)
    return Trained(model, name, [f"c{i}" for i in range(10)], spec, kwargs, tmp_path / f"{name}.pt")


EXPORT_MODELS = ["resnet20", "rrnet20_gru", "rrnet20_lstm", "lenet_bn", "mobilenet_v2"]


@pytest.mark.parametrize("name", EXPORT_MODELS)
def test_export_parity_onnx_and_torchscript(name, tmp_path):
    """onnxruntime and TorchScript agree with PyTorch at batch sizes other than the export's."""
    pytest.importorskip("onnxruntime")
    from selfreg.use.export import CHECK_BATCHES, EXPORT_BATCH, export

    trained = fresh(name, tmp_path)
    assert EXPORT_BATCH not in CHECK_BATCHES
    onnx = export(trained, "onnx", exporter="legacy")
    script = export(trained, "torchscript")
    for result in (onnx, script):
        assert result.checked_batches == CHECK_BATCHES, (result, name)
        assert result.max_abs_diff < 1e-5 * max(1.0, result.max_abs_logit), (result, name)
        assert result.path.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rrnet20_gru"])
def test_export_parity_onnx_dynamo(name, tmp_path):
    """The dynamo exporter (the default, ~10-20 s per model on 2 cores): the regulated model, whose
    cells are the unusual part; every EXPORT_MODELS entry goes through legacy ONNX and TorchScript
    in test_export_parity_onnx_and_torchscript."""
    pytest.importorskip("onnxruntime")
    from selfreg.use.export import export

    result = export(fresh(name, tmp_path), "onnx", exporter="dynamo")
    assert result.exporter == "dynamo" and result.max_abs_diff < 1e-5 * max(1.0, result.max_abs_logit)


def test_auto_falls_back_to_the_legacy_exporter(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from selfreg.use import export as export_module

    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this\nsecond line")

    monkeypatch.setitem(export_module.ONNX_EXPORTERS, "dynamo", broken)
    result = export_module.export(fresh("lenet_bn", tmp_path), "onnx")          # exporter="auto"
    assert result.exporter == "legacy" and result.max_abs_diff is not None


def test_unexportable_model_is_one_line(tmp_path):
    from selfreg.use.export import export

    class NumpyInside(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.detach().numpy().sum(axis=(2, 3)))

    trained = fresh("lenet_bn", tmp_path)
    trained.model = NumpyInside()
    trained.model.register_buffer("w", torch.zeros(1))
    with pytest.raises(UserError) as err:
        export(trained, "onnx", exporter="legacy")
    assert "cannot be exported to ONNX (legacy exporter:" in str(err.value) and "\n" not in str(err.value)


def test_safetensors_round_trip(sel, runs, tmp_path):
    out = tmp_path / "share" / "rr.safetensors"
    proc = sel("export", runs["regnet"], "--format", "safetensors", "-o", out)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model_name"] == "rrnet20_gru" and meta["classes"] == [str(i) for i in range(10)]
    assert meta["model_kwargs"] == {"widths": [8, 16, 16]} and meta["transform"]["image_size"] == [16, 16]
    a = create_model("rrnet20_gru", checkpoint=runs["regnet"])
    b = create_model("rrnet20_gru", checkpoint=out)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(UserError, match="holds a 'rrnet20_gru' model, not 'resnet20'"):
        create_model("resnet20", checkpoint=out)
    with pytest.raises(UserError, match="class count"):
        create_model("rrnet20_gru", checkpoint=out, num_classes=5)
    # The weights file stands alone: predict and eval (with its saved data config) use it.
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert sel("predict", out, img).returncode == 0
    assert sel("eval", out, "-o", tmp_path / "e").returncode == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["dataset"] == "digits"


# ------------------------------------------------------------------------------ features and probe
def test_features_grid(sel, runs, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)).save(img)
    proc = sel("features", runs["regnet"], img, "--blocks", "7-9", "-o", tmp_path / "rr.png")
    assert proc.returncode == 0, proc.stderr
    assert "block 7 stages.2.blocks.0: input, output, state" in proc.stdout
    assert Image.open(tmp_path / "rr.png").size[0] > 1000          # 1 + 3 x 4 columns
    proc = sel("features", runs["resnet"], img)                     # default: last 3, outputs only
    assert proc.returncode == 0, proc.stderr
    assert "block 9 stages.2.2: output" in proc.stdout
    assert (runs["resnet"].parents[1] / "features" / "x.png").is_file()
    one_line_error(sel("features", runs["resnet"], img, "--blocks", "12"), "blocks 1..9")
    one_line_error(sel("features", runs["resnet"], tmp_path / "none.png"), "cannot read image")


def test_probe_side_by_side(sel, runs, tmp_path):
    proc = sel("probe", runs["resnet"], runs["regnet"], "data.eval_batch_size=40", "--max-images", "80",
               "-o", tmp_path / "p.json", "--plot", tmp_path / "fig" / "p.png")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "fig" / "p.png").size[0] > 600      # two panels: own head, linear probe
    lines = proc.stdout.splitlines()
    assert "resnet20 [a]" in lines[0] and "rrnet20_gru [b]" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["last-2", "last-1", "last"]
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["model"] for r in results] == ["resnet20", "rrnet20_gru"]
    for r in results:
        assert [b["index"] for b in r["blocks"]] == [7, 8, 9] and r["test_split"] == "test"
        assert r["train_images"] == r["test_images"] == 80 and all(0 <= b["probe_acc"] <= 1 for b in r["blocks"])
        # The model's own head on its last block is the model itself.
        assert r["blocks"][-1]["head_acc"] is not None


@pytest.mark.parametrize("name, finder_blocks", [("resnet18", 8), ("mobilenet_v2", 17), ("vit_tiny_patch4_32", 12),
                                                 ("lenet_bn", None), ("rrnet20_lstm", 9)])
def test_blocks_are_found_and_pooled(name, finder_blocks):
    from selfreg.analysis.features import capture, find_blocks, pool, select_blocks
    model = create_model(name, in_chans=3, img_size=32).eval()
    blocks = find_blocks(model)
    if finder_blocks is not None:
        assert len(blocks) == finder_blocks
    last = select_blocks(blocks, "last3")
    maps, logits = capture(model, torch.randn(2, 3, 32, 32), last)
    assert logits.shape == (2, 10)
    for record in maps:
        assert pool(record["output"]).shape[0] == 2
    if name.startswith("rrnet"):
        assert all(set(m) == {"input", "state", "output"} for m in maps)
