import pytest
import torch
import torchvision
from torch import nn

from selfreg import create_model, list_models
from selfreg.analysis.regnet_checks import (PAPER_ROWS, Printed, Row, compare, markdown_table, measure, plain,
                                            stage_sums, summary)
from selfreg.complexity import count_parameters
from selfreg.errors import UserError
from selfreg.layers.basic_block import BasicBlock
from selfreg.layers.convrnn import ConvCell, ConvLSTM
from selfreg.models.papers import XU_2022
from selfreg.models.regnet import RegStage, RRNetImageNet

RRNETS = list_models("rrnet*") + list_models("se_rrnet*")
INPUT_SIZE = {"rrnet50": 64}  # the exceptions to 32x32: ImageNet nets get a small input


def cells(model: nn.Module) -> list[ConvCell]:
    return [m for m in model.modules() if isinstance(m, ConvCell)]


@pytest.mark.parametrize("name", RRNETS)
def test_forward_backward_and_no_state_leak(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    size = INPUT_SIZE.get(name, 32)
    x, other = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)

    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert cells(model) and all(p.grad.abs().sum() > 0 for c in cells(model) for p in c.parameters())

    # The regulator state starts at zeros in every call: a batch in between changes nothing.
    model.eval()
    with torch.no_grad():
        first = model(x)
        model(other)
        assert torch.equal(model(x), first)


# The rows that FAIL: real gaps between our counts and the paper's, explained in docs/regnet.md
# ("How to read the gaps"). A change either way (a new failure, or one of these passing) is news.
EXPECTED_FAIL = {
    ("Table I, C-10", "rrnet20_gru over resnet20"),
    ("Table I, C-10", "rrnet20_gru, form=full over resnet20"),
    ("Table IV, C-10", "rrnet56_lstm over resnet56"),
    ("Table IV, C-100", "rrnet56_lstm over resnet56"),
}


def test_increases_against_the_paper():
    rows = [compare(r) for r in PAPER_ROWS]
    print("\n" + markdown_table(rows))
    assert {(c.row.source, c.row.label) for c in rows if c.result == "FAIL"} == EXPECTED_FAIL
    inconsistent = {(c.row.source, c.row.model, c.row.metric) for c in rows if c.result == "paper inconsistent"}
    assert inconsistent == {(f"Table V, {col}", f"rrnet20_{cell}_s{s}", "params") for col in ("C-10", "C-100")
                            for cell in ("gru", "lstm") for s in (1, 2, 3)} | {
        ("Table VI", "rrnet50", "params"), ("Table VI", "rrnet50", "macs")}
    assert summary(rows) == {"pass": 11, "FAIL": 4, "paper inconsistent": 14, "not checked": 2, "baseline": 4}
    assert all(c.row.baseline and c.ours_increase is not None for c in rows if c.result in ("pass", "FAIL"))


def test_a_plain_resnet_fails_the_checks_that_regnet_passes():
    # The increase checks can fail: the same rows with regulator=None (exactly ResNet-(6n+2))
    # add nothing, which no row of Tables I, IV, V allows.
    cifar = [r for r in PAPER_ROWS if r.metric == "params" and r.num_classes != 1000
             and r.baseline and r.baseline.startswith("resnet")]
    assert len(cifar) == 2 + 12 + 12
    passed = [r for r in cifar if compare(r).result == "pass"]
    assert len(passed) == 10
    for row in cifar:
        assert compare(plain(row)).ours_increase == 0
        assert compare(plain(row)).result == "FAIL", row.label
    # What the issue found: totals within 15% let a plain ResNet-20 through 5 of Table V's 6 C-10 rows.
    ours = measure("resnet20", "params")
    table_v = [r for r in cifar if r.source == "Table V, C-10"]
    assert sum(abs(ours - Printed(r.total).value) <= 0.15 * Printed(r.total).value for r in table_v) == 5


def test_the_paper_contradicts_itself_in_table_v():
    # The premise: a regulator in stage i alone adds what it adds in the all-stage model, so the
    # single-stage increases sum to the all-stage one. It holds for ours exactly.
    for cell in ("gru", "lstm"):
        stages = sum(measure(f"rrnet20_{cell}_s{s}", "params") - measure("resnet20", "params") for s in (1, 2, 3))
        assert stages == measure(f"rrnet20_{cell}", "params") - measure("resnet20", "params")
    # The paper's own numbers break it in every group, beyond the printed precision of both sides.
    sums = []
    for parts, wholes in stage_sums():
        total = sum(p.paper_increase()[0] for p in parts)
        slack = sum(p.paper_increase()[1] for p in parts)
        sums.append(round(total))
        assert any(abs(total - w.paper_increase()[0]) > slack + w.paper_increase()[1] for w in wholes)
    assert sums == [51_000, 77_000, 54_000, 79_000]       # C-10 GRU, LSTM; C-100 GRU, LSTM


