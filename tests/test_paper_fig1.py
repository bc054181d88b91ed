"""scripts/paper_fig1.py: the paper's Fig. 1 (feature maps, block accuracies, output similarity)
from trained files into a results folder.

Two tiny runs (ResNet-20 and RegNet-20/GRU, narrow, 1 epoch) train on a folder of PNG files made
from scikit-learn's bundled digits (3 classes), so the first validation image is a real file.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from selfreg.config import load_config
from selfreg.data import build_dataset
from selfreg.errors import UserError
from selfreg.train.engine import fit
from selfreg.use import load_trained
from selfreg.use.evaluate import eval_data_config

PER_CLASS = 24


@pytest.fixture(scope="module")
def fig1():
    return load_script("scripts/paper_fig1.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits-folder")
    digits = load_digits()
    for label in range(3):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:PER_CLASS]):
            Image.fromarray((image * 15).astype(np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path_factory.mktemp("runs")
    files = []
    for model, seed in (("resnet20", 0), ("rrnet20_gru", 0), ("resnet20", 1), ("rrnet20_gru", 1)):
        cfg = load_config(None, [f"model.name={model}", "model.kwargs.widths=[8,16,16]", "data.name=folder",
                                 f"data.root={root}", "data.image_size=16", "data.val_fraction=18",
                                 "data.cache=true", "data.batch_size=18", "train.epochs=1", "train.threads=1",
                                 "train.tensorboard=false", "train.plot=false", f"train.out_dir={out}",
                                 f"train.run_name={model}-s{seed}", f"train.seed={seed}"])
        fit(cfg, log=lambda s: None)
        files.append(out / f"{model}-s{seed}" / "checkpoints" / "last.pt")
    return root, files


def test_first_val_image_is_the_runs_first_validation_image(fig1, runs):
    root, files = runs
    data_cfg = eval_data_config(load_trained(files[0]), root=str(root))
    path, label = fig1.first_val_image(data_cfg)
    # The run's own (cached) build: its first validation image is that file's pixels and class.
    splits = build_dataset(data_cfg, with_test=False)
    image, target = splits.val.base[0]
    assert splits.classes[target] == label == path.parent.name
    assert torch.equal(image[0], torch.from_numpy(np.array(Image.open(path))))


def test_writes_figures_numbers_and_readme(fig1, runs, tmp_path):
    root, files = runs
    out = tmp_path / "fig1"
    assert fig1.main([*map(str, files[:2]), "--root", str(root), "-o", str(out), "--max-images", "30",
                      "--similarity-images", "12", "--note", "A tiny check."]) == 0
    assert {p.name for p in out.iterdir()} == {"fig1a-resnet20.png", "fig1a-rrnet20_gru.png", "fig1b.png",
                                              "fig1b.json", "similarity.json", "README.md"}
    probe = json.loads((out / "fig1b.json").read_text())
    assert [r["model"] for r in probe] == ["resnet20", "rrnet20_gru"]
    assert all([b["index"] for b in r["blocks"]] == [7, 8, 9] for r in probe)
    similarity = json.loads((out / "similarity.json").read_text())
    assert [s["model"] for s in similarity] == ["resnet20", "rrnet20_gru"]
    for entry in similarity:
        assert [p["blocks"] for p in entry["pairs"]] == [[7, 8], [8, 9]]
        assert all(-1 <= p["cosine"] <= 1 and p["images"] == 12 for p in entry["pairs"])
    text = (out / "README.md").read_text()
    image, _ = fig1.first_val_image(eval_data_config(load_trained(files[0]), root=str(root)))
    assert f"`DATA/{image.relative_to(root).as_posix()}`" in text
    assert "A tiny check." in text and "python scripts/paper_fig1.py" in text
    # One comparison line per later model and measure, against the sampling error (one file each).
    assert text.count("- rrnet20_gru against resnet20 (one file each): block 7: ") == 2
    assert "2 sigma of sampling error" in text and "Welch" not in text
    assert Image.open(out / "fig1a-rrnet20_gru.png").size[0] > Image.open(out / "fig1a-resnet20.png").size[0]


def test_several_files_of_a_model_are_its_seeds(fig1, runs, tmp_path):
    root, files = runs
    out = tmp_path / "fig1"
    assert fig1.main([*map(str, files), "--root", str(root), "-o", str(out), "--max-images", "30",
                      "--similarity-images", "12"]) == 0
    # Fig. 1(a) once per model (its first file); every file probed and measured.
    assert sorted(p.name for p in out.glob("fig1a-*.png")) == ["fig1a-resnet20.png", "fig1a-rrnet20_gru.png"]
    probe = json.loads((out / "fig1b.json").read_text())
    assert [r["model"] for r in probe] == ["resnet20", "rrnet20_gru"] * 2
    text = (out / "README.md").read_text()
    assert text.count("- rrnet20_gru against resnet20 (the mean of 2 files against the mean of 2): ") == 2
    assert "Welch p = " in text and "sampling error," not in text
    assert "| resnet20 | 2 | " in text      # the similarity table: mean ± std over the files
    # The accuracy table: one row per model, each cell the mean ± std of its files.
    row = next(line for line in text.splitlines() if line.startswith("| rrnet20_gru | 2 | ") and "%" in line)
    head9 = [100 * b["head_acc"] for i in (1, 3) for b in probe[i]["blocks"] if b["index"] == 9]
    assert row.split(" | ")[4] == f"{sum(head9) / 2:.1f}% ± {abs(head9[0] - head9[1]) / 2 ** 0.5:.1f}"
    # The comparison's numbers are the means of the files' own numbers.
    head = {(r["model"], i): b["head_acc"] for i, r in enumerate(probe) for b in r["blocks"] if b["index"] == 9}
    base = 100 * (head["resnet20", 0] + head["resnet20", 2]) / 2
    assert f"vs {base:.1f}%" in text


def test_an_output_folder_under_a_file_is_one_line(fig1, runs, tmp_path):
    root, files = runs
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file is a file, not a folder; choose another -o"):
        fig1.main([str(files[0]), "--root", str(root), "-o", str(tmp_path / "a_file" / "fig1")])
