"""Sphinx configuration of the course's book. `llmcourse.course.book` copies it into the source folder it generates
(build/book-source/), which is then a complete Sphinx project: `sphinx-build build/book-source build/book`."""

project = "llmcourse"
html_title = "llmcourse: how LLMs work and how their inference is made fast"
author = "the llmcourse authors"
copyright = "the llmcourse authors, MIT licence"

extensions = ["myst_nb", "sphinx.ext.githubpages"]  # githubpages: a .nojekyll file, for GitHub Pages
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# The notebooks arrive executed by llmcourse.course.notebooks.execute (once, headless): myst-nb only renders them.
nb_execution_mode = "off"
# No widget JavaScript from a CDN (the book must work offline): llmcourse.course.book turns each widget into a static
# snapshot of its saved state, with a note to run it live.
nb_ipywidgets_js = {}
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_static_path = ["_static"]
html_css_files = ["book.css"]
# MathJax from the `mathjax` package's files copied into _static (not a CDN): math renders offline, from file://.
mathjax_path = "mathjax/tex-chtml-full.js"

exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
