"""Image pipelines: normalisation statistics, augmentation presets by name, and one
`Pipeline` that runs either per image (the torchvision v2 reference) or on whole batches.

Every dataset yields uint8 CHW tensors; a pipeline turns them into float32,
normalised model inputs:

    channels (grey<->RGB) -> geometric preset (crop / flip / RandomResizedCrop ...)
        -> resize to data.image_size -> float in [0, 1] -> colour preset (lighting) -> normalise

A `Stage` does one step two ways: `sample(img)` is the torchvision v2 transform
applied to one image (global RNG, as in any torchvision pipeline), and
`apply(batch, params)` does the same to an NCHW batch given parameters that
`draw(n, generator)` samples. The fast loader uses `draw` + `apply`; for the same
parameters the two give the same pixels (tests/test_data_fast.py checks it).
"""
from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..registry import Registry

# Published per-channel statistics on [0, 1] pixels. CIFAR stds are the per-pixel ones
# (not the 0.2023/0.1994/0.2010 that many repos copy, which are per-image averages).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
LUMA = (0.2989, 0.587, 0.114)

# AlexNet-style PCA colour noise: ImageNet RGB eigenvalues / eigenvectors on [0, 1]
# pixels (fb.resnet.torch, used by the ResNet and RegNet ImageNet recipes).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


def convert_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list, list]:
    """Statistics after a grey<->RGB conversion of the images they describe."""
    mean, std = list(mean), list(std)
    if channels == len(mean):
        return mean, std
    if channels == 3:                      # grey repeated into three channels
        return mean * 3, std * 3
    # RGB -> luma is linear; the std assumes fully correlated channels (close for natural images).
    return [sum(w * m for w, m in zip(LUMA, mean))], [sum(w * s for w, s in zip(LUMA, std))]


def image_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on [0, 1] of a uint8 (N, C, H, W) tensor, in chunks to bound memory."""
    c = images.shape[1]
    total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in images.split(1024):
        x = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


# ---------------------------------------------------------------------------------------
# Seeding: augmentation randomness is a function of (seed, epoch, index), never of
# worker count or of the training loop's own RNG use.

def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers; nearby inputs give unrelated seeds."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded(seed: int):
    """Run torchvision/timm transforms under `seed`, restoring the caller's CPU torch and python RNGs.

    Only the generators those transforms draw from are seeded: torch's default CPU generator
    (torchvision's parameters are drawn on the CPU whatever the image's device) and Python's
    `random` (timm's RandAugment). Not `torch.manual_seed`, which also reseeds every CUDA
    generator, which `fork_rng(devices=[])` then does not restore: once per image, the training
    loop's dropout (and anything else drawing on the GPU) was reset to a seed of the loader's.
    """
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


# ---------------------------------------------------------------------------------------
# Stages

class Stage:
    """One pipeline step. Deterministic stages have `random = False` and ignore params."""
    random = False

    def sample(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img[None], self.draw(1, None))[0]

    def draw(self, n: int, generator: torch.Generator | None):
        return None

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class Fn(Stage):
    """A deterministic torchvision functional that accepts both CHW and NCHW tensors."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], text: str):
        self.fn, self.text = fn, text

    def sample(self, img):
        return self.fn(img)

    def apply(self, x, params):
        return self.fn(x)

    def __repr__(self):
        return self.text


class CropFlip(Stage):
    """Zero-pad `pad`, random crop back to (H, W), optional horizontal flip: the CIFAR recipe.

    The reference is torchvision's RandomCrop(padding=pad) + RandomHorizontalFlip; the batch
    version gathers each image's window with one indexing op.
    """
    random = True

    def __init__(self, size: tuple[int, int], pad: int, flip: bool):
        self.size, self.pad, self.flip = size, pad, flip
        self.crop_t = v2.RandomCrop(list(size), padding=pad, fill=0, padding_mode="constant")
        self.flip_t = v2.RandomHorizontalFlip(0.5 if flip else 0.0)

    def sample(self, img):
        return self.flip_t(self.crop_t(img))

    def draw(self, n, generator):
        span = 2 * self.pad + 1
        top = torch.randint(0, span, (n,), generator=generator)
        left = torch.randint(0, span, (n,), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return top, left, flips

    def apply(self, x, params):
        top, left, flips = (p.to(x.device, non_blocking=True) for p in params)
        b, _, h, w = x.shape
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]     # (B, H, 1)
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]    # (B, 1, W)
        cols = torch.where(flips[:, None, None], cols.flip(2), cols)             # a flip reads columns backwards
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)   # (B, C, H, W) view
        # A new tensor in the canonical layout: `.contiguous()` keeps a 1-channel batch's permuted
        # strides (it counts as contiguous), and convolution's backward then returns the stem's
        # weight gradient in another layout than the weight's (DDP copies it every step).
        return torch.empty(out.shape, dtype=out.dtype, device=out.device).copy_(out)

    def __repr__(self):
        return f"RandomCrop({self.size[0]}x{self.size[1]}, padding={self.pad})" + (
            " + RandomHorizontalFlip" if self.flip else "")


