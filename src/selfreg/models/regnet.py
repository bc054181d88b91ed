"""RegNet of Xu et al., "RegNet: Self-Regulated Network for Image Classification" (TNNLS 2022).

Not the RegNet of Radosavovic et al. that torchvision and timm call `regnet_*`: ours are
named `rrnet*` (RNN-regulated ResNet).

A ResNet stage of n blocks gets one convolutional RNN (the regulator). Block t feeds its
intermediate map X2 to the cell, the cell's hidden map H_t is concatenated with X2 and
fused by a 1x1 convolution, and the cell's state goes on to block t+1. The state starts
at zeros at the start of every stage and every forward call, so nothing leaks between
batches; each stage's cell is shared by its n blocks (one RNN over n time steps).

Models (parameters and the choices behind them: docs/regnet.md):
- `rrnet{20,32,56}_{rnn,gru,lstm}`: CIFAR, Table II, a regulator in each of the 3 stages.
- `se_rrnet20_{rnn,gru,lstm}`: the same with squeeze-and-excitation, reduction 8 (Table III).
- `rrnet20_{gru,lstm}_s{1,2,3}`: a regulator in stage i only (Table V, "RegNet(i)").
- `rrnet50`: ImageNet, bottleneck modules over {3,4,6,3} blocks, 4 ConvLSTMs (Table VI).
- `resnet50`: its baseline, torchvision's ResNet-50 exactly (same parameters, same
  state-dict keys, so torchvision weights load into it).

Choices where the paper is ambiguous (constructor arguments where the alternative is cheap):
- BN after the cell, ReLU(BN(ConvLSTM(...))) in Eq. 2: one BN per block (statistics per
  time step, as the equation is written per module t), applied to H only. The cell memory
  C of ConvLSTM is carried raw: a ReLU would clamp the memory to >= 0.
  `recurrent_state="normalized"` (default, Eq. 2 read literally: the H that is
  concatenated is also the H_{t-1} of the next block) or "raw" (the cell's own H is
  carried; BN and ReLU act only on the copy fed to the fusion convolution).
- The cell's convolutions: `form="light"` (the paper's, default) or "full"; see
  `selfreg.layers.convrnn` for the grouping and the parameter arithmetic.
- Biases: the block convolutions have none (each is followed by BN, which makes a bias
  redundant); the cell's gate convolutions have one per gate map (b_h of Eq. 1).
- CIFAR stage transitions: the first block of stages 2 and 3 has stride 2 in its first 3x3
  (W12), so X2, and with it the state that starts at zeros, is at the stage's resolution.
  Shortcuts: option A by default, as in `resnet_cifar`.
- ImageNet stage transitions: `stride_on="3x3"` (default) puts the stride on W23 as
  torchvision does, so `rrnet50` is `resnet50` plus regulators and nothing else; the cell
  then reads X2 subsampled by the stride (X2[:, :, ::2, ::2], the same grid as the strided
  3x3, no parameters) to run at the stage's resolution. `stride_on="1x1"` puts it on W12
  (He et al.'s original placement); the cell input is then the same map, computed for a
  few percent fewer multiply-adds in the 1x1.
- The ImageNet cell: the paper does not name it; `rrnet50` uses ConvLSTM, the running
  example of Eq. 2-3 (`regulator=` picks another).
- SE (Fig. 3): on the residual branch, after the last BN and before the addition, as in SE-ResNet.

Counts against the paper: `python benchmarks/param_table.py` prints each model's increase
over its baseline next to the paper's, with a result per row (pass, FAIL, or paper
inconsistent where the paper contradicts itself); docs/regnet.md shows the table and
tests/test_regnet.py asserts every row's result. Not every row passes: our increases fall
below Table I's (light and full) and Table IV's RegNet-56 LSTM; Table I's difference, full
minus light, matches, so that gap lies outside the cells. `rrnet50`'s additions are mostly
Eq. 3's 1x1 fusion convolutions (2N^2 per block), which we keep as written rather than
inflate to the paper's +4.7M, which no cell explains.

Feature maps for the paper's Fig. 1: every regulated block has identity submodules
`tap_input` (I, the cell's input X2), `tap_state` (H, after BN and ReLU) and `tap_output`
(O, the block's output); a forward hook on them reads the maps and costs nothing when none
is registered. `model.forward_intermediates(x)` does that for every block and returns one
dict per block: {"stage", "block", "input", "state", "output"} (input and state are None for
plain blocks).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from ..errors import UserError
from ..layers import SqueezeExcite, make_shortcut
from ..layers.basic_block import BasicBlock
from ..layers.convrnn import REGULATORS, ConvCell, resolve_regulator
from ..layers.norm import get_norm_layer
from ..layers.taps import record_outputs
from ..layers.shortcut import projection
from ..registry import register_model
from .base import PoolFcNet, init_he
from .papers import HE_2016, XU_2022

RECURRENT_STATES = ("normalized", "raw")
STRIDE_ON = ("3x3", "1x1")

NormLayer = Callable[[int], nn.Module]


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise UserError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def fuse(conv: nn.Conv2d, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """conv(cat([x, h], 1)) for a bias-free 1x1 `conv`, as conv(x, W_x) + conv(h, W_h).

    The split weight does the same sum without materialising the concatenation (a copy
    of 2N channels per block, and its gradient); for timings see the step_time section of
    docs/performance.md. Parameters and state-dict keys are those of `conv`.
    """
    n = x.shape[1]
    return F.conv2d(x, conv.weight[:, :n]) + F.conv2d(h, conv.weight[:, n:])


class _Regulated(nn.Module):
    """What the two regulated blocks share: the cell step with its BN, ReLU and taps."""

    def __init__(self, channels: int, recurrent_state: str, norm_layer: NormLayer):
        super().__init__()
        self.carry_normalized = _check_choice("recurrent_state", recurrent_state,
                                              RECURRENT_STATES) == "normalized"
        self.bn_state = norm_layer(channels)
        # Identity taps for forward hooks (Fig. 1: I, H, O); free when no hook is set.
        self.tap_input, self.tap_state, self.tap_output = nn.Identity(), nn.Identity(), nn.Identity()

    def regulate(self, x2: torch.Tensor, cell: ConvCell, state: Any) -> tuple[torch.Tensor, Any]:
        """[H, C] = ReLU(BN(ConvRNN(X2, state))): returns H and the state for the next block."""
        x2 = self.tap_input(x2)
        h, state = cell(x2, state)  # state None in the first block of the stage: zeros
        h = self.tap_state(torch.relu(self.bn_state(h)))
        if self.carry_normalized:
            state = cell.with_hidden(state, h)
        return h, state


class RegBasicBlock(_Regulated):
    """The RegNet module, Eq. 2 (W12: 3x3 carrying the stride, W23: 1x1 fusion, W34: 3x3)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: str = "A",
                 se_reduction: int | None = None, recurrent_state: str = "normalized",
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__(channels, recurrent_state, norm_layer)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)  # W12
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(2 * channels, channels, 1, bias=False)  # W23 over [X2, H]
        self.bn2 = norm_layer(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # W34
        self.bn3 = norm_layer(channels)
        self.se = SqueezeExcite(channels, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = make_shortcut(shortcut, in_channels, channels, stride, norm_layer)

    def forward(self, x: torch.Tensor, cell: ConvCell, state: Any) -> tuple[torch.Tensor, Any]:
        x2 = torch.relu(self.bn1(self.conv1(x)))                       # (B, C, H, W)
        h, state = self.regulate(x2, cell, state)                       # (B, C, H, W)
        x3 = torch.relu(self.bn2(fuse(self.conv2, x2, h)))              # [X2, H]: (B, 2C, H, W) -> (B, C, H, W)
        x4 = self.se(self.bn3(self.conv3(x3)))
        return self.tap_output(torch.relu(self.shortcut(x) + x4)), state


class RegBottleneck(_Regulated):
    """The bottleneck RegNet module, Eq. 3, with 4x expansion and a projection shortcut.

    W12: 1x1 in -> N; ConvRNN on X2; W23: 3x3 N -> N; W34: 1x1 fusion of [X3, H], 2N -> N;
    W45: 1x1 expansion N -> 4N. The stride sits on W23 or W12 (`stride_on`).
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, stride_on: str = "3x3",
                 recurrent_state: str = "normalized", norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__(channels, recurrent_state, norm_layer)
        on_1x1 = _check_choice("stride_on", stride_on, STRIDE_ON) == "1x1"
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, stride=stride if on_1x1 else 1, bias=False)  # W12
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1 if on_1x1 else stride, padding=1,
                               bias=False)  # W23
        self.bn2 = norm_layer(channels)
        self.conv3 = nn.Conv2d(2 * channels, channels, 1, bias=False)  # W34 over [X3, H]
        self.bn3 = norm_layer(channels)
        self.conv4 = nn.Conv2d(channels, out_channels, 1, bias=False)  # W45
        self.bn4 = norm_layer(out_channels)
        # The cell runs at the block's output resolution: subsample X2 when W12 kept full size.
        self.cell_stride = 1 if on_1x1 else stride
        self.shortcut = (projection(in_channels, out_channels, stride, norm_layer)
                         if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor, cell: ConvCell, state: Any) -> tuple[torch.Tensor, Any]:
        s = self.cell_stride
        x2 = torch.relu(self.bn1(self.conv1(x)))                       # (B, N, H, W)
        h, state = self.regulate(x2[:, :, ::s, ::s], cell, state)       # (B, N, H/s, W/s)
        x3 = torch.relu(self.bn2(self.conv2(x2)))                       # (B, N, H/s, W/s)
        x4 = torch.relu(self.bn3(fuse(self.conv3, x3, h)))              # [X3, H]: (B, 2N, ...) -> (B, N, ...)
        x5 = self.bn4(self.conv4(x4))                                   # (B, 4N, H/s, W/s)
        return self.tap_output(torch.relu(self.shortcut(x) + x5)), state


class RegStage(nn.Module):
    """n regulated blocks sharing one cell; its state starts at zeros in the first block."""

    def __init__(self, cell: ConvCell, blocks: list[nn.Module]):
        super().__init__()
        self.cell = cell
        self.blocks = nn.ModuleList(blocks)
        # A one-block stage runs its cell once: its first step must compute on real zeros so
        # the state-side weights get their (zero) gradients (ConvCell.skip_zero_state).
        cell.skip_zero_state = len(blocks) > 1

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        for block in self.blocks:
            x, state = block(x, self.cell, state)
        return x


def _block_specs(in_channels: int, out_channels: int, n: int, stride: int) -> list[tuple[int, int]]:
    """(input channels, stride) of a stage's n blocks: only the first changes shape."""
    return [(in_channels, stride)] + [(out_channels, 1)] * (n - 1)


def _check_stages(regulated_stages: tuple[int, ...] | None, num_stages: int) -> frozenset[int]:
    """The stages (counting from 1) that get a regulator; None means all of them."""
    valid = range(1, num_stages + 1)
    if regulated_stages is None:
        return frozenset(valid)
    if any(s not in valid for s in regulated_stages):
        raise UserError(f"regulated_stages {tuple(regulated_stages)} must be drawn from "
                        f"{tuple(valid)} (stages count from 1)")
    return frozenset(regulated_stages)


class _StagedNet(PoolFcNet):
    """What both families share besides the surface: the init, and `forward_intermediates`.

    Each family defines forward_features and stage_modules (its stages in order).
    """

    def _finish_init(self) -> None:
        init_he(self)  # the init of resnet_cifar: He fan-out convolutions, unit BN
        for m in self.modules():  # cells keep their own init (see ConvCell.reset_parameters)
            if isinstance(m, ConvCell):
                m.reset_parameters()

    def forward_intermediates(self, x: torch.Tensor) -> list[dict[str, Any]]:
        """Run forward_features and return, per block, its I (input), H (state), O (output).

        Regulated blocks fill all three from their taps; plain blocks only "output".
        Tensors are not detached: wrap the call in torch.no_grad() for plotting.
        """
        places, taps = [], []
        for i, stage in enumerate(self.stage_modules(), 1):
            for j, block in enumerate(stage, 1):
                places.append((i, j))
                named = {"input": getattr(block, "tap_input", None), "state": getattr(block, "tap_state", None),
                         "output": getattr(block, "tap_output", block)}
                taps.append({k: m for k, m in named.items() if m is not None})
        records, _ = record_outputs(taps, lambda: self.forward_features(x))
        return [{"stage": i, "block": j, "input": None, "state": None, "output": None, **record}
                for (i, j), record in zip(places, records)]


class RRNetCifar(_StagedNet):
    """CIFAR RegNet (Table II): stem 3x3/16, three stages of n blocks (16/32/64), pool, FC.

    A stage listed in `regulated_stages` (counting from 1; None: all) has a `regulator` cell and
    RegBasicBlocks; any other stage is plain `BasicBlock`s (`selfreg.layers.basic_block`), the
    very blocks of `resnet_cifar`'s ResNet-(6n+2), so `regulator=None` gives ResNet-(6n+2)
    (same parameters and keys).
    """

    def __init__(self, n: int, num_classes: int = 10, in_chans: int = 3,
                 regulator: type[ConvCell] | str | None = None, form: str = "light",
                 regulated_stages: tuple[int, ...] | None = None, widths: tuple[int, ...] = (16, 32, 64),
                 shortcut: str = "A", se_reduction: int | None = None,
                 recurrent_state: str = "normalized", norm_layer: NormLayer | str = nn.BatchNorm2d):
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)  # a type, or a name from a config ("batch", "group")
        regulator = resolve_regulator(regulator)
        regulated = _check_stages(regulated_stages, len(widths)) if regulator else frozenset()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths, 1):
            specs = _block_specs(in_channels, width, n, stride=2 if i > 1 else 1)
            if i in regulated:
                blocks = [RegBasicBlock(c, width, s, shortcut, se_reduction, recurrent_state, norm_layer)
                          for c, s in specs]
                stages.append(RegStage(regulator(width, form), blocks))
            else:
                stages.append(nn.Sequential(*[BasicBlock(c, width, s, shortcut, se_reduction=se_reduction,
                                                         norm_layer=norm_layer) for c, s in specs]))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        self._finish_init()

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        return self.stages(x)                    # (B, 64, H/4, W/4)