def test_printed_precision_gives_the_tolerance():
    assert (Printed("+0.04M").value, Printed("+0.04M").half_unit) == (40_000, 5_000)
    assert Printed("0.279M").half_unit == pytest.approx(500) and Printed("+44K").half_unit == 500
    assert Row("t", "m", "b", increase="+0.04M").paper_increase() == (40_000, 10_000, "+0.04M")
    value, tolerance, text = Row("t", "m", "b", total="0.279M", baseline_total="0.273M").paper_increase()
    assert (value, tolerance, text) == (pytest.approx(6_000), pytest.approx(1_000), "+0.006M")
    value, tolerance, text = Row("t", "m", "b", increase=("+330K", "+44K")).paper_increase()
    assert (value, tolerance, text) == (286_000, 1_000, "+286K")
    with pytest.raises(ValueError, match="not a printed count"):
        Printed("0.27").value


def test_light_regulator_parameters_follow_the_paper_arithmetic():
    # Per stage of width N (n=3 blocks): one shared ConvGRU, 3 gates x 12N (see convrnn.py),
    # and per block the 1x1 fusion conv 2N -> N with its BN (2N^2 + 2N) and the BN after the
    # cell (2N). Nothing else differs from ResNet-20.
    model, base = create_model("rrnet20_gru"), create_model("resnet20")
    assert [count_parameters(c) for c in cells(model)] == [36 * n for n in (16, 32, 64)]
    expected = sum(36 * n + 3 * (2 * n * n + 4 * n) for n in (16, 32, 64))
    assert count_parameters(model) - count_parameters(base) == expected == 37_632


def test_one_cell_per_regulated_stage_and_plain_blocks_elsewhere():
    model = create_model("rrnet20_lstm_s2")
    plain1, regulated, plain3 = model.stages
    assert isinstance(regulated, RegStage) and isinstance(regulated.cell, ConvLSTM)
    assert len(cells(model)) == 1 and len(regulated.blocks) == 3
    assert all(type(b) is BasicBlock for b in [*plain1, *plain3])


def test_without_regulator_it_is_the_cifar_resnet():
    torch.manual_seed(0)
    resnet = create_model("resnet20").eval()
    plain = create_model("rrnet20_gru", regulator=None).eval()
    plain.load_state_dict(resnet.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), resnet(x))


def test_se_adds_the_same_parameters_as_in_se_resnet():
    se_cost = count_parameters(create_model("se_resnet20")) - count_parameters(create_model("resnet20"))
    assert (count_parameters(create_model("se_rrnet20_gru"))
            - count_parameters(create_model("rrnet20_gru"))) == se_cost


def test_resnet50_is_torchvisions():
    torch.manual_seed(0)
    ours = create_model("resnet50", num_classes=1000).eval()
    theirs = torchvision.models.resnet50().eval()
    assert count_parameters(ours) == count_parameters(theirs) == 25_557_032
    ours.load_state_dict(theirs.state_dict())  # strict: identical keys and shapes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_rrnet50_counts_without_forward():
    with torch.device("meta"):
        model = create_model("rrnet50", num_classes=1000)
    assert [c.channels for c in cells(model)] == [64, 128, 256, 512]
    assert [len(model.get_submodule(f"layer{i}").blocks) for i in range(1, 5)] == [3, 4, 6, 3]
    # Increase over ResNet-50: per block 2N^2 (fusion) + 4N (two BNs); per stage 48N (ConvLSTM).
    widths = {64: 3, 128: 4, 256: 6, 512: 3}
    increase = sum(48 * n + blocks * (2 * n * n + 4 * n) for n, blocks in widths.items())
    assert count_parameters(model) == 25_557_032 + increase


def test_bottleneck_stride_placements_feed_the_cell_the_same_map():
    # stride on W23 (default): the cell reads X2[::2, ::2]; on W12: the 1x1 convolution with
    # stride 2 computes exactly that map. Same weights, so the cell inputs must agree.
    torch.manual_seed(0)
    small = dict(layers=(1, 1), widths=(8, 16), num_classes=3, regulator="gru")
    on_3x3 = RRNetImageNet(stride_on="3x3", **small).eval()
    on_1x1 = RRNetImageNet(stride_on="1x1", **small).eval()
    on_1x1.load_state_dict(on_3x3.state_dict())
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        a, b = on_3x3.forward_intermediates(x), on_1x1.forward_intermediates(x)
    torch.testing.assert_close(a[1]["input"], b[1]["input"])
    assert a[1]["input"].shape == (2, 16, 5, 5)
    assert not torch.allclose(a[1]["output"], b[1]["output"])  # the 3x3 sees different maps


