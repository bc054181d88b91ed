"""Convolutional recurrent cells for the regulator of RegNet of Xu et al. (TNNLS 2022).

Every cell reads the concatenation of an N-channel input X and its N-channel hidden
state H, and computes each gate with a convolution from 2N channels to N (Eq. 1).
That convolution has two forms (`form=`):

- "full":  an ordinary 3x3 convolution, 2N -> N. Weights per gate: 18 N^2.
- "light": the paper's cheap form (section III-B), in two steps:
    (1) split the 2N input channels into N groups and apply a grouped 1x1
        convolution: each group maps 2 channels to 1.      Weights per gate: 2N
    (2) split the result into N groups and apply a grouped 3x3 convolution,
        one 3x3 filter per channel (depthwise).            Weights per gate: 9N
  11N weights per gate against 18 N^2: the "18N/11 times" reduction of section III-B.

Two choices the paper leaves open, made here:

- Which channels share a group in step (1). With a plain concatenation [X, H], group i
  would see channels (2i, 2i+1): two channels of X for the first N/2 groups and two of H
  for the rest, so no gate would ever mix the input with the state. We interleave
  instead, [x_0, h_0, x_1, h_1, ...], so group i fuses x_i with h_i, which is what a
  recurrent cell needs. (For the full form the order is a mere permutation.)
- Several gates. Each gate gets its own light convolution over [X, H]; all k gates of a
  cell are computed by one grouped convolution 2N -> kN (groups=N) and one depthwise
  3x3 over kN channels, which is the same thing: group i maps (x_i, h_i) to the k gate
  pre-activations of channel i. Output channel i*k + g is gate g of channel i.

Parameter arithmetic (weights + one bias per gate channel), N channels, k gates:
    light: k * (2N + 9N + N) = 12 k N        full: k * (18 N^2 + N)
ConvRNN has k=1, ConvLSTM k=4 and ConvGRU k=3 (update and reset gates over [X, H],
then the candidate over [X, r * H]). For RegNet-20 (one cell per stage, N = 16, 32, 64,
sum 112) with ConvGRU: light 36 * 112 = 4,032 parameters, full 54 * 5,376 + 3 * 112 =
290,640. Their difference, 286,608, is the one in Table I of the paper (330K - 44K).

Each cell: `forward(x, state) -> (h, new_state)`, `init_state(x)` -> zeros like `x`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError


def _light_conv(channels: int, gates: int) -> nn.Module:
    out = channels * gates
    return nn.Sequential(
        # (1) N groups of (x_i, h_i) -> k gate maps each: 2N*k weights.
        nn.Conv2d(2 * channels, out, 1, groups=channels, bias=False),
        # (2) one 3x3 filter per gate map: 9N*k weights; the gate bias lives here.
        nn.Conv2d(out, out, 3, padding=1, groups=out, bias=True),
    )


def _full_conv(channels: int, gates: int) -> nn.Module:
    return nn.Conv2d(2 * channels, channels * gates, 3, padding=1, bias=True)


FORMS: dict[str, Callable[[int, int], nn.Module]] = {"light": _light_conv, "full": _full_conv}


class GateConv(nn.Module):
    """k gate pre-activations, each (B, N, H, W), from one convolution over [X, H]."""

    def __init__(self, channels: int, gates: int, form: str = "light"):
        super().__init__()
        if form not in FORMS:
            raise UserError(f"unknown ConvRNN form {form!r}; valid: {', '.join(FORMS)}")
        self.channels, self.gates, self.form = channels, gates, form
        self.conv = FORMS[form](channels, gates)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xh = torch.stack((x, h), dim=2).flatten(1, 2)        # (B, 2N, H, W): x_0, h_0, x_1, h_1, ...
        out = self.conv(xh)                                   # (B, N*k, H, W): channel i*k + g
        return out.unflatten(1, (self.channels, self.gates)).unbind(2)  # k x (B, N, H, W)

    def gate_bias(self) -> torch.Tensor:
        """The bias as an (N, k) view: column g is gate g's bias for every channel."""
        last = self.conv[-1] if isinstance(self.conv, nn.Sequential) else self.conv
        return last.bias.view(self.channels, self.gates)


class ConvCell(nn.Module):
    """Common base: N channels in and out, state starting at zeros shaped like the input.

    The state is the hidden map H itself, except for ConvLSTM where it is (H, C).
    """

    def __init__(self, channels: int, form: str = "light"):
        super().__init__()
        self.channels, self.form = channels, form

    def init_state(self, x: torch.Tensor) -> Any:
        return torch.zeros_like(x)  # same shape, device and dtype as the input

    def with_hidden(self, state: Any, h: torch.Tensor) -> Any:
        """The state with its hidden map replaced by `h` (e.g. a normalized copy)."""
        return h

    def reset_parameters(self) -> None:
        # PyTorch's default conv init; He (fan-out) init, right for ReLU layers, would
        # give the depthwise 3x3 filters of the light form a std of sqrt(2 / (9 N k)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, form={self.form!r}"


class ConvRNN(ConvCell):
    """H_t = tanh(W * [X_t, H_{t-1}] + b)  (Eq. 1)."""

    def __init__(self, channels: int, form: str = "light"):
        super().__init__(channels, form)
        self.conv = GateConv(channels, 1, form)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (a,) = self.conv(x, state)
        h = torch.tanh(a)
        return h, h


class ConvGRU(ConvCell):
    """Convolutional GRU (Ballas et al., 2016).

    z, r = sigmoid(W_zr * [X, H])          update and reset gates
    n    = tanh(W_n * [X, r * H])          candidate
    H'   = (1 - z) * H + z * n
    """

    def __init__(self, channels: int, form: str = "light"):
        super().__init__(channels, form)
        self.gates = GateConv(channels, 2, form)
        self.candidate = GateConv(channels, 1, form)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, r = (torch.sigmoid(a) for a in self.gates(x, state))
        (n,) = self.candidate(x, r * state)
        h = (1 - z) * state + z * torch.tanh(n)
        return h, h


class ConvLSTM(ConvCell):
    """Convolutional LSTM (Shi et al., 2015), without the peephole terms (the paper shows none).

    i, f, o = sigmoid(...), g = tanh(...), all from W * [X, H]
    C' = f * C + i * g,   H' = o * tanh(C');   the state is (H, C).
    The forget-gate bias starts at 1 (Jozefowicz et al., 2015) so the memory is kept early on.
    """

    def __init__(self, channels: int, form: str = "light"):
        super().__init__(channels, form)
        self.gates = GateConv(channels, 4, form)
        self.reset_parameters()

    def init_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(x), torch.zeros_like(x)

    def with_hidden(self, state: tuple[torch.Tensor, torch.Tensor], h: torch.Tensor):
        return h, state[1]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.gates.gate_bias()[:, 1] = 1.0  # gate order: i, f, o, g

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        i, f, o, g = self.gates(x, h)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


# Names a config file can use for `regulator:`; code passes the class itself.
REGULATORS: dict[str, type[ConvCell]] = {"rnn": ConvRNN, "gru": ConvGRU, "lstm": ConvLSTM}


def resolve_regulator(regulator: type[ConvCell] | str | None) -> type[ConvCell] | None:
    """A cell class, `None` (no regulator), or one of the names in `REGULATORS`."""
    if regulator is None or (isinstance(regulator, type) and issubclass(regulator, ConvCell)):
        return regulator
    if isinstance(regulator, str) and regulator in REGULATORS:
        return REGULATORS[regulator]
    raise UserError(f"unknown regulator {regulator!r}; valid: {', '.join(REGULATORS)}, "
                    "a ConvCell subclass, or None")
