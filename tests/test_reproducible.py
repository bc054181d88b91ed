"""Same config and seed, same run: a run's numbers depend on its config and seed only, never on
what a decode or scan cache held, whether the images were decoded in this process, or how
many loader workers decoded them."""
import pytest
import torch

from dataset_writers import write_image_folder
from procs import selfreg_in_process
from selfreg.train.checkpoint import load_checkpoint

ARGS = ["data.name=folder", "data.image_size=16", "train.epochs=1", "data.batch_size=8", "train.threads=1",
        "train.plot=false", "train.progress=none", "train.tensorboard=false", "data.augment=shift",
        "train.channels_last=false", "train.compile=false"]


def train(tmp_path, name, root, *extra):
    done = selfreg_in_process("train", "configs/demo.yaml", *ARGS, f"data.root={root}",
                              f"train.out_dir={tmp_path / 'runs'}", f"train.run_name={name}", *extra)
    assert done.returncode == 0, done.stderr + done.stdout
    return tmp_path / "runs" / name


def metrics(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    col = lines[0].split(",").index("seconds")
    return [[v for i, v in enumerate(line.split(",")) if i != col] for line in lines]


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.timeout(240)
def test_cache_miss_hit_and_no_cache_give_the_same_run(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, per_class=8, size=16)
    cache = tmp_path / "cache"
    runs = [
        train(tmp_path, "miss", root, f"data.cache_dir={cache}"),                       # decodes and scans
        train(tmp_path, "hit", root, f"data.cache_dir={cache}"),                        # loads both caches
        train(tmp_path, "nocache", root, "data.cache=false", f"data.cache_dir={tmp_path / 'c2'}"),  # scans anew
        train(tmp_path, "workers", root, f"data.cache_dir={tmp_path / 'c3'}", "data.num_workers=1"),
    ]
    first, *others = runs
    for other in others:
        assert metrics(other) == metrics(first), other.name
        a, b = weights(first), weights(other)
        assert all(torch.equal(a[k], b[k]) for k in a), other.name
