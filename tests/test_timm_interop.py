"""timm interop end to end: every model carries timm's pretrained_cfg, and timm's own data
pipeline and validation loop give a shipped weight the predictions `selfreg eval` gives it.

Issue 28 item 4: without a pretrained_cfg, timm fed `selfreg_resnet20` 224 px bicubic crops with
ImageNet statistics (chance accuracy). The images here are synthetic 32x32 PNGs this test writes
as an ImageFolder (no dataset is read); the weights are the package's own shipped file.
"""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import selfreg
from selfreg import pretrained
from selfreg.data.eval_transform import EvalTransform
from selfreg.entrypoints import TIMM_PREFIX, hub_names, timm_request
from selfreg.errors import UserError
from selfreg.factory import create_model, model_entry, native_cfg
from selfreg.use.predict import predict
from selfreg.use.trained import load_trained

timm = pytest.importorskip("timm")
from timm.data import create_dataset, create_loader, create_transform, resolve_data_config  # noqa: E402
from timm.data import resolve_input_data_config  # noqa: E402
from timm.models import PretrainedCfg, get_pretrained_cfg, resolve_model_input_args  # noqa: E402

MODEL = "resnet20"
# The shipped file that pretrained=True loads (src/selfreg/weights/manifest.json's default for MODEL).
TAG = next(w.tag for w in pretrained.load_manifest(pretrained.PACKAGE_DIR) if w.model == MODEL and w.default)


@pytest.fixture(autouse=True)
def package_weights(monkeypatch):
    """The package's shipped weights, whatever another test pointed $SELFREG_PRETRAINED_DIR at."""
    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)


@pytest.fixture(scope="module")
def weights():
    return pretrained.resolve(MODEL, TAG, pretrained.PACKAGE_DIR)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, weights):
    """root/{train,val}/<class>/*.png: 32x32 RGB images, smooth colour blobs plus noise (varied
    predictions), 5 per class in val/ (the split evaluated), 1 per class in train/."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("val", 5)):
        for label in weights.classes:
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32),
                                                                                               Image.BICUBIC)
                noisy = np.asarray(coarse).astype(int) + rng.integers(-20, 21, (32, 32, 3))
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / split / label / f"{i}.png")
    return root


def val_files(root):
    return sorted((root / "val").rglob("*.png"))


# ---------------------------------------------------------------------------- the cfg itself
def test_every_registered_model_has_a_native_cfg_timm_accepts():
    """Untrained, a model's cfg is its native input's (registry input_size): 32 px stretched with
    CIFAR-10 statistics for the CIFAR networks, ImageNet's centre crop for photo networks."""
    for name in hub_names():
        cfg = native_cfg(name)
        size = model_entry(name).meta.get("input_size", 224)
        assert cfg["input_size"] == (3, size, size), name
        assert PretrainedCfg(**cfg).architecture == TIMM_PREFIX + name
        assert get_pretrained_cfg(TIMM_PREFIX + name) is not None, f"timm has no cfg for {name}"
    cifar = native_cfg("rrnet56_gru")
    assert (cifar["crop_pct"], cifar["crop_mode"], cifar["interpolation"]) == (1.0, "squash", "bilinear")
    assert cifar["mean"] == (0.4914, 0.4822, 0.4465)
    photo = native_cfg("resnet18")
    assert (photo["input_size"], photo["crop_pct"], photo["crop_mode"]) == ((3, 224, 224), 0.875, "center")
    assert photo["mean"] == (0.485, 0.456, 0.406)
    assert native_cfg("lenet_bn", in_chans=1)["mean"] == (0.1307,)        # MNIST, its recipe's data


@pytest.mark.parametrize("name, kwargs, size", [("resnet20", {}, 32), ("vit_tiny_patch4_32", {}, 32),
                                                ("resnet18", {"img_size": 32}, 32), ("lenet_bn", {"in_chans": 1}, 28)])
def test_models_carry_the_cfg_and_num_classes(name, kwargs, size):
    model = create_model(name, num_classes=7, **kwargs)
    assert model.pretrained_cfg == native_cfg(name, 7, kwargs.get("in_chans", 3), kwargs.get("img_size"))
    assert model.default_cfg is model.pretrained_cfg and model.num_classes == 7
    assert model.pretrained_cfg["input_size"][1:] == (size, size)
    timm_model = timm.create_model(TIMM_PREFIX + name, num_classes=7, **kwargs)
    assert timm_model.pretrained_cfg == model.pretrained_cfg          # timm's own cfg of resnet18 is replaced


