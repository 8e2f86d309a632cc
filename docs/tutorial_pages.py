"""The tutorials as pages of the docs site: prose, code and the plots each one draws.

Each tutorial is a percent-format script: ``# %% [markdown]`` cells of prose (every
line a comment) and ``# %%`` cells of code. ``python docs/tutorial_pages.py`` writes
``docs/tutorials/<name>.md`` for each (MyST Markdown, read by Sphinx with myst-parser):
the prose as it is, the code in fenced blocks, and after the cell that saves a plot,
that plot from ``docs/tutorial_plots/<name>/`` (``make tutorial-plots`` runs the
tutorials and puts their plots there). tests/test_docs_tutorials.py checks that every
tutorial has its page and every plot it saves is there.

Example::

    >>> cells = split_cells(["# %% [markdown]", "# # Title", "#", "# Prose.", "# %%", "x = 1"])
    >>> [(c.kind, c.lines) for c in cells]
    [('markdown', ['# Title', '', 'Prose.']), ('code', ['x = 1'])]
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
PAGES = ROOT / "docs" / "tutorials"
PLOTS = ROOT / "docs" / "tutorial_plots"
#: ``OUT / "loss.png"``: how a tutorial names the plot it saves
SAVED_PLOT = re.compile(r"""OUT\s*/\s*["']([\w.-]+\.png)["']""")


@dataclass
class Cell:
    """One cell of a percent-format script."""

    kind: str  # "markdown" or "code"
    lines: list[str] = field(default_factory=list)


def tutorial_files() -> list[Path]:
    """The numbered tutorials, in order."""
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def split_cells(lines: list[str]) -> list[Cell]:
    """The cells of a script; prose lines lose their comment marker."""
    cells: list[Cell] = []
    for line in lines:
        if line.startswith("# %%"):
            cells.append(Cell("markdown" if "[markdown]" in line else "code"))
            continue
        if not cells:
            cells.append(Cell("code"))
        cell = cells[-1]
        if cell.kind == "markdown":
            if line.strip() and line != "#" and not line.startswith("# "):
                raise ValueError(f"a prose line must be a comment: {line!r}")
            line = line[2:]
        cell.lines.append(line)
    for cell in cells:
        while cell.lines and not cell.lines[-1].strip():
            cell.lines.pop()
        while cell.lines and not cell.lines[0].strip():
            cell.lines.pop(0)
    return [cell for cell in cells if cell.lines]


def saved_plots(source: str) -> list[str]:
    """The file names of the plots a tutorial saves, in the order it names them."""
    return list(dict.fromkeys(SAVED_PLOT.findall(source)))


def page(path: Path) -> str:
    """The MyST page of one tutorial."""
    name = path.stem
    out: list[str] = []
    shown: set[str] = set()
    cells = split_cells(path.read_text().splitlines())
    if not cells or cells[0].kind != "markdown" or not cells[0].lines[0].startswith("# "):
        raise ValueError(f"{path.name} must open with a prose cell whose first line is a title")
    for cell in cells:
        if cell.kind == "markdown":
            out += [*cell.lines, ""]
            continue
        out += ["```python", *cell.lines, "```", ""]
        for plot in saved_plots("\n".join(cell.lines)):
            if plot not in shown:
                shown.add(plot)
                out += [f"![{plot}](../tutorial_plots/{name}/{plot})", ""]
    out += [
        f"The whole script: `tutorials/{path.name}`; `python tutorials/{path.name}` runs it.",
        "",
    ]
    return "\n".join(out)


def write_pages() -> list[Path]:
    """Write every tutorial's page (and remove pages of tutorials that are gone)."""
    PAGES.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tutorial_files():
        target = PAGES / f"{path.stem}.md"
        target.write_text(page(path))
        written.append(target)
    for stale in set(PAGES.glob("*.md")) - set(written):
        stale.unlink()
    return written


if __name__ == "__main__":
    for written in write_pages():
        print(written.relative_to(ROOT), file=sys.stderr)
