"""The paper's analyses on a built data set, and every table or number a chapter of the book shows, one module a
chapter: :mod:`~eacnn.analysis.retrieval` (chapters 5–6: retrieval tables under named pools and perturbation
levels, the search-match baseline, per-space-group accuracy, the symmetry case study, Table 1 beside the published
values), :mod:`~eacnn.analysis.rare` (chapter 8: Table 2), :mod:`~eacnn.analysis.training` (chapter 4: training
summaries, the ablation, the search's validation grids, model sizes), :mod:`~eacnn.analysis.curves` (chapter 4:
learning and data-scaling curves, the reproduction verdict), :mod:`~eacnn.analysis.embedding` (chapter 7: the
crystal-system separation of the embedding space), :mod:`~eacnn.analysis.measured` (chapters 9–10).

All functions take embeddings, training logs or models (plus a :class:`eacnn.datasets.dataset.CrystalDataset`);
none trains anything. The figures drawn from them are in :mod:`eacnn.book.plots`. Every public name is also
importable from ``eacnn.analysis`` itself.
"""

from eacnn.analysis import curves, embedding, measured, rare, retrieval, training
from eacnn.analysis.curves import *  # noqa: F401,F403
from eacnn.analysis.embedding import *  # noqa: F401,F403
from eacnn.analysis.measured import *  # noqa: F401,F403
from eacnn.analysis.rare import *  # noqa: F401,F403
from eacnn.analysis.retrieval import *  # noqa: F401,F403
from eacnn.analysis.training import *  # noqa: F401,F403

__all__ = [*curves.__all__, *embedding.__all__, *measured.__all__, *rare.__all__, *retrieval.__all__,
           *training.__all__]
