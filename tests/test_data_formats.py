"""Built-in datasets loaded from tiny files in their real formats, through torchvision's parsers."""
import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

import dataset_writers as w
from selfreg.config import load_config
from selfreg.data import build_dataset, build_loaders
from selfreg.errors import UserError


def data_cfg(tmp_path, *overrides):
    return load_config(None, [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}",
                              *overrides]).data


def test_cifar10_pickles(tmp_path, monkeypatch):
    arrays = w.write_cifar10(tmp_path / "data")
    w.register_cifar_md5s(monkeypatch, CIFAR10, tmp_path / "data")
    splits = build_dataset(data_cfg(tmp_path, "data.name=cifar10", "data.val_fraction=20", "data.eval_test=true"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert splits.classes == w.CIFAR10_CLASSES and splits.in_chans == 3 and splits.image_size == 32
    assert splits.mean == pytest.approx([0.4914, 0.4822, 0.4465]) and splits.in_memory
    # Pixels and labels survive the trip: test is in file order, CHW.
    expected = torch.from_numpy(arrays["test"]).permute(0, 3, 1, 2)
    assert torch.equal(splits.test.base.images, expected)
    assert splits.test.base.labels.tolist() == arrays["test_labels"]
    # Train + val together are exactly the 100 training images.
    got = torch.cat([splits.train.base.images, splits.val.base.images]).flatten(1)
    want = torch.from_numpy(arrays["train"]).permute(0, 3, 1, 2).flatten(1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert "RandomCrop(32x32, padding=4)" in repr(splits.train_transform)   # the dataset's default recipe


def test_cifar10_default_val_is_5000(tmp_path, monkeypatch):
    w.write_cifar10(tmp_path / "data", per_batch=1100, test=1)
    w.register_cifar_md5s(monkeypatch, CIFAR10, tmp_path / "data")
    splits = build_dataset(data_cfg(tmp_path, "data.name=cifar10"))
    assert (len(splits.train), len(splits.val), splits.test) == (500, 5000, None)


def test_cifar10_md5_mismatch_is_reported(tmp_path):
    w.write_cifar10(tmp_path / "data")          # torchvision's official md5s do not match these files
    with pytest.raises(UserError, match=r"failed torchvision's check .*data.download=true"):
        build_dataset(data_cfg(tmp_path, "data.name=cifar10", "data.val_fraction=0.2"))


def test_cifar100_pickles(tmp_path, monkeypatch):
    w.write_cifar100(tmp_path / "data")
    w.register_cifar_md5s(monkeypatch, CIFAR100, tmp_path / "data")
    splits = build_dataset(data_cfg(tmp_path, "data.name=cifar100", "data.val_fraction=0.25"))
    assert (len(splits.train), len(splits.val), splits.num_classes) == (45, 15, 100)
    assert splits.std == pytest.approx([0.2673, 0.2564, 0.2762])


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path, name, folder):
    arrays = w.write_mnist(tmp_path / "data", folder)
    splits = build_dataset(data_cfg(tmp_path, f"data.name={name}", "data.val_fraction=10", "data.eval_test=true"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    assert splits.in_chans == 1 and splits.image_size == 28 and len(splits.mean) == 1
    x, y = arrays["t10k"]
    assert torch.equal(splits.test.base.images[:, 0], torch.from_numpy(x))
    assert splits.test.base.labels.tolist() == y.tolist()


def test_stl10_binaries_split_80_20(tmp_path, monkeypatch):
    arrays = w.write_stl10(tmp_path / "data")
    w.register_stl10_md5s(monkeypatch, tmp_path / "data")
    splits = build_dataset(data_cfg(tmp_path, "data.name=stl10", "data.eval_test=true"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 16)   # 80/20 of the labelled 40
    assert splits.image_size == 96 and splits.classes[2] == "car"
    x, y = arrays["test"]
    assert torch.equal(splits.test.base.images, torch.from_numpy(x))             # column-major undone
    assert splits.test.base.labels.tolist() == y.tolist()                         # 1..10 -> 0..9


@pytest.mark.parametrize("name,looked_for", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                             ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                             ("stl10", "stl10_binary"), ("imagenette", "imagenette2"),
                                             ("imagenet", "train")])
def test_missing_files_name_the_path_and_the_flag(tmp_path, name, looked_for):
    with pytest.raises(UserError) as err:
        build_dataset(data_cfg(tmp_path, f"data.name={name}"))
    message = str(err.value)
    assert "\n" not in message and looked_for in message and str(tmp_path / "data") in message
    assert ("data.download=true" in message) or ("cannot be downloaded" in message)


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path):
    w.write_mnist(tmp_path / "data")
    cfg = data_cfg(tmp_path, "data.name=mnist", "data.val_fraction=10")
    first = build_dataset(cfg)
    assert any("decoded into cache" in n for n in first.notes)
    caches = list((tmp_path / "cache").glob("mnist-*.pt"))
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    assert any("loaded uint8 cache" in n for n in build_dataset(cfg).notes)
    # Change one label byte: a new cache is built and holds the new label.
    labels = tmp_path / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(bytes(raw))
    again = build_dataset(cfg)
    assert any("decoded into cache" in n for n in again.notes)
    assert len(list((tmp_path / "cache").glob("mnist-*.pt"))) == 2
    # A corrupt cache file is rebuilt, not trusted.
    for path in (tmp_path / "cache").glob("mnist-*.pt"):
        path.write_bytes(b"garbage")
    assert any("unreadable" in n for n in build_dataset(cfg).notes)


def test_channels_and_resize_let_any_model_meet_any_dataset(tmp_path):
    w.write_mnist(tmp_path / "data")
    cfg = data_cfg(tmp_path, "data.name=mnist", "data.val_fraction=10", "data.channels=3", "data.image_size=32")
    splits = build_dataset(cfg)
    assert splits.in_chans == 3 and splits.image_size == 32 and splits.mean == [0.1307] * 3
    x, y = next(iter(build_loaders(splits, cfg, seed=0)["train"]))
    assert x.shape[1:] == (3, 32, 32) and torch.equal(x[:, 0], x[:, 2])


def test_rgb_to_grey(tmp_path, monkeypatch):
    w.write_cifar10(tmp_path / "data")
    w.register_cifar_md5s(monkeypatch, CIFAR10, tmp_path / "data")
    cfg = data_cfg(tmp_path, "data.name=cifar10", "data.val_fraction=20", "data.channels=1")
    splits = build_dataset(cfg)
    x, _ = next(iter(build_loaders(splits, cfg, seed=0)["val"]))
    assert splits.in_chans == 1 and x.shape[1] == 1 and len(splits.mean) == 1
    assert np.isclose(splits.mean[0], 0.2989 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465, atol=1e-4)


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    from selfreg.data import cache

    def disk_full(obj, f):
        f.write(b"half a cache")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache.torch, "save", disk_full)
    notes = []
    data, hit = cache.load_or_build(tmp_path / "c" / "x.pt", lambda: {"a": torch.ones(2)}, notes.append)
    assert torch.equal(data["a"], torch.ones(2)) and not hit
    assert list((tmp_path / "c").iterdir()) == [] and "could not write cache" in notes[0]