def test_eval_transform_in_timm_terms():
    """"resize" is timm's squash at crop_pct 1; "center_crop" gives our short side after timm floors."""
    stretch = EvalTransform(32, 3, [0.5] * 3, [0.25] * 3).timm_data_cfg()
    assert stretch == {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
                       "mean": (0.5,) * 3, "std": (0.25,) * 3}
    for size in (224, 160, 100, 299, 33):
        cfg = EvalTransform(size, 3, [0.5] * 3, [0.25] * 3, "center_crop").timm_data_cfg()
        resize = create_transform(**cfg).transforms[0]
        assert cfg["crop_mode"] == "center" and resize.size == round(size / 0.875), size


@pytest.mark.parametrize("w", pretrained.load_manifest(pretrained.PACKAGE_DIR), ids=lambda w: w.label)
def test_every_shipped_weight_carries_its_files_transform(w):
    header = json.loads(__import__("safetensors").safe_open(str(w.path), "pt").metadata()["selfreg"])
    spec = w.eval_transform
    assert spec.to_dict() == EvalTransform.from_dict(header["transform"]).to_dict()
    assert w.classes == header["classes"]
    cfg = w.pretrained_cfg()
    h, wd = spec.image_size
    assert cfg["input_size"] == (spec.channels, h, wd) and cfg["mean"] == tuple(spec.mean)
    assert cfg["std"] == tuple(spec.std) and cfg["label_names"] == tuple(header["classes"])
    assert (cfg["num_classes"], cfg["tag"]) == (len(header["classes"]), w.tag)
    assert cfg["architecture"] == TIMM_PREFIX + w.model
    model = create_model(w.model, pretrained=w.tag)
    assert model.pretrained_cfg == cfg and model.num_classes == len(w.classes)
    for tag in w.names:                                              # timm's registry: one cfg per tag and alias
        registered = get_pretrained_cfg(f"{TIMM_PREFIX}{w.model}.{tag}").to_dict()
        assert {k: registered[k] for k in cfg if k != "tag"} == {k: v for k, v in cfg.items() if k != "tag"}
    assert f"{TIMM_PREFIX}{w.model}.{w.tag}" in timm.list_pretrained(f"{TIMM_PREFIX}{w.model}*")


# ---------------------------------------------------------------------------- timm's pipeline == selfreg's
def test_timm_data_pipeline_predicts_what_selfreg_predicts(folder, weights):
    """The issue's steps, literally: create_model(pretrained=True), resolve_data_config({}, model=m),
    create_transform(**cfg), PIL -> transform -> model; the same classes as `selfreg predict`."""
    m = timm.create_model(TIMM_PREFIX + MODEL, pretrained=True)
    cfg = resolve_data_config({}, model=m)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    transform = create_transform(**cfg)
    trained = load_trained(weights.path)
    files = val_files(folder)
    with torch.no_grad():
        timm_in = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        ours_in = torch.stack([trained.transform.image(Image.open(f)) for f in files])
        torch.testing.assert_close(timm_in, ours_in, rtol=0, atol=1e-5)   # div vs mul by 255: float rounding
        timm_logits, ours_logits = m(timm_in), trained.model(ours_in)
    torch.testing.assert_close(timm_logits, ours_logits, rtol=1e-4, atol=1e-4)
    names = m.pretrained_cfg["label_names"]
    timm_classes = [names[i] for i in timm_logits.argmax(1).tolist()]
    assert timm_classes == [row.top[0][0] for row in predict(trained, files, topk=1)]
    assert len(set(timm_classes)) > 2, "the synthetic images should not all look alike to the model"


