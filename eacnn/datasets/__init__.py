"""Data layer: embedded MP-20 structures, CIF folders, mp-api downloads, periodic graphs, the cached data set.

Modules: :mod:`~eacnn.datasets.structures`, :mod:`~eacnn.datasets.mp`, :mod:`~eacnn.datasets.graphs`,
:mod:`~eacnn.datasets.dataset`. Imports the leaves and :mod:`eacnn.physics`.
"""
