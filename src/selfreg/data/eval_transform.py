"""The eval transform as data: saved in every checkpoint so a trained model needs nothing else.

    spec = build_dataset(cfg.data).eval_spec             # made where the eval pipeline is built
    spec = EvalTransform.from_checkpoint(state)           # at use time; old checkpoints too
    x = spec.image(pil_image)                             # float32 (C, H, W), normalised
    pipe = spec.pipeline(native_channels=1)               # a data.transforms.Pipeline (also .batch)

What it records: the model's input size and channels, the normalisation and how an
image of another size is brought to the input size (`resize`):
- "resize": stretch to (H, W), what the dataset pipelines do for fixed-size datasets
  (digits, CIFAR, MNIST, a folder of one size);
- "center_crop": resize the short side to size / crop_fraction, then centre-crop (H, W),
  the eval half of the `imagenet` preset (photos of any size).
For a checkpoint's own dataset `pipeline` gives the very pixels the dataset's eval
pipeline gives (tests/test_use.py checks it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .images import to_uint8
from .transforms import Fn, Pipeline, channel_stages, presets_fix_size

# The `imagenet` preset's eval crop: 224 of 256 (data/transforms.py `_imagenet`).
CROP_FRACTION = 0.875
RESIZES = ("resize", "center_crop")


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

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
        normalize = Fn(partial(TF.normalize, mean=self.mean, std=self.std), "Normalize")
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
