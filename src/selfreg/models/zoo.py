"""The model zoo: classic architectures by name, in one table.

Each row names a model, how to build it (from timm, torchvision, or one of our
`models/<family>.py` files where neither library has it), its native input size,
paper, optimizer recipe (`configs/zoo/*.yaml`) and its small-input adaptation.

Every zoo model is built as `create_model(name, num_classes=..., in_chans=..., img_size=...)`:
`img_size` (default: the native size) is the one knob for input size.
- CNNs: for `img_size <= SMALL_INPUT_MAX` (64) the stem's downsampling is removed
  (see `adapt.py`, one function per kind of stem); larger sizes get the paper's network.
- ViTs and MLPs: `img_size` sets the token grid; at <= 64 pixels the patch becomes 4
  (8x8 tokens at 32x32). The MLPs' token-mixing layers are as wide as the token count,
  so they must know the image size when built: this is why the knob is an integer and
  not a `small_input` flag.
- NiN, DenseNet-40 and LeNet-BN are small-input networks already (any size works; LeNet's
  first linear layer is sized from `img_size`).

Zoo models declare `img_size` at registration (`accepts`), so `selfreg.create_model(name,
img_size=N)` passes it to them and builds the other families as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..registry import register_model

# The zoo is the table of models: it imports the classes of the families that live in their
# own files (alexnet.py, nin.py, ...) to register them, and nothing else from them; shared
# helpers (the model surface, initialisers, citations) come from base.py and papers.py, and
# adapt.py is the zoo's own (library models on our surface, small-input stems).
from . import adapt
from .adapt import SMALL_PATCH, FeaturesHead, is_small, pick, replace_conv
from .alexnet import AlexNet
from .densenet_cifar import CifarDenseNet
from .lenet import LeNetBN
from .nin import NiN
from .papers import (CHOLLET_2017, DOSOVITSKIY_2021, HE_2016, HOWARD_2017, HU_2018, HUANG_2017, IANDOLA_2016,
                     KRIZHEVSKY_2012, LECUN_1998_BN, LIN_2014, LIU_2021, MA_2018, REDMON_2018, SANDLER_2018,
                     SIMONYAN_2015, SZEGEDY_2015, SZEGEDY_2016, TAN_2019, TAN_2021, TOLSTIKHIN_2021, TOUVRON_2021,
                     XIE_2017, ZAGORUYKO_2016, ZHANG_2018)
from .shufflenet_v1 import ShuffleNetV1

Build = Callable[..., nn.Module]  # (num_classes, in_chans, img_size, **kwargs) -> model


# --- builders: one per source -------------------------------------------------------------

def timm_model(timm_name: str, **defaults: Any) -> Build:
    """A timm model by name; timm handles `in_chans` and has forward_features/forward_head."""
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 **{**defaults, **kwargs})

    build.origin = f"timm `{timm_name}`"
    return build


def timm_widened(timm_name: str, channels: tuple[int, ...]) -> Build:
    """timm's ResNet `timm_name` with other stage widths: a Wide ResNet (Zagoruyko & Komodakis)
    of basic blocks, which timm's `base_width` cannot widen (it widens bottlenecks only)."""
    build = timm_model(timm_name, channels=channels)
    build.origin = f"timm `{timm_name}`, stage widths {', '.join(map(str, channels))}"
    return build


def timm_vit(timm_name: str, patch_size: int) -> Build:
    """A timm ViT with its `patch_size` overridden: `SMALL_PATCH` on small inputs."""
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
        import timm

        patch = min(patch_size, SMALL_PATCH) if is_small(img_size) else patch_size
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 img_size=img_size, patch_size=patch, **kwargs)

    renamed = f"patch{patch_size}_" not in timm_name
    build.origin = f"timm `{timm_name}`" + (f", patch {patch_size}" if renamed else "")
    build.note = "token grid from img_size"
    if patch_size > SMALL_PATCH:
        build.note = f"patch {SMALL_PATCH}, " + build.note
    return build


def timm_mlp(timm_name: str, patch_size: int, **arch: Any) -> Build:
    """timm's MlpMixer class with the arguments of timm's `timm_name` builder.

    timm's mixer builders fix `patch_size` (passing it again is a TypeError), so we call
    the class. Layer classes are given by their names in `timm.models.mlp_mixer`.
    """
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
        from timm.models import mlp_mixer

        layers = {k: getattr(mlp_mixer, v) for k, v in arch.items() if isinstance(v, str)}
        patch = min(patch_size, SMALL_PATCH) if is_small(img_size) else patch_size
        return mlp_mixer.MlpMixer(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                  patch_size=patch, **{**arch, **layers, **kwargs})

    build.origin = f"timm `{timm_name}` (MlpMixer class)"
    build.note = f"patch {SMALL_PATCH}, token grid from img_size"
    return build


def torchvision_model(fn_name: str, first_conv: str, split: Callable[[nn.Module], FeaturesHead],
                      **defaults: Any) -> Build:
    """A torchvision model, split into features/head, its first conv rebuilt for `in_chans`."""
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
        import torchvision

        model = split(getattr(torchvision.models, fn_name)(weights=None, num_classes=num_classes,
                                                             **{**defaults, **kwargs}))
        if in_chans != 3:
            replace_conv(model, first_conv, in_channels=in_chans)
        return model

    build.origin = f"torchvision `{fn_name}`"
    return build


