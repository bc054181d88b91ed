import pytest
import torch
import torchvision
from torch import nn

from selfreg import create_model, list_models
from selfreg.complexity import count_parameters
from selfreg.analysis.regnet_checks import PAPER_VALUES, TOLERANCE, compare, markdown_table
from selfreg.errors import UserError
from selfreg.layers.convrnn import ConvCell, ConvLSTM
from selfreg.models.regnet import XU_2022, RegStage, RRNetImageNet
from selfreg.models.resnet_cifar import BasicBlock

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


def test_counts_against_the_paper():
    rows = [compare(v) for v in PAPER_VALUES]
    print("\n" + markdown_table(rows))
    far = [f"{r.value.label} {r.value.metric}: {r.rel:+.1%}" for r in rows
           if r.value.checked and abs(r.rel) > TOLERANCE]
    assert not far, far


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
