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

- Step (1) is never run as a convolution. A grouped 1x1 with 2 channels per group is, per
  gate map, w_x * x_i + w_h * h_i: `PairMix` does it by broadcasting X and H (B, N, H, W)
  against the (N, k) weights into a (B, N, k, H, W) tensor, which is already the layout of
  the grouped convolution's output (map i*k + g), so no interleaved copy of [X, H] is made.
  Its backward loops over the k gates so that no k-times-larger temporaries are allocated.
- Step (2), the depthwise 3x3 of all k gates of a cell, is one conv2d call (groups = k*N)
  on those maps with the module's own weight and bias; ConvGRU needs a second call for its
  candidate, which depends on r * H.
- Activations: ConvGRU applies one sigmoid to both of its gates and updates the state with
  one `lerp` ((1 - z) * H + z * n); ConvLSTM forms f * C + i * g with one `addcmul`.
For timings of both formulations, and of the light form against the full one, see the
step_time section of docs/performance.md (benchmarks/step_time.py).

Each cell: `forward(x, state) -> (h, new_state)`, `init_state(x)` -> zeros like `x`.
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

    `preact(x, h)` returns them stacked as one (B, N, k, H, W) tensor (gate g of channel i
    at [:, i, g], the layout of output channel i*k + g), which lets a cell apply one
    activation to several gates at once; `forward` returns the k gates as a tuple.
    """

    def __init__(self, channels: int, gates: int, form: str = "light"):
        super().__init__()
        if form not in FORMS:
            raise UserError(f"unknown ConvRNN form {form!r}; valid: {', '.join(FORMS)}")
        self.channels, self.gates, self.form = channels, gates, form
        self.conv = FORMS[form](channels, gates)

    def preact(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.form == "full":
            out = self.conv(interleave(x, h))                  # (B, N*k, H, W): channel i*k + g
        else:
            out = light_gates(self.conv, x, h)                 # the same, computed faster
        return out.unflatten(1, (self.channels, self.gates))  # (B, N, k, H, W)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.preact(x, h).unbind(2)                    # k x (B, N, H, W)

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


class PairMix(torch.autograd.Function):
    """maps[:, i, g] = w[i, g, 0] * x[:, i] + w[i, g, 1] * h[:, i]: (B, N, H, W) x2 -> (B, N, k, H, W).

    Autograd through broadcasting would materialise three more (B, N, k, H, W) temporaries in
    the backward pass (k times the size of X); this backward loops over the k gates with
    (B, N, H, W) temporaries only. Large fresh allocations are slow on the CPU (page faults).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, h, w)
        maps = x.unsqueeze(2) * w[..., 0, None, None]                      # (B, N, k, H, W)
        return maps.addcmul_(h.unsqueeze(2), w[..., 1, None, None])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, h, w = ctx.saved_tensors
        k = w.shape[1]
        grads: list[torch.Tensor | None] = [None, None, None]
        for j, t in enumerate((x, h)):
            if ctx.needs_input_grad[j]:                                    # sum_g grad_g * w[:, g, j]
                acc = grad[:, :, 0] * w[:, 0, j, None, None]
                for g in range(1, k):
                    acc.addcmul_(grad[:, :, g], w[:, g, j, None, None])
                grads[j] = acc
        if ctx.needs_input_grad[2]:                                        # sum over B, H, W of grad_g * t
            grads[2] = torch.stack([torch.stack([(grad[:, :, g] * t).sum((0, 2, 3)) for t in (x, h)], -1)
                                    for g in range(k)], 1)
        return tuple(grads)


def pair_mix(x: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """PairMix where a backward pass can happen; plain tensor ops where none will, or where a
    tracer must see them (TorchScript and ONNX cannot record a Python autograd.Function)."""
    if torch.is_grad_enabled() and not (torch.jit.is_tracing() or torch.jit.is_scripting()
                                        or torch.onnx.is_in_onnx_export()):
        return PairMix.apply(x, h, w)
    return x.unsqueeze(2) * w[..., 0, None, None] + h.unsqueeze(2) * w[..., 1, None, None]


def light_gates(conv: nn.Sequential, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The light form's gate maps (B, N*k, H, W), computed without the grouped 1x1 convolution.

    Group i of the grouped 1x1 maps (x_i, h_i) to k maps, map g being
    w[i*k+g, 0] * x_i + w[i*k+g, 1] * h_i: a per-channel multiply-add, done here by
    broadcasting over a (B, N, k, H, W) view (no interleaved copy of X and H). The result
    is laid out as the grouped convolution's output, so the depthwise 3x3 over all k*N maps
    runs as one conv2d call with the very same weights.
    """
    mix, depthwise = conv
    w = mix.weight.view(x.shape[1], -1, 2)                                 # (N, k, 2): w_x, w_h
    maps = pair_mix(x, h, w).flatten(1, 2)                                 # (B, N*k, H, W): map i*k + g
    return F.conv2d(maps, depthwise.weight, depthwise.bias, padding=1, groups=depthwise.groups)


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
        h = torch.tanh(self.conv.preact(x, state).squeeze(2))
        return h, h

    def reference_forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (a,) = self.conv.reference(x, state)
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
        z, r = torch.sigmoid(self.gates.preact(x, state)).unbind(2)  # one call for both gates
        n = torch.tanh(self.candidate.preact(x, r * state).squeeze(2))
        dtype = torch.promote_types(state.dtype, n.dtype)               # lerp does not promote (autocast)
        h = torch.lerp(state.to(dtype), n.to(dtype), z.to(dtype))      # (1 - z) * H + z * n
        return h, h

    def reference_forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        i, f, o, g = self.gates(x, h)                       # unbind: no slice copies in backward
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))  # f * C + i * g
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    def reference_forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
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
