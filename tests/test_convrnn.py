import pytest
import torch

from selfreg.complexity import count_parameters
from selfreg.errors import UserError
from selfreg.layers.convrnn import ConvGRU, ConvLSTM, ConvRNN, GateConv, resolve_regulator

GATES = {ConvRNN: 1, ConvGRU: 3, ConvLSTM: 4}  # gate maps computed from [X, H] per cell


def light_params(n: int, k: int) -> int:
    # Per gate: grouped 1x1 (N groups, 2 -> 1): 2N, depthwise 3x3: 9N, bias: N.
    return k * (2 * n + 9 * n + n)


def full_params(n: int, k: int) -> int:
    return k * (18 * n * n + n)  # per gate: 3x3 conv 2N -> N, bias N


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("n", [16, 64])
def test_parameter_arithmetic(cell, n):
    assert count_parameters(cell(n, "light")) == light_params(n, GATES[cell])
    assert count_parameters(cell(n, "full")) == full_params(n, GATES[cell])


def test_light_form_is_18n_over_11_cheaper_in_weights():
    # Section III-B: the light convolution reduces the cost by 18N/11 times (weights, no bias).
    n = 32
    light, full = GateConv(n, 1, "light"), GateConv(n, 1, "full")
    weights = lambda m: sum(p.numel() for name, p in m.named_parameters() if name.endswith("weight"))
    assert weights(full) / weights(light) == pytest.approx(18 * n / 11)


def test_regnet20_gru_table1_difference():
    # Table I: full 3x3 cells +330K, light +44K: a difference of 286K for N = 16, 32, 64.
    diff = sum(full_params(n, 3) - light_params(n, 3) for n in (16, 32, 64))
    assert diff == 286_608


def test_light_groups_pair_each_input_channel_with_its_own_state_channel():
    # Group i of the grouped 1x1 must see (x_i, h_i): a plain concatenation [X, H] would
    # give the first N/2 groups two X channels and never mix input with state.
    torch.manual_seed(0)
    n = 8
    conv = GateConv(n, 1, "light")
    x, h = torch.randn(1, n, 5, 5), torch.randn(1, n, 5, 5)
    (base,) = conv(x, h)
    for j in (0, n - 1):
        for which in ("x", "h"):
            x2, h2 = x.clone(), h.clone()
            (x2 if which == "x" else h2)[:, j] += 1.0
            (out,) = conv(x2, h2)
            changed = (out - base).abs().amax(dim=(0, 2, 3)) > 0
            assert changed.nonzero().flatten().tolist() == [j], (which, j)


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("form", ["light", "full"])
def test_state_starts_at_zeros_like_the_input_and_keeps_shape(cell, form):
    c = cell(6, form).double()
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    state = c.init_state(x)
    for t in (state if isinstance(state, tuple) else (state,)):
        assert t.shape == x.shape and t.dtype == x.dtype and t.device == x.device and not t.any()
    for _ in range(3):
        h, state = c(x, state)
        assert h.shape == x.shape and torch.isfinite(h).all()


def test_gru_closed_update_gate_keeps_the_state():
    # H' = (1 - z) H + z n: with the update gate shut (z -> 0) the state passes unchanged.
    torch.manual_seed(0)
    cell = ConvGRU(4, "light")
    with torch.no_grad():
        cell.gates.gate_bias()[:, 0] = -100.0  # gate order: z, r
    x, h = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    out, state = cell(x, h)
    torch.testing.assert_close(out, h)
    assert state is out


def test_lstm_memory_with_open_forget_and_closed_input_gate():
    torch.manual_seed(0)
    cell = ConvLSTM(4, "full")
    assert torch.equal(cell.gates.gate_bias()[:, 1], torch.ones(4))  # forget bias starts at 1
    with torch.no_grad():
        cell.gates.gate_bias()[:, 0] = -100.0  # input gate shut
        cell.gates.gate_bias()[:, 1] = 100.0   # forget gate open
    x, h, c = (torch.randn(2, 4, 6, 6) for _ in range(3))
    out, (h2, c2) = cell(x, (h, c))
    torch.testing.assert_close(c2, c)
    torch.testing.assert_close(out, torch.sigmoid(cell.gates(x, h)[2]) * torch.tanh(c))
    assert cell.with_hidden((h2, c2), x)[1] is c2


