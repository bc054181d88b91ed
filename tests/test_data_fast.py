"""The fast loader against the torchvision reference: same pixels, same shards, same epochs."""
import copy

import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from selfreg.config import load_config
from selfreg.data import build_dataset, build_loaders
from selfreg.data.loader import FastLoader, TorchLoader, shard_indices
from selfreg.data.transforms import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, Context, CropFlip, Lighting, PerImage,
                                     build_pipelines, mix_seed, seeded)
from selfreg.errors import UserError

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def images(n=24, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def pipelines(presets, native=32, target=32, channels=3, native_channels=3):
    ctx = Context((native, native), (target, target), native_channels, channels)
    mean, std = (MEAN, STD) if channels == 3 else ([0.5], [0.25])
    return build_pipelines(presets, ctx, mean, std)


def reference(pipeline, img, params, i):
    """Image i through the per-image torchvision transforms, forced to the batch's random choices."""
    x = img
    for stage, p in zip(pipeline.stages, params):
        if isinstance(stage, CropFlip):
            top, left, flips = p
            crop = copy.deepcopy(stage.crop_t)
            drawn = crop.make_params
            crop.make_params = lambda flat, t=int(top[i]), l=int(left[i]): {**drawn(flat), "top": t, "left": l}
            x = v2.RandomHorizontalFlip(p=float(flips[i]))(crop(x))
        elif isinstance(stage, PerImage):
            with seeded(p[i]):
                x = stage.sample(x)
        elif isinstance(stage, Lighting):
            # fb.resnet.torch's formula: rgb_c = sum_j eigvec[c, j] * alpha_j * eigval_j
            rgb = (torch.tensor(IMAGENET_EIGVEC) * (p[i] * torch.tensor(IMAGENET_EIGVAL))).sum(1)
            x = x + rgb[:, None, None]
        else:
            x = stage.sample(x)
    return x


@pytest.mark.parametrize("presets,kwargs", [
    (["cifar"], {}),
    (["shift"], {}),
    (["cifar"], {"target": 48}),                                   # crop at 32, then resize-to-N
    (["cifar"], {"channels": 1}),                                  # RGB -> grey
    (["flip"], {"channels": 3, "native_channels": 1}),             # grey -> RGB
    (["imagenet"], {"target": 24}),                                # RandomResizedCrop, per image
    (["scale"], {"target": 24}),                                   # shorter side 27..51, crop, per image
    (["none"], {}),
])
def test_batch_equals_reference_pixels(presets, kwargs):
    native_channels = kwargs.get("native_channels", 3)
    x = images(c=native_channels)
    pipes = pipelines(presets, **kwargs)
    generator = torch.Generator().manual_seed(3)
    for pipe in (pipes.train, pipes.eval):
        params = pipe.draw(len(x), generator)
        batch = pipe.apply(x, params)
        ref = torch.stack([reference(pipe, x[i], params, i) for i in range(len(x))])
        assert batch.dtype == torch.float32 and torch.equal(batch, ref), (presets, pipe)


def test_crop_flip_really_varies_and_flips():
    x = images(n=64)
    pipe = pipelines(["cifar"]).train
    top, left, flips = pipe.draw(64, torch.Generator().manual_seed(0))[0]
    assert len(set(top.tolist())) > 5 and len(set(left.tolist())) > 5 and 10 < int(flips.sum()) < 54
    # Centred window (offset = pad) plus flip is the mirror image; without flip, the image itself.
    centred = torch.full((64,), 4)
    mirrored = pipe.stages[0].apply(x, (centred, centred, torch.ones(64, dtype=torch.bool)))
    same = pipe.stages[0].apply(x, (centred, centred, torch.zeros(64, dtype=torch.bool)))
    assert torch.equal(mirrored, x.flip(3)) and torch.equal(same, x)
    # Offset 0 shows the zero padding in the first rows and columns.
    corner = pipe.stages[0].apply(x, (torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long),
                                      torch.zeros(64, dtype=torch.bool)))
    assert int(corner[:, :, :4].abs().sum()) == 0 and torch.equal(corner[:, :, 4:, 4:], x[:, :, :28, :28])


def test_lighting_matches_alexnet_formula():
    x = images()
    pipe = pipelines(["cifar", "lighting"]).train
    params = pipe.draw(len(x), torch.Generator().manual_seed(0))
    batch = pipe.apply(x, params)
    ref = torch.stack([reference(pipe, x[i], params, i) for i in range(len(x))])
    assert torch.allclose(batch, ref, atol=1e-6) and not torch.equal(params[-2], torch.zeros_like(params[-2]))


