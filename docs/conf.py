"""Sphinx configuration of arta's documentation (``sphinx-build -W docs build/docs``)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not whatever arta is installed

import arta

project = "arta"
author = "the arta developers"
copyright = "the arta developers, MIT License"
release = version = arta.__version__

extensions = ["sphinx.ext.autodoc", "sphinx_autodoc_typehints"]
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"arta {release}"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Type hints go into the description, where sphinx-autodoc-typehints renders them.
autodoc_typehints = "description"
typehints_fully_qualified = False
always_document_param_types = False
# ``OnChange = Callable[["Generation"], object]`` names the class before it is
# defined; the hint is shown as written, which is what a reader needs.
suppress_warnings = ["sphinx_autodoc_typehints.forward_reference"]
# sphinx-autodoc-typehints still calls an API that Sphinx 10 will remove; it
# works, and a line of it per docstring would bury the build's real output.
warnings.filterwarnings("ignore", message=".*set_application.*")
