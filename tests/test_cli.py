import pytest


@pytest.mark.parametrize("args, message", [
    (["train", "nope.yaml"], "config file not found"),
    (["train", "configs/demo.yaml", "model.name=resnet21"], "did you mean"),
    (["train", "configs/demo.yaml", "optim.lrr=1"], "unknown config key"),
    (["models", "zzz*"], "no model matches"),
])
def test_user_errors_are_one_line_exit_2(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_malformed_config_file(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: resnet20\n")
    proc = cli("train", bad)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_models_table(cli):
    proc = cli("models", "resnet*")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert rows["resnet20"][1] == "269,722"
    assert rows["resnet110"][1] == "1,727,962"
    assert "MACs" in proc.stdout


def test_version(cli):
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("selfreg ")