def test_rnn_is_tanh_of_one_convolution():
    torch.manual_seed(0)
    cell = ConvRNN(3, "full")
    x, h = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    out, _ = cell(x, h)
    torch.testing.assert_close(out, torch.tanh(cell.conv(x, h)[0]))
    assert out.abs().max() < 1


def test_user_errors_name_the_valid_choices():
    with pytest.raises(UserError, match="valid: light, full"):
        ConvGRU(8, form="heavy")
    with pytest.raises(UserError, match="valid: rnn, gru, lstm"):
        resolve_regulator("transformer")
    assert resolve_regulator("gru") is ConvGRU and resolve_regulator(ConvLSTM) is ConvLSTM
    assert resolve_regulator(None) is None


# ---------------------------------------------------------------- the fast path
def _steps(cell, x, forward, steps=3, first=None):
    """Run `steps` recurrent steps from `first` (None: zeros); return every hidden map."""
    state, hs = first, []
    for _ in range(steps):
        h, state = forward(x, state)
        hs.append(h)
    return torch.stack(hs)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("form", ["light", "full"])
def test_fast_path_equals_the_reference_formulation(cell, form, layout):
    # the light form computed one gate at a time (lerp/addcmul), in either memory layout, must
    # give the interleaved grouped-1x1 formulation's outputs and gradients (fp32 rounding).
    torch.manual_seed(0)
    c = cell(8, form)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.1 * torch.randn_like(p))  # not just the init: nonzero everywhere
    x = torch.randn(3, 8, 7, 6)
    if layout == "channels_last":
        c, x = c.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    # The fast path starts as the model runs it (state None: the zero terms skipped), the
    # reference from explicit zeros.
    fast, ref = _steps(c, x, c.forward), _steps(c, x, c.reference_forward, first=c.init_state(x))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(fast)
    inputs = [x, *c.parameters()]
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    g_ref = torch.autograd.grad((ref * weights).sum(), inputs)
    for name, a, b in zip(["x", *(n for n, _ in c.named_parameters())], g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_light_gates_keep_the_layout_and_pass_gradcheck(layout):
    from selfreg.layers.convrnn import light_gates

    torch.manual_seed(0)
    conv = GateConv(3, 2, "light").conv.double()
    x, h = (torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
            for _ in range(2))
    gates = light_gates(conv, x, h)
    assert len(gates) == 2 and all(g.shape == x.shape and g.is_contiguous(memory_format=layout) for g in gates)
    assert torch.autograd.gradcheck(lambda a, b: light_gates(conv, a, b), (x, h))
    # h=None is a zero state: same gates as explicit zeros, any subset in the order asked
    zeros = torch.zeros_like(h)
    for which in [(0, 1), (1,), (1, 0)]:
        for a, b in zip(light_gates(conv, x, None, which), light_gates(conv, x, zeros, which)):
            torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda a: light_gates(conv, a, None, (1,)), (x,))


@pytest.mark.parametrize("cell", list(GATES))
def test_light_form_keeps_its_parameter_layout(cell):
    # Old checkpoints load: the fast path reads the grouped 1x1 and depthwise weights as they were.
    shapes = {k: tuple(v.shape) for k, v in cell(16, "light").state_dict().items()}
    k = {ConvRNN: 1, ConvGRU: 2, ConvLSTM: 4}[cell]
    first = "conv" if cell is ConvRNN else "gates"
    assert shapes[f"{first}.conv.0.weight"] == (16 * k, 2, 1, 1)
    assert shapes[f"{first}.conv.1.weight"] == (16 * k, 1, 3, 3)
    assert shapes[f"{first}.conv.1.bias"] == (16 * k,)


def test_use_reference_cells_switches_and_restores():
    from selfreg.layers.convrnn import use_reference_cells

    model = torch.nn.Sequential(ConvGRU(4), ConvLSTM(4))
    use_reference_cells(model)
    assert all(m.forward == m.reference_forward for m in model)
    use_reference_cells(model, False)
    assert all("forward" not in m.__dict__ for m in model)


@pytest.mark.parametrize("cell", list(GATES))
def test_fast_path_under_autocast_with_a_float32_state(cell):
    # bf16 gate maps meet a float32 state: the result's dtype is the reference formulation's.
    torch.manual_seed(0)
    c = cell(4, "light")
    x = torch.randn(2, 4, 5, 5)
    state = c.init_state(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = c(x, state)
        ref, _ = c.reference_forward(x, state)
    assert fast.dtype == ref.dtype
    torch.testing.assert_close(fast.float(), ref.float(), atol=2e-2, rtol=2e-2)