class RRNetImageNet(_StagedNet):
    """ImageNet RegNet: stem 7x7/2 + max pool, bottleneck stages (64..512 x 4), pool, FC.

    Plain stages are torchvision's `Bottleneck`s and the attribute names are torchvision's
    (conv1, bn1, layer1..layer4, fc), so with `regulator=None` this *is* torchvision's
    ResNet-50: same parameters, same state-dict keys, same outputs for the same weights.
    """

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, in_chans: int = 3,
                 regulator: type[ConvCell] | str | None = None, form: str = "light",
                 regulated_stages: tuple[int, ...] | None = None, widths: tuple[int, ...] = (64, 128, 256, 512),
                 stride_on: str = "3x3", recurrent_state: str = "normalized",
                 norm_layer: NormLayer | str = nn.BatchNorm2d):
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)  # a type, or a name from a config ("batch", "group")
        regulator = resolve_regulator(regulator)
        regulated = _check_stages(regulated_stages, len(widths)) if regulator else frozenset()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = widths[0]
        self._stage_names = []
        for i, (n, width) in enumerate(zip(layers, widths), 1):
            specs = _block_specs(in_channels, width * Bottleneck.expansion, n, stride=2 if i > 1 else 1)
            if i in regulated:
                stage = RegStage(regulator(width, form),
                                 [RegBottleneck(c, width, s, stride_on, recurrent_state, norm_layer)
                                  for c, s in specs])
            else:
                stage = nn.Sequential(*[self._plain_block(c, width, s, norm_layer) for c, s in specs])
            self.add_module(f"layer{i}", stage)
            self._stage_names.append(f"layer{i}")
            in_channels = width * Bottleneck.expansion
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        self._finish_init()

    @staticmethod
    def _plain_block(in_channels: int, width: int, stride: int, norm_layer: NormLayer) -> nn.Module:
        out = width * Bottleneck.expansion
        downsample = projection(in_channels, out, stride, norm_layer) if stride != 1 or in_channels != out else None
        return Bottleneck(in_channels, width, stride, downsample, norm_layer=norm_layer)

    def stage_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self._stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        for stage in self.stage_modules():
            x = stage(x)
        return x                                                  # (B, 2048, H/32, W/32)


