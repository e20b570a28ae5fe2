"""Retrieval layer: embeddings of a data set, the index with one rank rule, saved databases, identification.

Modules: :mod:`~eacnn.retrieval.index` (torch/FAISS index, top-k), :mod:`~eacnn.retrieval.embed` (embeddings of a
data set and its perturbed queries), :mod:`~eacnn.retrieval.pattern_tower` (the XRD tower as numpy, so a search
needs no torch), :mod:`~eacnn.retrieval.database` (saved databases: embeddings, labels, reflections, calibration),
:mod:`~eacnn.retrieval.query` (a pattern read at a grid of lattice scales), :mod:`~eacnn.retrieval.identify`
(multi-scale query, refinement, calibrated verdict). One database class (built, saved and opened by
:mod:`~eacnn.retrieval.database`) and one identification (:func:`~eacnn.retrieval.identify.identify`; ranking without
refinement is ``rerank=0``) serve the command line, the book and the scripts. Imports everything below it (leaves,
physics, datasets, models, training).
"""
