"""`selfreg models --table` and the page it generates, docs/zoo.md."""
from pathlib import Path

import pytest

from selfreg.analysis.model_table import page, size_line, table_rows as measured_rows
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


# docs/zoo.md is what `selfreg models --table` prints: the page around the measured lines, and each
# model's line measured on its own (one test a model, so the suite's workers share the ~30 s).

def test_docs_page_is_regenerated_around_the_measured_lines():
    lines = DOC.read_text().splitlines()
    measured = [line for line in lines[:lines.index("## Origin, small-input adaptation and recipe")]
                if line.startswith("| `")]
    assert [line.split("`")[1] for line in measured] == list_models()      # one line a model, in order
    assert DOC.read_text() == page(list_models(), measured), "run: selfreg models --table > docs/zoo.md"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_docs_line_is_regenerated(name):
    line = next(line for line in DOC.read_text().splitlines() if line.startswith(f"| `{name}` |"))
    assert line == size_line(measured_rows([name], 10)[0]), "run: selfreg models --table > docs/zoo.md"
