"""Dataset builders, registered by name.

    splits = build_dataset(cfg.data)      # DataSplits: train / val / test, classes, stats, pipelines

A builder returns `Raw`: the images of each split as stored (uint8 CHW, in memory
or as files), the class names, channel count, native size and statistics. The
shared code here then carves a validation split where the dataset has none,
takes a training subset, picks the channel count and builds the train / eval
pipelines. Datasets whose files are missing fail in one line naming the folder
looked at and `data.download=true`; parsing and downloading use torchvision's
own dataset classes. The `folder` dataset (any ImageFolder tree: scanning, bad-file
policy, uint8 cache) lives in data/folder.py.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from ..registry import Registry
from . import images as img
from .cache import cache_dir, hash_files, load_or_build
from .eval_transform import EvalTransform
from .transforms import (AUGMENTATIONS, STATS, Context, Pipeline, build_pipelines, convert_stats, image_stats,
                         mix_seed, presets_fix_size, seeded)

DATASETS = Registry("dataset (data.name)")


# ---------------------------------------------------------------------------------------
# Split datasets

class TensorImages(Dataset):
    """uint8 (N, C, H, W) images and int64 labels held in memory: what the fast loader serves."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4, "images must be uint8 NCHW"
        self.images, self.labels = images, labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def select(self, idx: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[idx], self.labels[idx])


class FileImages(Dataset):
    """Image files decoded on access (large datasets), with their labels."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], decode: Callable[[str], torch.Tensor]):
        self.files, self.labels, self.decode = list(files), list(labels), decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.decode(self.files[i]), self.labels[i]

    def select(self, idx: torch.Tensor) -> "FileImages":
        return FileImages([self.files[i] for i in idx.tolist()], [self.labels[i] for i in idx.tolist()],
                          self.decode)


class Transformed(Dataset):
    """A split as the model sees it: `base` images through `transform`.

    Random stages run under a seed made of (seed, epoch, index), so a sample's
    augmentation depends neither on the worker that loads it nor on the training
    loop's RNG, and `set_epoch` replays any epoch exactly.
    """

    def __init__(self, base: Dataset, transform: Pipeline, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        if not self.transform.random:
            return self.transform(image), label
        with seeded(mix_seed(self.seed, self.epoch, i)):
            return self.transform(image), label

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def select(ds: Dataset, idx: torch.Tensor) -> Dataset:
    return ds.select(idx) if hasattr(ds, "select") else Subset(ds, idx.tolist())


@dataclass
class DataSplits:
    """What a run needs from a dataset. Items are (float32 normalised CHW, int label)."""
    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list[str]
    in_chans: int
    image_size: int | tuple[int, int]
    mean: Sequence[float] = field(default_factory=list)
    std: Sequence[float] = field(default_factory=list)
    # Per-image reference pipelines (uint8 CHW in, model input out); `.batch` is the batched twin.
    train_transform: Pipeline | None = None
    eval_transform: Pipeline | None = None
    # The eval pipeline as data, made with it: what a checkpoint saves (data/eval_transform.py).
    eval_spec: EvalTransform | None = None
    # True when every split is a uint8 tensor in memory, so the fast loader can serve it.
    in_memory: bool = False
    # Bad image files skipped under data.skip_bad (also listed in `notes`).
    skipped: int = 0
    # Lines for the run log: conversions, skipped files, cache use.
    notes: list[str] = field(default_factory=list)
    # True when the dataset has a validation split of its own (data.val_fraction is then unused).
    own_val: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Raw:
    """A builder's result: splits as stored (uint8 CHW items), before pipelines."""
    train: Dataset
    val: Dataset | None                     # None: carve from train
    test: Dataset | None
    classes: list[str]
    channels: int
    size: tuple[int, int] | None            # None: images vary in size
    mean: Sequence[float] | None = None     # None: computed on the train split
    std: Sequence[float] | None = None
    val_default: float = 0.2                # data.val_fraction when the config leaves it null
    notes: list[str] = field(default_factory=list)
    skipped: int = 0


