"""The eval transform as data: saved in every checkpoint so a trained model needs nothing else.

    spec = build_dataset(cfg.data).eval_spec             # made where the eval pipeline is built
    spec = EvalTransform.from_checkpoint(state)           # at use time; old checkpoints too
    x = spec.image(pil_image)                             # float32 (C, H, W), normalised
    pipe = spec.pipeline(native_channels=1)               # a data.transforms.Pipeline (also .batch)
    cfg = spec.timm_data_cfg()                            # the same in timm's terms (pretrained_cfg fields)
    spec = EvalTransform.native(32, channels=3)           # an untrained model's: from its native input size

What it records: the model's input size and channels, the normalisation and how an
image of another size is brought to the input size (`resize`):
- "resize": stretch to (H, W), what the dataset pipelines do for fixed-size datasets
  (digits, CIFAR, MNIST, a folder of one size);
- "center_crop": resize the short side to size / crop_fraction, then centre-crop (H, W),
  the eval half of the `imagenet` preset (photos of any size).
For a checkpoint's own dataset `pipeline` gives the very pixels the dataset's eval
pipeline gives (tests/test_use.py checks it).

`timm_data_cfg` says the same to timm (`resolve_data_config` + `create_transform`): "resize" is
timm's crop_mode "squash" with crop_pct 1 (stretch to H x W), "center_crop" its crop_mode
"center" with the crop_pct that gives our short side; both bilinear. At the native size
(e.g. 32 px images for a CIFAR model) both resizes are the identity, so timm's pipeline gives
our input up to float rounding (tests/test_timm_interop.py); at other sizes PIL's resize and
torchvision's antialiased tensor resize differ by a grey level here and there.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .images import to_uint8
from .transforms import STATS, Fn, Normalize, Pipeline, channel_stages, convert_stats, presets_fix_size

# The `imagenet` preset's eval crop: 224 of 256 (data/transforms.py `_imagenet`).
CROP_FRACTION = 0.875
RESIZES = ("resize", "center_crop")
# Native input sizes up to this are small-image networks (CIFAR, MNIST: stretched, as the
# datasets' pipelines do); larger ones are photo networks (ImageNet's centre crop).
SMALL_NATIVE_MAX = 64
# The dataset whose statistics a small native size implies (the recipes': lenet_bn trains on
# MNIST at 28 px, the CIFAR networks on CIFAR-10 at 32 px); other small sizes: CIFAR-10's.
NATIVE_STATS = {28: "mnist"}


@dataclass
class EvalTransform:
    image_size: tuple[int, int]
    channels: int
    mean: list[float]
    std: list[float]
    resize: str = "resize"
    crop_fraction: float = CROP_FRACTION

    def __post_init__(self):
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        self.channels, self.mean, self.std = int(self.channels), [float(m) for m in self.mean], \
            [float(s) for s in self.std]
        if self.resize not in RESIZES:
            raise UserError(f"unknown resize policy {self.resize!r} in the saved transform; valid: "
                            f"{', '.join(RESIZES)}")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalTransform":
        known = {k: d[k] for k in ("image_size", "channels", "mean", "std", "resize", "crop_fraction") if k in d}
        return cls(**known)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], source: str = "checkpoint") -> "EvalTransform":
        """The saved transform, or (checkpoints written before it was saved) one rebuilt from
        the image size, channels, statistics and augmentation the checkpoint holds."""
        if state.get("transform"):
            return cls.from_dict(state["transform"])
        missing = [k for k in ("image_size", "in_chans", "mean", "std") if state.get(k) in (None, [])]
        if missing:
            raise UserError(f"{source} holds no eval transform (no {', '.join(missing)}); "
                            "retrain it with this selfreg version or export it from a run checkpoint")

        augment = (state.get("config") or {}).get("data", {}).get("augment", [])
        try:
            center = presets_fix_size([a for a in augment if a != "auto"])
        except UserError:
            center = False
        return cls(state["image_size"], state["in_chans"], state["mean"], state["std"],
                   "center_crop" if center else "resize")

    @classmethod
    def native(cls, size: int | tuple[int, int], channels: int = 3) -> "EvalTransform":
        """The eval transform of an untrained model whose native input is `size` (the registry's
        `input_size`): the statistics and resize of the recipe data that size implies. Up to
        SMALL_NATIVE_MAX px: stretched, CIFAR-10's statistics (MNIST's at 28 px); larger:
        ImageNet's statistics and centre crop (the `imagenet` preset). A trained model's own
        transform (saved in its file) always wins over this guess."""
        h, w = (size, size) if isinstance(size, (int, float)) else size
        small = max(h, w) <= SMALL_NATIVE_MAX
        stats = NATIVE_STATS.get(max(h, w), "cifar10") if small else "imagenet"
        mean, std = convert_stats(*STATS[stats], channels)
        return cls((h, w), channels, mean, std, "resize" if small else "center_crop")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def timm_data_cfg(self) -> dict[str, Any]:
        """This transform as timm's pretrained_cfg data fields (input_size, interpolation, crop_pct,
        crop_mode, mean, std): what `timm.data.resolve_data_config` reads and `create_transform` builds.
        A centre crop of a non-square size is timm's keep-ratio resize, which sizes both sides
        (ours sizes the short one): the same pixels for square sizes only."""
        h, w = self.image_size
        if self.resize == "resize":                  # Resize((H, W)) + CenterCrop((H, W)): a stretch
            crop_pct, crop_mode = 1.0, "squash"
        else:                                        # Resize(short side) + CenterCrop((H, W))
            size, short = min(h, w), round(min(h, w) / self.crop_fraction)
            crop_pct, crop_mode = self.crop_fraction, "center"
            if math.floor(size / crop_pct) != short:     # timm floors size / crop_pct where we round
                crop_pct = size / (short + 0.5)
        return {"input_size": (self.channels, h, w), "interpolation": "bilinear", "crop_pct": crop_pct,
                "crop_mode": crop_mode, "mean": tuple(self.mean), "std": tuple(self.std)}

    # ------------------------------------------------------------------ applying
    def pipeline(self, native_channels: int) -> Pipeline:
        """uint8 (C, H, W) or (N, C, H, W) images with `native_channels` -> normalised model input."""
        h, w = self.image_size
        if self.resize == "center_crop":
            short = round(min(h, w) / self.crop_fraction)
            size = Fn(partial(_resize_center_crop, short=short, size=[h, w]),
                      f"Resize({short}) + CenterCrop({h}x{w})")
        else:
            size = Fn(partial(TF.resize, size=[h, w], antialias=True), f"Resize({h}x{w})")
        to_float = Fn(partial(TF.to_dtype, dtype=torch.float32, scale=True), "ToFloat")
        normalize = Normalize(self.mean, self.std)    # its tensors made once per device, not per batch
        return Pipeline(channel_stages(native_channels, self.channels) + [size, to_float, normalize])

    def image(self, pil_image) -> torch.Tensor:
        """A PIL image of any mode and size -> float32 (C, H, W) model input."""
        array = to_uint8(pil_image)                                   # (H, W) grey or (H, W, 3) RGB
        x = torch.from_numpy(np.ascontiguousarray(array))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return self.pipeline(x.shape[0])(x)

    def __str__(self) -> str:
        h, w = self.image_size
        how = "stretch" if self.resize == "resize" else f"short side to {round(min(h, w) / self.crop_fraction)}, " \
                                                        "centre crop"
        return f"{self.channels}x{h}x{w} ({how}), mean {_fmt(self.mean)}, std {_fmt(self.std)}"


def _resize_center_crop(x: torch.Tensor, short: int, size: list[int]) -> torch.Tensor:
    return TF.center_crop(TF.resize(x, [short], antialias=True), size)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
