"""Sphinx configuration of pyroopt's API reference (``make docs``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pyroopt"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
# the tutorial pages (docs/tutorial_pages.py writes them) are MyST Markdown
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
# alabaster's 940px body cuts the three-column map table: use the window's width.
html_theme_options = {"page_width": "auto", "body_max_width": "none"}
exclude_patterns = ["_build", "tutorial_plots"]
nitpicky = False
