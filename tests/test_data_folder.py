"""The `folder` dataset: ImageFolder trees of JPEG and PNG files, good and bad, cached and not."""
import numpy as np
import pytest
import torch
from PIL import Image

import dataset_writers as w
from selfreg.config import load_config
from selfreg.data import build_dataset, build_loaders
from selfreg.errors import UserError


def folder_cfg(tmp_path, *overrides):
    return load_config(None, ["data.name=folder", f"data.root={tmp_path / 'imgs'}",
                              f"data.cache_dir={tmp_path / 'cache'}", *overrides]).data


@pytest.fixture(params=[False, True], ids=["files", "cache"])
def cached(request):
    return request.param


def test_folder_of_jpeg_and_png(tmp_path, cached):
    paths = w.write_image_folder(tmp_path / "imgs", per_class=10)
    cfg = folder_cfg(tmp_path, f"data.cache={str(cached).lower()}")
    splits = build_dataset(cfg)
    assert splits.classes == ["cat", "dog", "frog"] and splits.in_chans == 3 and splits.image_size == 16
    assert (len(splits.train), len(splits.val)) == (27, 3)          # default val: 10% of train
    assert splits.in_memory is cached and splits.skipped == 0
    loaders = build_loaders(splits, cfg, seed=0)
    kind = {True: "FastLoader", False: "TorchLoader"}[cached]
    assert type(loaders["train"]).__name__ == kind
    x, y = next(iter(loaders["train"]))
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16) and y.dtype == torch.int64
    # A PNG decodes losslessly: its raw pixels are exactly what the dataset holds.
    raw = splits.train.base[0][0]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 16, 16)
    png = [p for p in paths if p.suffix == ".png"][0]
    expected = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1)
    every = torch.cat([splits.train.base[i][0][None] for i in range(len(splits.train))] +
                      [splits.val.base[i][0][None] for i in range(len(splits.val))])
    assert (every == expected).flatten(1).all(1).any()


def test_folder_val_and_test_folders(tmp_path):
    w.write_image_folder(tmp_path / "imgs", per_class=4)
    w.write_image_folder(tmp_path / "imgs", per_class=2, split="val", seed=1)
    w.write_image_folder(tmp_path / "imgs", per_class=3, split="test", seed=2)
    splits = build_dataset(folder_cfg(tmp_path))
    assert (len(splits.train), len(splits.val), splits.test) == (12, 6, None)   # test untouched by training
    splits = build_dataset(folder_cfg(tmp_path, "data.eval_test=true"))
    assert len(splits.test) == 9


def test_folder_cache_hit_and_rebuild(tmp_path):
    paths = w.write_image_folder(tmp_path / "imgs", per_class=4)
    cfg = folder_cfg(tmp_path, "data.cache=true")
    assert any("decoded into cache" in n for n in build_dataset(cfg).notes)
    assert any("loaded uint8 cache" in n for n in build_dataset(cfg).notes)
    w.save_image(paths[0], np.zeros((16, 16, 3), np.uint8))                 # edit one image
    assert any("decoded into cache" in n for n in build_dataset(cfg).notes)


def test_grey_rgba_16bit_and_palette_are_converted(tmp_path, cached):
    root = tmp_path / "imgs" / "train"
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    rng = np.random.default_rng(0)
    w.save_image(root / "a" / "grey.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    w.save_image(root / "a" / "rgba.png", rng.integers(0, 256, (16, 16, 4), dtype=np.uint8))
    sixteen = np.full((16, 16), 0xAB12, dtype=np.uint16)
    Image.fromarray(sixteen).save(root / "b" / "deep.png")                    # 16-bit grey PNG
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P").save(root / "b" / "pal.png")
    splits = build_dataset(folder_cfg(tmp_path, f"data.cache={str(cached).lower()}", "data.val_fraction=1"))
    assert splits.in_chans == 3
    assert any("converted 4 image(s) to RGB" in n and "RGBA: 1" in n and "L: 1" in n for n in splits.notes)
    items = [splits.train.base[i][0] for i in range(len(splits.train))] + [splits.val.base[0][0]]
    # 16-bit 0xAB12 keeps its top byte 0xAB in all three channels (PIL's convert would clip to 255).
    assert any(bool((x == 0xAB).all()) for x in items)


def test_all_grey_folder_is_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("x", "y"):
        for i in range(3):
            w.save_image(tmp_path / "imgs" / "train" / c / f"{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    splits = build_dataset(folder_cfg(tmp_path, "data.val_fraction=1"))
    assert splits.in_chans == 1 and len(splits.mean) == 1


def test_mismatched_sizes_are_resized_to_the_most_common(tmp_path, cached):
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4)
    w.save_image(tmp_path / "imgs" / "train" / "a" / "big.png", np.zeros((40, 24, 3), np.uint8))
    splits = build_dataset(folder_cfg(tmp_path, f"data.cache={str(cached).lower()}", "data.val_fraction=1"))
    assert any("resized 1 image(s) of other sizes to the most common 16x16" in n for n in splits.notes)
    assert {tuple(splits.train.base[i][0].shape) for i in range(len(splits.train))} == {(3, 16, 16)}


def test_varying_sizes_kept_for_imagenet_preset(tmp_path):
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3, size=40)
    w.save_image(tmp_path / "imgs" / "train" / "a" / "wide.jpg", np.zeros((30, 50, 3), np.uint8))
    cfg = folder_cfg(tmp_path, "data.augment=imagenet", "data.image_size=24", "data.val_fraction=2")
    splits = build_dataset(cfg)
    assert any("sizes vary" in n for n in splits.notes)
    x, _ = next(iter(build_loaders(splits, cfg, seed=0)["train"]))
    assert x.shape[1:] == (3, 24, 24)
    x, _ = next(iter(build_loaders(splits, cfg, seed=0)["val"]))
    assert x.shape[1:] == (3, 24, 24)