# ---------------------------------------------------------------- registrations
def _cifar(depth: int, regulator: type[ConvCell], **defaults: Any) -> Callable[..., RRNetCifar]:
    n = (depth - 2) // 6

    def build(num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> RRNetCifar:
        kwargs = {"regulator": regulator, **defaults, **kwargs}
        return RRNetCifar(n, num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__doc__ = (f"RegNet-{depth} of Xu et al. for 32x32 inputs (n={n}), {regulator.__name__} "
                     f"regulators{'' if not defaults else ', ' + repr(defaults)}.")
    return build


def _imagenet(regulator: type[ConvCell] | None, doc: str) -> Callable[..., RRNetImageNet]:
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> RRNetImageNet:
        kwargs = {"regulator": regulator, **kwargs}
        return RRNetImageNet((3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__doc__ = doc
    return build


_CIFAR_META = dict(input_size=32, paper=XU_2022, source="selfreg", accepts=("norm_layer",))

for _name, _cell in REGULATORS.items():
    for _depth in (20, 32, 56):  # Tables II-IV
        register_model(f"rrnet{_depth}_{_name}", family=f"rrnet_{_name}", **_CIFAR_META)(_cifar(_depth, _cell))
    register_model(f"se_rrnet20_{_name}", family=f"se_rrnet_{_name}", **_CIFAR_META)(  # Table III
        _cifar(20, _cell, se_reduction=8))

for _name in ("gru", "lstm"):  # Table V: a regulator in stage i only
    for _stage in (1, 2, 3):
        register_model(f"rrnet20_{_name}_s{_stage}", family=f"rrnet_{_name}", **_CIFAR_META)(
            _cifar(20, REGULATORS[_name], regulated_stages=(_stage,)))

# The paper does not say which cell RegNet-50 uses; ConvLSTM is its running example (Eq. 2-3).
register_model("rrnet50", family="rrnet_lstm", input_size=224, paper=XU_2022, source="selfreg", accepts=("norm_layer",))(
    _imagenet(REGULATORS["lstm"], "RegNet-50 of Xu et al. (Table VI): ResNet-50 with a ConvLSTM per stage."))
register_model("resnet50", family="resnet", input_size=224, paper=HE_2016, source="selfreg", accepts=("norm_layer",))(
    _imagenet(None, "ResNet-50 (torchvision's, v1.5 strides), the baseline of rrnet50."))
