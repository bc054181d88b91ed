import pytest

from conftest import run_cli


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


def test_a_real_process_says_one_line_and_exits_2():
    """What the in-process tests above check, once through `python -m selfreg` itself."""
    proc = run_cli("train", "nope.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "config file not found" in proc.stderr
    assert run_cli("--version").stdout.startswith("selfreg ")