# ---------------------------------------------------------------------------------------
# The shared part of every build

def build_dataset(cfg, *, with_test: bool | None = None, needed: Sequence[str] | None = None) -> DataSplits:
    """Build the dataset named by `cfg.name` (a `DataConfig`).

    The test split is loaded only when `with_test` is true, or when it is None and
    `cfg.eval_test` is set: training runs tune on val and never look at test.
    `needed` names the splits the caller reads (default: all); `selfreg eval` passes its one.
    """
    with_test = cfg.eval_test if with_test is None else with_test
    entry = DATASETS.entry(cfg.name)
    # Datasets that scan their files may skip bad ones in splits the caller does not use.
    extra = {"needed": tuple(needed)} if needed is not None and entry.meta.get("scans_files") else {}
    # Check the cheap options before a builder spends seconds decoding.
    presets = resolve_augment(cfg.augment, entry.meta.get("augment", ["none"]))
    wanted_channels = resolve_channels(cfg.channels)
    if cfg.image_size < 0:
        raise UserError(f"data.image_size must be 0 (native) or a positive size, got {cfg.image_size}")
    raw = entry.fn(cfg, with_test=with_test, presets=presets, **extra)

    train, val = raw.train, raw.val
    notes = list(raw.notes)
    if val is not None and cfg.val_fraction is not None:
        notes.append(f"data.val_fraction={cfg.val_fraction} not used: {cfg.name} has a validation split of its "
                     f"own ({len(val)} images); the run records data.val_fraction: null")
    if val is None:
        holdout = holdout_count(len(train), raw.val_default if cfg.val_fraction is None else cfg.val_fraction)
        rest, val_idx = split_indices(len(train), holdout, cfg.split_seed)
        train, val = select(train, rest), select(train, val_idx)
    if cfg.subset:
        train = take_subset(train, cfg.subset, cfg.split_seed)

    channels = wanted_channels or raw.channels
    mean, std = (raw.mean, raw.std) if raw.mean is not None else train_stats(train)
    mean, std = convert_stats(mean, std, channels)
    target = resolve_size(cfg.image_size, raw.size)
    pipes = build_pipelines(presets, Context(raw.size, target, raw.channels, channels), mean, std)
    test = raw.test if with_test else None
    notes += [f"train pipeline: {pipes.train}", f"eval pipeline: {pipes.eval}"]
    return DataSplits(
        Transformed(train, pipes.train), Transformed(val, pipes.eval),
        Transformed(test, pipes.eval) if test is not None else None,
        classes=list(raw.classes), in_chans=channels, image_size=target[0] if target[0] == target[1] else target,
        mean=mean, std=std, train_transform=pipes.train, eval_transform=pipes.eval,
        eval_spec=EvalTransform(target, channels, list(mean), list(std),
                                "center_crop" if presets_fix_size(presets) else "resize"),
        in_memory=all(isinstance(d, TensorImages) for d in (train, val, test) if d is not None),
        skipped=raw.skipped, notes=notes, own_val=raw.val is not None)


def data_source(cfg) -> tuple[Path, list[Path] | None]:
    """The folder a dataset reads and, when it reads only some files there, those files: what
    a run's provenance fingerprints (selfreg.provenance.data_fingerprint). Each builder says
    so at registration (`files=`); one that does not is taken to read all of data.root."""
    files = DATASETS.entry(cfg.name).meta.get("files")
    return files(cfg) if files is not None else (Path(cfg.root).expanduser(), None)


def whole_root(cfg) -> tuple[Path, None]:
    """`files=` of a dataset that reads everything under data.root."""
    return Path(cfg.root).expanduser(), None


def ignored_notes(listings) -> list[str]:
    ignored = [p for listing in listings for p in listing.ignored]
    if not ignored:
        return []
    return [f"ignored {len(ignored)} file(s) without an image extension, e.g. {', '.join(ignored[:3])}"]


