"""Distillation objectives: divergences between a student's and a teacher's distributions.

The per-token divergences themselves are pair terms defined once in
:mod:`lmloss.stats.divergence_terms` (the engine sums them over the vocabulary); the
objectives here turn those per-token values into losses (token means, CE-to-labels mixing,
BD-KD's entropy-gap weighting) and hold the sequence/batch-level objectives (PLD, Sinkhorn
KD) and the sparse-teacher support construction.
"""