class PerImage(Stage):
    """A random transform with no batched form (RandomResizedCrop, RandAugment).

    Params are one seed per image; each image runs the torchvision/timm transform under
    its seed, so the batch and the reference agree exactly. `host = True`: the fast loader
    runs it (and every stage before it) on the CPU, before the batch goes to the GPU
    (per-image work on the GPU is a few small kernels per image, and PIL is CPU-only).
    """
    random = True
    host = True

    def __init__(self, transform: Callable, text: str):
        self.transform, self.text = transform, text

    def sample(self, img):
        return self.transform(img)

    def draw(self, n, generator):
        return torch.randint(0, 2**62, (n,), generator=generator).tolist()

    def apply(self, x, params):
        outs = []
        for img, seed in zip(x, params):
            with seeded(seed):
                outs.append(self.transform(img))
        return torch.stack(outs)

    def __repr__(self):
        return self.text


class Lighting(Stage):
    """AlexNet's PCA colour noise on float RGB: add eigvec @ (alpha * eigval), alpha ~ N(0, std)."""
    random = True

    def __init__(self, alphastd: float = 0.1):
        self.alphastd = alphastd
        self.eigval = torch.tensor(IMAGENET_EIGVAL)
        self.eigvec = torch.tensor(IMAGENET_EIGVEC)

    def draw(self, n, generator):
        return torch.randn(n, 3, generator=generator) * self.alphastd

    def apply(self, x, alpha):
        rgb = (alpha * self.eigval) @ self.eigvec.T                               # (B, 3)
        return x + rgb.to(x.device, x.dtype)[:, :, None, None]

    def __repr__(self):
        return f"Lighting(alphastd={self.alphastd})"


class TimmPIL:
    """Run a timm PIL transform (RandAugment) on a uint8 CHW tensor on the CPU.

    PIL works on the CPU only; the loaders run it there (`PerImage.host`), never with an image
    on the GPU (which would be a round trip per image), so a GPU image is refused."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.device.type != "cpu":
            raise ValueError(f"TimmPIL runs on CPU images (the loader's host side), got one on {img.device}")
        return TF.pil_to_tensor(self.transform(TF.to_pil_image(img)))


class Normalize(Stage):
    """(x - mean) / std per channel, as torchvision's `normalize`, with the statistics' tensors
    made once per device and dtype (torchvision builds them from the lists on every call: a
    host-to-device copy per batch on the GPU)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._tensors:
            self._tensors[key] = (torch.tensor(self.mean, dtype=dtype, device=device).view(-1, 1, 1),
                                  torch.tensor(self.std, dtype=dtype, device=device).view(-1, 1, 1))
        return self._tensors[key]

    def sample(self, img):
        return self.apply(img, None)

    def apply(self, x, params):
        if not x.is_floating_point():
            raise TypeError(f"Normalize needs a float tensor, got {x.dtype}")
        if not all(self.std):
            raise ValueError("std evaluated to zero, leading to division by zero.")
        mean, std = self.tensors(x.device, x.dtype)
        return (x - mean).div_(std)

    def __getstate__(self):   # DataLoader workers get the lists, not another device's tensors
        return {**self.__dict__, "_tensors": {}}

    def __repr__(self):
        return f"Normalize({_fmt(self.mean)}, {_fmt(self.std)})"


# ---------------------------------------------------------------------------------------
# Presets: `data.augment` is a list of these names, applied in order.

@dataclass
class Context:
    """What a preset needs: the stored size (None when images vary), the model's input size,
    and the channel counts as stored and as the model wants them."""
    native: tuple[int, int] | None
    target: tuple[int, int]
    native_channels: int
    channels: int


@dataclass
class PresetStages:
    train: list[Stage] = field(default_factory=list)          # on uint8, before resize
    eval: list[Stage] = field(default_factory=list)
    train_float: list[Stage] = field(default_factory=list)    # on float [0, 1], before normalise


