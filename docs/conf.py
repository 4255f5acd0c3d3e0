"""Sphinx configuration: the Markdown pages of docs/ as a site (MyST), the API from docstrings.

Build: python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "flask-goelect"
author = "the flask-goelect authors"
copyright = "flask-goelect authors"
release = "0.1.0"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Links like deployment.md#how-the-processes-of-a-node-share-one-elector.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "furo"
html_title = "flask-goelect"
html_static_path = ["_static"]


def setup(app: object) -> None:
    # Pygments has no HAProxy lexer; deployment.md's haproxy blocks are shown as text.
    from pygments.lexers.special import TextLexer

    app.add_lexer("haproxy", TextLexer)  # type: ignore[attr-defined]
