import pytest
import torch

from selfreg import create_model
from selfreg.complexity import count_macs, count_parameters
from selfreg.errors import UserError
from selfreg.layers.basic_block import BLOCK_VARIANTS

# He et al. (2016), option A, 10 classes: exact counts of the reference implementation.
EXPECTED_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(EXPECTED_PARAMS))
def test_parameter_counts_option_a(depth):
    assert count_parameters(create_model(f"resnet{depth}", num_classes=10)) == EXPECTED_PARAMS[depth]


def test_option_b_adds_projections():
    a = count_parameters(create_model("resnet20"))
    b = count_parameters(create_model("resnet20", shortcut="B"))
    # Two 1x1 projections with BN: 16->32 and 32->64.
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_se_resnet_reduction_8():
    plain = count_parameters(create_model("resnet20"))
    se = count_parameters(create_model("se_resnet20"))
    per_width = {c: c * (c // 8) + c // 8 + (c // 8) * c + c for c in (16, 32, 64)}
    assert se - plain == 3 * sum(per_width.values())


@pytest.mark.parametrize("variant", list(BLOCK_VARIANTS))
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_block_variants_forward_backward(variant, shortcut):
    model = create_model("resnet20", num_classes=7, in_chans=1, block=variant, shortcut=shortcut)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert count_parameters(model) == count_parameters(
        create_model("resnet20", num_classes=7, in_chans=1, shortcut=shortcut))


def test_variants_differ_in_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for variant in BLOCK_VARIANTS:
        torch.manual_seed(0)
        outs.append(create_model("resnet20", block=variant).eval()(x))
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j])


def test_forward_is_head_of_features():
    model = create_model("se_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    torch.testing.assert_close(model.forward_head(feats), model(x))


def test_unknown_variant_and_shortcut_are_user_errors():
    with pytest.raises(UserError, match="valid"):
        create_model("resnet20", block="sideways")
    with pytest.raises(UserError, match="shortcut option"):
        create_model("resnet20", shortcut="C")


def test_macs_resnet20():
    # ~41M multiply-adds for ResNet-20 at 32x32 (He et al. report 41M FLOPs).
    macs = count_macs(create_model("resnet20"), 32)
    assert 40e6 < macs < 42e6
