"""Dataset registry, splits, presets and config handling; photo datasets on tiny trees."""
import numpy as np
import pytest
import torch

import dataset_writers as w
from selfreg.config import load_config
from selfreg.data import DATASETS, build_dataset, build_loaders
from selfreg.data.transforms import AUGMENTATIONS
from selfreg.errors import UserError


def cfg_of(*overrides):
    return load_config(None, list(overrides)).data


def test_registry_lists_every_dataset_of_the_issue():
    assert set(DATASETS.names()) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "stl10",
                                     "imagenette", "imagenet", "folder", "tensors"}
    assert {"none", "cifar", "shift", "imagenet", "lighting", "randaugment"} <= set(AUGMENTATIONS.names())


def test_digits_default_splits_and_stats():
    splits = build_dataset(cfg_of())
    assert (len(splits.train), len(splits.val), splits.test) == (1150, 288, None)
    assert splits.classes == [str(i) for i in range(10)] and splits.in_chans == 1 and splits.image_size == 32
    # Statistics are computed on the train split only.
    x = splits.train.base.images.float() / 255
    assert splits.mean[0] == pytest.approx(x.mean().item(), abs=1e-6)
    assert splits.std[0] == pytest.approx(x.std().item(), abs=1e-4)
    assert len(build_dataset(cfg_of("data.eval_test=true")).test) == 359
    assert len(build_dataset(cfg_of(), with_test=True).test) == 359


def test_digits_are_scikit_learns_load_digits():
    """digits reads scikit-learn's CSV itself (sparing every process the sklearn.datasets import):
    the same pixels and labels as load_digits, split as before (20% test, seed 0)."""
    from sklearn.datasets import load_digits

    from selfreg.data.datasets import holdout_count, split_indices

    raw = DATASETS.get("digits")(load_config(None, ["data.image_size=8"]).data, with_test=True, presets=[])
    bunch = load_digits()
    n = len(bunch.target)
    rest, test = split_indices(n, holdout_count(n, 0.2), seed=0)
    pixels = (torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16).mul(255).round().to(torch.uint8)
    labels = torch.as_tensor(bunch.target)
    for split, index in ((raw.train, rest), (raw.test, test)):
        assert torch.equal(split.images, pixels[index]) and torch.equal(split.labels, labels[index])
    assert raw.classes == [str(c) for c in bunch.target_names]


def test_val_split_is_fixed_by_seed_and_disjoint():
    def keys(ds):
        return {tuple(ds.base.images[i].flatten().tolist()[::7]) + (int(ds.base.labels[i]),) for i in range(len(ds))}
    a, b = build_dataset(cfg_of()), build_dataset(cfg_of())
    assert torch.equal(a.val.base.images, b.val.base.images)
    other = build_dataset(cfg_of("data.split_seed=1"))
    assert not torch.equal(a.val.base.images, other.val.base.images)
    assert not keys(a.val) & keys(a.train)
    assert len(build_dataset(cfg_of("data.val_fraction=100")).val) == 100
    assert len(build_dataset(cfg_of("data.val_fraction=0.5")).val) == 719


@pytest.mark.parametrize("value,match", [("0", "must be a fraction in"), ("5000", "holds out 5000 of 1438"),
                                         ("x", "must be a number"), ("1.5", "a whole count >= 1")])
def test_bad_val_fraction(value, match):
    with pytest.raises(UserError, match=match):
        build_dataset(cfg_of(f"data.val_fraction={value}"))


def test_subset_is_fixed_and_leaves_val_alone():
    full, small = build_dataset(cfg_of()), build_dataset(cfg_of("data.subset=300"))
    assert len(small.train) == 300 and torch.equal(small.val.base.images, full.val.base.images)
    assert torch.equal(small.train.base.images, build_dataset(cfg_of("data.subset=300")).train.base.images)
    with pytest.raises(UserError, match="data.subset=5000 but the train split has 1150"):
        build_dataset(cfg_of("data.subset=5000"))


@pytest.mark.parametrize("override,match", [
    ("data.name=cifar", r"unknown dataset \(data.name\) 'cifar'; did you mean: cifar10, cifar100"),
    ("data.augment=[cifar,fancy]", r"unknown data.augment preset 'fancy'"),
    ("data.channels=2", "data.channels must be one of auto, 1, 3"),
    ("data.augment=lighting", "'lighting' needs RGB images; set data.channels=3"),
])
def test_config_mistakes_name_the_fix(override, match):
    with pytest.raises(UserError, match=match):
        build_dataset(cfg_of(override))


def test_augment_list_and_auto():
    assert cfg_of("data.augment=cifar").augment == ["cifar"]
    splits = build_dataset(cfg_of("data.augment=[shift,lighting]", "data.channels=3"))
    assert "Lighting(alphastd=0.1)" in repr(splits.train_transform)
    assert "Lighting" not in repr(splits.eval_transform)
    assert not build_dataset(cfg_of()).train_transform.random            # digits' own recipe: none


def test_randaugment_from_timm_runs_on_both_paths():
    cfg = cfg_of("data.augment=[randaugment,shift]", "data.channels=3", "data.batch_size=16")
    splits = build_dataset(cfg)
    assert "RandAugment" in repr(splits.train_transform)
    for kind in ("fast", "torch"):
        cfg.loader = kind
        loader = build_loaders(splits, cfg, seed=0)["train"]
        loader.set_epoch(1)
        x, _ = next(iter(loader))
        assert x.shape == (16, 3, 32, 32) and torch.isfinite(x).all()


