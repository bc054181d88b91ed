import pytest

from selfreg import create_model, list_models
from selfreg.errors import UserError
from selfreg.registry import Registry


def test_duplicate_name_is_an_error():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UserError, match=r"did you mean: .*resnet20") as info:
        create_model("resnet21")
    assert "\n" not in str(info.value)


def test_list_models_filters_by_pattern():
    names = list_models("resnet*")
    assert names == sorted(names)
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= set(names)
    assert all(n.startswith("resnet") for n in names)
    assert "se_resnet20" in list_models("se_*")


def test_unknown_builder_argument_is_a_user_error():
    with pytest.raises(UserError, match="takes no argument"):
        create_model("resnet20", no_such_option=3)
