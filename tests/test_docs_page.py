"""benchmarks.docs_page: the results page's tables are the output of their commands, and are current."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.docs_page import PAGES, blocks
from benchmarks.docs_page import main as docs_page_main

ROOT = Path(__file__).resolve().parents[1]


def _page(tmp_path, body: str, command: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(f"# Results\n\ntext\n<!-- generated: {command} -->\n{body}<!-- end generated -->\nafter\n")
    return page


def test_regenerates_a_block_and_checks_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    inner = tmp_path / "inner.md"
    inner.write_text("no blocks here\n")
    # the inner page has no blocks, so this command prints one known line
    page = _page(tmp_path, "| stale |\n", f"python -m benchmarks.docs_page --page {inner}")
    assert docs_page_main(["--page", str(page), "--check"]) == 1
    assert docs_page_main(["--page", str(page)]) == 0
    text = page.read_text()
    assert f"{inner}: 0 generated blocks, 0 changed\n<!-- end generated -->\nafter\n" in text
    assert text.startswith("# Results\n\ntext\n<!-- generated: ") and "| stale |" not in text
    assert docs_page_main(["--page", str(page), "--check"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("body, command, message", [
    ("x\n", "python -m os", "may only run"),
    ("x\n", "ls docs", "may only run"),
    ("x\n", "python -m benchmarks.returns table /no/such/folder", "failed"),
])
def test_bad_blocks_get_one_line(tmp_path, capsys, body, command, message):
    page = _page(tmp_path, body, command)
    before = page.read_text()
    with pytest.raises(SystemExit) as exc:
        docs_page_main(["--page", str(page)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert page.read_text() == before  # nothing written


def test_unbalanced_markers_are_refused(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: python -m benchmarks.flops --help -->\nno end\n")
    with pytest.raises(SystemExit):
        docs_page_main(["--page", str(page)])
    assert "unbalanced" in capsys.readouterr().err


def test_results_page_is_current(monkeypatch, capsys):
    """Every table of docs/BENCHMARKS.md and its history page is what its command prints from the committed raw
    files."""
    monkeypatch.chdir(ROOT)
    assert all(len(blocks((ROOT / page).read_text())) >= 1 for page in PAGES)
    assert docs_page_main(["--check"]) == 0, capsys.readouterr().out