def timm_validate(root, model_name, prefetcher):
    """timm's validate.py, its steps as it takes them (CPU, no AMP): the model from
    resolve_model_input_args, the data config from resolve_input_data_config, an ImageFolder
    dataset and timm's loader. Returns (top-1 as a fraction, predictions, the dataset's classes)."""
    args = {"img_size": None, "input_size": None, "in_chans": None, "crop_pct": None, "crop_mode": None,
            "mean": None, "std": None, "interpolation": "", "model_kwargs": {}}
    model = timm.create_model(**resolve_model_input_args(model_name, args, pretrained=True, num_classes=None,
                                                         global_pool=None, scriptable=False))
    data_config = resolve_input_data_config(model, args, use_test_size=True)
    dataset = create_dataset(root=str(root), name="", split="validation",
                             input_img_mode="RGB" if data_config["input_size"][0] == 3 else "L")
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=16, use_prefetcher=prefetcher,
                           interpolation=data_config["interpolation"], mean=data_config["mean"],
                           std=data_config["std"], num_workers=0, crop_pct=data_config["crop_pct"],
                           crop_mode=data_config["crop_mode"], device=torch.device("cpu"))
    model.eval()
    preds, correct = [], 0
    with torch.no_grad():
        for images, target in loader:
            out = model(images).argmax(1)
            preds += out.tolist()
            correct += (out == target).sum().item()
    return correct / len(dataset), preds, list(dataset.reader.class_to_idx)


@pytest.mark.parametrize("prefetcher", [False, True], ids=["no-prefetcher", "prefetcher"])
def test_timm_validation_loop_reaches_selfreg_eval_accuracy(folder, weights, tmp_path, cli, prefetcher):
    top1, preds, classes = timm_validate(folder, TIMM_PREFIX + MODEL, prefetcher)
    assert classes == weights.classes                      # the folders sort into the model's class order
    result = cli("eval", weights.path, "--data", "folder", "--root", folder, "--split", "val", "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == len(preds) == len(val_files(folder))
    assert top1 == pytest.approx(metrics["top1"], abs=1e-9)
    trained = load_trained(weights.path)
    ours = [trained.classes.index(r.top[0][0]) for r in predict(trained, val_files(folder), topk=1)]
    assert preds == ours                                   # image for image (timm's files sort the same way)


# ---------------------------------------------------------------------------- timm's cfg arguments
def test_timm_cfg_arguments():
    model = timm.create_model(TIMM_PREFIX + MODEL, pretrained=True, pretrained_cfg_overlay={"crop_pct": 0.9})
    assert model.pretrained_cfg["crop_pct"] == 0.9 and model.pretrained_cfg["tag"] == TAG
    registry = get_pretrained_cfg(f"{TIMM_PREFIX}{MODEL}.cifar10-budget-s1").to_dict()
    assert timm_request(TIMM_PREFIX + MODEL, registry, None) == ("cifar10-budget-s1", {})
    default = get_pretrained_cfg(TIMM_PREFIX + MODEL).to_dict()
    assert timm_request(TIMM_PREFIX + MODEL, default, None) == (None, {})              # "the default"
    changed = {**default, "crop_mode": "center"}                                     # an overlay merged in
    assert timm_request(TIMM_PREFIX + MODEL, changed, None) == (None, {"crop_mode": "center"})
    with pytest.raises(UserError, match=r"^selfreg models load selfreg's weights only .*hf_hub_id"):
        timm_request(TIMM_PREFIX + MODEL, {**default, "hf_hub_id": "someone/model"}, None)
    with pytest.raises(UserError, match="not the file /elsewhere.pth; load a file with selfreg.create_model"):
        timm_request(TIMM_PREFIX + MODEL, {**default, "file": "/elsewhere.pth"}, None)
    with pytest.raises(UserError, match="may change how images are prepared .*not 'num_classes'"):
        timm_request(TIMM_PREFIX + MODEL, None, {"num_classes": 3})


# ---------------------------------------------------------------------------- fine-tuning through timm
def test_timm_fine_tuning_keeps_the_backbone(weights, caplog):
    source = create_model(MODEL, pretrained=TAG)
    with caplog.at_level(logging.INFO, logger="selfreg"):
        model = timm.create_model(TIMM_PREFIX + MODEL, pretrained=True, num_classes=100)
    assert f"starting from the pretrained weights {MODEL}:{TAG}" in caplog.text
    assert "new 100-class head (fc.weight, fc.bias)" in caplog.text
    ours, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("fc."))
    assert ours["fc.weight"].shape == (100, 64) and model.num_classes == 100
    assert model.pretrained_cfg["num_classes"] == 100 and "label_names" not in model.pretrained_cfg
    assert model.pretrained_cfg["mean"] == source.pretrained_cfg["mean"]
    assert selfreg.create_model(MODEL, pretrained=True, num_classes=100)(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
