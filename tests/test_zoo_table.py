"""`selfreg models --table` and the page it generates, docs/zoo.md."""
from pathlib import Path

import pytest

from selfreg.analysis.model_table import markdown
from selfreg.factory import list_models

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "zoo.md"


def table_rows(text: str) -> dict[str, list[str]]:
    """First table of the page: model name -> its cells."""
    section = text.split("## Parameters and multiply-adds")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_models_table_command(cli):
    proc = cli("models", "--table", "resnet18")
    assert proc.returncode == 0, proc.stderr
    cells = table_rows(proc.stdout)["resnet18"]
    # model | family | params 32 | MACs 32 | native | params native | MACs native | source | paper
    assert cells[2] == "11,173,962"        # CIFAR form: 3x3 stem, no max-pool
    assert cells[4] == "224" and cells[5] == "11,181,642"
    assert cells[6] == "1.81G" and cells[7] == "timm" and cells[8].startswith("He et al.")
    assert "`selfreg models --table > docs/zoo.md`" in proc.stdout


def test_docs_list_every_registered_model():
    assert sorted(table_rows(DOC.read_text())) == list_models()


@pytest.mark.parametrize("pattern", ["resnet18", "vgg11", "shufflenet_v1", "vit_tiny_patch4_32", "lenet_bn"])
def test_docs_rows_match_the_code(pattern):
    assert table_rows(DOC.read_text())[pattern] == table_rows(markdown(pattern))[pattern]


@pytest.mark.slow
def test_docs_are_regenerated():
    assert DOC.read_text() == markdown(), "run: selfreg models --table > docs/zoo.md"
