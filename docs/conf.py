"""Sphinx configuration of pyroopt's docs site (``make docs``)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # pyroopt, from this checkout
sys.path.insert(0, HERE)  # api_params, the extension beside this file

import pyroopt  # noqa: E402 (E402: needs the path above)

project = "pyroopt"
release = version = pyroopt.__version__
author = "the pyroopt authors"
# alabaster's footer reads "©{copyright}."
copyright = "2026 the pyroopt authors. Apache License 2.0"
html_title = f"pyroopt {release}"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "api_params",
]
# the landing page includes README.md; the tutorial pages (docs/tutorial_pages.py
# writes them) are MyST Markdown
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# README.md links to its own sections (#exact-numbers)
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
# alabaster's 940px body cuts the three-column map table: use the window's width.
html_theme_options = {"page_width": "auto", "body_max_width": "none"}
exclude_patterns = ["_build", "tutorial_plots"]
nitpicky = False