def selfreg_model(cls: type[nn.Module], sized: bool = False, **defaults: Any) -> Build:
    """One of our classes; `sized` ones take `img_size` (LeNet sizes its first linear layer)."""
    def build(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
        if sized:
            kwargs["img_size"] = img_size
        return cls(num_classes=num_classes, in_chans=in_chans, **{**defaults, **kwargs})

    build.origin = f"selfreg `{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}`"
    return build


# --- torchvision splits into features / head ----------------------------------------------

def split_googlenet(m: nn.Module) -> FeaturesHead:
    body = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
            "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
            "inception5a", "inception5b"]
    return FeaturesHead(pick(m, body), nn.Sequential(m.avgpool, nn.Flatten(1), m.dropout, m.fc), m.fc.in_features)


def split_shufflenet_v2(m: nn.Module) -> FeaturesHead:
    # torchvision's forward takes x.mean([2, 3]) before fc: the same as this pool.
    body = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
    return FeaturesHead(pick(m, body), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), m.fc),
                        m.fc.in_features)


def split_squeezenet(m: nn.Module) -> FeaturesHead:
    # The classifier is dropout -> 1x1 conv to classes -> ReLU -> global average pool.
    return FeaturesHead(m.features, nn.Sequential(*m.classifier, nn.Flatten(1)), m.classifier[1].in_channels)


# --- the table ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Build
    input_size: int          # native H = W
    family: str
    paper: str
    recipe: str              # file under configs/zoo/
    small: Callable[[nn.Module], None] | None = None  # stem adaptation for img_size <= 64

    @property
    def source(self) -> str:
        return self.build.origin.split(" ", 1)[0]

    @property
    def adaptation(self) -> str:
        """What happens at <= 64 pixels, for the docs."""
        if self.small is not None:
            return self.small.__doc__.strip().splitlines()[0]
        return getattr(self.build, "note", "none: takes any size as built")


def _vgg(depth: int, bn: bool) -> ZooModel:
    name = f"vgg{depth}{'_bn' if bn else ''}"
    # drop_rate 0.5: the paper's dropout on the first two FC layers (timm's default is 0.2).
    return ZooModel(name, timm_model(name, drop_rate=0.5), 224, "vgg", SIMONYAN_2015, "vgg.yaml", adapt.vgg_small)