def write_photos(split_dir, classes, per_class=2, ext=".JPEG"):
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(per_class):
            h, wd = rng.integers(20, 40, 2)
            w.save_image(split_dir / c / f"{c}_{i}{ext}", rng.integers(0, 256, (h, wd, 3), dtype=np.uint8), "JPEG")


def test_imagenet_folder_layout(tmp_path):
    for split in ("train", "val"):
        write_photos(tmp_path / "inet" / split, ["n01440764", "n02102040"])
    cfg = cfg_of("data.name=imagenet", f"data.root={tmp_path / 'inet'}", "data.image_size=16")
    splits = build_dataset(cfg)
    assert (len(splits.train), len(splits.val), splits.test) == (4, 4, None)
    assert splits.mean == [0.485, 0.456, 0.406] and splits.classes == ["n01440764", "n02102040"]
    assert "RandomResizedCrop(16x16)" in repr(splits.train_transform)
    assert "Resize(18) + CenterCrop(16x16)" in repr(splits.eval_transform)
    loaders = build_loaders(splits, cfg, seed=0)
    assert next(iter(loaders["train"]))[0].shape == (4, 3, 16, 16)
    assert next(iter(loaders["val"]))[0].shape == (4, 3, 16, 16)
    with pytest.raises(UserError, match="vary in size; add a size-fixing preset"):
        build_dataset(cfg_of("data.name=imagenet", f"data.root={tmp_path / 'inet'}", "data.augment=cifar"))


def test_imagenet_scale_preset_resizes_the_shorter_side_then_crops():
    from selfreg.data.transforms import Context, build_pipelines, presets_fix_size, scale_range, seeded

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ctx = Context(None, (224, 224), 3, 3)                 # photos of any size, a 224 model
    pipes = build_pipelines(["scale"], ctx, mean, std)
    assert presets_fix_size(["scale"]) and scale_range((224, 224)) == (256, 480)
    assert repr(pipes.train.stages[0]) == ("RandomResize(shorter side 256..480) + RandomCrop(224x224) "
                                           "+ RandomHorizontalFlip")
    img = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resize = pipes.train.stages[0].transform.transforms[0]
    sides = []
    for seed in range(40):                                  # the preset's first step, seeded as the loader seeds it
        with seeded(seed):
            resized = resize(img)
        short, long = resized.shape[-2:]
        assert 256 <= short <= 480 and abs(long - short * 50 / 30) <= 1, resized.shape
        sides.append(short)
    assert min(sides) < 290 and max(sides) > 445                         # spread over the range
    with seeded(0):
        assert pipes.train(img).shape == (3, 224, 224)
    # Eval: shorter side 256, centre 224, the very pixels of the imagenet preset's eval.
    rrc = build_pipelines(["imagenet"], ctx, mean, std)
    assert repr(pipes.eval.stages[0]) == repr(rrc.eval.stages[0]) == "Resize(256) + CenterCrop(224x224)"
    assert torch.equal(pipes.eval(img), rrc.eval(img))


def test_imagenet_folder_with_scale_augmentation(tmp_path):
    for split in ("train", "val"):
        write_photos(tmp_path / "inet" / split, ["n01440764", "n02102040"])
    cfg = cfg_of("data.name=imagenet", f"data.root={tmp_path / 'inet'}", "data.image_size=16", "data.augment=scale")
    splits = build_dataset(cfg)
    assert "RandomResize(shorter side 18..34) + RandomCrop(16x16)" in repr(splits.train_transform)
    assert "Resize(18) + CenterCrop(16x16)" in repr(splits.eval_transform)
    loaders = build_loaders(splits, cfg, seed=0)
    assert next(iter(loaders["train"]))[0].shape == (4, 3, 16, 16)
    # What a checkpoint saves rebuilds the same eval pixels.
    saved = splits.eval_spec
    img = torch.randint(0, 256, (3, 30, 21), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert saved.resize == "center_crop" and torch.equal(saved.pipeline(3)(img), splits.eval_transform(img))


def test_imagenette_through_torchvision(tmp_path):
    root = tmp_path / "nette" / "imagenette2-160"
    for split in ("train", "val"):
        write_photos(root / split, ["n01440764", "n03394916"])
    cfg = cfg_of("data.name=imagenette", f"data.root={tmp_path / 'nette'}", "data.size=160", "data.image_size=16")
    splits = build_dataset(cfg)
    assert splits.classes == ["tench", "French horn"] and (len(splits.train), len(splits.val)) == (4, 4)
    x, y = next(iter(build_loaders(splits, cfg, seed=0)["val"]))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(UserError, match="data.size must be one of full, 320, 160"):
        build_dataset(cfg_of("data.name=imagenette", "data.size=200"))


def test_default_config_is_backwards_compatible():
    cfg = cfg_of()
    assert (cfg.name, cfg.image_size, cfg.val_fraction, cfg.augment, cfg.loader) == ("digits", 0, None, ["auto"], "auto")
    assert not cfg.download and not cfg.eval_test and not cfg.skip_bad and not cfg.cache