AUGMENTATIONS = Registry("data.augment preset")


def _size(ctx: Context) -> tuple[int, int]:
    if ctx.native is None:
        raise UserError("images of this dataset vary in size; add a size-fixing preset, "
                        "e.g. data.augment=[imagenet]")
    return ctx.native


@AUGMENTATIONS.register("none", doc="no augmentation")
def _none(ctx: Context) -> PresetStages:
    return PresetStages()


@AUGMENTATIONS.register("cifar", doc="zero-pad 4, random crop back, horizontal flip")
def _cifar(ctx: Context) -> PresetStages:
    return PresetStages(train=[CropFlip(_size(ctx), pad=4, flip=True)])


@AUGMENTATIONS.register("shift", doc="zero-pad 2, random crop back, no flip (digits: a mirror changes meaning)")
def _shift(ctx: Context) -> PresetStages:
    return PresetStages(train=[CropFlip(_size(ctx), pad=2, flip=False)])


@AUGMENTATIONS.register("stl10", doc="zero-pad 12, random 96 crop, flip (the CIFAR recipe scaled to 96 px)")
def _stl10(ctx: Context) -> PresetStages:
    return PresetStages(train=[CropFlip(_size(ctx), pad=12, flip=True)])


@AUGMENTATIONS.register("flip", doc="horizontal flip only")
def _flip(ctx: Context) -> PresetStages:
    return PresetStages(train=[CropFlip(_size(ctx), pad=0, flip=True)])


# fixes_size: the preset's output is the target size whatever the input size, so images
# that vary in size (ImageNet, photo folders) need no resizing before it.
@AUGMENTATIONS.register("imagenet", fixes_size=True,
                        doc="train RandomResizedCrop + flip; eval resize to size/0.875 + center crop")
def _imagenet(ctx: Context) -> PresetStages:
    h, w = ctx.target
    train = v2.Compose([v2.RandomResizedCrop([h, w], antialias=True), v2.RandomHorizontalFlip()])
    return PresetStages(train=[PerImage(train, f"RandomResizedCrop({h}x{w}) + RandomHorizontalFlip")],
                        eval=[_center_eval(ctx)])


# He et al. 2016 (sec. 3.4, after Simonyan & Zisserman): "the image is resized with its
# shorter side randomly sampled in [256, 480] for scale augmentation", then a random 224 crop
# of it or of its horizontal flip. The RegNet paper's reading (sec. IV-B: "randomly cropped
# from the resized original images or their horizontal flips"). Both ends scale with the
# input size (224 -> [256, 480]); taken from the larger side so the crop always fits.
SCALE_RANGE = (256, 480)          # shorter side, for a 224 input


def scale_range(target: tuple[int, int]) -> tuple[int, int]:
    """The shorter-side range of the `scale` preset for an input of `target` (h, w), both ends included."""
    side = max(target)
    return round(SCALE_RANGE[0] * side / 224), round(SCALE_RANGE[1] * side / 224)


@AUGMENTATIONS.register("scale", fixes_size=True,
                        doc="train shorter side to a random size in [256, 480] (at 224 px; scaled with the "
                            "input size), random crop + flip (He et al.'s scale augmentation); eval as imagenet")
def _scale(ctx: Context) -> PresetStages:
    h, w = ctx.target
    lo, hi = scale_range(ctx.target)
    train = v2.Compose([v2.RandomResize(lo, hi + 1, antialias=True),      # torch.randint: upper end excluded
                        v2.RandomCrop([h, w]), v2.RandomHorizontalFlip()])
    return PresetStages(train=[PerImage(train, f"RandomResize(shorter side {lo}..{hi}) + RandomCrop({h}x{w}) "
                                               "+ RandomHorizontalFlip")],
                        eval=[_center_eval(ctx)])


def _center_eval(ctx: Context) -> Stage:
    """Shorter side to size/0.875, centre crop: 256 and 224 at 224 px, as in the ResNet/RegNet ImageNet
    setup, and as data/eval_transform.py's "center_crop" rebuilds it from a checkpoint."""
    h, w = ctx.target
    short = round(min(h, w) / 0.875)
    resize_crop = partial(_resize_center_crop, short=short, size=[h, w])
    return Fn(resize_crop, f"Resize({short}) + CenterCrop({h}x{w})")


def _resize_center_crop(x: torch.Tensor, short: int, size: list[int]) -> torch.Tensor:
    return TF.center_crop(TF.resize(x, [short], antialias=True), size)