def resolve_augment(names: Sequence[str], default: Sequence[str]) -> list[str]:
    """`data.augment` names in order, checked; "auto" stands for the dataset's own recipe."""
    out: list[str] = []
    for name in names:
        out.extend(default if name == "auto" else [name])
    for name in out:
        AUGMENTATIONS.entry(name)                  # unknown name -> UserError listing the valid ones
    return out or ["none"]


CHANNELS = {"auto": None, "1": 1, "3": 3}


def resolve_channels(wanted: str) -> int | None:
    """data.channels as a count, or None to keep the dataset's."""
    if str(wanted) not in CHANNELS:
        raise UserError(f"data.channels must be auto, 1 or 3, got {wanted!r}")
    return CHANNELS[str(wanted)]


def resolve_size(image_size: int, native: tuple[int, int] | None) -> tuple[int, int]:
    """The model's input size: data.image_size, else the native size, else 224 for photos."""
    if image_size:
        return (image_size, image_size)
    return native if native is not None else (224, 224)


def split_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-seed random split of range(n) into (rest, holdout) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]


def holdout_count(n: int, fraction_or_count: float) -> int:
    """A fraction in (0, 1) of n, or an absolute count when >= 1; must leave training images."""
    if not isinstance(fraction_or_count, (int, float)) or isinstance(fraction_or_count, bool) \
            or fraction_or_count <= 0:
        raise UserError(f"data.val_fraction must be a fraction in (0, 1) or a count >= 1, got {fraction_or_count!r}")
    count = int(fraction_or_count) if fraction_or_count >= 1 else int(round(n * fraction_or_count))
    if not 1 <= count < n:
        raise UserError(f"data.val_fraction={fraction_or_count} holds out {count} of {n} training images; "
                        "choose a value that leaves both splits non-empty")
    return count


