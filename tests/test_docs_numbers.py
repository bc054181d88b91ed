"""Numbers the README quotes from docs/performance.md are that page's (script-written) numbers."""
import re

from procs import REPO


def section(name: str) -> str:
    text = (REPO / "docs" / "performance.md").read_text()
    match = re.search(rf"<!-- begin {re.escape(name)} -->(.*?)<!-- end {re.escape(name)} -->", text, re.S)
    assert match, f"docs/performance.md has no section {name!r}"
    return match.group(1)


def test_readme_loader_figures_are_the_loader_benchmarks():
    rows = re.findall(r"^\| (torchvision DataLoader[^|]*|selfreg fast loader[^|]*)\|\s*(\d+) \|",
                      section("Loader: fast tensor loader vs DataLoader + PIL"), re.M)
    assert len(rows) == 2, rows
    readme = " ".join((REPO / "README.md").read_text().split())
    for _, images_per_s in rows:
        assert f"{int(images_per_s):,} " in readme, images_per_s
    ratio = re.search(r"ratio fast / torchvision: ([\d.]+)x", section("Loader: fast tensor loader vs DataLoader + PIL"))
    assert f"({ratio.group(1)}x" in readme
