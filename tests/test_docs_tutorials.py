"""The tutorial pages of the docs site: every tutorial, all of its prose and code, and
the plots it saves, which must be in docs/tutorial_plots/."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("tutorial_pages", ROOT / "docs" / "tutorial_pages.py")
assert SPEC is not None and SPEC.loader is not None
tutorial_pages = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = tutorial_pages  # its dataclass looks its module up there
SPEC.loader.exec_module(tutorial_pages)

TUTORIALS = tutorial_pages.tutorial_files()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_examples_hold():
    assert doctest.testmod(tutorial_pages).failed == 0


def test_there_are_tutorials():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)]
    assert len(TUTORIALS) >= 8


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_every_plot_a_tutorial_saves_was_kept_for_the_site(path):
    plots = tutorial_pages.saved_plots(path.read_text())
    assert plots, f"{path.name} saves no plot"
    for plot in plots:
        kept = tutorial_pages.PLOTS / path.stem / plot
        assert kept.is_file(), f"{kept} is missing: run `make tutorial-plots`"
        data = kept.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_a_page_holds_all_prose_and_code_and_shows_each_plot_once(path):
    text = tutorial_pages.page(path)
    assert text.startswith("# ")
    for line in path.read_text().splitlines():
        if line.startswith("# %%") or not line.strip():
            continue
        assert line.removeprefix("# ").removeprefix("#") in text
    for plot in tutorial_pages.saved_plots(path.read_text()):
        assert text.count(f"](../tutorial_plots/{path.stem}/{plot})") == 1
    assert text.count("```python") == text.count("```") / 2


def test_pages_are_written_for_every_tutorial_and_stale_ones_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tutorial_pages, "PAGES", tmp_path)
    (tmp_path / "99_gone.md").write_text("# a tutorial that was deleted\n")
    written = tutorial_pages.write_pages()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}.md" for p in TUTORIALS)
    assert written == [tmp_path / f"{p.stem}.md" for p in TUTORIALS]


def test_a_prose_line_that_is_not_a_comment_is_refused():
    with pytest.raises(ValueError, match="must be a comment: 'oops'"):
        tutorial_pages.split_cells(["# %% [markdown]", "# Title", "oops"])


def test_a_tutorial_without_a_title_is_refused(tmp_path):
    script = tmp_path / "09_untitled.py"
    script.write_text("# %%\nx = 1\n")
    with pytest.raises(ValueError, match=r"09_untitled\.py must open with a prose cell"):
        tutorial_pages.page(script)