def write_bad_files(root):
    """One of each bad kind; returns their paths."""
    bad = {
        "corrupt": root / "train" / "cat" / "corrupt.jpg",
        "truncated": root / "train" / "dog" / "truncated.jpg",
        "truncated_png": root / "train" / "dog" / "cut.png",
        "not_image": root / "train" / "frog" / "notes.png",
        "empty": root / "train" / "frog" / "empty.jpg",
    }
    bad["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)       # JPEG magic, garbage body
    whole = w.jpeg_bytes(64)
    bad["truncated"].write_bytes(whole[: len(whole) // 2])
    png = root / "train" / "dog" / "000.png"
    bad["truncated_png"].write_bytes(png.read_bytes()[:300])
    bad["not_image"].write_text("this is not a picture\n")
    bad["empty"].write_bytes(b"")
    return bad


def test_bad_files_are_all_listed_in_one_line(tmp_path, cached):
    w.write_image_folder(tmp_path / "imgs", per_class=4)
    bad = write_bad_files(tmp_path / "imgs")
    with pytest.raises(UserError) as err:
        build_dataset(folder_cfg(tmp_path, f"data.cache={str(cached).lower()}"))
    message = str(err.value)
    assert "\n" not in message and "5 bad image file(s)" in message and "data.skip_bad=true" in message
    for path in bad.values():
        assert str(path) in message
    assert f"{bad['truncated']} (truncated)" in message and f"{bad['not_image']} (not an image)" in message
    assert f"{bad['empty']} (empty file)" in message


def test_skip_bad_counts_them(tmp_path, cached):
    w.write_image_folder(tmp_path / "imgs", per_class=4)
    write_bad_files(tmp_path / "imgs")
    cfg = folder_cfg(tmp_path, f"data.cache={str(cached).lower()}", "data.skip_bad=true", "data.val_fraction=3")
    splits = build_dataset(cfg)
    assert splits.skipped == 5 and len(splits.train) + len(splits.val) == 12
    assert any(n.startswith("skipped 5 bad image file(s) (data.skip_bad=true)") for n in splits.notes)
    assert len(list(build_loaders(splits, cfg, seed=0)["train"])) == 1


def test_valid_jpeg_with_trailing_bytes_is_not_flagged(tmp_path):
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    (tmp_path / "imgs" / "train" / "a" / "tail.jpg").write_bytes(w.jpeg_bytes(16) + b"\0" * 100)
    assert build_dataset(folder_cfg(tmp_path, "data.val_fraction=1")).skipped == 0


def test_empty_class_folder(tmp_path):
    w.write_image_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "train" / "zebra").mkdir()
    (tmp_path / "imgs" / "train" / "zebra" / "readme.txt").write_text("todo")
    with pytest.raises(UserError, match=r"class folder\(s\) with no images .*: .*zebra"):
        build_dataset(folder_cfg(tmp_path))


def test_class_emptied_by_skipping(tmp_path):
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    (tmp_path / "imgs" / "train" / "c").mkdir()
    (tmp_path / "imgs" / "train" / "c" / "x.jpg").write_text("nope")
    with pytest.raises(UserError, match=r"class folder\(s\) left with no readable image: .*train/c"):
        build_dataset(folder_cfg(tmp_path, "data.skip_bad=true"))


def test_one_class_folder(tmp_path):
    w.write_image_folder(tmp_path / "imgs", classes=("only",), per_class=3)
    with pytest.raises(UserError, match="one class folder .only.; a classifier needs at least two"):
        build_dataset(folder_cfg(tmp_path))


def test_non_image_extensions_are_counted_not_dropped_silently(tmp_path):
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    (tmp_path / "imgs" / "train" / "a" / "labels.csv").write_text("x")
    splits = build_dataset(folder_cfg(tmp_path, "data.val_fraction=1"))
    assert any("ignored 1 file(s) without an image extension" in n and "labels.csv" in n for n in splits.notes)


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist; set data.root"):
        build_dataset(folder_cfg(tmp_path))
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    (tmp_path / "imgs" / "train" / "loose.jpg").write_bytes(w.jpeg_bytes(8))
    with pytest.raises(UserError, match=r"no class folders in .*train \(found loose files such as loose.jpg\)"):
        build_dataset(folder_cfg(tmp_path))
    w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    w.write_image_folder(tmp_path / "imgs", classes=("a", "c"), per_class=1, split="val")
    with pytest.raises(UserError, match="class folders that train/ lacks: c"):
        build_dataset(folder_cfg(tmp_path))


def test_image_broken_after_scan_names_the_file(tmp_path):
    paths = w.write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    cfg = folder_cfg(tmp_path, "data.val_fraction=1", "data.loader=torch")
    splits = build_dataset(cfg)
    for p in paths:
        p.write_text("gone")
    with pytest.raises(UserError, match=r"could not be decoded \(not an image\); remove or replace it"):
        next(iter(build_loaders(splits, cfg, seed=0)["train"]))
