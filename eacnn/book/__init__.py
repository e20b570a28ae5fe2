"""Book layer: notebook helpers, every figure, the papermill + Jupyter Book build, the browser check.

Modules: :mod:`~eacnn.book.notebook`, :mod:`~eacnn.book.plots` (the only module importing matplotlib),
:mod:`~eacnn.book.build`, :mod:`~eacnn.book.browser`, :mod:`~eacnn.book.sphinxext` (the book's Sphinx extension).
"""
