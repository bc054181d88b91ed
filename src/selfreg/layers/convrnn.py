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

How the light form is computed (same parameters and state-dict keys, same values within
float rounding; tests/test_convrnn.py checks outputs and gradients against the formulation
above, kept as `GateConv.reference` and each cell's `reference_forward`):

- One gate at a time (`light_gates`), with the 1x1 weights folded into the 3x3 filters:
  both steps are linear, so gate g is K_g * (w_x X + w_h H) = (w_x K_g) * X + (w_h K_g) * H,
  two depthwise 3x3 convolutions (of X and of H, filters scaled per channel: 9N numbers)
  and an add. No full-size per-channel multiply or reduction is left for autograd (the
  depthwise backward computes the weight gradients), no interleaved copy of [X, H] and no
  grouped convolution; every tensor is the size of X and in X's memory layout, so in
  channels_last the depthwise 3x3 runs on oneDNN's NHWC kernel (several times faster on
  the CPU than the NCHW one) and nothing k times larger than X is allocated. Plain tensor
  operations throughout: autograd, TorchScript, ONNX export and torch.compile see the
  same code.
- Activations: ConvGRU updates the state with one `lerp` ((1 - z) * H + z * n); ConvLSTM
  forms f * C + i * g with one `addcmul`.
For timings of both formulations, and of the light form against the full one, see the
step_time section of docs/performance.md (benchmarks/step_time.py).

- The first step of a stage starts from zeros, passed as `state=None`: the terms that
  read the state are skipped rather than computed on zeros (the light form's H-side
  convolutions, and ConvGRU's reset gate and ConvLSTM's forget gate, which only ever
  multiply the state; the full form convolves real zeros). The result and every gradient
  are the same as from explicit zeros (tested).

