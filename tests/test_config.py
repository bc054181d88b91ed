import pytest

from selfreg.config import Config, load_config
from selfreg.errors import UserError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "model:\n  name: resnet32\noptim:\n  lr: 0.05\n")
    cfg = load_config(p, ["optim.lr=0.01", "sched.milestones=[3,6]", "model.kwargs.shortcut=B",
                          "train.epochs=2"])
    assert isinstance(cfg, Config)
    assert cfg.model.name == "resnet32"
    assert cfg.optim.lr == 0.01
    assert cfg.sched.milestones == [3, 6]
    assert cfg.model.kwargs == {"shortcut": "B"}
    assert cfg.train.epochs == 2
    assert cfg.data.name == "digits"  # default kept


def test_int_is_accepted_for_float_and_scalar_for_list(tmp_path):
    cfg = load_config(None, ["optim.lr=1", "sched.milestones=5"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.sched.milestones == [5]


def test_unknown_key_names_valid_keys():
    with pytest.raises(UserError, match=r"unknown config key .optim.lrr.*valid keys: .*optim.lr"):
        load_config(None, ["optim.lrr=0.1"])


def test_unknown_section():
    with pytest.raises(UserError, match="unknown config key .optimizer. "):
        load_config(None, ["optimizer.lr=0.1"])


def test_wrong_type():
    with pytest.raises(UserError, match="train.epochs must be an integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(UserError, match="optim.nesterov must be true or false"):
        load_config(None, ["optim.nesterov=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(write(tmp_path, "model:\n  name: [unclosed\n"))
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_without_equals():
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["optim.lr"])


def test_a_run_saved_before_a_key_existed_continues_with_its_default():
    """A config.yaml written by an older selfreg lacks the keys added since: its run had their
    defaults, so a sweep or train.resume=auto continues it; another value is still refused."""
    from selfreg.config import Config, refused_change

    saved = Config().to_dict()
    del saved["train"]["deterministic"]
    assert refused_change(saved, Config().to_dict()) is None
    other = Config().to_dict()
    other["train"]["deterministic"] = False
    assert refused_change(saved, other) == "train.deterministic"