@AUGMENTATIONS.register("lighting", doc="AlexNet PCA colour noise, alphastd 0.1 (RGB only)")
def _lighting(ctx: Context) -> PresetStages:
    if ctx.channels != 3:
        raise UserError("data.augment 'lighting' needs RGB images; set data.channels=3 or drop it")
    return PresetStages(train_float=[Lighting(0.1)])


# timm's RandAugment policy string (EfficientNet recipe). Not "-inc1": its increasing
# posterize reaches 0 bits at magnitude 10, which Pillow >= 10 rejects; the plain posterize
# keeps >= 1 bit for any magnitude above 2.5, and m9 +- 0.5 never goes that low.
RANDAUGMENT = "rand-m9-mstd0.5"


@AUGMENTATIONS.register("randaugment", doc=f"timm RandAugment {RANDAUGMENT} (per image, PIL)")
def _randaugment(ctx: Context) -> PresetStages:
    from timm.data.auto_augment import rand_augment_transform

    fill = (124, 116, 104) if ctx.channels == 3 else 124   # ImageNet mean as the fill, as timm does
    ra = rand_augment_transform(RANDAUGMENT, {"img_mean": fill})
    return PresetStages(train=[PerImage(TimmPIL(ra), f"RandAugment({RANDAUGMENT})")])


# ---------------------------------------------------------------------------------------
# Pipelines

class Pipeline:
    """A list of stages: `pipeline(img)` per image (reference), `pipeline.batch(x, gen)` per batch."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        self.random = any(s.random for s in stages)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            img = stage.sample(img)
        return img

    def draw(self, n: int, generator: torch.Generator | None) -> list:
        return [stage.draw(n, generator) for stage in self.stages]

    def apply(self, x: torch.Tensor, params: list) -> torch.Tensor:
        for stage, p in zip(self.stages, params):
            x = stage.apply(x, p)
        return x

    def batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), generator))

    def host_stages(self) -> int:
        """How many leading stages run on the CPU before a batch goes to the GPU: up to the last
        stage marked `host` (per-image transforms), 0 when there is none."""
        marked = [i for i, stage in enumerate(self.stages) if getattr(stage, "host", False)]
        return marked[-1] + 1 if marked else 0

    def split(self, at: int) -> tuple["Pipeline", "Pipeline"]:
        """The first `at` stages and the rest; for the same params (`draw` of the whole pipeline,
        cut at `at`) the two in turn give what the whole gives."""
        return Pipeline(self.stages[:at]), Pipeline(self.stages[at:])

    def __repr__(self) -> str:
        return " -> ".join(map(repr, self.stages))


@dataclass
class Pipelines:
    train: Pipeline
    eval: Pipeline


def channel_stages(native: int, wanted: int) -> list[Stage]:
    """Grey->RGB or RGB->grey so any model meets any dataset."""
    if native == wanted:
        return []
    if wanted == 1:
        return [Fn(partial(TF.rgb_to_grayscale, num_output_channels=1), "RGB->grey")]
    return [Fn(TF.grayscale_to_rgb, "grey->RGB")]


def build_pipelines(presets: Sequence[str], ctx: Context, mean: Sequence[float],
                    std: Sequence[float]) -> Pipelines:
    """Train and eval pipelines from preset names; `mean`/`std` describe the converted channels.

    Stages are module functions wrapped in `partial` (no lambdas) so DataLoader workers
    can receive the pipeline under any multiprocessing start method.
    """
    parts = [AUGMENTATIONS.get(name)(ctx) for name in presets]
    fixes_size = presets_fix_size(presets)
    if ctx.native is None and not fixes_size:
        _size(ctx)                                               # raises the "vary in size" error
    convert = channel_stages(ctx.native_channels, ctx.channels)
    h, w = ctx.target
    to_target = [] if fixes_size or ctx.native == ctx.target else [
        Fn(partial(TF.resize, size=[h, w], antialias=True), f"Resize({h}x{w})")]
    to_float = Fn(partial(TF.to_dtype, dtype=torch.float32, scale=True), "ToFloat")
    normalize = Normalize(mean, std)
    train = convert + [s for p in parts for s in p.train] + to_target + [to_float] + [
        s for p in parts for s in p.train_float] + [normalize]
    evaluate = convert + [s for p in parts for s in p.eval] + to_target + [to_float, normalize]
    return Pipelines(Pipeline(train), Pipeline(evaluate))


def presets_fix_size(presets: Sequence[str]) -> bool:
    return any(AUGMENTATIONS.entry(name).meta.get("fixes_size", False) for name in presets)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
