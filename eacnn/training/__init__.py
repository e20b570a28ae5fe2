"""Training layer: the InfoNCE loss, the optimiser and schedule, one explicit loop, checkpoints.

Modules: :mod:`~eacnn.training.losses`, :mod:`~eacnn.training.optim`, :mod:`~eacnn.training.loop` (contrastive
training, and the generic epoch loop the classifier baseline shares), :mod:`~eacnn.training.classifier`,
:mod:`~eacnn.training.checkpoint`. Imports the leaves, physics, datasets and models.
"""
