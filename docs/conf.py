"""Sphinx configuration: numpydoc, autosummary, sphinx-gallery, pydata theme."""

import os
import warnings

import sklearn_wsvd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")

project = "sklearn-wsvd"
author = "The sklearn-wsvd developers"
copyright = "2026, The sklearn-wsvd developers"
release = version = sklearn_wsvd.__version__

# No maths extension: the few formulas are plain text, so that the pages render offline
# (MathJax would come from a CDN; imgmath needs LaTeX).
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
# The set_*_request methods scikit-learn generates point into its own glossary.
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    "exclude-members": "set_fit_request, set_score_request, set_transform_request",
}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

doctest_global_setup = "import numpy as np\nimport sklearn_wsvd"

intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
}

html_theme = "pydata_sphinx_theme"
html_title = "sklearn-wsvd"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
exclude_patterns = ["_build", "generated/*.examples"]
