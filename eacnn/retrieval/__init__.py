"""Retrieval layer: embeddings of a data set, the index with one rank rule, saved databases, identification.

Modules: :mod:`~eacnn.retrieval.index` (torch/FAISS index, top-k), :mod:`~eacnn.retrieval.embed` (embeddings of a
data set and its perturbed queries), :mod:`~eacnn.retrieval.pattern_tower` (the XRD tower as numpy, so a search
needs no torch), :mod:`~eacnn.retrieval.database` (saved databases: embeddings, labels, reflections, calibration),
:mod:`~eacnn.retrieval.query` (a pattern read at a grid of lattice scales), :mod:`~eacnn.retrieval.identify`
(multi-scale query, refinement, calibrated verdict), :mod:`~eacnn.retrieval.search` (the in-memory database of the
book's chapters). Imports everything below it (leaves, physics, datasets, models, training).
"""