ZOO: tuple[ZooModel, ...] = (
    ZooModel("alexnet", selfreg_model(AlexNet), 227, "alexnet", KRIZHEVSKY_2012, "alexnet.yaml", adapt.alexnet_stem),
    *(_vgg(depth, bn) for depth in (11, 13, 16, 19) for bn in (False, True)),
    ZooModel("nin", selfreg_model(NiN), 32, "nin", LIN_2014, "nin.yaml"),
    ZooModel("lenet_bn", selfreg_model(LeNetBN, sized=True), 28, "lenet", LECUN_1998_BN, "lenet_bn.yaml"),
    # dropout 0.4: the paper's (torchvision's default is 0.2); no auxiliary classifiers.
    ZooModel("googlenet", torchvision_model("googlenet", "features.conv1.conv", split_googlenet, aux_logits=False,
                                            transform_input=False, init_weights=True, dropout=0.4),
             224, "googlenet", SZEGEDY_2015, "googlenet.yaml", adapt.googlenet_stem),
    ZooModel("inception_v3", timm_model("inception_v3"), 299, "inception", SZEGEDY_2016, "inception_v3.yaml",
             adapt.inception_v3_stem),
    ZooModel("resnet18", timm_model("resnet18"), 224, "resnet", HE_2016, "resnet.yaml", adapt.resnet_stem),
    ZooModel("resnet34", timm_model("resnet34"), 224, "resnet", HE_2016, "resnet.yaml", adapt.resnet_stem),
    ZooModel("resnet101", timm_model("resnet101"), 224, "resnet", HE_2016, "resnet.yaml", adapt.resnet_stem),
    # WRN-18 (widen 2.0) of Xu et al.'s Table VII: ResNet-18 with every stage twice as wide (stem
    # still 64, so the first stage gets a projection shortcut); 45.6M parameters, as Zagoruyko &
    # Komodakis print it. Family "resnet": the code path of resnet18 (tests/test_zoo.py).
    ZooModel("wide_resnet18_2", timm_widened("resnet18", (128, 256, 512, 1024)), 224, "resnet", ZAGORUYKO_2016,
             "resnet.yaml", adapt.resnet_stem),
    ZooModel("resnext26ts", timm_model("resnext26ts"), 256, "resnext", XIE_2017, "resnext.yaml",
             adapt.resnext_ts_stem),
    ZooModel("resnext50_32x4d", timm_model("resnext50_32x4d"), 224, "resnext", XIE_2017, "resnext.yaml",
             adapt.resnet_stem),
    ZooModel("se_resnet18", timm_model("seresnet18"), 224, "se_resnet", HU_2018, "senet.yaml", adapt.resnet_stem),
    ZooModel("se_resnet50", timm_model("seresnet50"), 224, "se_resnet", HU_2018, "senet.yaml", adapt.resnet_stem),
    ZooModel("densenet40", selfreg_model(CifarDenseNet, depth=40, growth_rate=12), 32, "densenet_cifar", HUANG_2017,
             "densenet40.yaml"),
    ZooModel("densenet121", timm_model("densenet121"), 224, "densenet", HUANG_2017, "densenet121.yaml",
             adapt.densenet_stem),
    ZooModel("densenet169", timm_model("densenet169"), 224, "densenet", HUANG_2017, "densenet121.yaml",
             adapt.densenet_stem),
    ZooModel("mobilenet_v1", timm_model("mobilenetv1_100"), 224, "mobilenet_v1", HOWARD_2017, "mobilenet.yaml",
             adapt.efficientnet_stem),
    ZooModel("mobilenet_v2", timm_model("mobilenetv2_100"), 224, "mobilenet_v2", SANDLER_2018, "mobilenet.yaml",
             adapt.efficientnet_stem),
    ZooModel("shufflenet_v1", selfreg_model(ShuffleNetV1, groups=3), 224, "shufflenet_v1", ZHANG_2018,
             "shufflenet.yaml", adapt.shufflenet_stem),
    *(ZooModel(f"shufflenet_v2_{w}", torchvision_model(f"shufflenet_v2_{w}", "features.conv1.0", split_shufflenet_v2),
               224, "shufflenet_v2", MA_2018, "shufflenet.yaml", adapt.shufflenet_stem) for w in ("x0_5", "x1_0")),
    *(ZooModel(f"squeezenet{v}", torchvision_model(f"squeezenet{v}", "features.0", split_squeezenet),
               224, "squeezenet", IANDOLA_2016, "squeezenet.yaml", adapt.squeezenet_stem) for v in ("1_0", "1_1")),
    ZooModel("xception", timm_model("legacy_xception"), 299, "xception", CHOLLET_2017, "xception.yaml",
             adapt.xception_stem),
    ZooModel("darknet53", timm_model("darknet53"), 256, "darknet", REDMON_2018, "darknet53.yaml", adapt.darknet_stem),
    ZooModel("efficientnet_b0", timm_model("efficientnet_b0"), 224, "efficientnet", TAN_2019, "efficientnet.yaml",
             adapt.efficientnet_stem),
    ZooModel("efficientnetv2_s", timm_model("efficientnetv2_s"), 384, "efficientnetv2", TAN_2021,
             "efficientnetv2.yaml", adapt.efficientnet_stem),
    # ViT-Ti/4 for CIFAR: DeiT-Ti's widths (192 wide, 12 deep, 3 heads) on 4x4 patches.
    ZooModel("vit_tiny_patch4_32", timm_vit("vit_tiny_patch16_224", patch_size=4), 32, "vit", DOSOVITSKIY_2021,
             "vit_cifar.yaml"),
    ZooModel("vit_base_patch16_224", timm_vit("vit_base_patch16_224", patch_size=16), 224, "vit", DOSOVITSKIY_2021,
             "vit.yaml"),
    ZooModel("mixer_s16_224", timm_mlp("mixer_s16_224", 16, num_blocks=8, embed_dim=512), 224, "mixer",
             TOLSTIKHIN_2021, "mlp.yaml"),
    ZooModel("mixer_b16_224", timm_mlp("mixer_b16_224", 16, num_blocks=12, embed_dim=768), 224, "mixer",
             TOLSTIKHIN_2021, "mlp.yaml"),
    ZooModel("resmlp_12_224", timm_mlp("resmlp_12_224", 16, num_blocks=12, embed_dim=384, mlp_ratio=4,
                                       block_layer="ResBlock", norm_layer="Affine"),
             224, "resmlp", TOUVRON_2021, "mlp.yaml"),
    *(ZooModel(f"gmlp_{size}16_224", timm_mlp(f"gmlp_{size}16_224", 16, num_blocks=30, embed_dim=width, mlp_ratio=6,
                                              block_layer="SpatialGatingBlock", mlp_layer="GatedMlp"),
               224, "gmlp", LIU_2021, "mlp.yaml") for size, width in (("ti", 128), ("s", 256))),
)


def _register(spec: ZooModel) -> None:
    def build(num_classes: int = 10, in_chans: int = 3, img_size: int | None = None, **kwargs: Any) -> nn.Module:
        img_size = img_size or spec.input_size
        model = spec.build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
        if spec.small is not None and is_small(img_size):
            spec.small(model)
        return model

    build.__doc__ = f"{spec.name} ({spec.build.origin}); native {spec.input_size}x{spec.input_size}."
    register_model(spec.name, input_size=spec.input_size, paper=spec.paper, source=spec.source,
                   family=spec.family, recipe=f"configs/zoo/{spec.recipe}", adapt=spec.adaptation, accepts=("img_size",),
                   origin=spec.build.origin)(build)


for _spec in ZOO:
    _register(_spec)