Each cell: `forward(x, state) -> (h, new_state)` with `state=None` meaning zeros,
`init_state(x)` -> the zero state explicitly (zeros like `x`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
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
    """k gate pre-activations, each (B, N, H, W), from one convolution over [X, H].

    `forward(x, h)` returns the k gates as a tuple (gate g of channel i is output channel
    i*k + g of the convolution): the light form computes them one gate at a time
    (`light_gates`), the full form as one convolution whose output is split.
    """

    def __init__(self, channels: int, gates: int, form: str = "light"):
        super().__init__()
        if form not in FORMS:
            raise UserError(f"unknown ConvRNN form {form!r}; valid: {', '.join(FORMS)}")
        self.channels, self.gates, self.form = channels, gates, form
        self.conv = FORMS[form](channels, gates)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None,
                which: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """Gates `which` (default: all), in that order. `h=None` is a state of zeros."""
        which = tuple(range(self.gates)) if which is None else which
        if self.form == "light":
            return light_gates(self.conv, x, h, which)
        gates = self.reference(x, torch.zeros_like(x) if h is None else h)
        return tuple(gates[g] for g in which)

    def reference(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`forward` as first written (interleaved copy, grouped 1x1): the tests' reference."""
        return self.conv(interleave(x, h)).unflatten(1, (self.channels, self.gates)).unbind(2)

    def gate_bias(self) -> torch.Tensor:
        """The bias as an (N, k) view: column g is gate g's bias for every channel."""
        last = self.conv[-1] if isinstance(self.conv, nn.Sequential) else self.conv
        return last.bias.view(self.channels, self.gates)


def interleave(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(B, 2N, H, W): x_0, h_0, x_1, h_1, ... (a copy)."""
    return torch.stack((x, h), dim=2).flatten(1, 2)


def light_gates(conv: nn.Sequential, x: torch.Tensor, h: torch.Tensor | None,
                which: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """The light form's gate pre-activations `which` (default all k), each (B, N, H, W).

    Group i of the grouped 1x1 maps (x_i, h_i) to gate g's map as
    w[i*k+g, 0] * x_i + w[i*k+g, 1] * h_i, and gate g's depthwise 3x3 (filter K = the
    filters i*k + g of the module's depthwise convolution) follows. Both steps are linear,
    so K * (w_x x + w_h h) = (w_x K) * x + (w_h K) * h: each gate is two depthwise 3x3
    convolutions, of X and of H, with the 1x1 weights folded into their (tiny) filters,
    plus the bias. No per-channel multiply of a full map is left, forward or backward (the
    weight gradients come out of the convolutions' own backward instead of full-size
    products and reductions), and every tensor is the size of X and in X's memory layout:
    in channels_last the depthwise 3x3 runs on oneDNN's NHWC kernel, several times faster
    on the CPU than the NCHW one.
    `h=None` stands for a state of zeros (a stage's first step): its convolutions, which
    would add exactly zero to the gates and to every gradient, are not run.
    """
    mix, depthwise = conv
    n = x.shape[1]
    w = mix.weight.view(n, -1, 2, 1, 1, 1)                          # (N, k, 2): w_x, w_h of gate g
    k = w.shape[1]
    filters = depthwise.weight.view(n, k, 1, 3, 3)
    bias = depthwise.bias.view(n, k)
    gates = []
    for g in range(k) if which is None else which:
        gate = F.conv2d(x, filters[:, g] * w[:, g, 0], bias[:, g], padding=1, groups=n)
        if h is not None:
            gate = gate.add_(F.conv2d(h, filters[:, g] * w[:, g, 1], None, padding=1, groups=n))
        gates.append(gate)
    return tuple(gates)


class ConvCell(nn.Module):
    """Common base: N channels in and out, state starting at zeros shaped like the input.

    The state is the hidden map H itself, except for ConvLSTM where it is (H, C).
    """

    def __init__(self, channels: int, form: str = "light"):
        super().__init__()
        self.channels, self.form = channels, form

    def init_state(self, x: torch.Tensor) -> Any:
        return torch.zeros_like(x)  # same shape, device and dtype as the input

    # Whether a None state skips the terms that read it (see the module doc). Only sound when
    # the cell runs again later in the same forward, where those weights get their gradients:
    # a one-step use (a one-block RegStage sets False) computes on real zeros instead, so every
    # parameter still gets a (zero) gradient, as DDP and weight decay expect.
    skip_zero_state = True

    def start_state(self, x: torch.Tensor, state: Any, skip: bool) -> Any:
        """`state`. None is the zero state: it stays None (its terms skipped) when `skip` and
        `skip_zero_state` allow it, else it becomes real zeros (`init_state`)."""
        if state is None and not (skip and self.skip_zero_state):
            return self.init_state(x)
        return state

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

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        (a,) = self.conv(x, self.start_state(x, state, skip=True))
        h = torch.tanh(a)
        return h, h

    def reference_forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        (a,) = self.conv.reference(x, self.start_state(x, state, skip=False))
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

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.start_state(x, state, skip=True)
        if state is None:  # H = 0: r * H = 0, so r has no effect, and H' = z * n
            (z,) = self.gates(x, None, which=(0,))
            (a,) = self.candidate(x, None)
            h = torch.sigmoid(z) * torch.tanh(a)
            return h, h
        z, r = (torch.sigmoid(a) for a in self.gates(x, state))
        (a,) = self.candidate(x, r * state)
        n = torch.tanh(a)
        dtype = torch.promote_types(state.dtype, n.dtype)               # lerp does not promote (autocast)
        h = torch.lerp(state.to(dtype), n.to(dtype), z.to(dtype))      # (1 - z) * H + z * n
        return h, h

    def reference_forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.start_state(x, state, skip=False)
        z, r = (torch.sigmoid(a) for a in self.gates.reference(x, state))
        (n,) = self.candidate.reference(x, r * state)
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

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        state = self.start_state(x, state, skip=True)
        if state is None:  # H = C = 0: f * C = 0, so f has no effect, and C' = i * g
            i, o, g = self.gates(x, None, which=(0, 2, 3))
            c = torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return h, (h, c)
        h, c = state
        i, f, o, g = self.gates(x, h)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))  # f * C + i * g
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def reference_forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        h, c = self.start_state(x, state, skip=False)
        i, f, o, g = self.gates.reference(x, h)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


def use_reference_cells(model: nn.Module, reference: bool = True) -> nn.Module:
    """Make every cell of `model` run `reference_forward` (True) or its fast `forward` (False).

    Same parameters, same values within float rounding; used by the tests, by
    benchmarks/step_time.py (the "reference" rows) and by MAC counting, which should
    count the formulation of the paper (a grouped 1x1 convolution), not how we compute it.
    """
    for m in model.modules():
        if isinstance(m, ConvCell):
            if reference:
                m.forward = m.reference_forward
            elif "forward" in m.__dict__:
                del m.forward
    return model


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