def test_fast_loader_batches_are_the_reference_pipeline():
    x, y = images(n=20), torch.arange(20) % 10
    pipe = pipelines(["cifar"]).train
    loader = FastLoader(x, y, pipe, 8, shuffle=True, seed=5, device=torch.device("cpu"))
    loader.set_epoch(3)
    got, labels = next(iter(loader))
    order = loader.indices()[:8]
    params = pipe.draw(8, torch.Generator().manual_seed(mix_seed(5, 3, 0)))   # the loader's own stream
    ref = torch.stack([reference(pipe, x[j], params, i) for i, j in enumerate(order.tolist())])
    assert torch.equal(got, ref) and torch.equal(labels, y[order])


def test_shards_match_distributed_sampler():
    for n, world in ((10, 3), (7, 4), (2, 3), (12, 1)):
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(2)
            ours = shard_indices(n, shuffle=True, seed=7, epoch=2, rank=rank, world_size=world)
            assert ours.tolist() == list(sampler)
        # val/test: disjoint, complete, unpadded
        evals = [shard_indices(n, shuffle=False, seed=0, epoch=0, rank=r, world_size=world).tolist()
                 for r in range(world)]
        assert sorted(sum(evals, [])) == list(range(n))


def test_ranks_get_disjoint_shares_and_equal_steps():
    x, y = images(n=50), torch.arange(50)
    pipe = pipelines(["cifar"]).train
    loaders = [FastLoader(x, y, pipe, 8, shuffle=True, seed=0, device=torch.device("cpu"), rank=r, world_size=4)
               for r in range(4)]
    assert {len(ld) for ld in loaders} == {2}                              # 13 each after padding to 52
    seen = torch.cat([torch.cat([lab for _, lab in ld]) for ld in loaders])
    # 52 = 50 + 2 wrapped-around pads: every image once, two of them twice.
    assert len(seen) == 52 and set(seen.tolist()) == set(range(50))


def digits_setup(*overrides):
    cfg = load_config(None, ["data.augment=shift", "data.batch_size=100", *overrides]).data
    return build_dataset(cfg), cfg


@pytest.mark.parametrize("kind", ["fast", "torch"])
def test_set_epoch_replays_an_epoch_exactly(kind):
    splits, cfg = digits_setup(f"data.loader={kind}")
    straight = build_loaders(splits, cfg, seed=1)["train"]
    resumed = build_loaders(splits, cfg, seed=1)["train"]
    for epoch in (1, 2):
        straight.set_epoch(epoch)
        first = [b for b in straight]
    resumed.set_epoch(2)
    again = [b for b in resumed]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    straight.set_epoch(1)
    other = next(iter(straight))
    assert not torch.equal(other[1], first[0][1])                         # epochs differ


def test_fast_and_torch_loaders_visit_the_same_order():
    splits, cfg = digits_setup()
    fast = build_loaders(splits, cfg, seed=4)
    torch_ = build_loaders(splits, load_config(None, ["data.loader=torch", "data.batch_size=100"]).data, seed=4)
    assert isinstance(fast["train"], FastLoader) and isinstance(torch_["train"], TorchLoader)
    for ld in (fast["train"], torch_["train"]):
        ld.set_epoch(6)
    assert len(fast["train"]) == len(torch_["train"])
    for (_, a), (_, b) in zip(fast["train"], torch_["train"]):
        assert torch.equal(a, b)
    # Evaluation batches are identical pixels in identical order.
    for (xa, ya), (xb, yb) in zip(fast["val"], torch_["val"]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_torch_loader_augmentation_ignores_worker_count():
    splits, cfg = digits_setup("data.loader=torch")
    one = build_loaders(splits, cfg, seed=2)["train"]
    two = build_loaders(splits, load_config(None, ["data.loader=torch", "data.augment=shift", "data.batch_size=100",
                                                   "data.num_workers=2"]).data, seed=2)["train"]
    one.set_epoch(1), two.set_epoch(1)
    assert torch.equal(next(iter(one))[0], next(iter(two))[0])


def test_training_augmentation_never_reaches_val():
    splits, cfg = digits_setup()
    assert splits.train_transform.random and not splits.eval_transform.random
    loaders = build_loaders(splits, cfg, seed=0)
    loaders["train"].set_epoch(1)
    a = torch.cat([x for x, _ in loaders["val"]])
    loaders["train"].set_epoch(2)
    b = torch.cat([x for x, _ in loaders["val"]])
    assert torch.equal(a, b)
    plain = splits.val.base.images.float().div(255).sub(splits.mean[0]).div(splits.std[0])
    assert torch.allclose(a, plain, atol=1e-6)


def test_loader_choice_errors():
    with pytest.raises(UserError, match="data.loader must be one of auto, fast, torch"):
        load_config(None, ["data.loader=fastest"])
    splits, cfg = digits_setup()
    splits.in_memory = False                      # as for a folder read from files
    with pytest.raises(UserError, match="data.loader=fast needs a dataset held in memory"):
        build_loaders(splits, load_config(None, ["data.loader=fast"]).data, seed=0)
