"""Write tiny datasets in their real on-disk formats, for tests that load them through torchvision.

CIFAR and STL-10 loaders in torchvision check each file's md5 against the official
archive's. `register_md5s` points those class attributes at the md5s of the files
written here (with pytest's monkeypatch), so the integrity check still runs.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> dict:
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns the arrays (N, 32, 32, 3)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train, labels = [], []
    for b in range(1, 6):
        x = random_images(per_batch, (3, 32, 32), seed + b)
        y = rng.integers(0, 10, per_batch).tolist()
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"batch {b}", "data": x.reshape(per_batch, -1),
                                             "labels": y})
        train.append(x)
        labels += y
    xt = random_images(test, (3, 32, 32), seed + 99)
    yt = rng.integers(0, 10, test).tolist()
    _pickle(folder / "test_batch", {"data": xt.reshape(test, -1), "labels": yt})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072})
    return {"train": np.concatenate(train).transpose(0, 2, 3, 1), "train_labels": labels,
            "test": xt.transpose(0, 2, 3, 1), "test_labels": yt}


def write_cifar100(root: Path, train: int = 60, test: int = 20, seed: int = 0) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", train), ("test", test)):
        x = random_images(n, (3, 32, 32), seed + n)
        _pickle(folder / name, {"data": x.reshape(n, -1), "fine_labels": rng.integers(0, 100, n).tolist(),
                                "coarse_labels": rng.integers(0, 20, n).tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                              "coarse_label_names": [f"s{i}" for i in range(20)]})


def register_cifar_md5s(monkeypatch, cls, root: Path) -> None:
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX format: two zero bytes, type 0x08 (uint8), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, cls_name: str = "MNIST", train: int = 50, test: int = 20, seed: int = 0) -> dict:
    """<cls_name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, uncompressed as torchvision leaves them."""
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", train), ("t10k", test)):
        x = random_images(n, (28, 28), seed + n)
        y = rng.integers(0, 10, n).astype(np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[prefix] = (x, y)
    return out


def write_stl10(root: Path, train: int = 40, test: int = 16, seed: int = 0) -> dict:
    """stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt.

    STL-10 stores each image column-major (C, W, H); labels are 1..10.
    """
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", train), ("test", test), ("unlabeled", 2)):
        x = random_images(n, (3, 96, 96), seed + n)
        (folder / f"{name}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        if name != "unlabeled":
            y = rng.integers(1, 11, n).astype(np.uint8)
            (folder / f"{name}_y.bin").write_bytes(y.tobytes())
            out[name] = (x, y - 1)
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return out


def register_stl10_md5s(monkeypatch, root: Path) -> None:
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    monkeypatch.setattr(STL10, "train_list", [[f, md5(folder / f)] for f, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[f, md5(folder / f)] for f, _ in STL10.test_list])


def save_image(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    im.save(path, format=fmt, **({"quality": 95} if (fmt or path.suffix.lower()) in ("JPEG", ".jpg") else {}))


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class: int = 6, size: int = 16,
                       seed: int = 0, split: str = "train") -> list[Path]:
    """root/<split>/<class>/NNN.{png,jpg}: alternating lossless PNG and JPEG RGB files."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in classes:
        for i in range(per_class):
            ext = ".png" if i % 2 == 0 else ".jpg"
            path = root / split / c / f"{i:03d}{ext}"
            save_image(path, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            paths.append(path)
    return paths


def jpeg_bytes(size: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_images(1, (size, size, 3), seed)[0]).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