def take_subset(train: Dataset, size: int, seed: int) -> Dataset:
    """A fixed-seed random `size` of train (data.subset), for quick runs."""
    if size < 0 or size > len(train):
        raise UserError(f"data.subset={size} but the train split has {len(train)} images; "
                        f"use 0 (all) or at most {len(train)}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(seed, 1)))
    return select(train, perm[:size].sort().values)


def train_stats(train: Dataset, sample: int = 1000) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of train: exact in memory, else from a fixed sample of images."""
    if isinstance(train, TensorImages):
        return image_stats(train.images)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:sample]
    total = total_sq = 0.0
    count = 0
    for i in idx.tolist():
        x = train[i][0].to(torch.float64).div(255).flatten(1)              # (C, H*W)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    return mean.tolist(), (total_sq / count - mean * mean).clamp_min(0).sqrt().tolist()


# ---------------------------------------------------------------------------------------
# digits: bundled with scikit-learn, the offline default

def digits_csv() -> Path:
    """The CSV scikit-learn ships, which `sklearn.datasets.load_digits` parses: found without
    importing sklearn.datasets (its import, scipy and the rest, costs ~1.4 s in every process
    that trains on digits: the demo, each torchrun rank, each sweep job)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = (Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise UserError("the digits dataset is scikit-learn's bundled copy and it was not found; "
                        "pip install scikit-learn")
    return path


def _digits_files(cfg) -> tuple[Path, list[Path]]:
    """The CSV (version-bound, so worth fingerprinting)."""
    path = digits_csv()
    return path.parent, [path]


@DATASETS.register("digits", augment=["none"], files=_digits_files, reads_root=False,
                   paper="scikit-learn's copy of the UCI optical digits (8x8, 1,797 images)")
def digits(cfg, *, with_test: bool, presets: list[str]) -> Raw:
    """scikit-learn's bundled 8x8 digits, upsampled (bilinear) to `image_size` (default 32). No download.

    There is no official split: a fixed 20% test split (seed 0, independent of
    `split_seed`) is set aside first; val is carved from the rest (default 20%).
    Upsampling happens here, before augmentation, so a 2-pixel shift means the
    same at 32 px as in the demo recipe. No disk cache: the 60 KB CSV parses in
    milliseconds, faster than a cache file would load.
    """
    import numpy as np

    size = cfg.image_size or 32
    table = np.loadtxt(digits_csv(), delimiter=",")         # as load_digits: 64 pixels (0-16), then the label
    images = torch.tensor(table[:, :-1].reshape(-1, 1, 8, 8), dtype=torch.float32) / 16.0   # in [0, 1]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    labels = torch.tensor(table[:, -1].astype(int), dtype=torch.long)
    rest, test_idx = split_indices(len(labels), holdout_count(len(labels), 0.2), seed=0)
    return Raw(TensorImages(images[rest], labels[rest]), None, TensorImages(images[test_idx], labels[test_idx]),
               classes=[str(c) for c in range(10)], channels=1, size=(size, size), val_default=0.2)


# ---------------------------------------------------------------------------------------
# Array datasets parsed by torchvision, cached as uint8 tensors

@dataclass
class ArraySpec:
    """Where a torchvision dataset lives under data.root and how to turn it into tensors."""
    folder: Callable[[Path], Path]              # the folder torchvision reads
    required: list[str]                         # files torchvision insists on (checked before it runs)
    hashed: list[str]                           # files whose bytes key the cache (the ones we read)
    load: Callable[[Path, bool], dict]          # (root, download) -> {train_images, ..., classes}
    source: Callable[[Path], "Source"]          # root -> what data.download=true fetches, and into where


@dataclass
class Source:
    """What torchvision downloads (each file from the first mirror that answers) and the folder it puts
    the archives in: an archive placed there by hand is checked and unpacked, never downloaded again."""
    mirrors: list[str]
    files: list[str]
    into: Path

    def urls(self) -> str:
        if len(self.mirrors) == 1:
            return ", ".join(self.mirrors[0] + f for f in self.files)
        return f"{', '.join(self.files)} from {' or '.join(self.mirrors)}"


def _url_source(url: str, into: Path) -> Source:
    """One archive at `url` (read when the download starts, so a changed class attribute counts)."""
    head, _, name = url.rpartition("/")
    return Source([head + "/"], [name], into)


def _cifar_spec(cls) -> ArraySpec:
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return ArraySpec(lambda root: root / cls.base_folder, names, names, lambda root, dl: _load_cifar(cls, root, dl),
                     lambda root: _url_source(cls.url, root))


def _load_cifar(cls, root: Path, download: bool) -> dict:
    train, test = cls(str(root), train=True, download=download), cls(str(root), train=False)
    chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731 (HWC -> CHW)
    return {"train_images": chw(train.data), "train_labels": torch.tensor(train.targets),
            "test_images": chw(test.data), "test_labels": torch.tensor(test.targets), "classes": train.classes}


def _mnist_spec(cls) -> ArraySpec:
    names = [Path(url).stem for url, _ in cls.resources]          # the unpacked idx files
    return ArraySpec(lambda root: root / cls.__name__ / "raw", names, names,
                     lambda root, dl: _load_mnist(cls, root, dl),
                     lambda root: Source(list(cls.mirrors), [f for f, _ in cls.resources], root / cls.__name__ / "raw"))


def _load_mnist(cls, root: Path, download: bool) -> dict:
    train, test = cls(str(root), train=True, download=download), cls(str(root), train=False)
    return {"train_images": train.data[:, None].contiguous(), "train_labels": train.targets,
            "test_images": test.data[:, None].contiguous(), "test_labels": test.targets,
            "classes": list(cls.classes)}


STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _stl10_spec() -> ArraySpec:
    from torchvision.datasets import STL10

    required = [f for f, _ in STL10.train_list + STL10.test_list]
    labelled = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]   # not the 2.5 GB unlabeled_X.bin
    return ArraySpec(lambda root: root / STL10.base_folder, required, labelled, _load_stl10,
                     lambda root: _url_source(STL10.url, root))


def _load_stl10(root: Path, download: bool) -> dict:
    from torchvision.datasets import STL10

    train, test = STL10(str(root), split="train", download=download), STL10(str(root), split="test")
    return {"train_images": torch.from_numpy(train.data).contiguous(), "train_labels": torch.from_numpy(train.labels),
            "test_images": torch.from_numpy(test.data).contiguous(), "test_labels": torch.from_numpy(test.labels),
            "classes": list(getattr(train, "classes", STL10_CLASSES))}


def array_dataset(cfg, name: str, spec: ArraySpec) -> tuple[dict, list[str]]:
    """The dataset's tensors from the cache, or parsed by torchvision (downloading if asked) and cached."""
    root = Path(cfg.root).expanduser()
    folder = spec.folder(root)
    missing = [f for f in spec.required if not (folder / f).is_file()]
    if missing and not cfg.download:
        raise UserError(f"{name} not found: looked for {folder / missing[0]}; pass data.download=true to "
                        f"download it there, or set data.root to the folder that holds {folder.relative_to(root)}/")
    if missing:
        source = spec.source(root)
        _torchvision_call(name, folder, lambda: _download(name, folder.relative_to(root), source,
                                                          lambda: spec.load(root, True)))
    key = hash_files([folder / f for f in spec.hashed], name)
    path = cache_dir(cfg) / f"{name}-{key}.pt"
    notes: list[str] = []
    data, cached = load_or_build(path, lambda: _torchvision_call(name, folder, lambda: spec.load(root, False)),
                                 notes.append)
    notes.append(f"{name}: {'loaded uint8 cache' if cached else 'decoded into cache'} {path}")
    return data, notes


def _torchvision_call(name: str, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run torchvision's loader; its integrity failures become one-line user errors."""
    try:
        return fn()
    except RuntimeError as exc:
        raise UserError(f"{name} files in {folder} failed torchvision's check ({exc}); delete them and pass "
                        "data.download=true") from None


# What a failed download raises: no network, DNS, refused or dropped connections, TLS, HTTP errors.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.gaierror,
                  ssl.SSLError)


def _download(name: str, folder: Path, source: Source, fn: Callable[[], Any]) -> Any:
    """Run torchvision's download (`fn`); a failure is one line naming the URLs and where files go by hand.

    `folder` is where the unpacked files live, relative to data.root (for a data.root that holds them).
    """
    try:
        return fn()
    except RuntimeError as exc:
        # torchvision's MNIST tries each mirror, then raises RuntimeError("Error downloading ...");
        # other RuntimeErrors are integrity failures, for `_torchvision_call`.
        if not str(exc).startswith("Error downloading"):
            raise
        last = str(exc).strip().splitlines()[-1]
        reason, network = last.removeprefix("<urlopen error ").removesuffix(">"), True
    except (OSError, http.client.HTTPException) as exc:
        reason, network = _reason(exc), isinstance(exc, NETWORK_ERRORS)
    them = "it" if len(source.files) == 1 else "them"
    hint = (f"if this machine cannot reach {them}, download {them} elsewhere and put {them} in {source.into} "
            f"(data.download=true then unpacks {them} without the network), or set data.root to a folder that "
            f"already holds {folder}/" if network else f"check that {source.into} is writable and has space")
    raise UserError(f"could not download {name}: {source.urls()} ({reason}); {hint}") from None


def _reason(exc: BaseException) -> str:
    """A short, one-line reason: URLError's own reason, an OSError's strerror, else its text."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return " ".join(str(text).split())[:160]


def _array_builder(name: str, spec_fn: Callable[[], ArraySpec], stats_name: str, val_default: float):
    def build(cfg, *, with_test: bool, presets: list[str]) -> Raw:
        data, notes = array_dataset(cfg, name, spec_fn())
        images = data["train_images"]
        mean, std = STATS[stats_name]
        test = TensorImages(data["test_images"], data["test_labels"]) if with_test else None
        return Raw(TensorImages(images, data["train_labels"]), None, test, classes=list(data["classes"]),
                   channels=images.shape[1], size=tuple(images.shape[-2:]), mean=mean, std=std,
                   val_default=val_default, notes=notes)
    build.__doc__ = f"{name}: torchvision's parser, uint8 cache, val carved from train (default {val_default:g})."
    return build


def _register_arrays() -> None:
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

    # (name, spec, stats, default val holdout, default augmentation, source)
    table = [
        ("mnist", lambda: _mnist_spec(MNIST), "mnist", 5000, ["none"], "LeCun et al. 1998; 60k/10k 28x28 grey"),
        ("fashion_mnist", lambda: _mnist_spec(FashionMNIST), "fashion_mnist", 5000, ["none"],
         "Xiao et al. 2017; 60k/10k 28x28 grey"),
        ("cifar10", lambda: _cifar_spec(CIFAR10), "cifar10", 5000, ["cifar"], "Krizhevsky 2009; 50k/10k 32x32"),
        ("cifar100", lambda: _cifar_spec(CIFAR100), "cifar100", 5000, ["cifar"], "Krizhevsky 2009; 50k/10k 32x32"),
        ("stl10", _stl10_spec, "stl10", 0.2, ["stl10"], "Coates et al. 2011; 5k labelled/8k test 96x96"),
    ]
    for name, spec, stats, val, augment, source in table:
        DATASETS.add(name, _array_builder(name, spec, stats, val), augment=augment, paper=source,
                     files=_array_files(spec))


def _array_files(spec_fn: Callable[[], ArraySpec]) -> Callable:
    """The files the cache key hashes: exactly what torchvision parses (not archives beside them)."""
    def files(cfg) -> tuple[Path, list[Path]]:
        spec = spec_fn()
        folder = spec.folder(Path(cfg.root).expanduser())
        return folder, [folder / f for f in spec.hashed]
    return files


_register_arrays()


# ---------------------------------------------------------------------------------------
# tensors: uint8 image tensors in torch.save files (airbench's CifarLoader format)

def _tensor_files(cfg) -> tuple[Path, list[Path]]:
    root = Path(cfg.root).expanduser()
    return root, [root / name for name in ("train.pt", "test.pt") if (root / name).is_file()]


@DATASETS.register("tensors", augment=["none"], files=_tensor_files,
                   paper="uint8 image tensors saved with torch.save: root/train.pt (+ test.pt), as airbench reads")
def tensors(cfg, *, with_test: bool, presets: list[str]) -> Raw:
    """`root/train.pt` and optionally `root/test.pt`, each {images: uint8 (N, H, W, C) or (N, C, H, W),
    labels, classes}: airbench's CifarLoader files (benchmarks/make_cifar_tensor.py writes them from the
    CIFAR-10 JPEG copy), so a benchmark and airbench read the very same images. Val is carved from
    train (default 10%); statistics are computed on the train split.
    """
    root = Path(cfg.root).expanduser()
    if not (root / "train.pt").is_file():
        raise UserError(f"tensors dataset not found: looked for {root / 'train.pt'}; make one with "
                        "benchmarks/make_cifar_tensor.py or set data.root to the folder holding train.pt")
    train = _tensor_file(root / "train.pt")
    test = _tensor_file(root / "test.pt") if with_test else None
    if with_test and test is None:
        raise UserError(f"data.eval_test=true but {root / 'test.pt'} does not exist")
    classes = train.pop("classes")
    images = train["images"]
    return Raw(TensorImages(images, train["labels"]), None,
               TensorImages(test["images"], test["labels"]) if test else None, classes=classes,
               channels=images.shape[1], size=tuple(images.shape[-2:]), val_default=0.1,
               notes=[f"tensors: {len(images)} train images from {root / 'train.pt'}"])


def _tensor_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = data["images"], torch.as_tensor(data["labels"], dtype=torch.int64)
    except Exception as exc:  # noqa: BLE001 - unreadable or missing keys: say which file
        raise UserError(f"{path} is not an image tensor file ({type(exc).__name__}: {str(exc)[:80]}); "
                        "expected a dict of uint8 images, labels and classes") from None
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(f"{path}: images must be a uint8 tensor of 4 dimensions, "
                        f"got {images.dtype} {tuple(images.shape)}")
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):   # NHWC (airbench) -> NCHW
        images = images.permute(0, 3, 1, 2)
    classes = list(data.get("classes") or [str(c) for c in range(int(labels.max()) + 1)])
    return {"images": images.contiguous(), "labels": labels, "classes": classes}


# ---------------------------------------------------------------------------------------
# Photo datasets decoded per image: imagenette, imagenet

IMAGENETTE_SIZES = {"full": "full", "320": "320px", "320px": "320px", "160": "160px", "160px": "160px"}
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"


def _imagenette_files(cfg) -> tuple[Path, None]:
    size = IMAGENETTE_SIZES.get(str(cfg.size), "full")
    return Path(cfg.root).expanduser() / IMAGENETTE_FOLDERS[size], None


@DATASETS.register("imagenette", augment=["imagenet"], files=_imagenette_files,
                   paper="fast.ai's 10-class ImageNet subset (torchvision.datasets.Imagenette)")
def imagenette(cfg, *, with_test: bool, presets: list[str]) -> Raw:
    """torchvision's Imagenette at data.size full / 320 / 160; its official val split is val; no test."""
    from torchvision.datasets import Imagenette

    if str(cfg.size) not in IMAGENETTE_SIZES:
        raise UserError(f"data.size must be one of full, 320, 160 for imagenette, got {cfg.size!r}")
    size = IMAGENETTE_SIZES[str(cfg.size)]
    root = Path(cfg.root).expanduser()
    folder = root / IMAGENETTE_FOLDERS[size]
    if folder.is_dir() and not all((folder / split).is_dir() for split in ("train", "val")):
        raise UserError(f"imagenette folder {folder} lacks train/ or val/ (unpacking cut short?); delete it and "
                        "pass data.download=true, or unpack the archive there again")
    if not folder.is_dir() and not cfg.download:
        raise UserError(f"imagenette not found: looked for {folder}; pass data.download=true to download it there")
    if not folder.is_dir():
        # torchvision keeps the archives' URLs in a private table; the fast.ai address is the fallback.
        url = getattr(Imagenette, "_ARCHIVES", {}).get(size, (f"{IMAGENETTE_URL}{IMAGENETTE_FOLDERS[size]}.tgz",))[0]
        _torchvision_call("imagenette", folder, lambda: _download(
            "imagenette", folder.relative_to(root), _url_source(url, root),
            lambda: Imagenette(str(root), split="train", size=size, download=True)))
    decode = img.FileDecoder(3, None)
    train, val = (_torchvision_call("imagenette", folder, lambda: Imagenette(str(root), split=split, size=size,
                                                                             loader=decode)) for split in ("train", "val"))
    mean, std = STATS["imagenet"]
    return Raw(train, val, None, classes=[names[0] for names in train.classes], channels=3, size=None,
               mean=mean, std=std, notes=["imagenette: no test split; val is the official validation set"])


@DATASETS.register("imagenet", augment=["imagenet"], files=whole_root,
                   paper="ILSVRC-2012, standard train/ and val/ class folders")
def imagenet(cfg, *, with_test: bool, presets: list[str]) -> Raw:
    """ILSVRC-2012 in the usual `root/{train,val}/<wnid>/*.JPEG` layout; val is the official val, no test.

    Not scanned for bad files (1.28M images; the official set is clean); grey and CMYK
    JPEGs are converted to RGB as they load.
    """
    root = Path(cfg.root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"imagenet not found: looked for {root / split}; ImageNet cannot be downloaded "
                            "automatically (licence): put the ILSVRC-2012 train/ and val/ class folders under data.root")
    train = img.list_images(root / "train")
    val = img.list_images(root / "val", train.classes)
    loop_problems, loop_notes = img.loop_report([train, val], skip=cfg.skip_bad)
    img.raise_problems(train.problems + val.problems + loop_problems)
    decode = img.FileDecoder(3, None)
    mean, std = STATS["imagenet"]
    return Raw(FileImages(train.files, train.labels, decode), FileImages(val.files, val.labels, decode), None,
               classes=train.classes, channels=3, size=None, mean=mean, std=std,
               notes=ignored_notes([train, val]) + loop_notes)