def test_forward_intermediates_per_block():
    torch.manual_seed(0)
    model = create_model("rrnet20_lstm_s2").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        records = model.forward_intermediates(x)
        features = model.forward_features(x)
    assert [(r["stage"], r["block"]) for r in records] == [(s, b) for s in (1, 2, 3) for b in (1, 2, 3)]
    for r in records:
        regulated = r["stage"] == 2
        assert (r["input"] is not None) == (r["state"] is not None) == regulated
        if regulated:
            assert r["input"].shape == r["state"].shape == r["output"].shape == (2, 32, 16, 16)
            assert (r["state"] >= 0).all()  # H after BN and ReLU
    torch.testing.assert_close(records[-1]["output"], features)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed again


def test_recurrent_state_choice():
    torch.manual_seed(0)
    normalized = create_model("rrnet20_gru").eval()
    raw = create_model("rrnet20_gru", recurrent_state="raw").eval()
    raw.load_state_dict(normalized.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(raw(x), normalized(x))


def test_other_inputs_classes_and_dtype():
    model = create_model("rrnet20_lstm", num_classes=5, in_chans=1, form="full").double()
    out = model(torch.randn(2, 1, 28, 28, dtype=torch.float64))  # state follows the input's dtype
    assert out.shape == (2, 5) and out.dtype == torch.float64
    small = RRNetImageNet(layers=(1, 1), widths=(8, 16), num_classes=4, in_chans=1, regulator="lstm")
    assert small(torch.randn(2, 1, 33, 33)).shape == (2, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(form="heavy"), "valid: light, full"),
    (dict(regulator="transformer"), "valid: rnn, gru, lstm"),
    (dict(regulated_stages=(4,)), "regulated_stages"),
    (dict(recurrent_state="cell"), "valid: normalized, raw"),
])
def test_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        create_model("rrnet20_gru", **kwargs)


def test_stride_on_user_error():
    with pytest.raises(UserError, match="valid: 3x3, 1x1"):
        RRNetImageNet(layers=(1, 1), widths=(8, 16), regulator="gru", stride_on="2x2")


def test_registry_meta():
    from selfreg.factory import model_entry

    for name in RRNETS + ["resnet50"]:
        meta = model_entry(name).meta
        assert meta["input_size"] == (224 if name.endswith("50") else 32)
        assert meta["source"] == "selfreg" and meta["family"]
        assert meta["paper"] == XU_2022 or name == "resnet50"
    assert len(RRNETS) == 9 + 3 + 6 + 1


def test_fusion_with_split_weight_equals_the_concatenation():
    from selfreg.models.regnet import fuse

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 1, bias=False)
    x, h = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(fuse(conv, x, h), conv(torch.cat([x, h], 1)))


def test_macs_count_the_reference_cells():
    # The light form's grouped 1x1 runs as an element-wise multiply-add (not seen by the
    # flop counter); MACs count the formulation as written: 2N per gate map and pixel.
    from selfreg.complexity import count_macs
    from selfreg.layers.convrnn import use_reference_cells

    model = create_model("rrnet20_gru")
    macs = count_macs(model, 32)
    assert "forward" not in cells(model)[0].__dict__  # the fast path is back afterwards
    plain = create_model("rrnet20_gru")
    use_reference_cells(plain)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        plain.eval()(torch.zeros(1, 3, 32, 32))
    assert macs == counter.get_total_flops() // 2


@pytest.mark.parametrize("regulator", ["rnn", "gru", "lstm"])
def test_one_block_stages_give_every_state_weight_a_gradient(regulator):
    # With one block a stage's cell runs once, from zeros: it must not skip the state-side
    # terms (their weights would get no gradient at all: DDP fails, weight decay skips them).
    from selfreg.layers.convrnn import use_reference_cells
    from selfreg.models.regnet import RRNetCifar

    torch.manual_seed(0)
    model = RRNetCifar(1, regulator=regulator)
    assert all(not c.skip_zero_state for c in cells(model))
    assert all(c.skip_zero_state for c in cells(create_model(f"rrnet20_{regulator}")))
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(out, use_reference_cells(model)(x))
